//! The agent's HTTP authorization with its real reviewer ([`KubeReviewer`], kube's client)
//! against the fake API server's TokenReview and SubjectAccessReview endpoints, over real HTTP:
//! the wire format of both reviews and the answers a caller gets. Unprivileged: the router is
//! served in-process, no eBPF program is loaded.

use std::{sync::Arc, time::Duration};

use recorder_agent::{
    attribution::kubernetes::{self, Options},
    profile::syscalls::Arch,
    serve::{
        self, Shared,
        auth::{Gate, KubeReviewer},
        state::Condition,
    },
};
use tests::{
    fake_apiserver::{FakeApiServer, NOBODY_TOKEN, READER_TOKEN},
    http, http_as,
};

#[test]
fn kube_reviewer_against_the_fake_api_server() {
    let server = FakeApiServer::start().expect("fake API server");
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = server.kubeconfig(dir.path()).expect("kubeconfig");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let addr = runtime.block_on(async {
        let client = kubernetes::client(&Options {
            node_name: "node-a".to_owned(),
            kubeconfig: Some(kubeconfig),
        })
        .await
        .expect("client");
        let shared = Arc::new(Shared::new(Arch::X86_64, Duration::from_secs(600)));
        shared.readiness.met(Condition::FirstCollection);
        let gate = Arc::new(Gate::new(KubeReviewer::new(client)));
        let router = serve::router_with_auth(shared, Some(gate));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, router).await });
        addr
    });

    assert_eq!(http(addr, "GET", "/healthz").expect("healthz").0, 200);
    assert_eq!(http(addr, "GET", "/readyz").expect("readyz").0, 200);
    for path in ["/metrics", "/api/v1/profiles", "/api/v1/status"] {
        let status = |token| http_as(addr, "GET", path, token).expect(path).0;
        assert_eq!(status(None), 401, "{path}");
        assert_eq!(status(Some("bogus")), 401, "{path}");
        assert_eq!(status(Some(NOBODY_TOKEN)), 403, "{path}");
        assert_eq!(status(Some(READER_TOKEN)), 200, "{path}");
    }
    let (_, body) = http_as(addr, "GET", "/api/v1/profiles", Some(NOBODY_TOKEN)).expect("403");
    assert!(
        body.contains("system:serviceaccount:default:nobody")
            && body.contains("get /api/v1/profiles"),
        "{body}"
    );
    let (_, body) = http_as(addr, "GET", "/metrics", Some("bogus")).expect("401");
    assert!(body.contains("invalid bearer token"), "{body}");
    // Cached: the repeated reads did not review again.
    let reviews = |kind: &str| {
        server
            .requests()
            .iter()
            .filter(|r| r.contains(kind))
            .count()
    };
    assert_eq!(reviews("/tokenreviews"), 3 * 3, "{:?}", server.requests());
    assert_eq!(reviews("/subjectaccessreviews"), 2 * 3);
    drop(server);
    // The API server gone: 503 with the reason, for a token not decided before.
    let (code, body) = http_as(addr, "GET", "/metrics", Some("fresh")).expect("503");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("creating a TokenReview failed"), "{body}");
    runtime.shutdown_background();
}
