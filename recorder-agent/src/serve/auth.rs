//! Kubernetes authentication and authorization of the HTTP API and `/metrics`, the way
//! kube-rbac-proxy does it: the caller's bearer token goes to a `TokenReview`, the user it
//! names to a `SubjectAccessReview` ([`access_attributes`]). `/metrics` is reviewed as a
//! non-resource URL (a ClusterRole with `nonResourceURLs: ["/metrics"]`, verb `get`). The
//! profiles are reviewed as the SyscallProfiles they are: reading a workload's profile from an
//! agent needs `get` on `syscallprofiles.syscall-recorder.io` in its namespace, the list and the
//! status need `list` in all namespaces. Not `/api/*` as a non-resource URL: every
//! authenticated user has that through the default `system:discovery` role (the API server's
//! own discovery paths), which would open the profiles to any token. `/healthz` and `/readyz`
//! stay open: the kubelet probes them without credentials.
//!
//! This module owns the [`Reviewer`] trait (the two API calls; [`KubeReviewer`] makes them
//! through the API server, tests use a fake), the decision cache (so a Prometheus scrape does
//! not cost two API calls each) and the axum middleware that answers 401/403/503.

use std::{
    collections::{BTreeMap, HashMap},
    future::Future,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use axum::{
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use k8s_openapi::api::{
    authentication::v1::{TokenReview, TokenReviewSpec},
    authorization::v1::{
        NonResourceAttributes, ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
    },
};
use kube::{Api, Client, api::PostParams};
use sha2::{Digest as _, Sha256};
use tracing::{debug, info, warn};

use super::api::{ApiError, PROFILES_PATH};
use crate::attribution::kubernetes::ApiReport;

/// Paths served without credentials: the kubelet's probes carry none.
pub const OPEN_PATHS: &[&str] = &["/healthz", "/readyz"];

/// How long an allowed decision is reused (a token's RBAC change shows within this).
pub const ALLOWED_TTL: Duration = Duration::from_secs(60);
/// How long a denied or unauthenticated decision is reused (short: a fixed binding or a fresh
/// token should work soon, while a client retrying a bad token does not reach the API server
/// on every request).
pub const DENIED_TTL: Duration = Duration::from_secs(10);
/// Decisions kept at most; a full cache drops expired ones, then starts over.
pub const CACHE_CAPACITY: usize = 1024;

/// The user a `TokenReview` names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct User {
    /// User name (`system:serviceaccount:NAMESPACE:NAME` for a service account).
    pub name: String,
    /// User uid, if the authenticator gives one.
    pub uid: Option<String>,
    /// Groups.
    pub groups: Vec<String>,
    /// Extra attributes (a service account token's pod and node, for example).
    pub extra: BTreeMap<String, Vec<String>>,
}

/// What a `TokenReview` says about a token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Authentication {
    /// The token is valid and names this user.
    Authenticated(User),
    /// The token is not valid (expired, unknown, wrong audience): the API server's reason.
    Unauthenticated(String),
}

/// What a `SubjectAccessReview` says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Access {
    /// RBAC (or another authorizer) allows it.
    Allowed,
    /// Not allowed: the authorizer's reason, often empty.
    Denied(String),
}

/// A review call that did not give an answer (API server unreachable, the agent's own RBAC
/// denies creating reviews): the request can be neither allowed nor refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReviewError {
    /// The `TokenReview` call failed.
    #[error("creating a TokenReview failed: {reason}")]
    TokenReview {
        /// The API error in one line.
        reason: String,
    },
    /// The `SubjectAccessReview` call failed, or its evaluation did.
    #[error("creating a SubjectAccessReview failed: {reason}")]
    AccessReview {
        /// The API error in one line.
        reason: String,
    },
}

/// The two review calls.
pub trait Reviewer: Send + Sync + 'static {
    /// Who `token` belongs to, if anyone.
    fn review_token(
        &self,
        token: &str,
    ) -> impl Future<Output = Result<Authentication, ReviewError>> + Send;
    /// Whether `user` may `verb` the non-resource URL `path`.
    fn review_access(
        &self,
        user: &User,
        verb: &str,
        path: &str,
    ) -> impl Future<Output = Result<Access, ReviewError>> + Send;
}

/// [`Reviewer`] through the API server (the agent's service account needs `create` on
/// `tokenreviews.authentication.k8s.io` and `subjectaccessreviews.authorization.k8s.io`).
#[derive(Clone)]
pub struct KubeReviewer {
    client: Client,
}

impl std::fmt::Debug for KubeReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeReviewer").finish_non_exhaustive()
    }
}

impl KubeReviewer {
    /// Over a configured client.
    pub fn new(client: Client) -> Self {
        Self { client }
    }

    /// Creates a review (cluster-scoped, never stored) and returns the API server's answer,
    /// or the API error in one line.
    async fn create<K>(&self, review: &K) -> Result<K, String>
    where
        K: kube::Resource<Scope = k8s_openapi::ClusterResourceScope, DynamicType = ()>
            + Clone
            + std::fmt::Debug
            + serde::Serialize
            + serde::de::DeserializeOwned,
    {
        Api::<K>::all(self.client.clone())
            .create(&PostParams::default(), review)
            .await
            .map_err(|err| ApiReport(&err).to_string())
    }
}

impl Reviewer for KubeReviewer {
    async fn review_token(&self, token: &str) -> Result<Authentication, ReviewError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                // No audiences: the API server's own, which service account tokens carry.
                audiences: None,
            },
            ..TokenReview::default()
        };
        let answer = self
            .create(&review)
            .await
            .map_err(|reason| ReviewError::TokenReview { reason })?;
        let status = answer.status.unwrap_or_default();
        let user = status.user.unwrap_or_default();
        match (status.authenticated, user.username) {
            (Some(true), Some(name)) if !name.is_empty() => {
                Ok(Authentication::Authenticated(User {
                    name,
                    uid: user.uid,
                    groups: user.groups.unwrap_or_default(),
                    extra: user.extra.unwrap_or_default(),
                }))
            }
            _ => Ok(Authentication::Unauthenticated(
                status
                    .error
                    .unwrap_or_else(|| "the token is not valid".to_owned()),
            )),
        }
    }

    async fn review_access(
        &self,
        user: &User,
        verb: &str,
        path: &str,
    ) -> Result<Access, ReviewError> {
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(user.name.clone()),
                uid: user.uid.clone(),
                groups: Some(user.groups.clone()),
                extra: Some(user.extra.clone()),
                ..access_attributes(verb, path)
            },
            ..SubjectAccessReview::default()
        };
        let answer = self
            .create(&review)
            .await
            .map_err(|reason| ReviewError::AccessReview { reason })?;
        let status = answer.status.unwrap_or_default();
        if status.allowed {
            return Ok(Access::Allowed);
        }
        // Denied with an evaluation error and no explicit denial: the authorizer could not
        // decide (a broken webhook), which is not the caller's fault.
        match status.evaluation_error {
            Some(error) if !error.is_empty() && status.denied != Some(true) => {
                Err(ReviewError::AccessReview { reason: error })
            }
            _ => Ok(Access::Denied(status.reason.unwrap_or_default())),
        }
    }
}

/// What a request is reviewed as: the SyscallProfiles it shows for the profiles and the
/// status (`get` in the profile's namespace, `list` in all namespaces for the list, the status
/// and a profile outside any namespace), the non-resource URL for anything else (`/metrics`).
pub fn access_attributes(verb: &str, path: &str) -> SubjectAccessReviewSpec {
    let profiles = |verb: &str, namespace: Option<String>| SubjectAccessReviewSpec {
        resource_attributes: Some(ResourceAttributes {
            group: Some(crate::export::publish::GROUP.to_owned()),
            resource: Some(crate::export::publish::PLURAL.to_owned()),
            verb: Some(verb.to_owned()),
            namespace,
            ..ResourceAttributes::default()
        }),
        ..SubjectAccessReviewSpec::default()
    };
    if path == "/api/v1/status" {
        return profiles("list", None);
    }
    if let Some(rest) = path.strip_prefix(PROFILES_PATH)
        && (rest.is_empty() || rest.starts_with('/'))
    {
        let rest = rest.trim_start_matches('/');
        if rest.is_empty() {
            return profiles("list", None);
        }
        let namespace = rest.split('/').next().unwrap_or_default();
        let namespace = percent_encoding::percent_decode_str(namespace).decode_utf8_lossy();
        return if namespace.is_empty() || namespace == "_" {
            // Host cgroups and bare containers: only who may read every namespace.
            profiles("list", None)
        } else {
            profiles(verb, Some(namespace.into_owned()))
        };
    }
    SubjectAccessReviewSpec {
        non_resource_attributes: Some(NonResourceAttributes {
            path: Some(path.to_owned()),
            verb: Some(verb.to_owned()),
        }),
        ..SubjectAccessReviewSpec::default()
    }
}

/// The decision on one request, as cached.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Decision {
    Allowed,
    Unauthenticated(String),
    Denied { user: String, reason: String },
}

/// Cache key: the token's SHA-256 (the token itself is not kept), verb and path.
type Key = ([u8; 32], String, String);

/// Decisions with their expiry.
#[derive(Debug, Default)]
struct Cache {
    entries: HashMap<Key, (Decision, Instant)>,
}

impl Cache {
    fn get(&self, key: &Key, now: Instant) -> Option<Decision> {
        self.entries
            .get(key)
            .filter(|(_, expires)| *expires > now)
            .map(|(decision, _)| decision.clone())
    }

    fn put(&mut self, key: Key, decision: Decision, ttl: Duration, now: Instant) {
        if self.entries.len() >= CACHE_CAPACITY {
            self.entries.retain(|_, (_, expires)| *expires > now);
            // Still full of live entries (many tokens or paths): start over rather than
            // track recency; the cost is a few extra reviews.
            if self.entries.len() >= CACHE_CAPACITY {
                self.entries.clear();
            }
        }
        self.entries.insert(key, (decision, now + ttl));
    }
}

/// The reviewer plus what the middleware keeps between requests.
#[derive(Debug)]
pub struct Gate<R> {
    reviewer: R,
    allowed_ttl: Duration,
    denied_ttl: Duration,
    cache: Mutex<Cache>,
    /// The cause of the review failures going on, said once until reviews work again.
    failing: Mutex<Option<ReviewError>>,
}

impl<R: Reviewer> Gate<R> {
    /// A gate with the default cache lifetimes.
    pub fn new(reviewer: R) -> Self {
        Self::with_ttls(reviewer, ALLOWED_TTL, DENIED_TTL)
    }

    /// A gate that reuses allowed decisions for `allowed_ttl`, refusals for `denied_ttl`.
    pub fn with_ttls(reviewer: R, allowed_ttl: Duration, denied_ttl: Duration) -> Self {
        Self {
            reviewer,
            allowed_ttl,
            denied_ttl,
            cache: Mutex::new(Cache::default()),
            failing: Mutex::new(None),
        }
    }

    async fn decide(&self, token: &str, verb: &str, path: &str) -> Result<Decision, ReviewError> {
        let key: Key = (
            Sha256::digest(token.as_bytes()).into(),
            verb.to_owned(),
            path.to_owned(),
        );
        if let Some(decision) = self.lock_cache().get(&key, Instant::now()) {
            return Ok(decision);
        }
        let result = self.review(token, verb, path).await;
        self.note_outcome(result.as_ref().err());
        let decision = result?;
        let ttl = if decision == Decision::Allowed {
            self.allowed_ttl
        } else {
            self.denied_ttl
        };
        self.lock_cache()
            .put(key, decision.clone(), ttl, Instant::now());
        Ok(decision)
    }

    async fn review(&self, token: &str, verb: &str, path: &str) -> Result<Decision, ReviewError> {
        let user = match self.reviewer.review_token(token).await? {
            Authentication::Authenticated(user) => user,
            Authentication::Unauthenticated(reason) => {
                return Ok(Decision::Unauthenticated(reason));
            }
        };
        Ok(
            match self.reviewer.review_access(&user, verb, path).await? {
                Access::Allowed => Decision::Allowed,
                Access::Denied(reason) => Decision::Denied {
                    user: user.name,
                    reason,
                },
            },
        )
    }

    /// Logs a review failure when its cause is new, and the recovery once; returns whether it
    /// logged.
    fn note_outcome(&self, error: Option<&ReviewError>) -> bool {
        let mut failing = self.failing.lock().unwrap_or_else(PoisonError::into_inner);
        match (error, failing.as_ref()) {
            (Some(error), last) if last != Some(error) => {
                warn!(error = %error, "cannot authorize HTTP requests: they are answered 503 \
                    until the review works (the agent needs create on tokenreviews and \
                    subjectaccessreviews, as deploy/ grants)");
                *failing = Some(error.clone());
                true
            }
            (None, Some(_)) => {
                info!("authorizing HTTP requests works again");
                *failing = None;
                true
            }
            _ => false,
        }
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The RBAC verb of a request to a non-resource URL: the method lowercased, `get` for HEAD
/// (as the API server and kube-rbac-proxy name it).
pub fn verb_of(method: &Method) -> String {
    if method == Method::HEAD {
        "get".to_owned()
    } else {
        method.as_str().to_ascii_lowercase()
    }
}

/// The token of an `Authorization: Bearer TOKEN` header, or why there is none.
fn bearer(headers: &HeaderMap) -> Result<String, &'static str> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or("no bearer token: send Authorization: Bearer TOKEN (a Kubernetes token)")?;
    let value = value
        .to_str()
        .map_err(|_| "malformed Authorization header")?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or("malformed Authorization header: expected Bearer TOKEN")?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() || token.contains(' ') {
        return Err("malformed Authorization header: expected Bearer TOKEN");
    }
    Ok(token.to_owned())
}

/// 401 with the challenge a client needs to know what to send.
fn unauthorized(message: String) -> Response {
    (
        [(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))],
        ApiError::new(StatusCode::UNAUTHORIZED, message),
    )
        .into_response()
}

/// The middleware: open paths pass; everything else needs a token whose user may `verb` the
/// path.
pub async fn require<R: Reviewer>(
    State(gate): State<Arc<Gate<R>>>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path().to_owned();
    if OPEN_PATHS.contains(&path.as_str()) {
        return next.run(request).await;
    }
    let token = match bearer(request.headers()) {
        Ok(token) => token,
        Err(why) => return unauthorized(why.to_owned()),
    };
    let verb = verb_of(request.method());
    match gate.decide(&token, &verb, &path).await {
        Ok(Decision::Allowed) => next.run(request).await,
        Ok(Decision::Unauthenticated(reason)) => {
            debug!(%reason, %path, "unauthenticated request");
            unauthorized(format!("the bearer token is not valid: {reason}"))
        }
        Ok(Decision::Denied { user, reason }) => {
            debug!(%user, %verb, %path, %reason, "forbidden request");
            let mut message = format!("forbidden: user {user:?} cannot {verb} {path}");
            if !reason.is_empty() {
                message.push_str(&format!(" ({reason})"));
            }
            ApiError::new(StatusCode::FORBIDDEN, message).into_response()
        }
        Err(error) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot authorize the request: {error}"),
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::body::Body;
    use tower::ServiceExt as _;

    use super::*;
    use crate::{profile::syscalls::Arch, serve::Shared};

    const READER: &str = "reader-token";
    const NOBODY: &str = "nobody-token";

    /// Tokens: READER may get everything, NOBODY is valid but may nothing, anything
    /// else is unauthenticated. Counts the calls; can fail on demand.
    #[derive(Debug, Default)]
    struct FakeReviewer {
        token_reviews: AtomicUsize,
        access_reviews: AtomicUsize,
        failure: Mutex<Option<ReviewError>>,
        seen: Mutex<Vec<(String, String, String)>>,
    }

    impl Reviewer for Arc<FakeReviewer> {
        async fn review_token(&self, token: &str) -> Result<Authentication, ReviewError> {
            self.token_reviews.fetch_add(1, Ordering::SeqCst);
            if let Some(error) = self.failure.lock().expect("lock").clone() {
                return Err(error);
            }
            let user = |name: &str| User {
                name: name.to_owned(),
                groups: vec!["system:serviceaccounts".to_owned()],
                ..User::default()
            };
            Ok(match token {
                READER => Authentication::Authenticated(user("system:serviceaccount:m:reader")),
                NOBODY => Authentication::Authenticated(user("system:serviceaccount:m:nobody")),
                _ => Authentication::Unauthenticated("token expired".to_owned()),
            })
        }

        async fn review_access(
            &self,
            user: &User,
            verb: &str,
            path: &str,
        ) -> Result<Access, ReviewError> {
            self.access_reviews.fetch_add(1, Ordering::SeqCst);
            self.seen.lock().expect("lock").push((
                user.name.clone(),
                verb.to_owned(),
                path.to_owned(),
            ));
            let granted = path == "/metrics" || path.starts_with("/api/");
            Ok(
                if user.name.ends_with(":reader") && verb == "get" && granted {
                    Access::Allowed
                } else {
                    Access::Denied(String::new())
                },
            )
        }
    }

    fn app(fake: &Arc<FakeReviewer>, denied_ttl: Duration) -> axum::Router {
        let shared = Arc::new(Shared::new(Arch::X86_64, Duration::from_secs(600)));
        shared
            .readiness
            .met(crate::serve::state::Condition::FirstCollection);
        let gate = Gate::with_ttls(Arc::clone(fake), ALLOWED_TTL, denied_ttl);
        crate::serve::router_with_auth(shared, Some(Arc::new(gate)))
    }

    async fn call(
        app: &axum::Router,
        method: Method,
        path: &str,
        token: Option<&str>,
    ) -> (StatusCode, HeaderMap, serde_json::Value) {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let response = app
            .clone()
            .oneshot(request.body(Body::empty()).expect("request"))
            .await
            .expect("infallible");
        let (parts, body) = response.into_parts();
        let bytes = axum::body::to_bytes(body, 1 << 20).await.expect("body");
        let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        (parts.status, parts.headers, json)
    }

    #[tokio::test]
    async fn probes_are_open_and_everything_else_needs_a_token() {
        let fake = Arc::new(FakeReviewer::default());
        let app = app(&fake, DENIED_TTL);
        for path in OPEN_PATHS {
            let (status, _, _) = call(&app, Method::GET, path, None).await;
            assert_eq!(status, StatusCode::OK, "{path}");
        }
        for path in [
            "/metrics",
            "/api/v1/profiles",
            "/api/v1/status",
            "/api/v1/profiles/ns/Deployment/web/c",
            "/nowhere",
        ] {
            let (status, headers, body) = call(&app, Method::GET, path, None).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
            assert_eq!(headers[header::WWW_AUTHENTICATE], "Bearer", "{path}");
            assert!(
                body["error"]
                    .as_str()
                    .expect("error")
                    .contains("no bearer token"),
                "{body}"
            );
        }
        assert_eq!(fake.token_reviews.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn malformed_bad_and_unpermitted_tokens_are_refused() {
        let fake = Arc::new(FakeReviewer::default());
        let app = app(&fake, DENIED_TTL);
        for header_value in [
            "Basic dXNlcjpwYXNz",
            "Bearer",
            "Bearer ",
            "Bearer a b",
            "token",
        ] {
            let request = Request::builder()
                .uri("/metrics")
                .header(header::AUTHORIZATION, header_value)
                .body(Body::empty())
                .expect("request");
            let response = app.clone().oneshot(request).await.expect("infallible");
            assert_eq!(
                response.status(),
                StatusCode::UNAUTHORIZED,
                "{header_value}"
            );
        }
        assert_eq!(fake.token_reviews.load(Ordering::SeqCst), 0);

        let (status, headers, body) = call(&app, Method::GET, "/metrics", Some("stale")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(headers[header::WWW_AUTHENTICATE], "Bearer");
        assert!(
            body["error"]
                .as_str()
                .expect("error")
                .contains("token expired"),
            "{body}"
        );

        let (status, _, body) = call(&app, Method::GET, "/api/v1/profiles", Some(NOBODY)).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(
            body["error"],
            "forbidden: user \"system:serviceaccount:m:nobody\" cannot get /api/v1/profiles"
        );
    }

    #[tokio::test]
    async fn the_right_token_gets_through_with_path_and_verb_reviewed() {
        let fake = Arc::new(FakeReviewer::default());
        let app = app(&fake, DENIED_TTL);
        for path in ["/metrics", "/api/v1/profiles", "/api/v1/status"] {
            let (status, _, _) = call(&app, Method::GET, path, Some(READER)).await;
            assert_eq!(status, StatusCode::OK, "{path}");
        }
        let (status, _, _) = call(&app, Method::HEAD, "/metrics", Some(READER)).await;
        assert_eq!(status, StatusCode::OK);
        // An allowed but unknown profile is the handler's 404; a POST is reviewed as "post".
        let (status, _, _) = call(
            &app,
            Method::GET,
            "/api/v1/profiles/ns/Deployment/web/c",
            Some(READER),
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _, _) = call(&app, Method::POST, "/api/v1/profiles", Some(READER)).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let seen = fake.seen.lock().expect("lock").clone();
        let reviewed: Vec<(&str, &str)> = seen
            .iter()
            .map(|(_, verb, path)| (verb.as_str(), path.as_str()))
            .collect();
        assert_eq!(
            reviewed,
            [
                ("get", "/metrics"),
                ("get", "/api/v1/profiles"),
                ("get", "/api/v1/status"),
                ("get", "/api/v1/profiles/ns/Deployment/web/c"),
                ("post", "/api/v1/profiles"),
            ],
            "HEAD /metrics reuses the cached GET decision"
        );
    }

    #[tokio::test]
    async fn decisions_are_cached_per_token_path_and_verb() {
        let fake = Arc::new(FakeReviewer::default());
        let app = app(&fake, DENIED_TTL);
        for _ in 0..5 {
            assert_eq!(
                call(&app, Method::GET, "/metrics", Some(READER)).await.0,
                StatusCode::OK
            );
            assert_eq!(
                call(&app, Method::GET, "/metrics", Some(NOBODY)).await.0,
                StatusCode::FORBIDDEN
            );
            assert_eq!(
                call(&app, Method::GET, "/metrics", Some("stale")).await.0,
                StatusCode::UNAUTHORIZED
            );
        }
        assert_eq!(fake.token_reviews.load(Ordering::SeqCst), 3);
        assert_eq!(fake.access_reviews.load(Ordering::SeqCst), 2);
        // Another path is another decision.
        call(&app, Method::GET, "/api/v1/status", Some(READER)).await;
        assert_eq!(fake.access_reviews.load(Ordering::SeqCst), 3);

        // Refusals expire on their own (here at once), allowed decisions do not yet.
        let fake = Arc::new(FakeReviewer::default());
        let app = self::app(&fake, Duration::ZERO);
        for _ in 0..3 {
            call(&app, Method::GET, "/metrics", Some(READER)).await;
            call(&app, Method::GET, "/metrics", Some(NOBODY)).await;
        }
        assert_eq!(fake.token_reviews.load(Ordering::SeqCst), 1 + 3);
    }

    #[tokio::test]
    async fn failed_reviews_are_503_and_not_cached() {
        let fake = Arc::new(FakeReviewer::default());
        let app = app(&fake, DENIED_TTL);
        *fake.failure.lock().expect("lock") = Some(ReviewError::TokenReview {
            reason: "403 Forbidden: tokenreviews.authentication.k8s.io is forbidden".to_owned(),
        });
        for _ in 0..2 {
            let (status, _, body) = call(&app, Method::GET, "/metrics", Some(READER)).await;
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(
                body["error"],
                "cannot authorize the request: creating a TokenReview failed: \
                 403 Forbidden: tokenreviews.authentication.k8s.io is forbidden"
            );
        }
        assert_eq!(fake.token_reviews.load(Ordering::SeqCst), 2);
        // Probes do not depend on the API server.
        assert_eq!(
            call(&app, Method::GET, "/healthz", None).await.0,
            StatusCode::OK
        );
        *fake.failure.lock().expect("lock") = None;
        assert_eq!(
            call(&app, Method::GET, "/metrics", Some(READER)).await.0,
            StatusCode::OK
        );
    }

    #[test]
    fn a_failure_is_said_once_per_cause() {
        let gate = Gate::new(Arc::new(FakeReviewer::default()));
        let denied = ReviewError::TokenReview {
            reason: "403 Forbidden: no".to_owned(),
        };
        let down = ReviewError::TokenReview {
            reason: "connection refused".to_owned(),
        };
        let said: Vec<bool> = [
            None,
            Some(&denied),
            Some(&denied),
            Some(&down),
            Some(&down),
            None,
            None,
            Some(&down),
        ]
        .into_iter()
        .map(|outcome| gate.note_outcome(outcome))
        .collect();
        assert_eq!(said, [false, true, false, true, false, true, false, true]);
    }

    #[test]
    fn cache_is_bounded() {
        let mut cache = Cache::default();
        let now = Instant::now();
        for i in 0..CACHE_CAPACITY * 2 {
            let key = ([0; 32], "get".to_owned(), format!("/api/{i}"));
            cache.put(key, Decision::Allowed, ALLOWED_TTL, now);
            assert!(cache.entries.len() <= CACHE_CAPACITY);
        }
    }

    #[test]
    fn profiles_are_reviewed_as_syscall_profiles_and_metrics_as_a_url() {
        let resource = |verb: &str, path: &str| {
            let spec = access_attributes(verb, path);
            assert!(spec.non_resource_attributes.is_none(), "{path}");
            let attributes = spec.resource_attributes.expect("resource");
            assert_eq!(attributes.group.as_deref(), Some("syscall-recorder.io"));
            assert_eq!(attributes.resource.as_deref(), Some("syscallprofiles"));
            (attributes.verb.unwrap_or_default(), attributes.namespace)
        };
        assert_eq!(
            resource("get", "/api/v1/profiles/shop/Deployment/web/app"),
            ("get".to_owned(), Some("shop".to_owned()))
        );
        assert_eq!(
            resource("get", "/api/v1/profiles/sh%6Fp/Deployment/web/app"),
            ("get".to_owned(), Some("shop".to_owned()))
        );
        for path in [
            "/api/v1/profiles",
            "/api/v1/profiles/",
            "/api/v1/status",
            "/api/v1/profiles/_/Cgroup/%2F/_",
        ] {
            assert_eq!(resource("get", path), ("list".to_owned(), None), "{path}");
        }
        let metrics = access_attributes("get", "/metrics");
        assert!(metrics.resource_attributes.is_none());
        let url = metrics.non_resource_attributes.expect("url");
        assert_eq!(url.path.as_deref(), Some("/metrics"));
        // Not a profiles path although it starts like one.
        assert!(
            access_attributes("get", "/api/v1/profilesX")
                .non_resource_attributes
                .is_some()
        );
    }

    #[test]
    fn verbs() {
        assert_eq!(verb_of(&Method::GET), "get");
        assert_eq!(verb_of(&Method::HEAD), "get");
        assert_eq!(verb_of(&Method::POST), "post");
        assert_eq!(verb_of(&Method::DELETE), "delete");
    }
}
