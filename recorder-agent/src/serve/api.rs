//! The HTTP API: health, readiness and profiles. Every error is a JSON body
//! `{"error": "..."}` with a 4xx/5xx status; malformed paths are answered, never panicked on.

use std::{sync::Arc, time::SystemTime};

use axum::{
    Json,
    http::{StatusCode, Uri},
    response::{IntoResponse, Response},
};
use percent_encoding::percent_decode_str;
use serde_json::json;

use super::state::Shared;
use crate::{
    export::{Format, UnknownFormat, publish::Mode, seccomp},
    profile::{Identity, Profile},
};

/// Path prefix of one profile.
pub const PROFILES_PATH: &str = "/api/v1/profiles";

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub(super) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

pub(super) async fn status(
    axum::extract::State(shared): axum::extract::State<Arc<Shared>>,
) -> Response {
    let status = shared
        .status
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    Json(status).into_response()
}

pub(super) async fn readyz(
    axum::extract::State(shared): axum::extract::State<Arc<Shared>>,
) -> Response {
    match shared.readiness.waiting_for() {
        Some(condition) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, condition.waiting()).into_response()
        }
        // Unpinned counters do not fail readiness: the agent counts and serves correctly, and
        // a failing probe would stall a rollout without bringing the bpffs back. What a
        // restart would lose is said here, in the status and in a metric instead.
        None => {
            let unpinned = shared
                .status
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .unpinned_reason
                .clone();
            match unpinned {
                None => Json(json!({ "status": "ready" })).into_response(),
                Some(reason) => Json(json!({
                    "status": "ready",
                    "warnings": [format!("counters not pinned, a restart loses what was not collected yet: {reason}")],
                }))
                .into_response(),
            }
        }
    }
}

/// A profile as the API shows it: the stored profile plus what is derived from it.
#[derive(Debug, serde::Serialize)]
pub struct ProfileView<'a> {
    /// The profile.
    #[serde(flatten)]
    pub profile: &'a Profile,
    /// No new syscall for `--stable-after`.
    pub stable: bool,
    /// The mode of the workload container's SyscallProfile (Kubernetes mode, once listed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
}

impl<'a> ProfileView<'a> {
    fn new(profile: &'a Profile, shared: &Shared) -> Self {
        Self {
            profile,
            stable: profile.is_stable(SystemTime::now(), shared.stable_after),
            mode: shared
                .cluster
                .as_deref()
                .and_then(|view| view.get(&profile.identity))
                .map(|cluster| cluster.mode),
        }
    }
}

pub(super) async fn list_profiles(
    axum::extract::State(shared): axum::extract::State<Arc<Shared>>,
) -> Response {
    let profiles = shared.profiles.read();
    let views: Vec<_> = profiles
        .iter()
        .map(|p| ProfileView::new(p, &shared))
        .collect();
    Json(views).into_response()
}

/// The format asked for with `?format=` (the profile JSON when none).
fn parse_format(query: Option<&str>) -> Result<Format, ApiError> {
    let mut format = Format::Json;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode_str(value).decode_utf8_lossy();
        match key {
            "format" => {
                format = value.parse().map_err(|err: UnknownFormat| {
                    ApiError::new(StatusCode::BAD_REQUEST, err.to_string())
                })?;
            }
            other => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "unknown query parameter {:?}",
                        percent_decode_str(other).decode_utf8_lossy()
                    ),
                ));
            }
        }
    }
    Ok(format)
}

/// Parses `{namespace}/{kind}/{workload}/{container}` from the raw (still percent-encoded)
/// path after the profiles prefix. `_` is an empty part. A workload may contain `/` (cgroup
/// paths), encoded as `%2F` or not: the first two and the last segment are fixed, the rest is
/// the workload.
pub fn parse_identity_path(raw: &str) -> Result<Identity, String> {
    Identity::from_url_path(raw).map_err(|why| {
        format!(
            "{why}; expected {PROFILES_PATH}/{{namespace}}/{{kind}}/{{workload}}/{{container}} (use _ for an empty part)"
        )
    })
}

pub(super) async fn one_profile(
    axum::extract::State(shared): axum::extract::State<Arc<Shared>>,
    uri: Uri,
) -> Result<Response, ApiError> {
    let raw = uri
        .path()
        .strip_prefix(PROFILES_PATH)
        .and_then(|rest| rest.strip_prefix('/'))
        .unwrap_or("");
    let identity =
        parse_identity_path(raw).map_err(|msg| ApiError::new(StatusCode::BAD_REQUEST, msg))?;
    let format = parse_format(uri.query())?;
    let profiles = shared.profiles.read();
    let profile = profiles.get(&identity).ok_or_else(|| {
        ApiError::new(StatusCode::NOT_FOUND, format!("no profile for {identity}"))
    })?;
    Ok(match format {
        Format::Json => Json(ProfileView::new(profile, &shared)).into_response(),
        Format::Oci => Json(seccomp::oci_profile(profile, shared.arch)).into_response(),
        Format::Spo => Json(seccomp::spo_profile(profile, shared.arch)).into_response(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_paths() {
        assert_eq!(
            parse_identity_path("_/Cgroup/system.slice%2Fcron.service/_"),
            Ok(Identity::new("", "Cgroup", "system.slice/cron.service", ""))
        );
        assert_eq!(
            parse_identity_path("_/Cgroup/system.slice/cron.service/_"),
            Ok(Identity::new("", "Cgroup", "system.slice/cron.service", ""))
        );
        assert_eq!(
            parse_identity_path("ns/Deployment/web/nginx"),
            Ok(Identity::new("ns", "Deployment", "web", "nginx"))
        );
        assert_eq!(
            parse_identity_path("_/Cgroup/%5F/_"),
            Ok(Identity::new("", "Cgroup", "_", ""))
        );
        for bad in [
            "",
            "a",
            "a/b/c",
            "a//c/d",
            "a/b/c/",
            "a/b/%ff/d",
            "a/b/%00/d",
        ] {
            assert!(parse_identity_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn formats() {
        assert_eq!(parse_format(None).ok(), Some(Format::Json));
        assert_eq!(parse_format(Some("format=oci")).ok(), Some(Format::Oci));
        assert_eq!(parse_format(Some("format=spo")).ok(), Some(Format::Spo));
        assert!(parse_format(Some("format=xml")).is_err());
        assert!(parse_format(Some("x=1")).is_err());
    }
}
