//! `http`: one request per run. Ok when the status is expected, the body
//! holds `body_contains` / matches `body_regex`, and every `expect_headers`
//! header is present. Latency runs from the request's start to the last body
//! byte read. The body read stops at [`BODY_CAP`], so a target streaming
//! gigabytes cannot bloat the daemon, and the probe's timeout bounds one
//! that dribbles bytes. Redirects are not followed unless asked; when they
//! are, they are followed here, hop by hop (at most [`MAX_REDIRECTS`]), and
//! the configured `headers` (secrets, often) go only to the probe's own
//! origin, never to another one a `Location` names.

use std::time::{Duration, Instant};

use std::sync::Arc;

use super::{Outcome, h1};
use crate::config::HttpCheck;
use crate::model::SampleStatus;

/// How much of a body is read and kept for matching.
pub const BODY_CAP: usize = 64 * 1024;
/// Redirects followed (with `follow_redirects`) before the answer is taken
/// as it is.
pub const MAX_REDIRECTS: usize = 5;

#[derive(Clone)]
pub struct Clients {
    /// Follows nothing by itself: redirects are followed in [`Clients::run`],
    /// which decides which hop gets the configured headers.
    no_redirects: reqwest::Client,
    /// The lean HTTP/1.1 client ([`super::h1`]) for `http://` hops; `None`
    /// when the environment names an HTTP proxy, which reqwest honours
    /// and it does not.
    lean: Option<Arc<h1::Pool>>,
}

fn builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .user_agent(concat!("rollbackd/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(10))
        // As many kept-alive connections as the probes one host serves at
        // once (they share a beat: all of a color's probes ask together).
        .pool_max_idle_per_host(h1::MAX_IDLE_PER_AUTHORITY)
        .pool_idle_timeout(h1::IDLE_TIMEOUT)
}

/// Whether reqwest would send `http://` requests through a proxy named in
/// the environment (it reads these variables; `NO_PROXY` is not weighed:
/// with a proxy named at all, every http probe stays on reqwest).
fn proxy_in_env() -> bool {
    ["ALL_PROXY", "all_proxy", "HTTP_PROXY", "http_proxy"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|v| !v.is_empty()))
}

/// One hop's answer, from either client.
enum Answer<'p, 'c> {
    Lean(h1::Answer<'p, 'c>),
    Full(reqwest::Response),
}

impl Answer<'_, '_> {
    fn code(&self) -> u16 {
        match self {
            Answer::Lean(a) => a.code(),
            Answer::Full(r) => r.status().as_u16(),
        }
    }

    fn location(&self) -> Option<&str> {
        match self {
            Answer::Lean(a) => a.location(),
            Answer::Full(r) => r
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|l| l.to_str().ok()),
        }
    }

    /// The body up to `cap`, and whether it was longer; or why it was cut
    /// short, in words.
    async fn body(self, cap: usize) -> Result<(Vec<u8>, bool), String> {
        match self {
            Answer::Lean(a) => a.body(cap).await.map_err(|e| describe(&e)),
            Answer::Full(mut r) => read_capped(&mut r, cap)
                .await
                .map_err(|e| describe_error(&e)),
        }
    }
}

impl Clients {
    pub fn new() -> Clients {
        Clients::with_lean(!proxy_in_env())
    }

    /// With or without the lean client for `http://` hops.
    pub(crate) fn with_lean(lean: bool) -> Clients {
        let build = |b: reqwest::ClientBuilder| {
            // Building fails only when the TLS backend cannot initialise, which
            // with rustls and bundled roots does not happen at run time; fall
            // back to the default client rather than abort the daemon.
            b.build().unwrap_or_default()
        };
        Clients {
            no_redirects: build(builder().redirect(reqwest::redirect::Policy::none())),
            lean: lean.then(Arc::default),
        }
    }

    /// The client that follows no redirect: scrapes use it.
    pub fn plain(&self) -> &reqwest::Client {
        &self.no_redirects
    }

    /// The lean client, when it can ask `url`: plain `http://` without a
    /// user or password (reqwest turns those into basic auth).
    fn lean_for(&self, url: &url::Url) -> Option<&h1::Pool> {
        self.lean.as_deref().filter(|_| {
            url.scheme() == "http" && url.username().is_empty() && url.password().is_none()
        })
    }

    #[cfg(test)]
    pub(crate) fn lean_pool(&self) -> Option<&h1::Pool> {
        self.lean.as_deref()
    }

    /// One hop's request, through the lean client when it can ask `url`,
    /// else reqwest; a failure as its status and one line.
    async fn send_hop<'c>(
        &self,
        method: &reqwest::Method,
        url: &url::Url,
        headers: &[(&str, &str)],
        expect_headers: &'c [String],
    ) -> Result<Answer<'_, 'c>, (SampleStatus, String)> {
        if let Some(pool) = self.lean_for(url) {
            let request = h1::Request {
                method: method.as_str(),
                url,
                headers,
            };
            return pool
                .send(&request, expect_headers)
                .await
                .map(Answer::Lean)
                .map_err(|e| (e.status(), describe(&e)));
        }
        let mut request = self.no_redirects.request(method.clone(), url.clone());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request
            .send()
            .await
            .map(Answer::Full)
            .map_err(|e| (classify(&e), describe_error(&e)))
    }

    /// One request to `url` (the probe's endpoint on its color, resolved
    /// by the caller: [`super::http_url`]).
    pub async fn run(&self, check: &HttpCheck, url: Option<&url::Url>) -> Outcome {
        let Some(url) = url.cloned() else {
            return Outcome::unreachable(None, "no URL for this color (missing base_url)");
        };
        let mut headers = Vec::with_capacity(check.headers.len());
        for (name, value) in &check.headers {
            match value.expose() {
                Ok(v) => headers.push((name.as_str(), v)),
                Err(problem) => {
                    return Outcome::unreachable(None, format!("header {name}: {problem}"));
                }
            }
        }
        let origin = url.origin();
        let (mut url, mut method) = (url, check.method.clone());
        let started = Instant::now();
        let mut hops = 0;
        let response = loop {
            // Configured headers go only to the probe's own origin.
            let hop_headers = if url.origin() == origin {
                &headers[..]
            } else {
                &[]
            };
            let answer = match self
                .send_hop(&method, &url, hop_headers, &check.expect_headers)
                .await
            {
                Ok(answer) => answer,
                Err((status, why)) => {
                    return Outcome::failure(status, Some(started.elapsed()), why);
                }
            };
            let next = answer.location().and_then(|l| url.join(l).ok());
            let code = answer.code();
            match next {
                Some(next)
                    if check.follow_redirects
                        && (300..400).contains(&code)
                        && hops < MAX_REDIRECTS
                        && matches!(next.scheme(), "http" | "https") =>
                {
                    // As browsers do: 303, and 301/302 after a POST, become
                    // a GET.
                    if code == 303 || (method == reqwest::Method::POST && matches!(code, 301 | 302))
                    {
                        method = reqwest::Method::GET;
                    }
                    hops += 1;
                    // This hop's answer is dropped unread (its connection
                    // closed) before the next hop.
                    drop(answer);
                    url = next;
                }
                _ => break answer,
            }
        };
        let code = response.code();
        let missing_headers: Vec<&str> = match &response {
            Answer::Lean(a) => a.missing().to_vec(),
            Answer::Full(r) => check
                .expect_headers
                .iter()
                .filter(|h| !r.headers().contains_key(h.as_str()))
                .map(String::as_str)
                .collect(),
        };
        let (body, truncated) = match response.body(BODY_CAP).await {
            Ok(read) => read,
            Err(e) => {
                return Outcome::failed(
                    Some(started.elapsed()),
                    format!("HTTP {code}: body cut short: {e}"),
                );
            }
        };
        let latency = started.elapsed();
        if !check.expect_status.iter().any(|r| r.contains(&code)) {
            return Outcome::failed(Some(latency), format!("HTTP {code}: unexpected status"));
        }
        let text = String::from_utf8_lossy(&body);
        if let Some(needle) = &check.body_contains {
            if !text.contains(needle.as_str()) {
                let scope = if truncated {
                    " in the first 64 KiB"
                } else {
                    ""
                };
                return Outcome::failed(
                    Some(latency),
                    format!("HTTP {code}: body does not contain {needle:?}{scope}"),
                );
            }
        }
        if let Some(re) = &check.body_regex {
            if !re.is_match(&text) {
                return Outcome::failed(
                    Some(latency),
                    format!("HTTP {code}: body does not match /{re}/"),
                );
            }
        }
        if !missing_headers.is_empty() {
            return Outcome::failed(
                Some(latency),
                format!(
                    "HTTP {code}: missing header(s) {}",
                    missing_headers.join(", ")
                ),
            );
        }
        Outcome::ok(latency, format!("HTTP {code}"))
    }
}

impl Default for Clients {
    fn default() -> Self {
        Clients::new()
    }
}

/// Read a response body up to `cap` bytes; the rest is never read (the
/// connection is dropped with the response). Returns the bytes and whether
/// the body was longer than the cap.
pub async fn read_capped(
    response: &mut reqwest::Response,
    cap: usize,
) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = cap - body.len();
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            return Ok((body, true));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, false))
}

/// Whether a failed request got an answer (see [`super::io_status`]): a
/// timeout is a timeout; a name that does not resolve got none; otherwise
/// the innermost system call's error decides; any other error (a TLS
/// certificate we reject, the peer closing mid-answer or speaking bad HTTP)
/// is the target's answer.
pub fn classify(e: &reqwest::Error) -> SampleStatus {
    if e.is_timeout() {
        return SampleStatus::Timeout;
    }
    let mut source: Option<&dyn std::error::Error> = Some(e);
    let mut io = None;
    while let Some(s) = source {
        if s.to_string().starts_with("dns error") {
            return SampleStatus::Unreachable;
        }
        if let Some(found) = s.downcast_ref::<std::io::Error>() {
            io = Some(found);
        }
        source = s.source();
    }
    match io {
        // A system call's error: refused, reset, unreachable, EMFILE.
        Some(io) if io.raw_os_error().is_some() => super::io_status(io),
        Some(io) if io.kind() == std::io::ErrorKind::TimedOut => SampleStatus::Timeout,
        // A library's verdict on what the peer sent (TLS: a certificate
        // we do not trust), or no I/O error at all: an answer.
        _ => SampleStatus::Failed,
    }
}

/// Whether the request failed for want of the watchdog's own resources
/// (out of descriptors: EMFILE, ENFILE; out of memory), not anything the
/// service did.
pub fn own_resource_error(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if matches!(
                io.raw_os_error(),
                Some(
                    libc_errno::EMFILE
                        | libc_errno::ENFILE
                        | libc_errno::ENOMEM
                        | libc_errno::ENOBUFS
                )
            ) {
                return true;
            }
        }
        source = s.source();
    }
    false
}

/// The errno values of [`own_resource_error`].
mod libc_errno {
    pub const EMFILE: i32 = nix::errno::Errno::EMFILE as i32;
    pub const ENFILE: i32 = nix::errno::Errno::ENFILE as i32;
    pub const ENOMEM: i32 = nix::errno::Errno::ENOMEM as i32;
    pub const ENOBUFS: i32 = nix::errno::Errno::ENOBUFS as i32;
}

/// The lean client's error in one line, in the words [`describe_error`]
/// uses.
fn describe(e: &h1::Error) -> String {
    let kind = if e.is_connect() {
        "connect failed"
    } else {
        "request failed"
    };
    one_line(kind, e, Some(e))
}

/// reqwest's errors nest the useful cause (connection refused, reset) deep
/// in the source chain; flatten it to one line.
pub fn describe_error(e: &reqwest::Error) -> String {
    let kind = if e.is_connect() {
        "connect failed"
    } else if e.is_timeout() {
        "timed out"
    } else {
        "request failed"
    };
    one_line(kind, e, std::error::Error::source(e))
}

/// `kind`, marked as the watchdog's own failure when `e` is one (it could
/// not ask: not the service's failure), then `chain` and its sources, each
/// after a colon.
fn one_line(
    kind: &str,
    e: &(dyn std::error::Error + 'static),
    chain: Option<&dyn std::error::Error>,
) -> String {
    let mut text = if own_resource_error(e) {
        format!("rollbackd's own resource error, not the service's: {kind}")
    } else {
        kind.to_owned()
    };
    let mut source = chain;
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error chain like reqwest's: a connect error caused by an io error.
    #[derive(Debug)]
    struct Connect(std::io::Error);
    impl std::fmt::Display for Connect {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("connect failed")
        }
    }
    impl std::error::Error for Connect {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn out_of_descriptors_is_the_watchdogs_own_error_and_a_refusal_is_not() {
        let emfile = Connect(std::io::Error::from_raw_os_error(
            nix::errno::Errno::EMFILE as i32,
        ));
        assert!(own_resource_error(&emfile));
        let refused = Connect(std::io::Error::from_raw_os_error(
            nix::errno::Errno::ECONNREFUSED as i32,
        ));
        assert!(!own_resource_error(&refused));
        assert_eq!(
            super::super::io_status(&std::io::Error::from_raw_os_error(
                nix::errno::Errno::EMFILE as i32
            )),
            SampleStatus::Unreachable,
            "nobody was asked: not a failure of the service"
        );
    }
}
