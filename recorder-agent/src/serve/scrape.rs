//! `GET /metrics`: the exposition rendered off the async workers and gzipped when the
//! scraper accepts it.

use std::{sync::Arc, time::SystemTime};

use axum::{
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};

use super::{metrics::MetricsError, state::Shared};
use crate::report::Report;

/// Whether an `Accept-Encoding` value accepts gzip (and does not refuse it with `q=0`).
pub fn accepts_gzip(accept_encoding: &str) -> bool {
    let codings: Vec<(&str, bool)> = accept_encoding
        .split(',')
        .map(|part| {
            let mut pieces = part.split(';').map(str::trim);
            let coding = pieces.next().unwrap_or_default();
            let refused = pieces.any(|param| {
                param
                    .strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            (coding, refused)
        })
        .collect();
    // An explicit gzip entry wins over `*`.
    match codings
        .iter()
        .find(|(coding, _)| coding.eq_ignore_ascii_case("gzip"))
    {
        Some((_, refused)) => !refused,
        None => codings
            .iter()
            .any(|(coding, refused)| *coding == "*" && !refused),
    }
}

/// Gzips an exposition: Prometheus asks for it, and label-heavy text shrinks about 15x.
fn gzip(body: &str) -> std::io::Result<Vec<u8>> {
    use std::io::Write as _;
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 8),
        flate2::Compression::fast(),
    );
    encoder.write_all(body.as_bytes())?;
    encoder.finish()
}

fn error_response(message: String) -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        axum::Json(serde_json::json!({ "error": message })),
    )
        .into_response()
}

/// `GET /metrics`: rendered off the async workers (it holds the store's read lock and may
/// take milliseconds for thousands of series), gzipped when the scraper accepts it.
pub async fn handler(
    State(shared): State<Arc<Shared>>,
    headers: axum::http::HeaderMap,
) -> Response {
    let wants_gzip = headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(accepts_gzip);
    let rendered = tokio::task::spawn_blocking(move || {
        let body = {
            let store = shared.profiles.read();
            shared
                .metrics
                .render(&store, SystemTime::now(), shared.stable_after)?
        };
        Ok::<_, MetricsError>(if wants_gzip {
            (true, gzip(&body).map_err(MetricsError::Compress)?)
        } else {
            (false, body.into_bytes())
        })
    })
    .await;
    match rendered {
        Ok(Ok((true, body))) => (
            [
                (header::CONTENT_TYPE, prometheus::TEXT_FORMAT),
                (header::CONTENT_ENCODING, "gzip"),
            ],
            body,
        )
            .into_response(),
        Ok(Ok((false, body))) => {
            ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], body).into_response()
        }
        Ok(Err(err)) => error_response(Report(&err).to_string()),
        Err(err) => error_response(format!("rendering metrics: {err}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_negotiation() {
        assert!(accepts_gzip("gzip"));
        assert!(accepts_gzip("identity, gzip;q=0.5"));
        assert!(accepts_gzip("*"));
        assert!(!accepts_gzip("gzip;q=0"));
        assert!(!accepts_gzip("gzip;q=0, *"));
        assert!(!accepts_gzip("identity"));
        assert!(!accepts_gzip("br, deflate"));
        let body = "syscall_recorder_profiles 1\n".repeat(100);
        let packed = gzip(&body).expect("gzip");
        let mut text = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&packed[..]), &mut text)
            .expect("gunzip");
        assert_eq!(text, body);
        assert!(packed.len() < body.len() / 10);
    }
}
