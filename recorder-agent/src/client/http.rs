//! A minimal blocking HTTP/1.1 client for the client subcommands: GET over plain TCP with a
//! timeout, `Content-Length`, chunked and close-delimited bodies. The agent serves plain HTTP
//! (usually on loopback or through `kubectl port-forward`), so this avoids pulling an async
//! HTTP stack, a URL parser and IDNA tables into the agent binary for one request.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{TcpStream, ToSocketAddrs as _},
    time::Duration,
};

/// How long to wait for a connection or a read.
const TIMEOUT: Duration = Duration::from_secs(30);
/// Largest body accepted (a list of thousands of profiles fits easily).
const MAX_BODY: u64 = 256 << 20;

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
    /// No connection.
    #[error(
        "cannot reach {url}: {source} (is `recorder-agent run` listening there? set --server or RECORDER_SERVER)"
    )]
    Unreachable {
        /// The URL.
        url: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The answer is not HTTP the client understands.
    #[error("bad answer from {url}: {reason}")]
    Protocol {
        /// The URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
}

/// A server base URL, split.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Server {
    host: String,
    port: u16,
    prefix: String,
    url: String,
}

impl Server {
    /// Parses `http://host[:port][/prefix]` (port 80 by default; IPv6 hosts in brackets).
    pub fn parse(url: &str) -> Result<Self, HttpError> {
        let bad = |reason| HttpError::BadUrl {
            url: url.to_owned(),
            reason,
        };
        let rest = if let Some(rest) = url.strip_prefix("http://") {
            rest
        } else if url.starts_with("https://") {
            return Err(bad("https is not supported: the agent serves plain HTTP"));
        } else {
            return Err(bad("expected http://HOST[:PORT]"));
        };
        let (authority, prefix) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
        if authority.is_empty() {
            return Err(bad("no host"));
        }
        if authority.contains('@') {
            return Err(bad("credentials in the URL are not supported"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed ["))?;
            (host, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        let port = match port {
            Some(port) => port.parse().map_err(|_| bad("bad port"))?,
            None => 80,
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let prefix = prefix.trim_end_matches('/');
        Ok(Self {
            host: host.to_owned(),
            port,
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("/{prefix}")
            },
            url: url.trim_end_matches('/').to_owned(),
        })
    }

    /// The URL as given (without a trailing `/`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// `GET path` (absolute, already percent-encoded): status and body.
    pub fn get(&self, path: &str) -> Result<(u16, Vec<u8>), HttpError> {
        let url = format!("{}{path}", self.url);
        let unreachable = |source| HttpError::Unreachable {
            url: url.clone(),
            source,
        };
        let protocol = |reason: String| HttpError::Protocol {
            url: url.clone(),
            reason,
        };
        let addrs: Vec<_> = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(unreachable)?
            .collect();
        let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
        let mut stream = None;
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, TIMEOUT) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(err) => last = err,
            }
        }
        let mut stream = stream.ok_or(last).map_err(unreachable)?;
        stream
            .set_read_timeout(Some(TIMEOUT))
            .map_err(unreachable)?;
        let host = if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        };
        write!(
            stream,
            "GET {}{path} HTTP/1.1\r\nHost: {host}\r\nAccept: application/json\r\nUser-Agent: recorder-agent/{}\r\nConnection: close\r\n\r\n",
            self.prefix,
            env!("CARGO_PKG_VERSION")
        )
        .map_err(unreachable)?;
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader
            .read_line(&mut line)
            .map_err(|err| protocol(err.to_string()))?;
        let status: u16 = line
            .strip_prefix("HTTP/1.")
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| protocol(format!("not an HTTP status line: {:?}", line.trim_end())))?;
        let mut length = None;
        let mut chunked = false;
        loop {
            line.clear();
            reader
                .read_line(&mut line)
                .map_err(|err| protocol(err.to_string()))?;
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            let Some((name, value)) = header.split_once(':') else {
                return Err(protocol(format!("bad header {header:?}")));
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = Some(
                    value
                        .parse::<u64>()
                        .map_err(|_| protocol(format!("bad Content-Length {value:?}")))?,
                );
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.to_ascii_lowercase().contains("chunked");
            }
        }
        let mut body = Vec::new();
        if chunked {
            read_chunked(&mut reader, &mut body).map_err(protocol)?;
        } else {
            let limit = length.unwrap_or(MAX_BODY).min(MAX_BODY);
            reader
                .take(limit)
                .read_to_end(&mut body)
                .map_err(|err| protocol(err.to_string()))?;
            if length.is_some_and(|length| body.len() as u64 != length) {
                return Err(protocol("body shorter than its Content-Length".to_owned()));
            }
        }
        Ok((status, body))
    }
}

fn read_chunked(reader: &mut impl std::io::BufRead, body: &mut Vec<u8>) -> Result<(), String> {
    let mut line = String::new();
    loop {
        line.clear();
        reader.read_line(&mut line).map_err(|err| err.to_string())?;
        let size = line.trim_end().split(';').next().unwrap_or("");
        let size = u64::from_str_radix(size.trim(), 16)
            .map_err(|_| format!("bad chunk size {:?}", line.trim_end()))?;
        if size == 0 {
            return Ok(());
        }
        if body.len() as u64 + size > MAX_BODY {
            return Err("body too large".to_owned());
        }
        let before = body.len();
        reader
            .by_ref()
            .take(size)
            .read_to_end(body)
            .map_err(|err| err.to_string())?;
        if (body.len() - before) as u64 != size {
            return Err("truncated chunk".to_owned());
        }
        line.clear();
        reader.read_line(&mut line).map_err(|err| err.to_string())?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let s = Server::parse("http://127.0.0.1:9477").expect("ok");
        assert_eq!(
            (s.host.as_str(), s.port, s.prefix.as_str()),
            ("127.0.0.1", 9477, "")
        );
        let s = Server::parse("http://agent.example/proxy/").expect("ok");
        assert_eq!(
            (s.host.as_str(), s.port, s.prefix.as_str()),
            ("agent.example", 80, "/proxy")
        );
        let s = Server::parse("http://[::1]:8080").expect("ok");
        assert_eq!((s.host.as_str(), s.port), ("::1", 8080));
        for bad in [
            "",
            "127.0.0.1:9477",
            "https://x",
            "http://",
            "http://h:port",
            "http://u@h",
        ] {
            assert!(Server::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn chunked_bodies() {
        let mut body = Vec::new();
        read_chunked(
            &mut &b"4\r\nwiki\r\n5;ext=1\r\npedia\r\n0\r\n\r\n"[..],
            &mut body,
        )
        .expect("ok");
        assert_eq!(body, b"wikipedia");
        assert!(read_chunked(&mut &b"zz\r\n"[..], &mut Vec::new()).is_err());
        assert!(read_chunked(&mut &b"9\r\nabc"[..], &mut Vec::new()).is_err());
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
        assert!(err.to_string().contains("--server"), "{err}");
    }
}
