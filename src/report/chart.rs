//! Pictures for the Markdown reports (`gate`, `report`, `incident show
//! --markdown`): two Mermaid `xychart-beta` charts, error rate and latency
//! per color over a period, which GitHub draws in a step summary, an issue
//! or a pull request. Pure: samples and marks in, text out; no IO, no clock.
//!
//! Mermaid's xychart has no legend and no annotations, so:
//! - the colors' lines are drawn in their own colors (`plotColorPalette`,
//!   in series order), and a legend line under the charts names them;
//! - the fault, the decision and the switch are a bar series (full-height
//!   grey bars at their points) and are also named in the x-axis labels
//!   ("12s fault"), and the legend line gives their times.
//!
//! Bounded: at most [`MAX_POINTS`] points per series, each the average of
//! the samples in its slice of the period (at least 100 ms wide). A
//! slice with no sample repeats the value before it (0 at the start): a
//! line that drops to 0 would read as "healthy" or "instant".

use std::fmt::Write as _;

use crate::model::{Color, LatencyMean, Millis, Sample, format_ms};

/// The most points a series has.
pub const MAX_POINTS: usize = 60;
/// The narrowest slice of time one point stands for.
const MIN_SLICE_MS: Millis = 100;

const MARK_COLOR: &str = "#8c959f";
const BLUE_COLOR: &str = "#0969da";
const GREEN_COLOR: &str = "#1a7f37";

/// A moment worth seeing on the chart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum MarkKind {
    /// The first failing sample of the streak that led to the decision.
    Fault,
    /// A rule fired and the rollback (or the gate's failure) was decided.
    Decision,
    /// Traffic moved.
    Switch,
}

impl MarkKind {
    pub fn word(self) -> &'static str {
        match self {
            MarkKind::Fault => "fault",
            MarkKind::Decision => "decision",
            MarkKind::Switch => "switch",
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Slice {
    requests: f64,
    errors: f64,
    latency: LatencyMean,
}

/// The samples of both colors over `start..=end`, sliced for the charts.
#[derive(Clone, Debug)]
pub struct Timeline {
    start_ms: Millis,
    end_ms: Millis,
    slice_ms: Millis,
    /// Per slice, blue then green.
    slices: Vec<[Slice; 2]>,
    marks: Vec<(Millis, MarkKind)>,
}

fn index(color: Color) -> usize {
    match color {
        Color::Blue => 0,
        Color::Green => 1,
    }
}

impl Timeline {
    pub fn new(start_ms: Millis, end_ms: Millis) -> Timeline {
        let span = (end_ms - start_ms).max(1);
        let slice_ms = (span + MAX_POINTS as Millis - 1) / MAX_POINTS as Millis;
        let slice_ms = slice_ms.max(MIN_SLICE_MS);
        let n = ((span + slice_ms - 1) / slice_ms).clamp(1, MAX_POINTS as Millis) as usize;
        Timeline {
            start_ms,
            end_ms: end_ms.max(start_ms),
            slice_ms,
            slices: vec![[Slice::default(); 2]; n],
            marks: Vec::new(),
        }
    }

    fn slot(&self, at_ms: Millis) -> Option<usize> {
        if at_ms < self.start_ms || at_ms > self.end_ms {
            return None;
        }
        let i = ((at_ms - self.start_ms) / self.slice_ms) as usize;
        Some(i.min(self.slices.len() - 1))
    }

    /// Count a sample: a shared probe's (no color), a "no data" one and one
    /// outside the period are left out.
    pub fn add(&mut self, sample: &Sample) {
        let (Some(color), Some(i)) = (sample.color, self.slot(sample.at_ms)) else {
            return;
        };
        let Some((requests, errors)) = sample.counts() else {
            return;
        };
        let s = &mut self.slices[i][index(color)];
        s.requests += requests;
        s.errors += errors;
        if let Some(l) = sample.latency_ms {
            s.latency.add(l);
        }
    }

    /// Mark a moment; one outside the period is left out.
    pub fn mark(&mut self, at_ms: Millis, kind: MarkKind) {
        if self.slot(at_ms).is_some() && !self.marks.contains(&(at_ms, kind)) {
            self.marks.push((at_ms, kind));
            self.marks.sort();
        }
    }

    fn has(&self, color: Color) -> bool {
        self.slices.iter().any(|s| s[index(color)].requests > 0.0)
    }

    /// Error rate (%) per point, carrying the last value over empty slices.
    fn error_rates(&self, color: Color) -> Vec<f64> {
        carry(self.slices.iter().map(|s| {
            let s = s[index(color)];
            (s.requests > 0.0).then(|| s.errors / s.requests * 100.0)
        }))
    }

    fn latencies(&self, color: Color) -> Vec<f64> {
        carry(self.slices.iter().map(|s| {
            let s = s[index(color)];
            s.latency.ms()
        }))
    }

    /// The marks in each slice, in order (fault, decision, switch).
    fn marks_at(&self, i: usize) -> Vec<MarkKind> {
        let mut kinds: Vec<MarkKind> = self
            .marks
            .iter()
            .filter(|(at, _)| self.slot(*at) == Some(i))
            .map(|(_, k)| *k)
            .collect();
        kinds.sort();
        kinds.dedup();
        kinds
    }

    fn labels(&self) -> Vec<String> {
        (0..self.slices.len())
            .map(|i| {
                let offset = offset_label(i as Millis * self.slice_ms);
                let marks = self.marks_at(i);
                if marks.is_empty() {
                    offset
                } else {
                    let words: Vec<&str> = marks.iter().map(|k| k.word()).collect();
                    format!("{offset} {}", words.join("+"))
                }
            })
            .collect()
    }

    /// The two charts and their legend, as Markdown; empty when neither
    /// color has a sample in the period.
    pub fn markdown(&self) -> String {
        let colors: Vec<Color> = [Color::Blue, Color::Green]
            .into_iter()
            .filter(|c| self.has(*c))
            .collect();
        if colors.is_empty() {
            return String::new();
        }
        let labels = self.labels();
        let mut out = String::new();
        let rates: Vec<Vec<f64>> = colors.iter().map(|c| self.error_rates(*c)).collect();
        let _ = write!(
            out,
            "{}",
            self.chart(
                "Error rate per color",
                "error rate (%)",
                100.0,
                &labels,
                &colors,
                &rates
            )
        );
        let latencies: Vec<Vec<f64>> = colors.iter().map(|c| self.latencies(*c)).collect();
        let top = latencies.iter().flatten().fold(0.0f64, |a, b| a.max(*b));
        let _ = write!(
            out,
            "{}",
            self.chart(
                "Latency per color",
                "latency (ms)",
                nice_top(top),
                &labels,
                &colors,
                &latencies
            )
        );
        let _ = writeln!(out, "{}\n", self.legend(&colors));
        out
    }

    fn chart(
        &self,
        title: &str,
        y_title: &str,
        top: f64,
        labels: &[String],
        colors: &[Color],
        series: &[Vec<f64>],
    ) -> String {
        let mut out = String::new();
        let mut palette: Vec<&str> = Vec::new();
        if !self.marks.is_empty() {
            palette.push(MARK_COLOR);
        }
        palette.extend(colors.iter().map(|c| match c {
            Color::Blue => BLUE_COLOR,
            Color::Green => GREEN_COLOR,
        }));
        let _ = writeln!(out, "```mermaid");
        let _ = writeln!(out, "---");
        let _ = writeln!(out, "config:");
        let _ = writeln!(out, "  themeVariables:");
        let _ = writeln!(out, "    xyChart:");
        let _ = writeln!(out, "      plotColorPalette: \"{}\"", palette.join(", "));
        let _ = writeln!(out, "---");
        let _ = writeln!(out, "xychart-beta");
        let _ = writeln!(out, "  title \"{title}\"");
        let quoted: Vec<String> = labels.iter().map(|l| format!("\"{l}\"")).collect();
        let _ = writeln!(
            out,
            "  x-axis \"time from {}\" [{}]",
            format_ms(self.start_ms),
            quoted.join(", ")
        );
        let _ = writeln!(out, "  y-axis \"{y_title}\" 0 --> {}", number(top));
        if !self.marks.is_empty() {
            let bars: Vec<String> = (0..self.slices.len())
                .map(|i| {
                    if self.marks_at(i).is_empty() {
                        "0".into()
                    } else {
                        number(top)
                    }
                })
                .collect();
            let _ = writeln!(out, "  bar [{}]", bars.join(", "));
        }
        for values in series {
            let values: Vec<String> = values.iter().map(|v| number(*v)).collect();
            let _ = writeln!(out, "  line [{}]", values.join(", "));
        }
        let _ = writeln!(out, "```\n");
        out
    }

    fn legend(&self, colors: &[Color]) -> String {
        let mut parts: Vec<String> = [Color::Blue, Color::Green]
            .into_iter()
            .map(|c| {
                if colors.contains(&c) {
                    format!("the {c} line is {c}")
                } else {
                    format!("{c} had no sample")
                }
            })
            .collect();
        if !self.marks.is_empty() {
            let marks: Vec<String> = self
                .marks
                .iter()
                .map(|(at, k)| {
                    format!(
                        "{} at {} (+{})",
                        k.word(),
                        format_ms(*at),
                        offset_label(at - self.start_ms)
                    )
                })
                .collect();
            parts.push(format!(
                "grey bars, also named under the x axis, mark the {}",
                marks.join(", ")
            ));
        }
        format!(
            "_Legend: {}. One point per {} from {}; a point with no sample repeats the one before._",
            parts.join("; "),
            offset_label(self.slice_ms),
            format_ms(self.start_ms)
        )
    }
}

fn carry(values: impl Iterator<Item = Option<f64>>) -> Vec<f64> {
    let mut last = 0.0;
    values
        .map(|v| {
            if let Some(v) = v {
                last = v;
            }
            last
        })
        .collect()
}

/// A round top for the latency axis, above the highest point.
fn nice_top(max: f64) -> f64 {
    if !max.is_finite() || max <= 0.0 {
        return 1.0;
    }
    let raw = max * 1.1;
    let magnitude = 10f64.powf(raw.log10().floor());
    for step in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if step * magnitude >= raw {
            return step * magnitude;
        }
    }
    10.0 * magnitude
}

/// A number as Mermaid reads it: at most one decimal, no exponent.
fn number(v: f64) -> String {
    let v = if v.is_finite() { v } else { 0.0 };
    let rounded = (v * 10.0).round() / 10.0;
    if rounded.fract() == 0.0 {
        format!("{rounded:.0}")
    } else {
        format!("{rounded:.1}")
    }
}

/// A short offset: "0s", "1.5s", "2m05s", "1h02m".
fn offset_label(ms: Millis) -> String {
    let ms = ms.max(0);
    if ms < 60_000 {
        if ms % 1000 == 0 {
            format!("{}s", ms / 1000)
        } else {
            format!("{:.1}s", ms as f64 / 1000.0)
        }
    } else if ms < 3_600_000 {
        format!("{}m{:02}s", ms / 60_000, (ms % 60_000) / 1000)
    } else {
        format!("{}h{:02}m", ms / 3_600_000, (ms % 3_600_000) / 60_000)
    }
}

/// Check that `markdown` holds well-formed xychart blocks, as far as the
/// grammar goes: the fence, the front matter, the chart keyword, quoted
/// axis labels, a y range, and every series as long as the x axis with
/// numbers only. Returns, per chart, its title, its labels and its series
/// (`bar`/`line`, values). Used by the tests; the daemon never needs it.
#[doc(hidden)]
pub fn parse_charts(markdown: &str) -> Result<Vec<ParsedChart>, String> {
    let mut charts = Vec::new();
    let mut rest = markdown;
    while let Some(at) = rest.find("```mermaid\n") {
        let body = &rest[at + "```mermaid\n".len()..];
        let end = body.find("\n```").ok_or("an unclosed mermaid block")?;
        charts.push(parse_chart(&body[..end])?);
        rest = &body[end + 4..];
    }
    Ok(charts)
}

#[doc(hidden)]
#[derive(Debug)]
pub struct ParsedChart {
    pub title: String,
    pub labels: Vec<String>,
    pub top: f64,
    pub series: Vec<(String, Vec<f64>)>,
    pub palette: Vec<String>,
}

fn parse_chart(block: &str) -> Result<ParsedChart, String> {
    let mut lines = block.lines();
    if lines.next() != Some("---") {
        return Err("no front matter".into());
    }
    let mut palette = Vec::new();
    for line in lines.by_ref() {
        if line == "---" {
            break;
        }
        if let Some(p) = line.trim().strip_prefix("plotColorPalette: ") {
            palette = p
                .trim_matches('"')
                .split(", ")
                .map(|c| c.to_owned())
                .collect();
        }
    }
    if lines.next() != Some("xychart-beta") {
        return Err("no xychart-beta line after the front matter".into());
    }
    let mut chart = ParsedChart {
        title: String::new(),
        labels: Vec::new(),
        top: 0.0,
        series: Vec::new(),
        palette,
    };
    let values = |s: &str| -> Result<Vec<f64>, String> {
        let inner = s
            .strip_prefix('[')
            .and_then(|s| s.strip_suffix(']'))
            .ok_or_else(|| format!("not a [list]: {s}"))?;
        inner
            .split(", ")
            .map(|v| v.parse::<f64>().map_err(|e| format!("{v}: {e}")))
            .collect()
    };
    for line in lines {
        let line = line.trim();
        if let Some(t) = line.strip_prefix("title ") {
            chart.title = t.trim_matches('"').to_owned();
        } else if let Some(x) = line.strip_prefix("x-axis \"") {
            let (_, list) = x.split_once("\" ").ok_or("x-axis without labels")?;
            let inner = list
                .strip_prefix("[\"")
                .and_then(|s| s.strip_suffix("\"]"))
                .ok_or("x-axis labels not quoted")?;
            chart.labels = inner.split("\", \"").map(|l| l.to_owned()).collect();
            if chart.labels.iter().any(|l| l.contains('"')) {
                return Err("a quote inside an x-axis label".into());
            }
        } else if let Some(y) = line.strip_prefix("y-axis \"") {
            let (_, range) = y.split_once("\" ").ok_or("y-axis without range")?;
            let (lo, hi) = range.split_once(" --> ").ok_or("y-axis range")?;
            if lo != "0" {
                return Err(format!("y-axis starts at {lo}"));
            }
            chart.top = hi.parse().map_err(|e| format!("y-axis top {hi}: {e}"))?;
        } else if let Some((kind, list)) = line.split_once(' ') {
            if kind != "bar" && kind != "line" {
                return Err(format!("unknown statement: {line}"));
            }
            chart.series.push((kind.to_owned(), values(list)?));
        } else {
            return Err(format!("unknown statement: {line}"));
        }
    }
    if chart.labels.is_empty() || chart.labels.len() > MAX_POINTS {
        return Err(format!("{} x-axis labels", chart.labels.len()));
    }
    for (kind, v) in &chart.series {
        if v.len() != chart.labels.len() {
            return Err(format!(
                "a {kind} of {} points on {} labels",
                v.len(),
                chart.labels.len()
            ));
        }
        if v.iter()
            .any(|x| !x.is_finite() || *x < 0.0 || *x > chart.top)
        {
            return Err(format!("a {kind} outside 0..{}", chart.top));
        }
    }
    if chart.palette.len() != chart.series.len() {
        return Err("the palette does not name one color per series".into());
    }
    Ok(chart)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at_ms: Millis, color: Option<Color>, ok: bool, latency: f64) -> Sample {
        Sample::answer(at_ms, "healthz", color, ok, latency)
    }

    #[test]
    fn both_colors_and_the_marks_are_drawn_and_named() {
        let start = 1_700_000_000_000;
        let mut t = Timeline::new(start, start + 60_000);
        for i in 0..60 {
            let at = start + i * 1000;
            // Blue breaks at 20 s and answers slowly; green stays healthy.
            t.add(&sample(
                at,
                Some(Color::Blue),
                i < 20,
                if i < 20 { 5.0 } else { 250.0 },
            ));
            t.add(&sample(at + 500, Some(Color::Green), true, 4.0));
            // A shared probe judges no color: not drawn.
            t.add(&sample(at, None, false, 9999.0));
        }
        t.mark(start + 20_000, MarkKind::Fault);
        t.mark(start + 22_300, MarkKind::Decision);
        t.mark(start + 22_400, MarkKind::Switch);
        t.mark(start + 99_000, MarkKind::Switch); // outside: left out
        let md = t.markdown();
        let charts = parse_charts(&md).unwrap();
        assert_eq!(charts.len(), 2, "{md}");
        let (errors, latency) = (&charts[0], &charts[1]);
        assert_eq!(errors.title, "Error rate per color");
        assert_eq!(errors.labels.len(), 60);
        assert_eq!(errors.labels[20], "20s fault");
        assert_eq!(errors.labels[22], "22s decision+switch");
        assert_eq!(errors.palette, [MARK_COLOR, BLUE_COLOR, GREEN_COLOR]);
        let kinds: Vec<&str> = errors.series.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(kinds, ["bar", "line", "line"]);
        let bars = &errors.series[0].1;
        assert_eq!(bars[20], 100.0);
        assert_eq!(bars[22], 100.0);
        assert_eq!(bars.iter().filter(|b| **b > 0.0).count(), 2);
        let (blue, green) = (&errors.series[1].1, &errors.series[2].1);
        assert_eq!(blue[19], 0.0);
        assert_eq!(blue[20], 100.0);
        assert!(green.iter().all(|v| *v == 0.0));
        assert_eq!(latency.series[1].1[59], 250.0);
        assert_eq!(latency.series[2].1[0], 4.0);
        assert_eq!(latency.top, 500.0);
        assert!(
            md.contains("the blue line is blue; the green line is green"),
            "{md}"
        );
        assert!(md.contains("mark the fault at "), "{md}");
        assert!(!md.contains("9999"), "{md}");
    }

    #[test]
    fn a_long_period_is_downsampled_and_gaps_repeat_the_last_value() {
        let start = 0;
        let day = 86_400_000;
        let mut t = Timeline::new(start, start + day);
        for i in 0..10_000 {
            let at = i * (day / 20_000); // the first half of the day only
            t.add(&sample(at, Some(Color::Green), i % 4 != 0, 10.0));
        }
        let charts = parse_charts(&t.markdown()).unwrap();
        assert_eq!(charts[0].labels.len(), MAX_POINTS);
        assert_eq!(charts[0].labels[1], "24m00s");
        // Only green had samples: one line, no bars.
        assert_eq!(charts[0].series.len(), 1);
        assert_eq!(charts[0].palette, [GREEN_COLOR]);
        let green = &charts[0].series[0].1;
        assert!((green[0] - 25.0).abs() < 0.5, "{green:?}");
        // After noon nothing was sampled: the last value is carried.
        assert_eq!(green[MAX_POINTS - 1], green[MAX_POINTS / 2 - 1]);
        assert!(t.markdown().contains("blue had no sample"));
    }

    #[test]
    fn no_sample_no_chart() {
        let mut t = Timeline::new(0, 10_000);
        t.add(&sample(5_000, None, true, 1.0));
        assert_eq!(t.markdown(), "");
    }

    #[test]
    fn short_periods_get_one_second_points_and_labels_read_well() {
        let t = Timeline::new(0, 4_200);
        assert_eq!(t.slices.len(), 42);
        assert_eq!(offset_label(1_500), "1.5s");
        assert_eq!(offset_label(125_000), "2m05s");
        assert_eq!(number(12.345), "12.3");
        assert_eq!(number(f64::NAN), "0");
        assert_eq!(nice_top(0.4), 0.5);
        assert_eq!(nice_top(90.0), 100.0);
        assert_eq!(nice_top(0.0), 1.0);
    }

    #[test]
    fn the_checker_refuses_what_mermaid_would() {
        let good = "```mermaid\n---\nconfig:\n  themeVariables:\n    xyChart:\n      plotColorPalette: \"#000\"\n---\nxychart-beta\n  title \"t\"\n  x-axis \"x\" [\"a\", \"b\"]\n  y-axis \"y\" 0 --> 10\n  line [1, 2]\n```\n";
        assert!(parse_charts(good).is_ok());
        for bad in [
            good.replace("line [1, 2]", "line [1]"),
            good.replace("line [1, 2]", "line [1, NaN]"),
            good.replace("line [1, 2]", "line [1, 20]"),
            good.replace("xychart-beta", "xychart"),
            good.replace("[\"a\", \"b\"]", "[a, b]"),
        ] {
            assert!(parse_charts(&bad).is_err(), "{bad}");
        }
    }
}
