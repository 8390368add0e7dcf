//! The blocking HTTP client of the client subcommands: hyper-util's client (already in the
//! tree through kube) driven by a current-thread tokio runtime for the one request. The agent
//! serves plain HTTP (usually on loopback or through `kubectl port-forward`), and so does a
//! Prometheus reached that way, so only `http://` URLs are accepted.

use std::time::Duration;

use http_body_util::{BodyExt as _, Empty};
use hyper::{
    Request, Uri,
    body::{Body, Bytes},
    header::{self, HeaderValue},
};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};

pub use hyper::Method;

/// How long to wait for the answer's head, then for each piece of its body.
const TIMEOUT: Duration = Duration::from_secs(30);
/// Largest body accepted (a list of thousands of profiles fits easily).
const MAX_BODY: u64 = 256 << 20;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The server URL is not `http://host[:port][/prefix]`.
    #[error("bad server URL {url:?}: {reason}")]
    BadUrl {
        /// The URL.
        url: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The URL (or the request URL made from it) does not parse.
    #[error("bad URL {url:?}")]
    InvalidUrl {
        /// The URL.
        url: String,
        /// The parser's complaint.
        #[source]
        source: hyper::http::uri::InvalidUri,
    },
    /// No connection.
    #[error("cannot connect to {url}")]
    Unreachable {
        /// The request URL.
        url: String,
        /// The cause.
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    /// Connected, but the answer (or the next piece of its body) did not come in time.
    #[error("no answer from {url} within {}", humantime::format_duration(*after))]
    Timeout {
        /// The request URL.
        url: String,
        /// How long the client waited.
        after: Duration,
    },
    /// The answer is not HTTP the client understands, or the connection broke.
    #[error("bad answer from {url}")]
    Protocol {
        /// The request URL.
        url: String,
        /// What is wrong.
        #[source]
        source: BoxError,
    },
    /// The body is larger than the client accepts.
    #[error("the answer from {url} is larger than {limit} bytes")]
    TooLarge {
        /// The request URL.
        url: String,
        /// The limit.
        limit: u64,
    },
    /// The bearer token cannot be sent.
    #[error("bad bearer token: {reason}")]
    BadToken {
        /// What is wrong.
        reason: &'static str,
    },
    /// The runtime that drives the request could not start.
    #[error("cannot start the HTTP client")]
    Runtime {
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// A server base URL, checked, and the bearer token sent to it.
#[derive(Clone, PartialEq, Eq)]
pub struct Server {
    /// `host[:port]` as given (IPv6 hosts in brackets); hyper defaults the port to 80.
    authority: String,
    /// Path prefix: empty, or `/` and segments without a trailing `/`.
    prefix: String,
    url: String,
    timeout: Duration,
    /// Sent as `Authorization: Bearer`; never printed.
    token: Option<String>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("url", &self.url)
            .field("timeout", &self.timeout)
            .field("token", &self.token.as_ref().map(|_| "(set)"))
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Parses `http://host[:port][/prefix]` (port 80 by default; IPv6 hosts in brackets).
    pub fn parse(url: &str) -> Result<Self, HttpError> {
        let bad = |reason| HttpError::BadUrl {
            url: url.to_owned(),
            reason,
        };
        if url.starts_with("https://") {
            return Err(bad("https is not supported: the agent serves plain HTTP"));
        }
        if !url.starts_with("http://") {
            return Err(bad("expected http://HOST[:PORT]"));
        }
        let uri: Uri = url.parse().map_err(|source| HttpError::InvalidUrl {
            url: url.to_owned(),
            source,
        })?;
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("credentials in the URL are not supported"));
        }
        if authority.host().trim_matches(['[', ']']).is_empty() {
            return Err(bad("no host"));
        }
        // The URI parser leaves the port unchecked.
        if let Some(port) = authority.as_str()[authority.host().len()..].strip_prefix(':') {
            port.parse::<u16>().map_err(|_| bad("bad port"))?;
        }
        if uri.query().is_some() {
            return Err(bad("a query is not supported"));
        }
        let prefix = uri.path().trim_end_matches('/');
        Ok(Self {
            authority: authority.as_str().to_owned(),
            prefix: prefix.to_owned(),
            url: url.trim_end_matches('/').to_owned(),
            timeout: TIMEOUT,
            token: None,
        })
    }

    /// The same server, with every request carrying `Authorization: Bearer TOKEN`.
    #[must_use]
    pub fn with_token(self, token: Option<String>) -> Self {
        Self { token, ..self }
    }

    /// Whether requests carry a bearer token.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// The same server with another timeout for the answer's head and each piece of its body.
    #[must_use]
    pub fn with_timeout(self, timeout: Duration) -> Self {
        Self { timeout, ..self }
    }

    /// The URL as given (without a trailing `/`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// `GET path` (absolute, already percent-encoded): status and body.
    pub fn get(&self, path: &str) -> Result<(u16, Vec<u8>), HttpError> {
        self.request(Method::GET, path)
    }

    /// `METHOD path` without a body (path absolute, already percent-encoded): status and body.
    pub fn request(&self, method: Method, path: &str) -> Result<(u16, Vec<u8>), HttpError> {
        let url = format!("{}{path}", self.url);
        let uri: Uri = format!("http://{}{}{path}", self.authority, self.prefix)
            .parse()
            .map_err(|source| HttpError::InvalidUrl {
                url: url.clone(),
                source,
            })?;
        let mut request = Request::new(Empty::<Bytes>::new());
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        let headers = request.headers_mut();
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        headers.insert(
            header::USER_AGENT,
            HeaderValue::from_static(concat!("recorder-agent/", env!("CARGO_PKG_VERSION"))),
        );
        if let Some(token) = &self.token {
            let mut value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                HttpError::BadToken {
                    reason: "it contains characters not allowed in an HTTP header",
                }
            })?;
            value.set_sensitive(true);
            headers.insert(header::AUTHORIZATION, value);
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| HttpError::Runtime { source })?;
        runtime.block_on(self.send(request, &url))
    }

    async fn send(
        &self,
        request: Request<Empty<Bytes>>,
        url: &str,
    ) -> Result<(u16, Vec<u8>), HttpError> {
        // One request per client: nothing to keep idle.
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build_http();
        let response = match tokio::time::timeout(self.timeout, client.request(request)).await {
            Ok(Ok(response)) => response,
            Ok(Err(source)) if source.is_connect() => {
                return Err(HttpError::Unreachable {
                    url: url.to_owned(),
                    source,
                });
            }
            Ok(Err(source)) => {
                return Err(HttpError::Protocol {
                    url: url.to_owned(),
                    source: source.into(),
                });
            }
            Err(_) => {
                return Err(HttpError::Timeout {
                    url: url.to_owned(),
                    after: self.timeout,
                });
            }
        };
        let status = response.status().as_u16();
        let body = read_body(response.into_body(), MAX_BODY, self.timeout, url).await?;
        Ok((status, body))
    }
}

/// Reads `body` whole, refusing more than `limit` bytes (up front when its announced length
/// says so) and waiting at most `idle` for each piece.
async fn read_body<B>(
    mut body: B,
    limit: u64,
    idle: Duration,
    url: &str,
) -> Result<Vec<u8>, HttpError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let too_large = || HttpError::TooLarge {
        url: url.to_owned(),
        limit,
    };
    if body.size_hint().lower() > limit {
        return Err(too_large());
    }
    let mut out = Vec::new();
    loop {
        let frame = tokio::time::timeout(idle, body.frame())
            .await
            .map_err(|_| HttpError::Timeout {
                url: url.to_owned(),
                after: idle,
            })?;
        let Some(frame) = frame else {
            return Ok(out);
        };
        let frame = frame.map_err(|err| HttpError::Protocol {
            url: url.to_owned(),
            source: err.into(),
        })?;
        if let Ok(data) = frame.into_data() {
            if (out.len() + data.len()) as u64 > limit {
                return Err(too_large());
            }
            out.extend_from_slice(&data);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read as _, Write as _},
        net::TcpListener,
        thread,
    };

    use super::*;

    /// A one-connection server that reads the request head and writes `answer` (if any), then
    /// keeps the connection open for `linger`.
    fn canned(answer: &'static [u8], linger: Duration) -> Server {
        canned_at("", answer, linger).0
    }

    /// [`canned`] with a path prefix in the server URL; also hands back the request head.
    fn canned_at(
        prefix: &str,
        answer: &'static [u8],
        linger: Duration,
    ) -> (Server, std::sync::mpsc::Receiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = std::sync::mpsc::channel();
        thread::spawn(move || {
            let Ok((mut stream, _)) = listener.accept() else {
                return;
            };
            let mut head = Vec::new();
            let mut byte = [0u8];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).is_ok_and(|n| n == 1) {
                head.push(byte[0]);
            }
            let _ = tx.send(String::from_utf8_lossy(&head).into_owned());
            let _ = stream.write_all(answer);
            thread::sleep(linger);
        });
        let server = Server::parse(&format!("http://{addr}{prefix}")).expect("url");
        (server, rx)
    }

    #[test]
    fn urls() {
        let s = Server::parse("http://127.0.0.1:9477").expect("ok");
        assert_eq!(
            (s.authority.as_str(), s.prefix.as_str(), s.url()),
            ("127.0.0.1:9477", "", "http://127.0.0.1:9477")
        );
        let s = Server::parse("http://agent.example/proxy/").expect("ok");
        assert_eq!(
            (s.authority.as_str(), s.prefix.as_str(), s.url()),
            ("agent.example", "/proxy", "http://agent.example/proxy")
        );
        let s = Server::parse("http://[::1]:8080").expect("ok");
        assert_eq!(s.authority, "[::1]:8080");
        for bad in [
            "",
            "127.0.0.1:9477",
            "https://x",
            "http://",
            "http://h:port",
            "http://h:",
            "http://h:70000",
            "http://u@h",
            "http://h/p?q",
        ] {
            assert!(Server::parse(bad).is_err(), "{bad}");
        }
        let https = Server::parse("https://x").expect_err("https");
        assert!(
            https.to_string().contains("https is not supported"),
            "{https}"
        );
    }

    #[test]
    fn bodies_are_read_whole() {
        let server = canned(
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n\
              4\r\nwiki\r\n5;ext=1\r\npedia\r\n0\r\n\r\n",
            Duration::ZERO,
        );
        assert_eq!(
            server.get("/x").expect("answer"),
            (404, b"wikipedia".to_vec())
        );
        let (server, head) = canned_at(
            "/proxy/",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
            Duration::ZERO,
        );
        assert_eq!(
            server.get("/api?q=a%20b").expect("answer"),
            (200, b"{}".to_vec())
        );
        let head = head.recv().expect("request").to_ascii_lowercase();
        assert!(
            head.starts_with("get /proxy/api?q=a%20b http/1.1\r\n"),
            "{head}"
        );
        assert!(head.contains("\r\naccept: application/json\r\n"), "{head}");
        assert!(!head.contains("authorization"), "{head}");
        let (server, head) = canned_at(
            "",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
            Duration::ZERO,
        );
        let server = server.with_token(Some("t0k.en".to_owned()));
        assert!(!format!("{server:?}").contains("t0k.en"));
        server.get("/metrics").expect("answer");
        let head = head.recv().expect("request");
        assert!(
            head.contains("\r\nauthorization: Bearer t0k.en\r\n"),
            "{head}"
        );
        let bad = Server::parse("http://127.0.0.1:1")
            .expect("url")
            .with_token(Some("a\nb".to_owned()));
        assert!(matches!(bad.get("/"), Err(HttpError::BadToken { .. })));
    }

    #[test]
    fn broken_answers_are_errors() {
        let garbage = canned(b"SSH-2.0-OpenSSH\r\n\r\n", Duration::ZERO);
        let err = garbage.get("/").expect_err("not HTTP");
        assert!(matches!(err, HttpError::Protocol { .. }), "{err}");
        let short = canned(
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
            Duration::ZERO,
        );
        let err = short.get("/").expect_err("truncated");
        assert!(matches!(err, HttpError::Protocol { .. }), "{err}");
        let huge = canned(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1099511627776\r\n\r\n",
            Duration::from_secs(1),
        );
        let err = huge.get("/").expect_err("too large");
        assert!(matches!(err, HttpError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn streamed_bodies_are_limited() {
        let body = http_body_util::Full::new(Bytes::from_static(b"0123456789"));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let read = |limit| runtime.block_on(read_body(body.clone(), limit, TIMEOUT, "u"));
        assert_eq!(read(10).expect("fits"), b"0123456789");
        assert!(matches!(read(9), Err(HttpError::TooLarge { limit: 9, .. })));
    }

    #[test]
    fn silence_times_out() {
        let server = canned(b"", Duration::from_secs(2)).with_timeout(Duration::from_millis(200));
        let err = server.get("/").expect_err("no answer");
        assert!(matches!(err, HttpError::Timeout { .. }), "{err}");
        assert!(err.to_string().contains("within 200ms"), "{err}");
        let server = canned(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab",
            Duration::from_secs(2),
        )
        .with_timeout(Duration::from_millis(200));
        let err = server.get("/").expect_err("body stalls");
        assert!(matches!(err, HttpError::Timeout { .. }), "{err}");
    }

    #[test]
    fn unreachable_is_explained() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        let server = Server::parse(&format!("http://127.0.0.1:{port}")).expect("url");
        let err = server.get("/healthz").expect_err("nothing listens");
        assert!(matches!(err, HttpError::Unreachable { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            format!("cannot connect to http://127.0.0.1:{port}/healthz")
        );
    }
}
