//! `h1`: the HTTP/1.1 client of http probes on `http://` targets, written
//! here rather than taken from reqwest (why: `docs/ARCHITECTURE.md`, "own
//! code instead of a crate"). A run speaks to its target in the probe's own
//! task over a kept-alive `TcpStream`: one write of the whole request,
//! reads into the connection's one reused buffer, the head parsed by
//! `httparse`, the body framed by `Content-Length`, `chunked` or the close
//! of the connection (none for HEAD, 1xx, 204 and 304).
//!
//! Idle connections wait in a [`Pool`] per host:port (at most
//! [`MAX_IDLE_PER_AUTHORITY`], each at most [`IDLE_TIMEOUT`], the last one
//! put back taken first). A connection is put back only after its answer
//! was read to the end with nothing left over, and only when the server
//! keeps it alive. A kept connection the server closed while idle is
//! dropped at checkout when that shows already, or else an idempotent
//! request (not a POST) is sent again, once, on a fresh connection, when
//! the reused one ended before any byte of an answer. It owns no redirects, headers' secrecy or
//! verdicts: [`super::http`] does.

use std::io;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::model::SampleStatus;

/// Idle connections kept per host:port: as many as the probes one host
/// serves at once, which share a beat (all of a color's probes ask
/// together), so the runs in flight bound it; this only caps a runaway.
/// With 32, 50 probes on a color closed and opened 18 connections a
/// second (1.33% of a core at 100 probes/s, 1.07% with 64).
pub const MAX_IDLE_PER_AUTHORITY: usize = 1024;
/// How long an idle connection is kept.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// The most a connection attempt (all of a name's addresses) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest response head read; a bigger one is a malformed answer.
const HEAD_CAP: usize = 64 * 1024;
/// The longest chunk-size or trailer line.
const LINE_CAP: usize = 4096;
/// Headers in one response head (hyper's default too).
const MAX_HEADERS: usize = 100;
/// A connection's read buffer: it grows for a large head, and shrinks back
/// before the connection goes idle.
const BUF_SIZE: usize = 8 * 1024;
/// Interim (1xx) answers skipped before the final one.
const MAX_INTERIM: usize = 16;
/// Hosts the pool remembers; past this, hosts with no idle connection are
/// forgotten (redirects may name any number of them).
const MAX_AUTHORITIES: usize = 64;

const USER_AGENT: &str = concat!("rollbackd/", env!("CARGO_PKG_VERSION"));

/// One request: the method, the URL (`http://`, without user or password)
/// and the headers to send besides `Host`, `User-Agent` and `Accept` (which
/// a header of the same name replaces).
pub struct Request<'a> {
    pub method: &'a str,
    pub url: &'a url::Url,
    pub headers: &'a [(&'a str, &'a str)],
}

impl Request<'_> {
    /// Whether sending it twice does what sending it once does (RFC 9110,
    /// 9.2.2): only such a request is sent again after a reused connection
    /// closed under it.
    fn idempotent(&self) -> bool {
        ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"]
            .iter()
            .any(|m| self.method.eq_ignore_ascii_case(m))
    }
}

/// Why a request got no complete answer.
#[derive(Debug)]
pub enum Error {
    /// The host name did not resolve.
    Dns(io::Error),
    /// No connection: refused, unreachable, or the watchdog out of
    /// descriptors.
    Connect(io::Error),
    ConnectTimeout,
    /// Sending the request or reading the answer failed.
    Io(io::Error),
    /// The connection ended before the answer did.
    Closed,
    /// The answer is not HTTP/1.x as this client reads it.
    Malformed(String),
    /// A configured header's value cannot be sent (a control character);
    /// the value is not said.
    InvalidHeader(String),
}

impl Error {
    /// How the sample is judged: as [`super::http::classify`] judges
    /// reqwest's errors.
    pub fn status(&self) -> SampleStatus {
        match self {
            Error::Dns(_) => SampleStatus::Unreachable,
            Error::ConnectTimeout => SampleStatus::Timeout,
            Error::Connect(e) | Error::Io(e) => match e.raw_os_error() {
                Some(_) => super::io_status(e),
                None if e.kind() == io::ErrorKind::TimedOut => SampleStatus::Timeout,
                None => SampleStatus::Failed,
            },
            Error::Closed | Error::Malformed(_) | Error::InvalidHeader(_) => SampleStatus::Failed,
        }
    }

    /// Whether no connection was made.
    pub fn is_connect(&self) -> bool {
        matches!(
            self,
            Error::Dns(_) | Error::Connect(_) | Error::ConnectTimeout
        )
    }

    /// The reused connection the server closed while it was idle: the
    /// request is worth sending again on a fresh one.
    fn closed_while_idle(&self) -> bool {
        match self {
            Error::Closed => true,
            Error::Io(e) => matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
            ),
            _ => false,
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Dns(_) => f.write_str("dns error"),
            Error::Connect(_) => f.write_str("tcp connect error"),
            Error::ConnectTimeout => write!(
                f,
                "no connection within {}",
                humantime::format_duration(CONNECT_TIMEOUT)
            ),
            Error::Io(_) => f.write_str("connection error"),
            Error::Closed => f.write_str("connection closed before the message completed"),
            Error::Malformed(what) => write!(f, "malformed answer: {what}"),
            Error::InvalidHeader(name) => write!(f, "header {name}: invalid value"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Dns(e) | Error::Connect(e) | Error::Io(e) => Some(e),
            _ => None,
        }
    }
}

/// How a body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    Close,
}

/// What the pool keeps of one host:port.
struct Authority {
    host: String,
    port: u16,
    /// Oldest first: the last one put back is taken first, and expired
    /// ones gather at the front.
    idle: Vec<(Conn, Instant)>,
}

/// Kept-alive connections, per host:port. Shared by every probe (the
/// `Prober`'s clones share one).
pub struct Pool {
    // A std mutex: held for a push or a pop, never across an await.
    authorities: Mutex<Vec<Authority>>,
    /// Idle connections kept per host:port.
    cap: usize,
}

impl Default for Pool {
    fn default() -> Pool {
        Pool::with_cap(MAX_IDLE_PER_AUTHORITY)
    }
}

impl Pool {
    /// A pool keeping at most `cap` idle connections per host:port.
    pub fn with_cap(cap: usize) -> Pool {
        Pool {
            authorities: Mutex::default(),
            cap,
        }
    }

    /// Send `request` and read the answer's head. The body is read by
    /// [`Answer::body`]; dropping the answer instead closes the connection.
    pub async fn send<'c>(
        &self,
        request: &Request<'_>,
        expect_headers: &'c [String],
    ) -> Result<Answer<'_, 'c>, Error> {
        for (name, value) in request.headers {
            // What `http::HeaderValue` refuses: a control character but tab.
            if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
                return Err(Error::InvalidHeader((*name).to_owned()));
            }
        }
        let url = request.url;
        let host = url.host_str().unwrap_or("");
        let port = url.port_or_known_default().unwrap_or(80);
        let mut pooled = self.take(host, port, Instant::now());
        loop {
            let reused = pooled.is_some();
            let mut conn = match pooled.take() {
                Some(conn) => conn,
                None => Conn::open(url, port).await?,
            };
            match conn.exchange(request, expect_headers).await {
                Ok(head) => {
                    return Ok(Answer {
                        pool: self,
                        host: host.to_owned(),
                        port,
                        conn,
                        head,
                    });
                }
                // Once: the next turn has a fresh connection, whose
                // failure is the sample's. Only an idempotent request: the
                // server may have acted on a POST before it closed.
                Err((e, received))
                    if reused && !received && e.closed_while_idle() && request.idempotent() =>
                {
                    continue;
                }
                Err((e, _)) => return Err(e),
            }
        }
    }

    /// The most recently idle, still open connection to host:port.
    fn take(&self, host: &str, port: u16, now: Instant) -> Option<Conn> {
        loop {
            let conn = {
                let mut all = self.lock();
                let authority = all.iter_mut().find(|a| a.port == port && a.host == host)?;
                let (conn, since) = authority.idle.pop()?;
                if now.saturating_duration_since(since) >= IDLE_TIMEOUT {
                    // The newest is too old: so are all the others.
                    let expired = std::mem::take(&mut authority.idle);
                    drop(all);
                    drop(expired);
                    return None;
                }
                conn
            };
            if conn.open_while_idle() {
                return Some(conn);
            }
        }
    }

    /// Keep `conn` for the next request to host:port.
    fn put(&self, host: &str, port: u16, mut conn: Conn, now: Instant) {
        conn.buf.clear();
        conn.pos = 0;
        if conn.buf.capacity() > 2 * BUF_SIZE {
            conn.buf.shrink_to(BUF_SIZE);
        }
        let mut dropped = Vec::new();
        let mut all = self.lock();
        for a in all.iter_mut() {
            let expired = a
                .idle
                .iter()
                .take_while(|(_, since)| now.saturating_duration_since(*since) >= IDLE_TIMEOUT)
                .count();
            dropped.extend(a.idle.drain(..expired));
        }
        match all.iter_mut().find(|a| a.port == port && a.host == host) {
            Some(a) => {
                if a.idle.len() >= self.cap {
                    dropped.push(a.idle.remove(0));
                }
                a.idle.push((conn, now));
            }
            None => {
                if all.len() >= MAX_AUTHORITIES {
                    all.retain(|a| !a.idle.is_empty());
                }
                if all.len() < MAX_AUTHORITIES {
                    all.push(Authority {
                        host: host.to_owned(),
                        port,
                        idle: vec![(conn, now)],
                    });
                }
            }
        }
        drop(all);
        // Closed outside the lock.
        drop(dropped);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Authority>> {
        // A panic elsewhere cannot leave the list half-changed: every
        // change is one push, pop, drain or retain.
        self.authorities.lock().unwrap_or_else(|p| p.into_inner())
    }

    #[cfg(test)]
    fn idle(&self, host: &str, port: u16) -> usize {
        self.lock()
            .iter()
            .find(|a| a.port == port && a.host == host)
            .map_or(0, |a| a.idle.len())
    }
}

/// The head of an answer; its body is still on the connection.
pub struct Answer<'p, 'c> {
    pool: &'p Pool,
    host: String,
    port: u16,
    conn: Conn,
    head: Head<'c>,
}

struct Head<'c> {
    code: u16,
    framing: Framing,
    keep_alive: bool,
    location: Option<String>,
    missing: Vec<&'c str>,
}

impl<'c> Answer<'_, 'c> {
    pub fn code(&self) -> u16 {
        self.head.code
    }

    /// The `Location` header, when it is visible ASCII.
    pub fn location(&self) -> Option<&str> {
        self.head.location.as_deref()
    }

    /// The expected headers the answer lacks (names compared without case).
    pub fn missing(&self) -> &[&'c str] {
        &self.head.missing
    }

    /// Read the body up to `cap` bytes: the bytes, and whether the body was
    /// longer. A connection read to the body's end goes back to the pool
    /// when the server keeps it alive; any other is closed.
    pub async fn body(mut self, cap: usize) -> Result<(Vec<u8>, bool), Error> {
        let mut body = Capped {
            bytes: Vec::new(),
            cap,
            truncated: false,
        };
        let complete = self.conn.read_body(self.head.framing, &mut body).await?;
        if complete && self.head.keep_alive && self.conn.pos == self.conn.buf.len() {
            self.pool
                .put(&self.host, self.port, self.conn, Instant::now());
        }
        Ok((body.bytes, body.truncated))
    }
}

/// A body being kept up to its cap.
struct Capped {
    bytes: Vec<u8>,
    cap: usize,
    truncated: bool,
}

impl Capped {
    /// Keep `data`; false (stop reading) once the body passed the cap.
    fn take(&mut self, data: &[u8]) -> bool {
        let room = self.cap - self.bytes.len();
        if data.len() > room {
            self.bytes.extend_from_slice(&data[..room]);
            self.truncated = true;
            return false;
        }
        self.bytes.extend_from_slice(data);
        true
    }
}

/// One connection and its read buffer: `buf[pos..]` is read and not yet
/// used.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    pos: usize,
}

impl Conn {
    async fn open(url: &url::Url, port: u16) -> Result<Conn, Error> {
        let connect = async {
            match url.host() {
                Some(url::Host::Ipv4(ip)) => connect_one(SocketAddr::new(ip.into(), port)).await,
                Some(url::Host::Ipv6(ip)) => connect_one(SocketAddr::new(ip.into(), port)).await,
                Some(url::Host::Domain(name)) => {
                    let addrs = tokio::net::lookup_host((name, port))
                        .await
                        .map_err(Error::Dns)?;
                    let mut last = None;
                    for addr in addrs {
                        match connect_one(addr).await {
                            Ok(stream) => return Ok(stream),
                            Err(e) => last = Some(e),
                        }
                    }
                    Err(last
                        .unwrap_or_else(|| Error::Dns(io::Error::other("the name has no address"))))
                }
                None => Err(Error::Dns(io::Error::other("the URL has no host"))),
            }
        };
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| Error::ConnectTimeout)??;
        // The request is one write: nothing for Nagle to gather.
        let _ = stream.set_nodelay(true);
        Ok(Conn {
            stream,
            buf: Vec::with_capacity(BUF_SIZE),
            pos: 0,
        })
    }

    /// An idle connection is still usable when reading it would block: no
    /// end of file and no stray bytes arrived. Costs no system call while
    /// tokio has seen no event on the socket.
    fn open_while_idle(&self) -> bool {
        let mut byte = [0u8; 1];
        matches!(self.stream.try_read(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Write the request, read the final answer's head. On error, also
    /// whether any byte of an answer had arrived.
    async fn exchange<'c>(
        &mut self,
        request: &Request<'_>,
        expect_headers: &'c [String],
    ) -> Result<Head<'c>, (Error, bool)> {
        self.buf.clear();
        self.pos = 0;
        write_request(&mut self.buf, request);
        if let Err(e) = self.stream.write_all(&self.buf).await {
            return Err((Error::Io(e), false));
        }
        self.buf.clear();
        let head_request = request.method.eq_ignore_ascii_case("HEAD");
        let close_asked = request
            .headers
            .iter()
            .any(|(n, v)| n.eq_ignore_ascii_case("connection") && has_token(v.as_bytes(), "close"));
        let mut received = false;
        let mut interim = 0;
        loop {
            if self.pos < self.buf.len() {
                let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let mut response = httparse::Response::new(&mut headers);
                match response.parse(&self.buf[self.pos..]) {
                    Ok(httparse::Status::Complete(len)) => {
                        let head = read_head(&response, head_request, expect_headers)
                            .map_err(|e| (e, true))?;
                        self.pos += len;
                        if (100..200).contains(&head.code) && head.code != 101 {
                            interim += 1;
                            if interim > MAX_INTERIM {
                                return Err((
                                    Error::Malformed("too many interim (1xx) answers".into()),
                                    true,
                                ));
                            }
                            continue;
                        }
                        let keep_alive = head.keep_alive && !close_asked;
                        return Ok(Head { keep_alive, ..head });
                    }
                    Ok(httparse::Status::Partial) => {
                        if self.buf.len() - self.pos >= HEAD_CAP {
                            return Err((
                                Error::Malformed(format!("a head over {} KiB", HEAD_CAP / 1024)),
                                true,
                            ));
                        }
                    }
                    Err(e) => {
                        return Err((Error::Malformed(format!("{e} in the head")), true));
                    }
                }
            }
            match self.fill().await {
                Ok(0) => return Err((Error::Closed, received)),
                Ok(_) => received = true,
                Err(e) => return Err((Error::Io(e), received)),
            }
        }
    }

    /// Read more of the stream into the buffer; 0 at its end.
    async fn fill(&mut self) -> io::Result<usize> {
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > 0 && self.buf.capacity() - self.buf.len() < BUF_SIZE / 4 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        if self.buf.capacity() - self.buf.len() < BUF_SIZE / 4 {
            self.buf.reserve(BUF_SIZE);
        }
        self.stream.read_buf(&mut self.buf).await
    }

    /// Hand up to `n` buffered bytes to `body`, reading when none are
    /// buffered; how many were handed and whether to go on.
    async fn pass(&mut self, n: u64, body: &mut Capped) -> Result<(usize, bool), Error> {
        if self.pos == self.buf.len() && self.fill().await.map_err(Error::Io)? == 0 {
            return Err(Error::Closed);
        }
        let available = self.buf.len() - self.pos;
        let take = usize::try_from(n).map_or(available, |n| n.min(available));
        let more = body.take(&self.buf[self.pos..self.pos + take]);
        self.pos += take;
        Ok((take, more))
    }

    /// Read the body; true when it was read to its end (false: it passed
    /// the cap and the rest was left unread).
    async fn read_body(&mut self, framing: Framing, body: &mut Capped) -> Result<bool, Error> {
        match framing {
            Framing::Empty => Ok(true),
            Framing::Length(mut left) => {
                while left > 0 {
                    let (taken, more) = self.pass(left, body).await?;
                    left -= taken as u64;
                    if !more {
                        return Ok(false);
                    }
                }
                Ok(true)
            }
            Framing::Close => loop {
                match self.pass(u64::MAX, body).await {
                    Ok((_, true)) => {}
                    Ok((_, false)) => return Ok(false),
                    Err(Error::Closed) => return Ok(true),
                    Err(e) => return Err(e),
                }
            },
            Framing::Chunked => loop {
                let (start, end) = self.line().await?;
                let size = chunk_size(&self.buf[start..end])?;
                if size == 0 {
                    // Trailers, up to the empty line.
                    loop {
                        let (start, end) = self.line().await?;
                        if start == end {
                            return Ok(true);
                        }
                    }
                }
                let mut left = size;
                while left > 0 {
                    let (taken, more) = self.pass(left, body).await?;
                    left -= taken as u64;
                    if !more {
                        return Ok(false);
                    }
                }
                let (start, end) = self.line().await?;
                if start != end {
                    return Err(Error::Malformed("a chunk longer than its size".into()));
                }
            },
        }
    }

    /// The next line (without CR LF) as a range of the buffer, used.
    async fn line(&mut self) -> Result<(usize, usize), Error> {
        loop {
            if let Some(i) = self.buf[self.pos..].iter().position(|&b| b == b'\n') {
                let start = self.pos;
                let mut end = start + i;
                self.pos = end + 1;
                if end > start && self.buf[end - 1] == b'\r' {
                    end -= 1;
                }
                return Ok((start, end));
            }
            if self.buf.len() - self.pos > LINE_CAP {
                return Err(Error::Malformed("a chunk line too long".into()));
            }
            if self.fill().await.map_err(Error::Io)? == 0 {
                return Err(Error::Closed);
            }
        }
    }
}

async fn connect_one(addr: SocketAddr) -> Result<TcpStream, Error> {
    TcpStream::connect(addr).await.map_err(Error::Connect)
}

/// The request line and headers, ready for one write.
fn write_request(out: &mut Vec<u8>, request: &Request<'_>) {
    let url = request.url;
    let has = |name: &str| {
        request
            .headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name))
    };
    out.extend_from_slice(request.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(url.path().as_bytes());
    if let Some(query) = url.query() {
        out.push(b'?');
        out.extend_from_slice(query.as_bytes());
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if !has("host") {
        out.extend_from_slice(b"Host: ");
        out.extend_from_slice(url.host_str().unwrap_or("").as_bytes());
        // The url crate keeps a port only when it is not the scheme's.
        if let Some(port) = url.port() {
            out.push(b':');
            out.extend_from_slice(port.to_string().as_bytes());
        }
        out.extend_from_slice(b"\r\n");
    }
    if !has("user-agent") {
        out.extend_from_slice(b"User-Agent: ");
        out.extend_from_slice(USER_AGENT.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !has("accept") {
        out.extend_from_slice(b"Accept: */*\r\n");
    }
    for (name, value) in request.headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// What the parsed head says: status, framing, whether the connection
/// stays open, `Location`, and which expected headers are missing.
fn read_head<'c>(
    response: &httparse::Response<'_, '_>,
    head_request: bool,
    expect_headers: &'c [String],
) -> Result<Head<'c>, Error> {
    let code = response.code.unwrap_or(0);
    if code < 100 {
        return Err(Error::Malformed(format!("status {code}")));
    }
    let http11 = response.version == Some(1);
    let (mut close, mut keep_alive) = (false, false);
    let mut length: Option<u64> = None;
    let (mut transfer_encoding, mut chunked) = (false, false);
    let mut location = None;
    for h in response.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            for part in h.value.split(|&b| b == b',') {
                let part = trim(part);
                let n = std::str::from_utf8(part)
                    .ok()
                    .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|s| s.parse::<u64>().ok())
                    .ok_or_else(|| Error::Malformed("an invalid Content-Length".into()))?;
                if length.is_some_and(|l| l != n) {
                    return Err(Error::Malformed("conflicting Content-Length".into()));
                }
                length = Some(n);
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoding = true;
            // Chunked only when it is the last coding applied.
            chunked = h
                .value
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|last| trim(last).eq_ignore_ascii_case(b"chunked"));
        } else if h.name.eq_ignore_ascii_case("connection") {
            close |= has_token(h.value, "close");
            keep_alive |= has_token(h.value, "keep-alive");
        } else if h.name.eq_ignore_ascii_case("location")
            && h.value
                .iter()
                .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
        {
            location = std::str::from_utf8(h.value).ok().map(str::to_owned);
        }
    }
    let framing = if head_request || code < 200 || code == 204 || code == 304 {
        Framing::Empty
    } else if transfer_encoding {
        if chunked {
            Framing::Chunked
        } else {
            Framing::Close
        }
    } else {
        match length {
            Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
            None => Framing::Close,
        }
    };
    let keep_alive = !close
        && (http11 || keep_alive)
        && framing != Framing::Close
        && code != 101
        // Both framings at once: a smuggling risk; answer, then close.
        && !(transfer_encoding && length.is_some());
    let missing = expect_headers
        .iter()
        .filter(|want| {
            !response
                .headers
                .iter()
                .any(|h| h.name.eq_ignore_ascii_case(want))
        })
        .map(String::as_str)
        .collect();
    Ok(Head {
        code,
        framing,
        keep_alive,
        location,
        missing,
    })
}

/// The size on a chunk-size line (extensions after `;` ignored).
fn chunk_size(line: &[u8]) -> Result<u64, Error> {
    let digits = trim(line.split(|&b| b == b';').next().unwrap_or(b""));
    let bad = || Error::Malformed("an invalid chunk size".into());
    if digits.is_empty() || digits.len() > 15 {
        return Err(bad());
    }
    let mut size = 0u64;
    for &b in digits {
        let d = (b as char).to_digit(16).ok_or_else(bad)?;
        size = size * 16 + u64::from(d);
    }
    Ok(size)
}

/// Whether a comma-separated header value holds `token` (any case).
fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| trim(t).eq_ignore_ascii_case(token.as_bytes()))
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

#[cfg(test)]
mod tests;
