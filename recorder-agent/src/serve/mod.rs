//! Serving: the HTTP API ([`api`]: health, readiness, status, profiles) and the Prometheus
//! exposition ([`metrics`], served by [`scrape`]), all reading the [`state`] the collection
//! loop writes, behind Kubernetes authentication and authorization ([`auth`]) when asked.

pub mod api;
pub mod auth;
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

/// The router, open to anyone who reaches it (standalone agents listen on loopback).
pub fn router(shared: Arc<Shared>) -> Router {
    router_with_auth::<auth::KubeReviewer>(shared, None)
}

/// The router; with a `gate`, every request but the probes needs a bearer token that the gate's
/// reviewer authenticates and authorizes for its path and verb.
pub fn router_with_auth<R: auth::Reviewer>(
    shared: Arc<Shared>,
    gate: Option<Arc<auth::Gate<R>>>,
) -> Router {
    let router = Router::new()
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
        });
    // Outermost, so that it sees every request, the fallbacks' included (an unknown path
    // tells an unauthenticated caller nothing).
    let router = match gate {
        Some(gate) => router.layer(axum::middleware::from_fn_with_state(
            gate,
            auth::require::<R>,
        )),
        None => router,
    };
    router.with_state(shared)
}
