//! `access_log`: real user traffic, read from the proxy's access log as
//! lines land: one sample per request, judging the color that served it.
//!
//! A request failed when its status is >= 500, or 0 / 499 (the proxy gave
//! up on the upstream, or the client did while waiting for it); its latency
//! is the request time. The color comes from `{color}` in the file name
//! (one log per color) or from a field naming the upstream (`host:port`,
//! matched against each color's `base_url`; with retries, the last one
//! listed answered). Requests to the standby (a gate, a smoke test) judge
//! the standby. A line that does not parse is counted
//! ([`malformed_totals`], exported on `/metrics`) and skipped, never a
//! failed request; a line naming no configured color is ignored.
//!
//! The file is followed by `log`'s follower (rotation- and truncation-safe,
//! joined at its end). Unlike other probes this one is not run on an
//! interval: [`follow`] sends samples as the follower's watch reads new
//! lines (the interval is only a fallback poll, should a watch event be
//! missed). It owns the parsing and the follow loop; it does not decide
//! what an error rate means.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, watch};

use super::Outcome;
use super::log::{FollowedFile, OnRead, Sink};
use crate::config::{AccessLogCheck, AccessLogFormat, Colors, render};
use crate::model::{Color, SampleStatus};

/// Requests read but not yet sent; beyond this (a consumer that stopped)
/// the oldest wait and new ones are dropped and counted as malformed.
const PENDING_CAP: usize = 100_000;

static MALFORMED: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());

/// Lines skipped because they did not parse, per probe, since the process
/// started (for `/metrics`).
pub fn malformed_totals() -> Vec<(String, u64)> {
    let m = MALFORMED.lock().unwrap_or_else(|p| p.into_inner());
    m.iter().map(|(k, v)| (k.clone(), *v)).collect()
}

fn count_malformed(probe: &str, n: u64) {
    if n == 0 {
        return;
    }
    let mut m = MALFORMED.lock().unwrap_or_else(|p| p.into_inner());
    *m.entry(probe.to_owned()).or_default() += n;
}

/// One request as the log tells it.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub color: Color,
    pub status: u16,
    pub latency_ms: Option<f64>,
}

impl Request {
    /// >= 500, or 0 / 499 (no answer from the upstream).
    pub fn failed(&self) -> bool {
        self.status >= 500 || self.status == 0 || self.status == 499
    }

    pub fn outcome(&self) -> Outcome {
        let status = if self.failed() {
            SampleStatus::Failed
        } else {
            SampleStatus::Ok
        };
        // The request line is left out: a query string can carry a token.
        let detail = match self.latency_ms {
            Some(ms) => format!("request answered {} in {ms:.0} ms", self.status),
            None => format!("request answered {}", self.status),
        };
        Outcome {
            status,
            latency_ms: self.latency_ms,
            detail,
            requests: None,
            errors: None,
        }
    }
}

/// What one line said.
#[derive(Debug, Clone, PartialEq)]
pub enum Line {
    Request(Request),
    /// Parsed, but names no color (no upstream: `-`).
    Ignored,
    /// Parsed, naming an upstream that is no color's `base_url`.
    Unmatched(String),
    Malformed,
}

/// How to read lines of one log: the format, the fields, and which
/// upstream address is which color.
#[derive(Debug, Clone)]
pub struct Parser {
    format: AccessLogFormat,
    /// The color of every line (from `{color}` in the file name).
    fixed: Option<Color>,
    color_field: Option<String>,
    status_field: String,
    latency_field: String,
    upstreams: Vec<(String, Color)>,
}

impl Parser {
    pub fn new(check: &AccessLogCheck, colors: &Colors, fixed: Option<Color>) -> Parser {
        let mut upstreams = Vec::new();
        for c in Color::ALL {
            let Some(url) = colors.get(c).base_url.as_ref() else {
                continue;
            };
            let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
                continue;
            };
            upstreams.push((format!("{host}:{port}"), c));
            // nginx logs the address it connected to, not the name.
            if host == "localhost" {
                upstreams.push((format!("127.0.0.1:{port}"), c));
                upstreams.push((format!("[::1]:{port}"), c));
            }
        }
        Parser {
            format: check.format,
            fixed,
            color_field: check.color_field.clone(),
            status_field: check.status_field.clone(),
            latency_field: check.latency_field.clone(),
            upstreams,
        }
    }

    pub fn parse(&self, line: &[u8]) -> Line {
        if line.iter().all(u8::is_ascii_whitespace) {
            return Line::Ignored;
        }
        let parsed = match self.format {
            AccessLogFormat::Json => self.parse_json(line),
            AccessLogFormat::Combined => parse_combined(line).map(|(s, l)| (s, l, None)),
        };
        let Some((status, latency_ms, upstream)) = parsed else {
            return Line::Malformed;
        };
        let color = match (self.fixed, upstream) {
            (Some(c), _) => c,
            (None, Some(addr)) => match self.color_of(&addr) {
                Some(c) => c,
                None if addr.trim().is_empty() || addr.trim() == "-" => return Line::Ignored,
                None => return Line::Unmatched(addr),
            },
            (None, None) => return Line::Ignored,
        };
        Line::Request(Request {
            color,
            status,
            latency_ms,
        })
    }

    /// The upstream that answered: with retries nginx lists them all
    /// (`a:1, b:2`, or `a:1 : b:2` across an internal redirect); the last
    /// one is the one whose answer was served.
    fn color_of(&self, field: &str) -> Option<Color> {
        let last = field
            .rsplit([',', ' '])
            .map(str::trim)
            .find(|s| !s.is_empty() && *s != ":")?;
        self.upstreams
            .iter()
            .find(|(addr, _)| addr == last)
            .map(|(_, c)| *c)
    }

    fn parse_json(&self, line: &[u8]) -> Option<(u16, Option<f64>, Option<String>)> {
        let v: serde_json::Value = serde_json::from_slice(line).ok()?;
        let obj = v.as_object()?;
        let status = number(obj.get(&self.status_field)?)?;
        if !(0.0..1000.0).contains(&status) || status.fract() != 0.0 {
            return None;
        }
        let latency = number(obj.get(&self.latency_field)?)?;
        if latency < 0.0 {
            return None;
        }
        let upstream = match &self.color_field {
            Some(f) => obj.get(f).and_then(|v| v.as_str()).map(str::to_owned),
            None => None,
        };
        Some((status as u16, Some(latency * 1000.0), upstream))
    }
}

/// A JSON number, or a string holding one (nginx's `escape=json` writes
/// every variable as a string).
fn number(v: &serde_json::Value) -> Option<f64> {
    match v {
        serde_json::Value::Number(n) => n.as_f64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .filter(|f: &f64| f.is_finite())
}

/// `addr - user [time] "request" status bytes "referer" "agent" request_time`:
/// the status is the first field after the quoted request, the request time
/// the last field of the line.
pub fn parse_combined(line: &[u8]) -> Option<(u16, Option<f64>)> {
    let text = std::str::from_utf8(line).ok()?.trim_end();
    let open = text.find("] \"")? + 3;
    let rest = &text[open..];
    // nginx escapes a quote inside the request as \x22; Apache as \".
    let mut close = None;
    let mut escaped = false;
    for (i, ch) in rest.char_indices() {
        match ch {
            '\\' if !escaped => escaped = true,
            '"' if !escaped => {
                close = Some(i);
                break;
            }
            _ => escaped = false,
        }
    }
    let after = &rest[close? + 1..];
    let status: u16 = after.split_whitespace().next()?.parse().ok()?;
    if status >= 1000 {
        return None;
    }
    let latency: f64 = text.rsplit(' ').next()?.parse().ok()?;
    if latency < 0.0 || !latency.is_finite() {
        return None;
    }
    Some((status, Some(latency * 1000.0)))
}

/// The follower's sink: parsed requests waiting to be sent.
pub struct Requests {
    parser: Parser,
    pending: Vec<Request>,
    malformed: u64,
    /// Upstreams seen that are no color (a few, for one warning each).
    unmatched: Vec<String>,
}

/// How many distinct unknown upstreams are reported.
const UNMATCHED_REPORTED: usize = 8;

impl Sink for Requests {
    fn line(&mut self, line: &[u8]) {
        match self.parser.parse(line) {
            Line::Request(r) if self.pending.len() < PENDING_CAP => self.pending.push(r),
            Line::Request(_) | Line::Malformed => self.malformed += 1,
            Line::Unmatched(addr) => {
                if self.unmatched.len() < UNMATCHED_REPORTED && !self.unmatched.contains(&addr) {
                    self.unmatched.push(addr);
                }
            }
            Line::Ignored => {}
        }
    }
}

/// Start following `check`'s log (for `fixed`'s file when the name has
/// `{color}`), and until `stop`: hand every request to `emit` as its line
/// lands. `emit` returning false (the daemon is gone) ends it.
pub async fn follow<E, EF>(
    probe: &str,
    check: &AccessLogCheck,
    colors: &Colors,
    fixed: Option<Color>,
    poll: Duration,
    mut emit: E,
    mut stop: watch::Receiver<bool>,
) where
    E: FnMut(Color, Outcome) -> EF,
    EF: Future<Output = bool>,
{
    let path = PathBuf::from(render(
        &check.file,
        &[("color", fixed.map(Color::as_str).unwrap_or(""))],
    ));
    let sink = Requests {
        parser: Parser::new(check, colors, fixed),
        pending: Vec::new(),
        malformed: 0,
        unmatched: Vec::new(),
    };
    let wake = Arc::new(Notify::new());
    let on_read: OnRead = {
        let wake = wake.clone();
        Arc::new(move || wake.notify_one())
    };
    // Joining reads the file's size; opening may block: off the async threads.
    let opened =
        tokio::task::spawn_blocking(move || FollowedFile::with_sink(path, sink, Some(on_read)))
            .await;
    let followed = match opened {
        Ok(f) => Arc::new(f),
        Err(e) => {
            tracing::error!(rollbackd.probe = probe, "cannot follow the access log: {e}");
            return;
        }
    };
    let mut ticker = tokio::time::interval(poll.max(Duration::from_millis(100)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last_problem: Option<super::log::Problem> = None;
    let mut reported: Vec<String> = Vec::new();
    loop {
        tokio::select! {
            _ = wake.notified() => {}
            _ = ticker.tick() => {}
            _ = stop.changed() => return,
        }
        let f = followed.clone();
        let taken = tokio::task::spawn_blocking(move || {
            f.take_with(|s| {
                (
                    std::mem::take(&mut s.pending),
                    std::mem::take(&mut s.malformed),
                    s.unmatched.clone(),
                )
            })
        })
        .await;
        let ((requests, malformed, unmatched), problem) = match taken {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(rollbackd.probe = probe, "access log follower failed: {e}");
                continue;
            }
        };
        count_malformed(probe, malformed);
        for addr in unmatched {
            if !reported.contains(&addr) {
                // Once per address: a base_url written as a name the proxy
                // logs as an address would otherwise judge nothing, silently.
                tracing::warn!(
                    rollbackd.probe = probe,
                    "access log names upstream {addr:?}, which is no color's base_url host:port: its requests are ignored"
                );
                reported.push(addr);
            }
        }
        if problem != last_problem {
            if let Some(p) = &problem {
                // Not a failed sample: a log we cannot read says nothing
                // about the service.
                tracing::warn!(rollbackd.probe = probe, "access log: {p}");
            }
            last_problem = problem;
        }
        for r in requests {
            if !emit(r.color, r.outcome()).await {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ColorTarget;

    fn colors() -> Colors {
        Colors {
            blue: ColorTarget {
                base_url: Some("http://127.0.0.1:8081".parse().unwrap()),
            },
            green: ColorTarget {
                base_url: Some("http://127.0.0.1:8082/app/".parse().unwrap()),
            },
        }
    }

    fn json_check() -> AccessLogCheck {
        AccessLogCheck {
            file: "/x/access.log".into(),
            format: AccessLogFormat::Json,
            color_field: Some("upstream_addr".into()),
            status_field: "status".into(),
            latency_field: "request_time".into(),
        }
    }

    fn req(color: Color, status: u16, ms: f64) -> Line {
        Line::Request(Request {
            color,
            status,
            latency_ms: Some(ms),
        })
    }

    #[test]
    fn json_lines_name_their_color_by_upstream() {
        let p = Parser::new(&json_check(), &colors(), None);
        let line = |s: &str| p.parse(s.as_bytes());
        assert_eq!(
            line(r#"{"status":"200","request_time":"0.012","upstream_addr":"127.0.0.1:8081"}"#),
            req(Color::Blue, 200, 12.0)
        );
        assert_eq!(
            line(
                r#"{"status":502,"request_time":0.5,"upstream_addr":"127.0.0.1:8081, 127.0.0.1:8082"}"#
            ),
            req(Color::Green, 502, 500.0),
            "the last upstream tried is the one that answered"
        );
        assert_eq!(
            line(
                r#"{"status":"499","request_time":"1.000","upstream_addr":"127.0.0.1:8082 : 127.0.0.1:8082"}"#
            ),
            req(Color::Green, 499, 1000.0)
        );
        assert_eq!(
            line(r#"{"status":"200","request_time":"0.1","upstream_addr":"127.0.0.1:9999"}"#),
            Line::Unmatched("127.0.0.1:9999".into())
        );
        for ignored in [
            r#"{"status":"404","request_time":"0.0","upstream_addr":"-"}"#,
            r#"{"status":"200","request_time":"0.0"}"#,
            "",
        ] {
            assert_eq!(line(ignored), Line::Ignored, "{ignored}");
        }
        for bad in [
            "not json",
            r#"{"status":"abc","request_time":"0.1","upstream_addr":"127.0.0.1:8081"}"#,
            r#"{"request_time":"0.1","upstream_addr":"127.0.0.1:8081"}"#,
            r#"{"status":"200","upstream_addr":"127.0.0.1:8081"}"#,
            r#"{"status":"200","request_time":"-1","upstream_addr":"127.0.0.1:8081"}"#,
            r#"["status"]"#,
        ] {
            assert_eq!(line(bad), Line::Malformed, "{bad}");
        }
    }

    #[test]
    fn a_localhost_base_url_matches_the_address_nginx_logs() {
        let mut c = colors();
        c.blue.base_url = Some("http://localhost:8083".parse().unwrap());
        let p = Parser::new(&json_check(), &c, None);
        for addr in ["localhost:8083", "127.0.0.1:8083", "[::1]:8083"] {
            let line =
                format!(r#"{{"status":"200","request_time":"0.001","upstream_addr":"{addr}"}}"#);
            assert_eq!(
                p.parse(line.as_bytes()),
                req(Color::Blue, 200, 1.0),
                "{addr}"
            );
        }
    }

    #[test]
    fn field_names_are_configurable() {
        let mut check = json_check();
        check.color_field = Some("up".into());
        check.status_field = "code".into();
        check.latency_field = "rt".into();
        let p = Parser::new(&check, &colors(), None);
        assert_eq!(
            p.parse(br#"{"code":"503","rt":"0.250","up":"127.0.0.1:8082"}"#),
            req(Color::Green, 503, 250.0)
        );
    }

    #[test]
    fn combined_lines_with_request_time_last() {
        let mut check = json_check();
        check.format = AccessLogFormat::Combined;
        check.color_field = None;
        let p = Parser::new(&check, &colors(), Some(Color::Blue));
        let ok = br#"127.0.0.1 - - [25/Nov/2026:17:00:00 +0000] "GET /a?q=\x22x\x22 HTTP/1.1" 200 12 "-" "curl/8.0" 0.004"#;
        assert_eq!(p.parse(ok), req(Color::Blue, 200, 4.0));
        let quoted = br#"::1 - bob [25/Nov/2026:17:00:00 +0000] "GET /\"odd\" HTTP/1.1" 504 0 "-" "x y" 60.001"#;
        assert_eq!(p.parse(quoted), req(Color::Blue, 504, 60001.0));
        let missing_time =
            br#"127.0.0.1 - - [25/Nov/2026:17:00:00 +0000] "GET / HTTP/1.1" 200 12 "-" "curl/8.0""#;
        assert_eq!(p.parse(missing_time), Line::Malformed);
        assert_eq!(p.parse(b"garbage"), Line::Malformed);
    }

    #[test]
    fn failed_requests_are_5xx_0_and_499() {
        for (status, failed) in [
            (200, false),
            (404, false),
            (429, false),
            (499, true),
            (0, true),
            (500, true),
            (502, true),
            (504, true),
        ] {
            let r = Request {
                color: Color::Blue,
                status,
                latency_ms: None,
            };
            assert_eq!(r.failed(), failed, "{status}");
            assert_eq!(r.outcome().is_ok(), !failed);
        }
    }

    /// Lines written after following starts come out as samples, promptly
    /// (woken by the watch, well before the 1 h fallback poll), malformed
    /// lines are counted, and a rotation loses nothing.
    #[tokio::test]
    async fn follows_lines_as_they_land_across_a_rotation() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        std::fs::write(
            &path,
            "{\"status\":\"500\",\"request_time\":\"0\",\"upstream_addr\":\"127.0.0.1:8081\"}\n",
        )
        .unwrap();
        let mut check = json_check();
        check.file = path.display().to_string();
        let (tx, mut rx) = tokio::sync::mpsc::channel(100);
        let (stop_tx, stop_rx) = watch::channel(false);
        let colors = colors();
        let task = tokio::spawn(async move {
            follow(
                "users-test-follow",
                &check,
                &colors,
                None,
                Duration::from_secs(3600),
                |c, o| {
                    let tx = tx.clone();
                    async move { tx.send((c, o)).await.is_ok() }
                },
                stop_rx,
            )
            .await
        });
        let append = |text: &str| {
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(&path)
                .unwrap();
            f.write_all(text.as_bytes()).unwrap();
        };
        let recv = async |rx: &mut tokio::sync::mpsc::Receiver<(Color, Outcome)>| {
            tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .expect("a sample within 10 s")
                .unwrap()
        };
        // The follower joins at the end; wait until it has (a line written
        // before could be history). Poll with a deadline.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            append(
                "{\"status\":\"200\",\"request_time\":\"0.001\",\"upstream_addr\":\"127.0.0.1:8082\"}\n",
            );
            if let Ok(Some((c, o))) =
                tokio::time::timeout(Duration::from_millis(200), rx.recv()).await
            {
                assert_eq!((c, o.is_ok()), (Color::Green, true));
                break;
            }
            assert!(std::time::Instant::now() < deadline, "never joined");
        }
        while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await {}
        let before = malformed_totals()
            .into_iter()
            .find(|(p, _)| p == "users-test-follow")
            .map(|(_, n)| n)
            .unwrap_or(0);
        append(
            "garbage\n{\"status\":\"502\",\"request_time\":\"0.030\",\"upstream_addr\":\"127.0.0.1:8081\"}\n",
        );
        let (c, o) = recv(&mut rx).await;
        assert_eq!(
            (c, o.status, o.latency_ms),
            (Color::Blue, SampleStatus::Failed, Some(30.0))
        );
        std::fs::rename(&path, dir.path().join("access.log.1")).unwrap();
        append(
            "{\"status\":\"503\",\"request_time\":\"0.002\",\"upstream_addr\":\"127.0.0.1:8081\"}\n",
        );
        let (c, o) = recv(&mut rx).await;
        assert_eq!((c, o.status), (Color::Blue, SampleStatus::Failed));
        let after = malformed_totals()
            .into_iter()
            .find(|(p, _)| p == "users-test-follow")
            .map(|(_, n)| n)
            .unwrap_or(0);
        assert_eq!(after - before, 1);
        stop_tx.send(true).unwrap();
        task.await.unwrap();
    }
}
