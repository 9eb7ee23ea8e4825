//! The lean client against small servers written here, on 127.0.0.1:0:
//! what each answer looks like on the wire, and how many connections the
//! server accepted.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;
use crate::config::{Endpoint, HttpCheck, secret::Secret};
use crate::probe::http::{BODY_CAP, Clients};
use crate::probe::{Outcome, io_status};

/// What the server does with one request.
enum Reply {
    /// Write these bytes and wait for the next request.
    Answer(Vec<u8>),
    /// Write these bytes, then close the connection.
    AnswerClose(Vec<u8>),
    /// Write these pieces a little apart, and wait for the next request.
    Pieces(Vec<Vec<u8>>),
    /// Close without answering.
    Close,
    /// Write these bytes, then (after the client read them) reset.
    AnswerReset(Vec<u8>),
}

type Replies = dyn Fn(usize, usize, &str) -> Reply + Send + Sync;

struct Server {
    url: url::Url,
    accepts: Arc<AtomicUsize>,
    /// Every request head received, in order.
    heads: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn accepts(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }
}

/// A server whose `reply(connection, request on it, head)` decides each
/// answer (connections and requests counted from 0).
async fn server(
    path: &str,
    reply: impl Fn(usize, usize, &str) -> Reply + Send + Sync + 'static,
) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = url::Url::parse(&format!("http://{}{path}", listener.local_addr().unwrap())).unwrap();
    let accepts = Arc::new(AtomicUsize::new(0));
    let heads: Arc<Mutex<Vec<String>>> = Arc::default();
    let reply: Arc<Replies> = Arc::new(reply);
    let (count, seen) = (accepts.clone(), heads.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let conn = count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(stream, conn, reply.clone(), seen.clone()));
        }
    });
    Server {
        url,
        accepts,
        heads,
    }
}

async fn serve(
    mut stream: TcpStream,
    conn: usize,
    reply: Arc<Replies>,
    heads: Arc<Mutex<Vec<String>>>,
) {
    let mut buf = Vec::new();
    for n in 0..1000 {
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(k) => buf.extend_from_slice(&chunk[..k]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        heads.lock().unwrap().push(head.clone());
        match reply(conn, n, &head) {
            Reply::Answer(bytes) => {
                let _ = stream.write_all(&bytes).await;
            }
            Reply::AnswerClose(bytes) => {
                let _ = stream.write_all(&bytes).await;
                return;
            }
            Reply::Pieces(pieces) => {
                for piece in pieces {
                    let _ = stream.write_all(&piece).await;
                    let _ = stream.flush().await;
                    tokio::time::sleep(Duration::from_millis(30)).await;
                }
            }
            Reply::Close => return,
            Reply::AnswerReset(bytes) => {
                let _ = stream.write_all(&bytes).await;
                // Not a wait for readiness: the client must have read the
                // bytes before the reset, or the kernel may drop them.
                tokio::time::sleep(Duration::from_millis(200)).await;
                // SO_LINGER 0: close with a RST.
                #[allow(deprecated)]
                let _ = stream.set_linger(Some(Duration::ZERO));
                return;
            }
        }
    }
}

fn ok(body: &str) -> Reply {
    Reply::Answer(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

fn check() -> HttpCheck {
    HttpCheck {
        method: reqwest::Method::GET,
        endpoint: Endpoint::Relative("/".into()),
        headers: Vec::new(),
        expect_status: vec![200..=299],
        body_contains: None,
        body_regex: None,
        expect_headers: Vec::new(),
        follow_redirects: false,
    }
}

/// One run, bounded: a client waiting for a body that is not coming fails
/// the test instead of hanging it.
async fn run(clients: &Clients, check: &HttpCheck, url: &url::Url) -> Outcome {
    tokio::time::timeout(Duration::from_secs(10), clients.run(check, Some(url)))
        .await
        .expect("the run ended")
}

fn assert_outcome(o: &Outcome, status: SampleStatus, needle: &str) {
    assert_eq!(o.status, status, "{o:?}");
    assert!(o.detail.contains(needle), "{needle:?} not in {o:?}");
}

/// `times` runs in a row, each an HTTP 200.
async fn runs_ok(clients: &Clients, check: &HttpCheck, url: &url::Url, times: usize) {
    for _ in 0..times {
        assert_outcome(
            &run(clients, check, url).await,
            SampleStatus::Ok,
            "HTTP 200",
        );
    }
}

#[tokio::test]
async fn keep_alive_runs_share_one_connection() {
    let s = server("/health?deep=1", |_, _, _| ok("ok")).await;
    let clients = Clients::with_lean(true);
    runs_ok(&clients, &check(), &s.url, 5).await;
    assert_eq!(s.accepts(), 1, "five runs, one connection");
    let heads = s.heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 5);
    let port = s.url.port().unwrap();
    let head = &heads[0];
    assert!(
        head.starts_with("GET /health?deep=1 HTTP/1.1\r\n"),
        "{head}"
    );
    assert!(
        head.contains(&format!("\r\nHost: 127.0.0.1:{port}\r\n")),
        "{head}"
    );
    assert!(
        head.contains(concat!(
            "\r\nUser-Agent: rollbackd/",
            env!("CARGO_PKG_VERSION"),
            "\r\n"
        )),
        "{head}"
    );
}

#[tokio::test]
async fn configured_headers_are_sent_and_replace_the_defaults() {
    let s = server("/", |_, _, _| ok("ok")).await;
    let mut c = check();
    c.method = reqwest::Method::POST;
    c.headers = vec![
        ("X-Api-Key".into(), Secret::resolve("k3y").unwrap()),
        ("Accept".into(), Secret::resolve("text/plain").unwrap()),
    ];
    let o = run(&Clients::with_lean(true), &c, &s.url).await;
    assert_outcome(&o, SampleStatus::Ok, "HTTP 200");
    let head = s.heads.lock().unwrap()[0].clone();
    assert!(head.starts_with("POST / HTTP/1.1\r\n"), "{head}");
    assert!(head.contains("\r\nX-Api-Key: k3y\r\n"), "{head}");
    assert!(head.contains("\r\nAccept: text/plain\r\n"), "{head}");
    assert!(!head.contains("*/*"), "one Accept only: {head}");

    c.headers = vec![(
        "X-Bad".into(),
        Secret::resolve("a\r\nX-Injected: 1").unwrap(),
    )];
    let o = run(&Clients::with_lean(true), &c, &s.url).await;
    assert_outcome(&o, SampleStatus::Failed, "header X-Bad: invalid value");
    assert!(
        !o.detail.contains("Injected"),
        "the value is not told: {o:?}"
    );
    assert_eq!(s.heads.lock().unwrap().len(), 1, "nothing sent");
}

#[tokio::test]
async fn a_connection_the_server_closed_while_idle_is_replaced_by_a_fresh_one() {
    // Keep-alive is not refused, but every connection is closed after one
    // answer: the pooled one is dead by the next run.
    let s = server("/", |_, _, _| {
        Reply::AnswerClose(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec())
    })
    .await;
    let clients = Clients::with_lean(true);
    runs_ok(&clients, &check(), &s.url, 3).await;
    assert_eq!(s.accepts(), 3);
}

/// A server whose first connection takes the second request and closes
/// without a word: the client cannot have seen it coming. Every other
/// request is answered `200`.
async fn closes_the_second_request() -> Server {
    server("/", |conn, n, _| {
        if (conn, n) == (0, 1) {
            Reply::Close
        } else {
            ok("ok")
        }
    })
    .await
}

#[tokio::test]
async fn a_reused_connection_closed_before_any_answer_is_retried_once_on_a_fresh_one() {
    let s = closes_the_second_request().await;
    let clients = Clients::with_lean(true);
    assert_outcome(
        &run(&clients, &check(), &s.url).await,
        SampleStatus::Ok,
        "HTTP 200",
    );
    assert_outcome(
        &run(&clients, &check(), &s.url).await,
        SampleStatus::Ok,
        "HTTP 200",
    );
    assert_eq!(s.accepts(), 2, "the retry went to a fresh connection");
    assert_eq!(
        s.heads.lock().unwrap().len(),
        3,
        "the second request was sent twice"
    );
}

/// A POST is not idempotent (RFC 9110, 9.2.2): the server may have acted
/// on it before the connection closed, so it is never sent twice. The
/// close is the sample's failure.
#[tokio::test]
async fn a_post_on_a_reused_connection_closed_before_any_answer_is_not_sent_again() {
    let s = closes_the_second_request().await;
    let clients = Clients::with_lean(true);
    let post = HttpCheck {
        method: reqwest::Method::POST,
        ..check()
    };
    assert_outcome(
        &run(&clients, &post, &s.url).await,
        SampleStatus::Ok,
        "HTTP 200",
    );
    assert_outcome(
        &run(&clients, &post, &s.url).await,
        SampleStatus::Failed,
        "connection closed before",
    );
    assert_eq!(s.accepts(), 1, "no second connection");
    assert_eq!(s.heads.lock().unwrap().len(), 2, "each POST sent once");
}

#[tokio::test]
async fn a_fresh_connection_closed_before_any_answer_is_the_samples_failure() {
    let s = server("/", |conn, n, _| {
        if (conn, n) == (0, 0) {
            ok("ok")
        } else {
            Reply::Close
        }
    })
    .await;
    let clients = Clients::with_lean(true);
    assert_outcome(
        &run(&clients, &check(), &s.url).await,
        SampleStatus::Ok,
        "HTTP 200",
    );
    let o = run(&clients, &check(), &s.url).await;
    assert_outcome(
        &o,
        SampleStatus::Failed,
        "request failed: connection closed before",
    );
    assert!(o.latency_ms.is_some());
    assert_eq!(s.accepts(), 2, "one retry, not more");
}

#[tokio::test]
async fn a_chunked_body_is_matched_across_chunks_and_reads() {
    let s = server("/", |_, _, _| {
        Reply::Pieces(vec![
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhel\r\n".to_vec(),
            b"4;note=x\r\nlo w\r\n4\r".to_vec(),
            b"\nor".to_vec(),
            b"ld\r\n0\r\nX-Trailer: t\r\n\r\n".to_vec(),
        ])
    })
    .await;
    let mut c = check();
    c.body_contains = Some("hello world".into());
    c.body_regex = Some(regex::Regex::new("^hello world$").unwrap());
    let clients = Clients::with_lean(true);
    runs_ok(&clients, &c, &s.url, 2).await;
    assert_eq!(
        s.accepts(),
        1,
        "a chunked body read to its end keeps the connection"
    );
}

#[tokio::test]
async fn a_body_over_the_cap_is_cut_there_and_its_connection_closed() {
    let long = format!("{}NEEDLE", "x".repeat(BODY_CAP));
    let s = server("/", move |_, _, _| ok(&long)).await;
    let clients = Clients::with_lean(true);
    let mut c = check();
    c.body_contains = Some("NEEDLE".into());
    assert_outcome(
        &run(&clients, &c, &s.url).await,
        SampleStatus::Failed,
        "does not contain \"NEEDLE\" in the first 64 KiB",
    );
    let mut c = check();
    c.body_regex = Some(regex::Regex::new("^x+$").unwrap());
    assert_outcome(
        &run(&clients, &c, &s.url).await,
        SampleStatus::Ok,
        "HTTP 200",
    );
    assert_eq!(s.accepts(), 2, "a body left unread closes its connection");

    // Exactly the cap: read to its end, not truncated, kept.
    let full = "y".repeat(BODY_CAP);
    let s = server("/", move |_, _, _| ok(&full)).await;
    let mut c = check();
    c.body_regex = Some(regex::Regex::new("^y+$").unwrap());
    runs_ok(&clients, &c, &s.url, 2).await;
    assert_eq!(s.accepts(), 1);
}

#[tokio::test]
async fn a_body_ended_by_the_close_is_read_to_the_close_and_not_reused() {
    let s = server("/", |_, _, _| {
        Reply::AnswerClose(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nhello there".to_vec(),
        )
    })
    .await;
    let clients = Clients::with_lean(true);
    let mut c = check();
    c.body_regex = Some(regex::Regex::new("^hello there$").unwrap());
    runs_ok(&clients, &c, &s.url, 2).await;
    assert_eq!(s.accepts(), 2);
    let pool = clients.lean_pool().unwrap();
    assert_eq!(pool.idle("127.0.0.1", s.url.port().unwrap()), 0);
}

#[tokio::test]
async fn head_1xx_204_and_304_answers_have_no_body() {
    // Each answer announces or implies a body it does not send: a client
    // that waited for one would hang.
    let s = server("/", |_, _, head| {
        let answer: &[u8] = if head.starts_with("HEAD ") {
            b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
        } else if head.starts_with("GET /empty ") {
            b"HTTP/1.1 204 No Content\r\n\r\n"
        } else if head.starts_with("GET /same ") {
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n"
        } else {
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        };
        Reply::Answer(answer.to_vec())
    })
    .await;
    let clients = Clients::with_lean(true);
    let mut head = check();
    head.method = reqwest::Method::HEAD;
    let mut same = check();
    same.expect_status = vec![304..=304];
    let mut interim = check();
    interim.body_contains = Some("ok".into());
    let base = s.url.clone();
    for _ in 0..2 {
        assert_outcome(
            &run(&clients, &head, &base).await,
            SampleStatus::Ok,
            "HTTP 200",
        );
        let empty = base.join("/empty").unwrap();
        assert_outcome(
            &run(&clients, &check(), &empty).await,
            SampleStatus::Ok,
            "HTTP 204",
        );
        let url = base.join("/same").unwrap();
        assert_outcome(
            &run(&clients, &same, &url).await,
            SampleStatus::Ok,
            "HTTP 304",
        );
        let url = base.join("/interim").unwrap();
        assert_outcome(
            &run(&clients, &interim, &url).await,
            SampleStatus::Ok,
            "HTTP 200",
        );
    }
    assert_eq!(s.accepts(), 1, "none of them left a body on the connection");
}

#[tokio::test]
async fn connection_close_and_http_1_0_without_keep_alive_are_not_reused() {
    let cases: [(&'static str, usize); 3] = [
        (
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
            2,
        ),
        ("HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", 2),
        (
            "HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 2\r\n\r\nok",
            1,
        ),
    ];
    for (answer, accepts) in cases {
        // The server would go on: only the client decides not to reuse.
        let s = server("/", move |_, _, _| {
            Reply::Answer(answer.as_bytes().to_vec())
        })
        .await;
        let clients = Clients::with_lean(true);
        runs_ok(&clients, &check(), &s.url, 2).await;
        assert_eq!(s.accepts(), accepts, "{answer:?}");
    }
}

#[tokio::test]
async fn a_malformed_answer_is_a_failed_sample() {
    for answer in [
        "HTTP/1.1 2x0 OK\r\n\r\n",
        "SMTP ready\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 12a\r\n\r\nok",
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n",
    ] {
        let s = server("/", move |_, _, _| {
            Reply::Answer(answer.as_bytes().to_vec())
        })
        .await;
        let o = run(&Clients::with_lean(true), &check(), &s.url).await;
        assert_eq!(o.status, SampleStatus::Failed, "{answer:?}: {o:?}");
        assert!(o.detail.contains("malformed answer"), "{answer:?}: {o:?}");
        assert!(o.latency_ms.is_some());
    }
}

#[tokio::test]
async fn a_reset_mid_body_is_a_failed_sample() {
    let s = server("/", |_, _, _| {
        Reply::AnswerReset(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial".to_vec())
    })
    .await;
    let o = run(&Clients::with_lean(true), &check(), &s.url).await;
    assert_outcome(&o, SampleStatus::Failed, "HTTP 200: body cut short");
    assert!(o.detail.contains("reset"), "{o:?}");
}

#[tokio::test]
async fn a_refused_connection_is_what_io_status_says() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = url::Url::parse(&format!("http://{}/", listener.local_addr().unwrap())).unwrap();
    drop(listener);
    let o = run(&Clients::with_lean(true), &check(), &url).await;
    let refused = io::Error::from_raw_os_error(nix::errno::Errno::ECONNREFUSED as i32);
    assert_eq!(o.status, io_status(&refused), "{o:?}");
    assert_outcome(
        &o,
        SampleStatus::Failed,
        "connect failed: tcp connect error: Connection refused",
    );
}

#[tokio::test]
async fn expected_headers_are_found_whatever_their_case() {
    let s = server("/", |_, _, _| {
        Reply::Answer(
            b"HTTP/1.1 200 OK\r\nx-content-type-options: nosniff\r\nSTRICT-TRANSPORT-SECURITY: max-age=1\r\nContent-Length: 0\r\n\r\n"
                .to_vec(),
        )
    })
    .await;
    let clients = Clients::with_lean(true);
    let mut c = check();
    c.expect_headers = vec![
        "X-Content-Type-Options".into(),
        "Strict-Transport-Security".into(),
    ];
    assert_outcome(
        &run(&clients, &c, &s.url).await,
        SampleStatus::Ok,
        "HTTP 200",
    );
    c.expect_headers.push("X-Frame-Options".into());
    assert_outcome(
        &run(&clients, &c, &s.url).await,
        SampleStatus::Failed,
        "HTTP 200: missing header(s) X-Frame-Options",
    );
}

#[tokio::test]
async fn the_pool_keeps_its_cap_of_idle_per_host_newest_first_for_30_seconds() {
    const CAP: usize = 32;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (addr, port) = (
        listener.local_addr().unwrap(),
        listener.local_addr().unwrap().port(),
    );
    let mut servers = Vec::new();
    let mut conns = Vec::new();
    for _ in 0..CAP + 1 {
        let stream = TcpStream::connect(addr).await.unwrap();
        servers.push(listener.accept().await.unwrap().0);
        conns.push(Conn {
            stream,
            buf: Vec::new(),
            pos: 0,
        });
    }
    let local = |c: &Conn| c.stream.local_addr().unwrap();
    let mut expected: Vec<_> = conns[1..].iter().map(local).collect();
    expected.reverse();
    let pool = Pool::with_cap(CAP);
    let t0 = Instant::now();
    for (i, conn) in conns.into_iter().enumerate() {
        pool.put(
            "127.0.0.1",
            port,
            conn,
            t0 + Duration::from_millis(i as u64),
        );
    }
    assert_eq!(pool.idle("127.0.0.1", port), CAP);
    assert!(
        pool.take("127.0.0.1", 1, t0).is_none(),
        "another port has none"
    );

    // Newest first; the oldest of the 33 was let go.
    let later = t0 + Duration::from_secs(1);
    let mut taken = Vec::new();
    while let Some(conn) = pool.take("127.0.0.1", port, later) {
        taken.push(conn);
    }
    assert_eq!(taken.iter().map(local).collect::<Vec<_>>(), expected);
    let newest = expected[0];
    for conn in taken.into_iter().rev() {
        pool.put("127.0.0.1", port, conn, later);
    }

    // A connection the server closed is passed over, not handed out, once
    // its end of file has shown.
    drop(servers.pop());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let handed = loop {
        let conn = pool.take("127.0.0.1", port, later).unwrap();
        if local(&conn) != newest || std::time::Instant::now() > deadline {
            break local(&conn);
        }
        pool.put("127.0.0.1", port, conn, later);
        // Lets the runtime's driver read the socket's event.
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(handed, expected[1]);
    assert_eq!(pool.idle("127.0.0.1", port), CAP - 2);

    // 30 s after the newest went idle, none is handed out.
    assert!(pool.take("127.0.0.1", port, later + IDLE_TIMEOUT).is_none());
    assert_eq!(pool.idle("127.0.0.1", port), 0);
}
