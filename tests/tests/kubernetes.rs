//! Kubernetes attribution end to end: the agent's kube client against the fake API server,
//! real runc containers at the cgroup paths kubelet + containerd give (cgroupfs and systemd
//! styles), ids matching the fake pods' containerStatuses.

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::{
    api::{
        apps::v1::ReplicaSet,
        core::v1::{Container as PodContainer, ContainerStatus, Pod, PodSpec, PodStatus},
    },
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
};
use serde_json::Value;
use tests::{
    Agent, Container, count, count_any,
    fake_apiserver::{self, FakeApiServer},
    http, http_as, kubepods_path, poll, privileged, random_hex64, random_uid, runc_lock,
};

const NODE: &str = "node-a";
const NS: &str = "shop";

fn owner(api_version: &str, kind: &str, name: &str) -> OwnerReference {
    OwnerReference {
        api_version: api_version.into(),
        kind: kind.into(),
        name: name.into(),
        uid: random_uid(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// A running pod on `node` as the kubelet reports it: one regular container `name` with a
/// containerd id.
fn pod(
    name: &str,
    uid: &str,
    node: &str,
    owner: Option<OwnerReference>,
    labels: &[(&str, &str)],
    container: (&str, &str),
) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(NS.into()),
            uid: Some(uid.into()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect::<BTreeMap<_, _>>(),
            ),
            owner_references: owner.map(|owner| vec![owner]),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            node_name: Some(node.into()),
            containers: vec![PodContainer {
                name: container.0.into(),
                image: Some("busybox:1.36".into()),
                ..PodContainer::default()
            }],
            ..PodSpec::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".into()),
            container_statuses: Some(vec![ContainerStatus {
                name: container.0.into(),
                container_id: Some(format!("containerd://{}", container.1)),
                image: "docker.io/library/busybox:1.36".into(),
                image_id: "docker.io/library/busybox@sha256:00".into(),
                ready: true,
                restart_count: 0,
                started: Some(true),
                ..ContainerStatus::default()
            }]),
            ..PodStatus::default()
        }),
    }
}

fn systemd_path(uid: &str, id: &str) -> String {
    let escaped = uid.replace('-', "_");
    format!(
        "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{escaped}.slice/cri-containerd-{id}.scope"
    )
}

fn is(profile: &Value, kind: &str, workload: &str, container: &str) -> bool {
    profile["namespace"] == NS
        && profile["workload_kind"] == kind
        && profile["workload"] == workload
        && profile["container"] == container
}

fn k8s_agent(server: &FakeApiServer, interval: &str) -> anyhow::Result<Agent> {
    let state_dir = tempfile::tempdir()?;
    let kubeconfig = server.kubeconfig(state_dir.path())?;
    let kubeconfig = kubeconfig.display().to_string();
    Agent::spawn(
        &[
            "--kubernetes",
            "on",
            "--kubeconfig",
            &kubeconfig,
            "--node-name",
            NODE,
            "--interval",
            interval,
            // The fake serves pods, ReplicaSets, Jobs and the reviews of HTTP callers;
            // publishing SyscallProfiles is tested against the real API server
            // (tests/tests/cluster.rs).
            "--publish=false",
        ],
        None,
        state_dir,
    )
    // Kubernetes mode reviews HTTP callers (--http-auth auto): the harness reads the API
    // with a token the fake allows.
    .map(|agent| agent.with_token(fake_apiserver::READER_TOKEN))
}

#[test]
fn replicas_merge_cronjob_resolves_and_short_lived_containers_count() {
    if !privileged() {
        return;
    }
    let _runc = runc_lock();
    let server = FakeApiServer::start().expect("fake API server");
    let rs_name = "web-5d8f7b9c4d";
    server.add_replicaset(&ReplicaSet {
        metadata: ObjectMeta {
            name: Some(rs_name.into()),
            namespace: Some(NS.into()),
            owner_references: Some(vec![owner("apps/v1", "Deployment", "web")]),
            ..ObjectMeta::default()
        },
        ..ReplicaSet::default()
    });
    // RBAC says no to jobs: the CronJob comes from the job's name.
    server.forbid("jobs", NS, "nightly-29123456");

    let (uid_a, id_a) = (random_uid(), random_hex64());
    let (uid_b, id_b) = (random_uid(), random_hex64());
    let (uid_c, id_c) = (random_uid(), random_hex64());
    let replica = |name: &str, uid: &str, id: &str| {
        pod(
            name,
            uid,
            NODE,
            Some(owner("apps/v1", "ReplicaSet", rs_name)),
            &[("app", "web"), ("pod-template-hash", "5d8f7b9c4d")],
            ("app", id),
        )
    };
    // One replica is in the first list, the other arrives by watch; a pod of another node
    // claims a container id it must never be attributed with.
    server.apply_pod(&replica("web-5d8f7b9c4d-x2x9q", &uid_a, &id_a));
    server.apply_pod(&pod(
        "elsewhere",
        &random_uid(),
        "node-b",
        None,
        &[],
        ("intruder", &id_c),
    ));
    // Long interval: the short-lived container below is created and gone between two rounds,
    // so only the cgroup creation events can name it.
    let agent = k8s_agent(&server, "2s")
        .expect("agent")
        .wait_ready()
        .expect("ready");
    server.apply_pod(&replica("web-5d8f7b9c4d-7kq2m", &uid_b, &id_b));
    server.apply_pod(&pod(
        "nightly-29123456-8vx4p",
        &uid_c,
        NODE,
        Some(owner("batch/v1", "Job", "nightly-29123456")),
        &[],
        ("job", &id_c),
    ));
    server.bookmark();

    let a = Container::run_to_end(
        &kubepods_path("besteffort", &uid_a, &id_a),
        &["sh", "-c", "mkdir /tmp/replica-a && echo a"],
        None,
    )
    .expect("replica a");
    let b = Container::run_to_end(
        &systemd_path(&uid_b, &id_b),
        &["sh", "-c", "uname -a && echo b"],
        None,
    )
    .expect("replica b");
    assert_eq!(a.stdout().trim(), "a", "{}", a.stderr());
    assert!(b.stdout().trim().ends_with('b'), "{}", b.stderr());
    let started = std::time::Instant::now();
    let c = Container::run_and_delete(&kubepods_path("burstable", &uid_c, &id_c), &["uname"])
        .expect("short-lived job");
    let lived = started.elapsed();
    assert!(!c.cgroup_dir().exists(), "runc run removed the cgroup");

    let web = agent
        .wait_profile("the Deployment's merged profile", |p| {
            is(p, "Deployment", "web", "app")
                && count_any(p, &["mkdir", "mkdirat"]) >= 1
                && count(p, "uname") >= 1
        })
        .expect("web");
    // Both replicas' calls (mkdir from a, uname from b, waited for above); runc's execve of
    // each program is the runtime's, allowed in every container's profile.
    assert!(web["syscalls"].get("execve").is_some(), "{web}");
    let job = agent
        .wait_profile("the CronJob's profile", |p| {
            is(p, "CronJob", "nightly", "job") && count(p, "uname") >= 1
        })
        .expect("cronjob");
    eprintln!("short-lived container: runc run took {lived:?}");

    let profiles = agent.profiles().expect("profiles");
    for p in &profiles {
        let workload = p["workload"].as_str().unwrap_or_default();
        assert!(
            ![uid_a.as_str(), uid_b.as_str(), uid_c.as_str()].contains(&workload),
            "a fallback profile was left behind: {p}"
        );
        assert_ne!(
            p["container"], "intruder",
            "another node's pod was used: {p}"
        );
    }
    assert_eq!(
        profiles
            .iter()
            .filter(|p| is(p, "Deployment", "web", "app"))
            .count(),
        1,
        "replicas merge into one profile"
    );
    let requests = server.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.starts_with("/api/v1/pods?") && r.contains("spec.nodeName%3Dnode-a")),
        "pods listed by node: {requests:?}"
    );
    assert!(
        requests
            .iter()
            .any(|r| r == &format!("/apis/apps/v1/namespaces/{NS}/replicasets/{rs_name}")),
        "the ReplicaSet was read: {requests:?}"
    );
    assert!(
        requests
            .iter()
            .any(|r| r == &format!("/apis/batch/v1/namespaces/{NS}/jobs/nightly-29123456")),
        "the Job was asked for (and refused): {requests:?}"
    );
    assert!(
        count(&job, "uname") >= 1 && job["syscalls"].get("execve").is_some(),
        "the job's own start counted: {job}"
    );

    // The API and /metrics answer the allowed token only; the probes anyone.
    for path in ["/api/v1/profiles", "/metrics"] {
        let status = |token| http_as(agent.addr, "GET", path, token).expect(path).0;
        assert_eq!(status(None), 401, "{path} without a token");
        assert_eq!(status(Some("expired")), 401, "{path} with an invalid token");
        assert_eq!(
            status(Some(fake_apiserver::NOBODY_TOKEN)),
            403,
            "{path} without the permission"
        );
        assert_eq!(status(Some(fake_apiserver::READER_TOKEN)), 200, "{path}");
    }
    assert_eq!(http(agent.addr, "GET", "/healthz").expect("healthz").0, 200);
    let requests = server.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.starts_with("/apis/authorization.k8s.io/v1/subjectaccessreviews")),
        "callers reviewed through the API: {requests:?}"
    );
}

#[test]
fn late_pod_moves_counts_after_relist_and_readiness_waits_for_sync() {
    if !privileged() {
        return;
    }
    let _runc = runc_lock();
    let server = FakeApiServer::start().expect("fake API server");
    server.set_list_failing(true);
    let agent = k8s_agent(&server, "200ms").expect("agent");
    let (status, body) = poll(
        "/readyz answering 503",
        Duration::from_secs(20),
        || match http(agent.addr, "GET", "/readyz") {
            Ok((503, body)) => Some((503, body)),
            _ => None,
        },
    )
    .unwrap_or_else(|err| panic!("{err:#}\nagent log:\n{}", agent.log()));
    assert_eq!(status, 503);
    assert!(body.contains("Kubernetes"), "{body}");
    server.set_list_failing(false);
    let agent = agent.wait_ready().expect("ready after the list works");

    let (uid, id) = (random_uid(), random_hex64());
    let container = Container::create(
        &systemd_path(&uid, &id),
        &["sh", "-c", "uname && exec sleep 60"],
        None,
    )
    .expect("create");
    container.start().expect("start");
    let fallback = agent
        .wait_profile("the fallback profile before the pod is known", |p| {
            p["workload_kind"] == "Pod"
                && p["workload"] == uid.as_str()
                && p["container"] == id.as_str()
                && count(p, "uname") >= 1
        })
        .unwrap_or_else(|err| {
            panic!(
                "{err:#}\nagent log:\n{}\nstderr: {}",
                agent.log(),
                container.stderr()
            )
        });
    let unames = count(&fallback, "uname");
    assert_eq!(fallback["namespace"], "");

    // The pod appears without a watch event; only the relist after 410 Gone can see it.
    server.put_pod_silently(&pod(
        "db-0",
        &uid,
        NODE,
        Some(owner("apps/v1", "StatefulSet", "db")),
        &[],
        ("postgres", &id),
    ));
    server.expire_watches();
    let moved = agent
        .wait_profile("the StatefulSet's profile", |p| {
            is(p, "StatefulSet", "db", "postgres")
        })
        .expect("moved");
    assert_eq!(
        count(&moved, "uname"),
        unames,
        "no lost and no double counts: {moved}"
    );
    assert!(
        moved["syscalls"].get("execve").is_some(),
        "the profile before the pod arrived moved too: {moved}"
    );
    let profiles = agent.profiles().expect("profiles");
    assert!(
        !profiles.iter().any(|p| p["workload"] == uid.as_str()),
        "the fallback profile is gone: {profiles:?}"
    );
    let lists = server
        .requests()
        .iter()
        .filter(|r| r.starts_with("/api/v1/pods?") && !r.contains("watch="))
        .count();
    assert!(
        lists >= 3,
        "failed list, first list and the relist: {lists}"
    );
}

#[test]
fn kubernetes_mode_needs_a_node_name_and_a_readable_kubeconfig() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("no-such-kubeconfig");
    for (args, want) in [
        (
            vec!["--kubernetes", "on"],
            "pass --node-name or set NODE_NAME",
        ),
        (
            vec![
                "--kubernetes",
                "on",
                "--node-name",
                NODE,
                "--kubeconfig",
                missing.to_str().expect("utf-8"),
            ],
            "no-such-kubeconfig",
        ),
    ] {
        let output = std::process::Command::new(tests::agent_bin())
            .arg("run")
            .args(&args)
            .arg("--state-dir")
            .arg(dir.path())
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", tests::free_port()))
            .env_remove("NODE_NAME")
            .env_remove("KUBECONFIG")
            .env_remove("RECORDER_KUBECONFIG")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run the agent");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
    }
}
