//! The Prometheus text exposition format (0.0.4, and the sample lines of
//! OpenMetrics 1.0), parsed into flat samples: metric name, labels, value.
//!
//! Written against the format's specification rather than taken from the
//! `prometheus-parse` crate, which splits label sets on `,` and `=` and so
//! cut label values containing them (`path="/a,b=c"` came out as `/a`) and
//! did not unescape `\"`, `\\` and `\n`. Here a label value is read as the
//! quoted, escaped string the spec defines, so every value survives.
//!
//! `# HELP`/`# TYPE` lines and comments are skipped: the prometheus probe
//! finds a histogram by its `_bucket`/`_sum`/`_count` series, which every
//! client writes whatever the TYPE line says. A timestamp, and an
//! OpenMetrics exemplar (`# {...} v`), after the value are ignored. A line
//! that breaks the grammar fails the whole page (as in Prometheus), naming
//! the line.

use std::collections::HashMap;

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub metric: String,
    pub labels: HashMap<String, String>,
    pub value: f64,
}

/// Every sample line of `text`, in order.
pub fn parse(text: &str) -> Result<Vec<Sample>, String> {
    parse_capped(text, usize::MAX)
}

/// [`parse`], refusing a page of more than `max_series` samples (memory is
/// bounded by series as well as by bytes: a page of short lines can hold a
/// hundred thousand).
pub fn parse_capped(text: &str, max_series: usize) -> Result<Vec<Sample>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_matches([' ', '\t', '\r']);
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if out.len() >= max_series {
            return Err(format!(
                "more than {max_series} series, over the cap of {max_series}"
            ));
        }
        out.push(parse_line(line).map_err(|e| format!("line {}: {e}", i + 1))?);
    }
    Ok(out)
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

fn parse_line(line: &str) -> Result<Sample, String> {
    let name_end = line.find(|c: char| !is_name_char(c)).unwrap_or(line.len());
    let metric = &line[..name_end];
    if !metric.chars().next().is_some_and(is_name_start) {
        return Err(format!("expected a metric name at the start of {line:?}"));
    }
    let mut rest = line[name_end..].trim_start_matches([' ', '\t']);
    let mut labels = HashMap::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = parse_labels(after, &mut labels)?;
    }
    let mut fields = rest.split_ascii_whitespace();
    let value = fields
        .next()
        .ok_or_else(|| format!("no value for {metric}"))?;
    let value = parse_value(value).ok_or_else(|| format!("{value:?} is not a sample value"))?;
    // The rest: an optional timestamp, then an optional exemplar.
    if let Some(ts) = fields.next() {
        if ts != "#" && ts.parse::<f64>().is_err() {
            return Err(format!("unexpected {ts:?} after the value of {metric}"));
        }
    }
    Ok(Sample {
        metric: metric.to_owned(),
        labels,
        value,
    })
}

/// `name="value",...}` (after the `{`): the labels, and what follows `}`.
fn parse_labels<'a>(
    mut s: &'a str,
    labels: &mut HashMap<String, String>,
) -> Result<&'a str, String> {
    loop {
        s = s.trim_start_matches([' ', '\t']);
        if let Some(after) = s.strip_prefix('}') {
            return Ok(after);
        }
        let end = s.find(|c: char| !is_name_char(c)).unwrap_or(s.len());
        let name = &s[..end];
        if !name.chars().next().is_some_and(is_name_start) {
            return Err(format!("expected a label name at {s:?}"));
        }
        s = s[end..].trim_start_matches([' ', '\t']);
        s = s
            .strip_prefix('=')
            .ok_or_else(|| format!("expected '=' after label {name}"))?
            .trim_start_matches([' ', '\t']);
        s = s
            .strip_prefix('"')
            .ok_or_else(|| format!("expected a quoted value for label {name}"))?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let close = loop {
            match chars.next() {
                None => return Err(format!("unterminated value of label {name}")),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    // Not an escape the spec defines: keep it as written.
                    Some((_, other)) => {
                        value.push('\\');
                        value.push(other);
                    }
                    None => return Err(format!("unterminated value of label {name}")),
                },
                Some((_, c)) => value.push(c),
            }
        };
        labels.insert(name.to_owned(), value);
        s = s[close + 1..].trim_start_matches([' ', '\t']);
        if let Some(after) = s.strip_prefix(',') {
            s = after;
        } else if !s.starts_with('}') {
            return Err(format!("expected ',' or '}}' after label {name}"));
        }
    }
}

fn parse_value(text: &str) -> Option<f64> {
    match text {
        "+Inf" | "Inf" | "+inf" | "inf" => Some(f64::INFINITY),
        "-Inf" | "-inf" => Some(f64::NEG_INFINITY),
        "NaN" | "nan" => Some(f64::NAN),
        t => t.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_keep_commas_equals_quotes_backslashes_and_newlines() {
        let text = "# HELP x y\n# TYPE http_requests_total counter\n\
                    http_requests_total{code=\"200\",path=\"/a,b=\\\"c\\\"\\\\d=e\"} 5.0\n\
                    http_requests_total{path=\"/x\\ny\" , code=\"503\",} 2 1700000000000\n\
                    up 1\n\
                    h_bucket{le=\"+Inf\"} 3 # {trace_id=\"abc\"} 0.5\n";
        let s = parse(text).unwrap();
        assert_eq!(s.len(), 4);
        assert_eq!(s[0].labels["path"], "/a,b=\"c\"\\d=e");
        assert_eq!(s[0].labels["code"], "200");
        assert_eq!(s[1].labels["path"], "/x\ny");
        assert_eq!((s[1].labels["code"].as_str(), s[1].value), ("503", 2.0));
        assert_eq!((s[2].metric.as_str(), s[2].labels.len()), ("up", 0));
        assert_eq!(s[3].labels["le"], "+Inf");
    }

    #[test]
    fn broken_lines_are_errors_that_name_the_line() {
        for (text, needle) in [
            ("ok 1\nx{a=\"1} 2\n", "line 2: unterminated"),
            ("x{a=1} 2", "quoted value"),
            ("x{a=\"1\" b=\"2\"} 2", "expected ','"),
            ("x 1 2 3", ""),
            ("x abc", "not a sample value"),
            ("9x 1", "metric name"),
            ("x", "no value"),
        ] {
            match parse(text) {
                Err(e) => assert!(e.contains(needle), "{text}: {e}"),
                Ok(s) if needle.is_empty() => assert_eq!(s[0].value, 1.0),
                Ok(s) => panic!("{text}: parsed {s:?}"),
            }
        }
    }
}
