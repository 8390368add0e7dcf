//! The HTTP API: health, readiness and profiles. Every error is a JSON body
//! `{"error": "..."}` with a 4xx/5xx status; malformed paths are answered, never panicked on.

use std::sync::{
    Arc, RwLock,
    atomic::{AtomicBool, Ordering},
};

use axum::{
    Json, Router,
    http::{StatusCode, Uri},
    response::{IntoResponse, Response},
    routing::get,
};
use percent_encoding::percent_decode_str;
use serde_json::json;

use std::time::SystemTime;

use crate::{
    export::seccomp,
    profile::syscalls::Arch,
    profile::{Identity, Profile, ProfileStore},
};

/// Path prefix of one profile.
pub const PROFILES_PATH: &str = "/api/v1/profiles";

/// What the HTTP handlers read, shared with the collection loop.
#[derive(Debug)]
pub struct Shared {
    /// The profiles.
    pub profiles: RwLock<ProfileStore>,
    /// Set once the programs are attached and the first collection ran.
    pub ready: AtomicBool,
    /// False until the Kubernetes pods of this node were listed (true outside Kubernetes).
    pub kubernetes_synced: AtomicBool,
    /// Node architecture, for seccomp export.
    pub arch: Arch,
    /// Quiet time after which a profile counts as stable.
    pub stable_after: std::time::Duration,
    /// The collection loop's view of the kernel side, for `/api/v1/status`.
    pub status: std::sync::Mutex<AgentStatus>,
    /// Prometheus metrics (`GET /metrics`).
    pub metrics: crate::serve::metrics::Metrics,
}

/// What `GET /api/v1/status` answers: capacity use and losses.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct AgentStatus {
    /// Cgroups the kernel can count at once (`--max-cgroups`).
    pub capacity: u32,
    /// Cgroups holding a slot at the last collection.
    pub cgroups: usize,
    /// Of those, cgroups whose path could not be resolved.
    pub unresolved_cgroups: usize,
    /// Calls not attributed to any cgroup because no slot was free, since the agent started.
    pub lost_calls: u64,
    /// Kernel slow-path runs that found no free slot, since the programs were loaded.
    pub slot_exhausted: u64,
    /// Map operations that failed in the kernel program (should stay 0).
    pub kernel_map_errors: u64,
    /// Counters continue from a previous agent (pinned).
    pub pinned_counters_reused: bool,
    /// Duration of the last collection, in microseconds.
    pub last_collection_us: u64,
    /// Collections done.
    pub collections: u64,
}

impl Shared {
    /// Empty shared state.
    pub fn new(arch: Arch, stable_after: std::time::Duration) -> Self {
        Self {
            profiles: RwLock::new(ProfileStore::new()),
            ready: AtomicBool::new(false),
            kubernetes_synced: AtomicBool::new(true),
            arch,
            stable_after,
            status: std::sync::Mutex::new(AgentStatus::default()),
            metrics: crate::serve::metrics::Metrics::new(
                crate::serve::metrics::MetricsOptions::default(),
            )
            .expect("metric names are valid constants"),
        }
    }

    /// Replaces the metrics (built with the agent's options).
    pub fn with_metrics(mut self, metrics: crate::serve::metrics::Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    fn read_profiles(&self) -> std::sync::RwLockReadGuard<'_, ProfileStore> {
        self.profiles
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
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

/// The router.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(
            "/healthz",
            get(|| async { Json(json!({ "status": "ok" })) }),
        )
        .route("/readyz", get(readyz))
        .route("/api/v1/status", get(status))
        .route("/metrics", get(crate::serve::metrics::handler))
        .route(PROFILES_PATH, get(list_profiles))
        .route(&format!("{PROFILES_PATH}/"), get(list_profiles))
        .route(&format!("{PROFILES_PATH}/{{*rest}}"), get(one_profile))
        .fallback(|uri: Uri| async move {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no such endpoint: {}", uri.path()),
            )
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed (only GET)",
            )
        })
        .with_state(shared)
}

async fn status(axum::extract::State(shared): axum::extract::State<Arc<Shared>>) -> Response {
    let status = shared
        .status
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    Json(status).into_response()
}

async fn readyz(axum::extract::State(shared): axum::extract::State<Arc<Shared>>) -> Response {
    if !shared.kubernetes_synced.load(Ordering::Acquire) {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the pods of this node are not synced from the Kubernetes API yet",
        )
        .into_response();
    }
    if shared.ready.load(Ordering::Acquire) {
        Json(json!({ "status": "ready" })).into_response()
    } else {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: programs not attached or first collection not done",
        )
        .into_response()
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
}

impl<'a> ProfileView<'a> {
    fn new(profile: &'a Profile, shared: &Shared) -> Self {
        Self {
            profile,
            stable: profile.is_stable(SystemTime::now(), shared.stable_after),
        }
    }
}

async fn list_profiles(
    axum::extract::State(shared): axum::extract::State<Arc<Shared>>,
) -> Response {
    let profiles = shared.read_profiles();
    let views: Vec<_> = profiles
        .iter()
        .map(|p| ProfileView::new(p, &shared))
        .collect();
    Json(views).into_response()
}

/// Output formats of one profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProfileFormat {
    /// The recorder's profile JSON.
    Json,
    /// OCI seccomp.
    Oci,
    /// security-profiles-operator SeccompProfile.
    Spo,
}

fn parse_format(query: Option<&str>) -> Result<ProfileFormat, ApiError> {
    let mut format = ProfileFormat::Json;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode_str(value).decode_utf8_lossy();
        match key {
            "format" => {
                format = match value.as_ref() {
                    "json" => ProfileFormat::Json,
                    "oci" => ProfileFormat::Oci,
                    "spo" => ProfileFormat::Spo,
                    other => {
                        return Err(ApiError::new(
                            StatusCode::BAD_REQUEST,
                            format!("unknown format {other:?} (json, oci, spo)"),
                        ));
                    }
                };
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

async fn one_profile(
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
    let profiles = shared.read_profiles();
    let profile = profiles.get(&identity).ok_or_else(|| {
        ApiError::new(StatusCode::NOT_FOUND, format!("no profile for {identity}"))
    })?;
    Ok(match format {
        ProfileFormat::Json => Json(ProfileView::new(profile, &shared)).into_response(),
        ProfileFormat::Oci => Json(seccomp::oci_profile(profile, shared.arch)).into_response(),
        ProfileFormat::Spo => Json(seccomp::spo_profile(profile, shared.arch)).into_response(),
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
        assert_eq!(parse_format(None).ok(), Some(ProfileFormat::Json));
        assert_eq!(
            parse_format(Some("format=oci")).ok(),
            Some(ProfileFormat::Oci)
        );
        assert_eq!(
            parse_format(Some("format=spo")).ok(),
            Some(ProfileFormat::Spo)
        );
        assert!(parse_format(Some("format=xml")).is_err());
        assert!(parse_format(Some("x=1")).is_err());
    }
}
