//! Serving: the HTTP API ([`api`]: health, readiness, status, profiles) and the Prometheus
//! exposition ([`metrics`], served by [`scrape`]), all reading the [`state`] the collection
//! loop writes.

pub mod api;
pub mod metrics;
pub mod scrape;
pub mod state;

use std::sync::Arc;

use axum::{
    Json, Router,
    http::{StatusCode, Uri},
    routing::get,
};
use serde_json::json;

use api::{ApiError, PROFILES_PATH};
pub use state::{AgentStatus, Shared};

/// The router.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(
            "/healthz",
            get(|| async { Json(json!({ "status": "ok" })) }),
        )
        .route("/readyz", get(api::readyz))
        .route("/api/v1/status", get(api::status))
        .route("/metrics", get(scrape::handler))
        .route(PROFILES_PATH, get(api::list_profiles))
        .route(&format!("{PROFILES_PATH}/"), get(api::list_profiles))
        .route(&format!("{PROFILES_PATH}/{{*rest}}"), get(api::one_profile))
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
