//! A fake kube-apiserver on loopback, speaking the part of the protocol the agent's kube
//! client uses: pod list with `fieldSelector` and a `resourceVersion`, watch streams of
//! newline-delimited `ADDED`/`MODIFIED`/`DELETED`/`BOOKMARK` events from a resourceVersion,
//! `410 Gone` (as the `ERROR` watch event a real server sends) once history is compacted, and
//! GETs of ReplicaSets and Jobs with `404` and `403` `Status` bodies, and the TokenReviews and
//! SubjectAccessReviews the agent makes for its HTTP callers ([`READER_TOKEN`] may get `/metrics`
//! and get and list SyscallProfiles, [`NOBODY_TOKEN`] is valid but may nothing, other tokens are invalid). Objects
//! are k8s-openapi types serialized as a real cluster sends them.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    convert::Infallible,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
};

use anyhow::Context as _;
use axum::{
    Router,
    body::{Body, Bytes},
    extract::{Path as UrlPath, Query, State as AxState},
    http::StatusCode,
    response::{IntoResponse as _, Response},
    routing::{get, post},
};
use futures_util::{StreamExt as _, stream};
use k8s_openapi::api::{apps::v1::ReplicaSet, batch::v1::Job, core::v1::Pod};
use serde_json::{Value, json};
use tokio::sync::broadcast;

#[derive(Clone, Debug)]
enum Msg {
    Line(String),
    Close,
}

#[derive(Debug, Default)]
struct State {
    rv: u64,
    /// Watch history: `(resourceVersion, event line)`.
    history: Vec<(u64, String)>,
    /// Oldest resourceVersion a watch may start from; older ones get 410.
    compacted: u64,
    pods: BTreeMap<(String, String), Value>,
    replicasets: HashMap<(String, String), Value>,
    jobs: HashMap<(String, String), Value>,
    forbidden: HashSet<(String, String, String)>,
    list_failing: bool,
    requests: Vec<String>,
}

type Shared = Arc<(Mutex<State>, broadcast::Sender<Msg>)>;

/// A token the fake authenticates as [`READER_USER`], allowed to get `/metrics` and read SyscallProfiles.
pub const READER_TOKEN: &str = "reader-token";
/// Its user.
pub const READER_USER: &str = "system:serviceaccount:monitoring:reader";
/// A token the fake authenticates as a user allowed nothing.
pub const NOBODY_TOKEN: &str = "nobody-token";

/// Records a review request and parses its body.
fn take_review(shared: &Shared, uri: &axum::http::Uri, body: &[u8]) -> Value {
    shared
        .0
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .requests
        .push(uri.to_string());
    serde_json::from_slice(body).unwrap_or_default()
}

/// A review's answer: 201 with the JSON.
fn created(answer: &Value) -> Response {
    (
        StatusCode::CREATED,
        [("content-type", "application/json")],
        answer.to_string(),
    )
        .into_response()
}

/// `POST .../tokenreviews`: authenticated for the two known tokens.
async fn token_review(
    AxState(shared): AxState<Shared>,
    uri: axum::http::Uri,
    body: Bytes,
) -> Response {
    let review = take_review(&shared, &uri, &body);
    let user = match review["spec"]["token"].as_str() {
        Some(READER_TOKEN) => Some(READER_USER),
        Some(NOBODY_TOKEN) => Some("system:serviceaccount:default:nobody"),
        _ => None,
    };
    let status = match user {
        Some(user) => json!({"authenticated": true, "user": {
            "username": user, "uid": "0000", "groups": ["system:serviceaccounts", "system:authenticated"]}}),
        None => json!({"authenticated": false, "error": "invalid bearer token"}),
    };
    let answer = json!({"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
        "metadata": {}, "spec": review["spec"], "status": status});
    created(&answer)
}

/// `POST .../subjectaccessreviews`: the reader may get `/metrics` and get and list
/// SyscallProfiles, as the reader ClusterRoles in deploy/ grant.
async fn access_review(
    AxState(shared): AxState<Shared>,
    uri: axum::http::Uri,
    body: Bytes,
) -> Response {
    let review = take_review(&shared, &uri, &body);
    let spec = &review["spec"];
    let path = spec["nonResourceAttributes"]["path"]
        .as_str()
        .unwrap_or_default();
    let resource = &spec["resourceAttributes"];
    let allowed = spec["user"] == READER_USER
        && ((spec["nonResourceAttributes"]["verb"] == "get" && path == "/metrics")
            || (resource["group"] == "syscall-recorder.io"
                && resource["resource"] == "syscallprofiles"
                && (resource["verb"] == "get" || resource["verb"] == "list")));
    let answer = json!({"kind": "SubjectAccessReview", "apiVersion": "authorization.k8s.io/v1",
        "metadata": {}, "spec": spec, "status": {"allowed": allowed}});
    created(&answer)
}

/// A running fake API server; stopped on drop.
#[derive(Debug)]
pub struct FakeApiServer {
    /// Where it listens (plain HTTP).
    pub addr: SocketAddr,
    shared: Shared,
    runtime: Option<tokio::runtime::Runtime>,
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16(),
    });
    (
        code,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn node_of(pod: &Value) -> &str {
    pod["spec"]["nodeName"].as_str().unwrap_or_default()
}

/// Whether `pod` passes a `fieldSelector` (only `spec.nodeName=` and `metadata.name=` terms).
fn selected(pod: &Value, selector: Option<&String>) -> bool {
    let Some(selector) = selector else {
        return true;
    };
    selector
        .split(',')
        .filter(|t| !t.is_empty())
        .all(|term| match term.split_once('=') {
            Some(("spec.nodeName", node)) => node_of(pod) == node,
            Some(("metadata.name", name)) => pod["metadata"]["name"] == name,
            _ => false,
        })
}

async fn pods(
    AxState(shared): AxState<Shared>,
    Query(query): Query<HashMap<String, String>>,
    uri: axum::http::Uri,
) -> Response {
    let (lock, events) = &*shared;
    let selector = query.get("fieldSelector");
    let mut state = lock.lock().unwrap_or_else(PoisonError::into_inner);
    state.requests.push(uri.to_string());
    if matches!(query.get("watch").map(String::as_str), Some("true" | "1")) {
        let since: u64 = query
            .get("resourceVersion")
            .and_then(|rv| rv.parse().ok())
            .unwrap_or(state.rv);
        if since < state.compacted {
            let gone = json!({"type": "ERROR", "object": {
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": format!("too old resource version: {since} ({})", state.compacted),
                "reason": "Expired", "code": 410}});
            return Response::new(Body::from(format!("{gone}\n")));
        }
        let selector = selector.cloned();
        let keep = move |line: &str| {
            let event: Value = serde_json::from_str(line).unwrap_or_default();
            event["type"] == "BOOKMARK" || selected(&event["object"], selector.as_ref())
        };
        let backlog: Vec<String> = state
            .history
            .iter()
            .filter(|(rv, line)| *rv > since && keep(line))
            .map(|(_, line)| format!("{line}\n"))
            .collect();
        // Subscribed under the lock: no event falls between the backlog and the live part.
        let live = events.subscribe();
        drop(state);
        let live = stream::unfold((live, keep), |(mut rx, keep)| async move {
            loop {
                match rx.recv().await {
                    Ok(Msg::Line(line)) if keep(&line) => {
                        return Some((format!("{line}\n"), (rx, keep)));
                    }
                    Ok(Msg::Line(_)) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Ok(Msg::Close) | Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        });
        let body = stream::iter(backlog)
            .chain(live)
            .map(|line| Ok::<_, Infallible>(Bytes::from(line)));
        return Response::builder()
            .header("content-type", "application/json")
            .body(Body::from_stream(body))
            .unwrap_or_default();
    }
    if state.list_failing {
        return status(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "etcd is having a bad day",
        );
    }
    let items: Vec<&Value> = state
        .pods
        .values()
        .filter(|pod| selected(pod, selector))
        .collect();
    let list = json!({
        "kind": "PodList", "apiVersion": "v1",
        "metadata": {"resourceVersion": state.rv.to_string()},
        "items": items,
    });
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        list.to_string(),
    )
        .into_response()
}

fn get_owned(
    shared: &Shared,
    kind: &str,
    namespace: String,
    name: String,
    uri: &axum::http::Uri,
) -> Response {
    let mut state = shared.0.lock().unwrap_or_else(PoisonError::into_inner);
    state.requests.push(uri.to_string());
    if state
        .forbidden
        .contains(&(kind.to_owned(), namespace.clone(), name.clone()))
    {
        return status(
            StatusCode::FORBIDDEN,
            "Forbidden",
            &format!(
                "{kind} \"{name}\" is forbidden: User \"system:serviceaccount:recorder:agent\" \
                 cannot get resource \"{kind}\" in namespace \"{namespace}\""
            ),
        );
    }
    let objects = if kind == "replicasets" {
        &state.replicasets
    } else {
        &state.jobs
    };
    match objects.get(&(namespace, name.clone())) {
        Some(object) => (
            StatusCode::OK,
            [("content-type", "application/json")],
            object.to_string(),
        )
            .into_response(),
        None => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("{kind} \"{name}\" not found"),
        ),
    }
}

async fn replicaset(
    AxState(shared): AxState<Shared>,
    UrlPath((namespace, name)): UrlPath<(String, String)>,
    uri: axum::http::Uri,
) -> Response {
    get_owned(&shared, "replicasets", namespace, name, &uri)
}

async fn job(
    AxState(shared): AxState<Shared>,
    UrlPath((namespace, name)): UrlPath<(String, String)>,
    uri: axum::http::Uri,
) -> Response {
    get_owned(&shared, "jobs", namespace, name, &uri)
}

async fn fallback(uri: axum::http::Uri) -> Response {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("the server could not find the requested resource ({uri})"),
    )
}

fn key_of(object: &Value) -> (String, String) {
    (
        object["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

impl FakeApiServer {
    /// Starts the server on a free loopback port.
    pub fn start() -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let (events, _) = broadcast::channel(1024);
        let shared: Shared = Arc::new((
            Mutex::new(State {
                rv: 1,
                ..State::default()
            }),
            events,
        ));
        let app = Router::new()
            .route("/api/v1/pods", get(pods))
            .route(
                "/apis/apps/v1/namespaces/{namespace}/replicasets/{name}",
                get(replicaset),
            )
            .route(
                "/apis/batch/v1/namespaces/{namespace}/jobs/{name}",
                get(job),
            )
            .route(
                "/apis/authentication.k8s.io/v1/tokenreviews",
                post(token_review),
            )
            .route(
                "/apis/authorization.k8s.io/v1/subjectaccessreviews",
                post(access_review),
            )
            .fallback(fallback)
            .with_state(Arc::clone(&shared));
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let addr = listener.local_addr()?;
        runtime.spawn(async move { axum::serve(listener, app).await });
        Ok(Self {
            addr,
            shared,
            runtime: Some(runtime),
        })
    }

    /// Writes a kubeconfig pointing at this server into `dir`.
    pub fn kubeconfig(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{}\n\
             users:\n- name: agent\n  user:\n    token: fake-token\ncontexts:\n- name: fake\n  context:\n    \
             cluster: fake\n    user: agent\ncurrent-context: fake\n",
            self.addr
        );
        std::fs::write(&path, text).context("writing the kubeconfig")?;
        Ok(path)
    }

    fn with_state<T>(&self, f: impl FnOnce(&mut State, &broadcast::Sender<Msg>) -> T) -> T {
        let (lock, events) = &*self.shared;
        let mut state = lock.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut state, events)
    }

    fn record(state: &mut State, events: &broadcast::Sender<Msg>, kind: &str, object: &Value) {
        let line = json!({"type": kind, "object": object}).to_string();
        state.history.push((state.rv, line.clone()));
        let _ = events.send(Msg::Line(line));
    }

    /// Adds or updates a pod (a watch sees ADDED or MODIFIED).
    pub fn apply_pod(&self, pod: &Pod) {
        self.store_pod(pod, true);
    }

    /// Adds or updates a pod without a watch event: only a (re)list sees it.
    pub fn put_pod_silently(&self, pod: &Pod) {
        self.store_pod(pod, false);
    }

    fn store_pod(&self, pod: &Pod, announce: bool) {
        let mut object = serde_json::to_value(pod).unwrap_or_default();
        self.with_state(|state, events| {
            state.rv += 1;
            object["metadata"]["resourceVersion"] = Value::String(state.rv.to_string());
            let key = key_of(&object);
            let kind = if state.pods.contains_key(&key) {
                "MODIFIED"
            } else {
                "ADDED"
            };
            state.pods.insert(key, object.clone());
            if announce {
                Self::record(state, events, kind, &object);
            }
        });
    }

    /// Deletes a pod (a watch sees DELETED).
    pub fn delete_pod(&self, namespace: &str, name: &str) {
        self.with_state(|state, events| {
            if let Some(mut object) = state.pods.remove(&(namespace.into(), name.into())) {
                state.rv += 1;
                object["metadata"]["resourceVersion"] = Value::String(state.rv.to_string());
                Self::record(state, events, "DELETED", &object);
            }
        });
    }

    /// Sends a BOOKMARK with the current resourceVersion.
    pub fn bookmark(&self) {
        self.with_state(|state, events| {
            let object = json!({"kind": "Pod", "apiVersion": "v1",
                "metadata": {"resourceVersion": state.rv.to_string()}});
            Self::record(state, events, "BOOKMARK", &object);
        });
    }

    /// Forgets the watch history and ends every watch: the next watch from an old
    /// resourceVersion gets 410 Gone and the client must relist.
    pub fn expire_watches(&self) {
        self.with_state(|state, events| {
            state.rv += 1;
            state.compacted = state.rv;
            state.history.clear();
            let _ = events.send(Msg::Close);
        });
    }

    /// Adds a ReplicaSet readable by GET.
    pub fn add_replicaset(&self, rs: &ReplicaSet) {
        let object = serde_json::to_value(rs).unwrap_or_default();
        self.with_state(|state, _| state.replicasets.insert(key_of(&object), object));
    }

    /// Adds a Job readable by GET.
    pub fn add_job(&self, job: &Job) {
        let object = serde_json::to_value(job).unwrap_or_default();
        self.with_state(|state, _| state.jobs.insert(key_of(&object), object));
    }

    /// Makes GETs of `resource` (`replicasets`, `jobs`) `namespace/name` answer 403.
    pub fn forbid(&self, resource: &str, namespace: &str, name: &str) {
        self.with_state(|state, _| {
            state
                .forbidden
                .insert((resource.into(), namespace.into(), name.into()))
        });
    }

    /// Makes pod lists fail with 500 (or work again).
    pub fn set_list_failing(&self, failing: bool) {
        self.with_state(|state, _| state.list_failing = failing);
    }

    /// Request URIs received so far (path and query).
    pub fn requests(&self) -> Vec<String> {
        self.with_state(|state, _| state.requests.clone())
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        let _ = self.shared.1.send(Msg::Close);
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
