//! The agent as deployed, on a real Kubernetes cluster (`cargo xtask cluster up`, the image of
//! `cargo xtask image`, `kubectl apply -k deploy/overlays/dev`): real workloads, real RBAC, the
//! kubelet enforcing a delivered profile, restarts, Prometheus service discovery.
//!
//! A missing cluster fails loudly; `RECORDER_SKIP_CLUSTER=1` skips these tests explicitly. The
//! tests share the one agent (some restart it or change its RBAC), so they run one at a time.

use std::{
    collections::BTreeSet,
    fs,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde_json::Value;
use tests::{
    agent_cli, allowed,
    cluster::{
        AGENT_CONTAINER, AGENT_DAEMONSET, AGENT_IMAGE, AGENT_NAMESPACE, API_READER_ROLE,
        API_SERVER, BUSYBOX_IMAGE, Cluster, METRICS_READER_ROLE, SECCOMP_ROOT, cluster_lock, find,
        identities, profiles, total_calls, wait_for, workspace, write_private,
    },
    count, count_any, free_port, get_json, get_json_as, http, http_as,
};

/// Pod spec defaults that keep the tests quick to clean up.
fn pod_defaults() -> &'static str {
    "terminationGracePeriodSeconds: 1\n      automountServiceAccountToken: false\n      enableServiceLinks: false"
}

/// A busybox container.
fn container(name: &str, command: &[&str]) -> String {
    let command: Vec<String> = command.iter().map(|c| format!("{c:?}")).collect();
    format!(
        "- name: {name}\n        image: {BUSYBOX_IMAGE}\n        imagePullPolicy: Never\n        command: [{}]",
        command.join(", ")
    )
}

/// A busybox httpd Deployment serving /etc on 8080.
fn web_deployment(name: &str, replicas: u32) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      {defaults}
      containers:
      {container}
        ports: [{{containerPort: 8080}}]
",
        defaults = pod_defaults(),
        container = container("web", &["httpd", "-f", "-p", "8080", "-h", "/etc"]),
    )
}

/// The exec readiness probe of [`probed_web_deployment`]: `ls` lists a directory
/// (getdents64), which serving files never does, so the probe's calls are told apart.
const PROBE_COMMAND: [&str; 3] = ["sh", "-c", "ls /etc >/dev/null"];

/// [`web_deployment`] with an exec readiness probe: the kubelet runs it in the container
/// (through the runtime's exec) under the container's seccomp profile.
fn probed_web_deployment(name: &str, replicas: u32) -> String {
    let probe: Vec<String> = PROBE_COMMAND.iter().map(|c| format!("{c:?}")).collect();
    format!(
        "{}        readinessProbe:\n          exec: {{command: [{}]}}\n          periodSeconds: 2\n",
        web_deployment(name, replicas),
        probe.join(", ")
    )
}

/// A Deployment `busy` whose container `busy` calls uname once a second.
fn busy_deployment() -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: busy
spec:
  replicas: 1
  selector:
    matchLabels: {{app: busy}}
  template:
    metadata:
      labels: {{app: busy}}
    spec:
      {defaults}
      containers:
      {busy}
",
        defaults = pod_defaults(),
        busy = container(
            "busy",
            &["sh", "-c", "while true; do uname >/dev/null; sleep 1; done"]
        ),
    )
}

/// An HTTP/1.0 GET to `addr`: the whole answer.
fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: test\r\n\r\n")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer)
}

/// The pod IPs (port 8080) of the Running pods with `app=<app>`, optionally only those whose
/// first container sets a seccomp profile.
fn web_addrs(cluster: &Cluster, namespace: &str, app: &str, with_seccomp: bool) -> Vec<SocketAddr> {
    cluster
        .pods(namespace, &format!("app={app}"))
        .unwrap_or_default()
        .iter()
        .filter(|pod| {
            pod["status"]["phase"] == "Running" && pod["metadata"]["deletionTimestamp"].is_null()
        })
        .filter(|pod| {
            !with_seccomp
                || !pod["spec"]["containers"][0]["securityContext"]["seccompProfile"].is_null()
        })
        .filter_map(|pod| pod["status"]["podIP"].as_str())
        .filter_map(|ip| format!("{ip}:8080").parse().ok())
        .collect()
}

/// The ServiceAccount whose token the tests read the agent with: bound to both reader roles.
const READER_ACCOUNT: &str = "ct-reader";

/// The agent, deployed and reachable through a port-forward, with a token that may read it.
struct AgentAccess {
    pod: String,
    forward: tests::cluster::PortForward,
    token: String,
}

impl AgentAccess {
    fn new(cluster: &Cluster) -> anyhow::Result<Self> {
        let pod = cluster.deploy_agent()?;
        Self::to_pod(cluster, pod)
    }

    /// Port-forwards to `pod` and waits until the reader's token is allowed: a fresh binding
    /// takes a moment to reach the API server's authorizer, and the agent keeps a refusal for
    /// 10 s.
    fn to_pod(cluster: &Cluster, pod: String) -> anyhow::Result<Self> {
        let forward = cluster.port_forward(AGENT_NAMESPACE, &pod, 9477)?;
        let token = cluster
            .service_account_token(READER_ACCOUNT, &[METRICS_READER_ROLE, API_READER_ROLE])?;
        let access = Self {
            pod,
            forward,
            token,
        };
        wait_for(
            "the reader's token to be allowed by the agent",
            Duration::from_secs(60),
            &mut || {
                let status = |path| Ok::<_, anyhow::Error>(access.get(path)?.0);
                Ok((status("/api/v1/status")? == 200 && status("/metrics")? == 200).then_some(()))
            },
        )?;
        Ok(access)
    }

    /// `GET path` with the reader's token: status and body.
    fn get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        http_as(self.forward.addr, "GET", path, Some(&self.token))
    }

    fn profiles(&self) -> anyhow::Result<Vec<Value>> {
        profiles(&self.forward.url(), &self.token)
    }

    /// `GET /api/v1/status`.
    fn status(&self) -> anyhow::Result<Value> {
        Ok(get_json_as(self.forward.addr, "/api/v1/status", Some(&self.token))?.1)
    }

    /// Polls the profiles until `check` accepts them (90 s).
    fn wait<T>(
        &self,
        what: &str,
        mut check: impl FnMut(&[Value]) -> Option<T>,
    ) -> anyhow::Result<T> {
        let mut last = Vec::new();
        wait_for(what, Duration::from_secs(90), &mut || {
            last = self.profiles()?;
            Ok(check(&last))
        })
        .with_context(|| {
            format!(
                "profiles at the deadline: {}",
                serde_json::to_string(&last).unwrap_or_default()
            )
        })
    }
}

/// Lines of an agent log at WARN or ERROR.
fn warnings(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|line| line.contains("WARN") || line.contains("ERROR"))
        .collect()
}

/// The rendered deploy/overlays/dev objects.
fn rendered(cluster: &Cluster) -> anyhow::Result<Vec<Value>> {
    let overlay = workspace().join("deploy/overlays/dev");
    let yaml = cluster.kubectl(&["kustomize", overlay.to_str().context("path")?])?;
    let mut objects = Vec::new();
    for document in serde_yaml_ng::Deserializer::from_str(&yaml) {
        let value = <Value as serde::Deserialize>::deserialize(document)?;
        if !value.is_null() {
            objects.push(value);
        }
    }
    Ok(objects)
}

fn rendered_kind<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind)
        .unwrap_or_else(|| panic!("deploy/overlays/dev renders no {kind}"))
}

/// The rendered object of `kind` named `name` (there are several ClusterRoles).
fn rendered_named<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("deploy/overlays/dev renders no {kind} {name}"))
}

/// Every field `want` sets has the same value in `have` (the API adds defaults).
fn assert_subset(what: &str, want: &Value, have: &Value) {
    match (want, have) {
        (Value::Object(want), Value::Object(have_map)) => {
            for (key, value) in want {
                assert_subset(
                    &format!("{what}.{key}"),
                    value,
                    have_map.get(key).unwrap_or(&Value::Null),
                );
            }
        }
        _ => assert_eq!(
            want, have,
            "{what}: deploy/ says {want}, the cluster has {have}"
        ),
    }
}

/// The host pid of the agent container's process (its cgroup names the container id).
fn agent_host_pid(pod: &Value) -> Option<u32> {
    let id = pod["status"]["containerStatuses"][0]["containerID"]
        .as_str()?
        .rsplit('/')
        .next()?
        .to_owned();
    fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        let cgroup = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        (comm.trim() == "recorder-agent" && cgroup.contains(&id)).then_some(pid)
    })
}

/// 1. The DaemonSet of deploy/overlays/dev becomes Ready with exactly deploy/'s
///    ServiceAccount, RBAC and securityContext, and logs no Forbidden and no pin warning.
#[test]
fn daemonset_ready_with_deploys_rbac_and_security_context() -> anyhow::Result<()> {
    let _lock = cluster_lock();
    let Some(cluster) = Cluster::get() else {
        return Ok(());
    };
    let pod_name = cluster.deploy_agent()?;
    let objects = rendered(&cluster)?;

    let ds = cluster.json(&["get", "daemonset", "-n", AGENT_NAMESPACE, AGENT_DAEMONSET])?;
    let status = &ds["status"];
    assert_eq!(status["desiredNumberScheduled"], 1, "{status}");
    assert_eq!(status["numberReady"], 1, "{status}");
    let want_ds = rendered_kind(&objects, "DaemonSet");
    let want_pod = &want_ds["spec"]["template"]["spec"];
    let have_pod = &ds["spec"]["template"]["spec"];
    assert_eq!(have_pod["serviceAccountName"], "syscall-recorder");
    assert_eq!(
        have_pod["serviceAccountName"],
        want_pod["serviceAccountName"]
    );
    let want_container = &want_pod["containers"][0];
    let have_container = &have_pod["containers"][0];
    assert_eq!(have_container["image"], AGENT_IMAGE);
    assert_eq!(have_container["imagePullPolicy"], "IfNotPresent");
    // Exactly deploy/'s securityContext: nothing added, nothing changed.
    assert_eq!(
        have_container["securityContext"], want_container["securityContext"],
        "securityContext"
    );
    assert_eq!(have_container["args"], want_container["args"]);
    assert_subset("volumes", &want_pod["volumes"], &have_pod["volumes"]);

    for role in ["syscall-recorder", METRICS_READER_ROLE, API_READER_ROLE] {
        let want_role = rendered_named(&objects, "ClusterRole", role);
        let have_role = cluster.json(&["get", "clusterrole", role])?;
        assert_eq!(
            have_role["rules"], want_role["rules"],
            "ClusterRole {role} rules"
        );
    }
    let want_binding = rendered_named(&objects, "ClusterRoleBinding", "syscall-recorder");
    let have_binding = cluster.json(&["get", "clusterrolebinding", "syscall-recorder"])?;
    assert_eq!(have_binding["roleRef"], want_binding["roleRef"]);
    assert_eq!(have_binding["subjects"], want_binding["subjects"]);
    let want_sa = rendered_kind(&objects, "ServiceAccount");
    let have_sa = cluster.json(&[
        "get",
        "serviceaccount",
        "-n",
        AGENT_NAMESPACE,
        "syscall-recorder",
    ])?;
    assert_eq!(
        have_sa["automountServiceAccountToken"],
        want_sa["automountServiceAccountToken"]
    );

    // The running pod: that image, that account, and the kernel's view of its process.
    let pod = cluster.json(&["get", "pod", "-n", AGENT_NAMESPACE, &pod_name])?;
    assert_eq!(pod["spec"]["serviceAccountName"], "syscall-recorder");
    assert_eq!(
        pod["spec"]["containers"][0]["securityContext"],
        want_container["securityContext"]
    );
    let pid = agent_host_pid(&pod).context("the agent's process on the host")?;
    let proc_status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        proc_status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_default()
            .to_owned()
    };
    let caps = u64::from_str_radix(&field("CapEff:"), 16)?;
    assert_eq!(caps, (1 << 38) | (1 << 39), "CapEff: PERFMON and BPF only");
    assert_eq!(u64::from_str_radix(&field("CapBnd:"), 16)?, caps, "CapBnd");
    assert_eq!(field("NoNewPrivs:"), "1");
    assert!(field("Uid:").starts_with("0\t"), "Uid: {}", field("Uid:"));
    let mountinfo = fs::read_to_string(format!("/proc/{pid}/mountinfo"))?;
    let root = mountinfo
        .lines()
        .find(|l| l.split_whitespace().nth(4) == Some("/"))
        .context("root mount")?;
    assert!(
        root.split_whitespace()
            .nth(5)
            .is_some_and(|o| o.split(',').any(|f| f == "ro")),
        "root filesystem read-only: {root}"
    );

    // Its log: no Forbidden (its RBAC suffices), no warning about pins.
    let log = cluster.agent_log(&pod_name)?;
    assert!(
        !log.to_ascii_lowercase().contains("forbidden"),
        "the agent's log mentions Forbidden:\n{log}"
    );
    let pin_warnings: Vec<&str> = warnings(&log)
        .into_iter()
        .filter(|l| l.to_ascii_lowercase().contains("pin"))
        .collect();
    assert!(pin_warnings.is_empty(), "pin warnings: {pin_warnings:#?}");
    Ok(())
}

/// 2. Real controllers, each profiled under namespace/kind/name/container: a Deployment's two
///    replicas merged into one profile, a StatefulSet, a CronJob's job, an init container apart
///    from its pod's container, and a `kubectl debug` ephemeral container kept out of the
///    workload's container profile.
#[test]
fn workloads_are_profiled_by_namespace_kind_name_and_container() -> anyhow::Result<()> {
    let _lock = cluster_lock();
    let Some(cluster) = Cluster::get() else {
        return Ok(());
    };
    let agent = AgentAccess::new(&cluster)?;
    let ns = cluster.namespace("ct-workloads")?;
    let defaults = pod_defaults();
    ns.apply(&web_deployment("web", 2))?;
    ns.apply(&format!(
        "apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: db
spec:
  serviceName: db
  replicas: 1
  selector:
    matchLabels: {{app: db}}
  template:
    metadata:
      labels: {{app: db}}
    spec:
      {defaults}
      containers:
      {db}
---
apiVersion: batch/v1
kind: CronJob
metadata:
  name: tick
spec:
  schedule: \"0 0 1 1 *\"
  suspend: true
  jobTemplate:
    spec:
      backoffLimit: 0
      template:
        spec:
          restartPolicy: Never
          terminationGracePeriodSeconds: 1
          automountServiceAccountToken: false
          containers:
          - name: job
            image: {BUSYBOX_IMAGE}
            imagePullPolicy: Never
            command: [sh, -c, \"uname; sleep 1\"]
---
apiVersion: v1
kind: Pod
metadata:
  name: withinit
spec:
  {defaults_pod}
  initContainers:
  {setup}
  containers:
  {main}
",
        db = container(
            "db",
            &[
                "sh",
                "-c",
                "while true; do cat /etc/passwd >/dev/null; sleep 1; done"
            ]
        ),
        defaults_pod = defaults.replace("\n      ", "\n  "),
        setup = container(
            "setup",
            &["sh", "-c", "mkdir -p /tmp/init-was-here && uname"]
        )
        .replace("\n        ", "\n    "),
        main = container("main", &["sh", "-c", "while true; do sleep 1; done"])
            .replace("\n        ", "\n    "),
    ))?;
    // The CronJob's job, now (its schedule is far away): kubectl makes the CronJob its owner.
    ns.kubectl(&["create", "job", "tick-manual", "--from=cronjob/tick"])?;
    cluster.rollout(&ns.name, "deployment/web", Duration::from_secs(120))?;
    let webs = cluster.wait_for("both web replicas Running", Duration::from_secs(60), || {
        let addrs = web_addrs(&cluster, &ns.name, "web", false);
        Ok((addrs.len() == 2).then_some(addrs))
    })?;
    let web_pod = cluster.pods(&ns.name, "app=web")?[0]["metadata"]["name"]
        .as_str()
        .context("pod name")?
        .to_owned();
    ns.kubectl(&[
        "debug",
        &format!("pod/{web_pod}"),
        "--image",
        BUSYBOX_IMAGE,
        "--image-pull-policy=Never",
        "--container=dbg",
        "--",
        "sh",
        "-c",
        "ln /etc/passwd /tmp/debug-link; sleep 3",
    ])?;

    let web_profile =
        |profiles: &[Value]| find(profiles, &ns.name, "Deployment", "web", "web").cloned();
    let accepts = |profile: &Value| count_any(profile, &["accept", "accept4"]);
    let before = agent.wait("the web Deployment's profile", |p| web_profile(p))?;
    // 3 requests to one replica, 5 to the other: only one profile holding both replicas sees 8.
    for _ in 0..3 {
        http_get(webs[0], "/passwd")?;
    }
    for _ in 0..5 {
        http_get(webs[1], "/passwd")?;
    }
    // Each workload's pod sandboxes (the runtime's pause containers) are counted apart, under
    // `(sandbox)`, not as a pod of their own.
    let want: BTreeSet<(String, String, String)> = [
        ("CronJob", "tick", "job"),
        ("CronJob", "tick", "(sandbox)"),
        ("Deployment", "web", "ephemeral:dbg"),
        ("Deployment", "web", "web"),
        ("Deployment", "web", "(sandbox)"),
        ("Pod", "withinit", "main"),
        ("Pod", "withinit", "setup"),
        ("Pod", "withinit", "(sandbox)"),
        ("StatefulSet", "db", "db"),
        ("StatefulSet", "db", "(sandbox)"),
    ]
    .into_iter()
    .map(|(k, w, c)| (k.into(), w.into(), c.into()))
    .collect();
    let profiles = agent.wait("every workload's profile", |profiles| {
        let have: BTreeSet<_> = identities(profiles, &ns.name).into_iter().collect();
        let web = web_profile(profiles)?;
        let debug = find(profiles, &ns.name, "Deployment", "web", "ephemeral:dbg")?;
        (have == want
            && accepts(&web) >= accepts(&before) + 8
            && count_any(debug, &["link", "linkat"]) > 0)
            .then(|| profiles.to_vec())
    })?;
    // Exactly one profile per identity (replicas merged, nothing under a pod's own name).
    let all = identities(&profiles, &ns.name);
    assert_eq!(all.len(), want.len(), "{all:?}");
    let web = web_profile(&profiles).context("web")?;
    assert_eq!(
        count_any(&web, &["link", "linkat"]),
        0,
        "the debug container's ln leaked into the workload's profile: {web}"
    );
    let setup = find(&profiles, &ns.name, "Pod", "withinit", "setup").context("setup")?;
    let main = find(&profiles, &ns.name, "Pod", "withinit", "main").context("main")?;
    // uname: neither runc init nor a sleeping shell calls it (runc init makes directories,
    // links and mounts in every container, so those are no marks).
    assert!(count(setup, "uname") > 0, "{setup}");
    assert_eq!(count(main, "uname"), 0, "{main}");
    let job = find(&profiles, &ns.name, "CronJob", "tick", "job").context("job")?;
    assert!(count(job, "uname") > 0, "{job}");
    drop(agent);
    Ok(())
}

/// 3. The Deployment's learned profile, delivered by the agent into the kubelet's seccomp
///    root, is enforced: the patched rollout completes and serves, and the same image under
///    the profile gets EPERM for `ln` (link), a syscall the Deployment never made.
#[test]
fn delivered_profile_is_enforced_by_the_kubelet() -> anyhow::Result<()> {
    let _lock = cluster_lock();
    let Some(cluster) = Cluster::get() else {
        return Ok(());
    };
    let agent = AgentAccess::new(&cluster)?;
    let ns = cluster.namespace("ct-enforce")?;
    ns.apply(&probed_web_deployment("web", 2))?;
    cluster.rollout(&ns.name, "deployment/web", Duration::from_secs(120))?;
    let addrs = cluster.wait_for("both web replicas Running", Duration::from_secs(60), || {
        let addrs = web_addrs(&cluster, &ns.name, "web", false);
        Ok((addrs.len() == 2).then_some(addrs))
    })?;
    // Learn what serving takes: files found and not found, on both replicas.
    for addr in &addrs {
        for path in ["/passwd", "/nothing-here", "/group"] {
            http_get(*addr, path)?;
        }
    }
    // An interactive session's calls are its own (`exec:web`), never the container's.
    let session = ns.kubectl(&[
        "exec",
        "deploy/web",
        "-c",
        "web",
        "--",
        "sh",
        "-c",
        "mkdir /tmp/from-kubectl && echo made",
    ])?;
    assert_eq!(session.trim(), "made");
    let exec_profile = agent.wait("the kubectl exec session's profile", |profiles| {
        find(profiles, &ns.name, "Deployment", "web", "exec:web")
            .filter(|p| count_any(p, &["mkdir", "mkdirat"]) > 0)
            .cloned()
    })?;
    let relative = format!("syscall-recorder/{}/deployment/web/web.json", ns.name);
    let file = std::path::Path::new(SECCOMP_ROOT).join(&relative);
    let selector = format!("{}/Deployment/web/web", ns.name);
    // The delivered file is the agent's current OCI export (written after each change).
    let oci = wait_for(
        "the delivered profile to match the agent's export",
        Duration::from_secs(90),
        &mut || {
            let output = agent_cli(&[
                "export",
                &selector,
                "--format",
                "oci",
                "--server",
                &agent.forward.url(),
                "--token",
                &agent.token,
            ]);
            if !output.status.success() {
                return Ok(None);
            }
            let export: Value = serde_json::from_slice(&output.stdout)?;
            let Ok(text) = fs::read_to_string(&file) else {
                return Ok(None);
            };
            let delivered: Value = serde_json::from_str(&text)?;
            let served = agent.profiles()?;
            let web = find(&served, &ns.name, "Deployment", "web", "web");
            let accepted = web.map_or(0, |p| count_any(p, &["accept", "accept4"]));
            // The probe's calls are the container's: the kubelet runs it under its profile.
            let probed = web.map_or(0, |p| count(p, "getdents64"));
            Ok(
                (accepted >= 6 && probed > 0 && allowed(&export) == allowed(&delivered))
                    .then_some(delivered),
            )
        },
    )?;
    let allow = allowed(&oci);
    // `ln` makes a hard link: link(2) (or linkat). Not `ln -s`: runc init makes symlinks
    // (symlinkat) in every container, so symlinkat is in every learned profile.
    for never in ["link", "linkat", "mkdir", "mkdirat"] {
        assert!(
            !allow.contains(never),
            "{never} is in the profile: {allow:?} (the exec session: {exec_profile})"
        );
    }
    // The runtime's set-up is not the container's either, nor the sandbox's, on any of the
    // pods started so far (runc's init moves into the cgroup while it re-executes itself:
    // a race that the boundary must not lose).
    for runtime in ["pivot_root", "mount", "umount2", "sethostname", "keyctl"] {
        assert!(!allow.contains(runtime), "{runtime}: {allow:?}");
    }
    for profile in agent.profiles()? {
        if profile["namespace"] == ns.name.as_str() {
            assert_eq!(
                count_any(&profile, &["pivot_root", "keyctl", "sethostname"]),
                0,
                "the runtime's set-up in {profile}"
            );
        }
    }

    ns.kubectl(&[
        "patch",
        "deployment",
        "web",
        "--type=json",
        "-p",
        &serde_json::json!([{
            "op": "add",
            "path": "/spec/template/spec/containers/0/securityContext",
            "value": { "seccompProfile": { "type": "Localhost", "localhostProfile": relative } },
        }])
        .to_string(),
    ])?;
    cluster.rollout(&ns.name, "deployment/web", Duration::from_secs(180))?;
    let enforced = cluster.wait_for(
        "two pods under the profile",
        Duration::from_secs(60),
        || {
            let addrs = web_addrs(&cluster, &ns.name, "web", true);
            Ok((addrs.len() == 2).then_some(addrs))
        },
    )?;
    for addr in enforced {
        let answer = http_get(addr, "/passwd")?;
        assert!(
            answer.starts_with("HTTP/1.") && answer.contains(" 200 ") && answer.contains("root:"),
            "{addr} under the profile answered {answer:?}"
        );
    }
    // The exec probe passes under the profile (the rollout waited for Ready, and the pods
    // stay Ready), and a session's mkdir is refused there.
    for pod in cluster.pods(&ns.name, "app=web")? {
        if pod["metadata"]["deletionTimestamp"].is_null()
            && !pod["spec"]["containers"][0]["securityContext"]["seccompProfile"].is_null()
        {
            let ready = pod["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            assert!(ready, "{}", pod["status"]);
            let name = pod["metadata"]["name"].as_str().unwrap_or_default();
            let refused = ns.kubectl(&["exec", name, "-c", "web", "--", "mkdir", "/tmp/denied"]);
            let message = format!("{refused:?}");
            assert!(
                refused.is_err() && message.contains("not permitted"),
                "mkdir in an enforced pod: {message}"
            );
        }
    }

    ns.apply(&format!(
        "apiVersion: v1
kind: Pod
metadata:
  name: intruder
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  automountServiceAccountToken: false
  containers:
  - name: web
    image: {BUSYBOX_IMAGE}
    imagePullPolicy: Never
    command: [ln, /etc/passwd, /tmp/link]
    securityContext:
      seccompProfile: {{type: Localhost, localhostProfile: {relative}}}
"
    ))?;
    let pod = cluster.wait_phase(
        &ns.name,
        "intruder",
        &["Succeeded", "Failed"],
        Duration::from_secs(90),
    )?;
    let log = ns.kubectl(&["logs", "intruder"])?;
    let terminated = &pod["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(pod["status"]["phase"], "Failed", "{log} {terminated}");
    assert_eq!(terminated["exitCode"], 1, "{terminated}");
    assert!(
        log.contains("Operation not permitted"),
        "ln under the profile: {log:?} (want EPERM)"
    );
    Ok(())
}

/// The uname count of a Job's profile once it stopped changing.
fn settled_count(
    agent: &AgentAccess,
    namespace: &str,
    job: &str,
    container: &str,
) -> anyhow::Result<u64> {
    let mut last = None;
    agent.wait(&format!("job {job}'s uname count to settle"), |profiles| {
        let now = find(profiles, namespace, "Job", job, container).map(|p| count(p, "uname"));
        let settled = now.is_some() && now == last;
        last = now;
        if !settled {
            std::thread::sleep(Duration::from_secs(2));
        }
        settled.then_some(now.unwrap_or(0))
    })
}

fn uname_job(name: &str, completions: u32, parallelism: u32, unames: u32, sleep: u32) -> String {
    format!(
        "apiVersion: batch/v1
kind: Job
metadata:
  name: {name}
spec:
  completions: {completions}
  parallelism: {parallelism}
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      terminationGracePeriodSeconds: 1
      automountServiceAccountToken: false
      enableServiceLinks: false
      containers:
      - name: count
        image: {BUSYBOX_IMAGE}
        imagePullPolicy: Never
        command: [sh, -c, \"for i in $(seq 1 {unames}); do uname >/dev/null; done; sleep {sleep}\"]
"
    )
}

fn wait_job(
    cluster: &Cluster,
    namespace: &str,
    job: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    cluster
        .kubectl(&[
            "wait",
            "-n",
            namespace,
            &format!("job/{job}"),
            "--for=condition=Complete",
            &format!("--timeout={}s", timeout.as_secs()),
        ])
        .map(|_| ())
        .with_context(|| cluster.describe_pods(namespace))
}

/// 4. Deleting the agent's pod and a DaemonSet rollout, while a Job's pods start and finish:
///    every uname of the Job is in its profile, once (exact count), none in `(unresolved)`.
#[test]
fn agent_restarts_lose_and_double_nothing() -> anyhow::Result<()> {
    let _lock = cluster_lock();
    let Some(cluster) = Cluster::get() else {
        return Ok(());
    };
    let agent = AgentAccess::new(&cluster)?;
    let ns = cluster.namespace("ct-restarts")?;
    // What one pod of this template calls uname besides the loop (runtime, shell): measured
    // on a pod without restarts.
    ns.apply(&uname_job("calibrate", 1, 1, 0, 0))?;
    wait_job(&cluster, &ns.name, "calibrate", Duration::from_secs(90))?;
    let base = settled_count(&agent, &ns.name, "calibrate", "count")?;
    let unresolved_uname = |profiles: &[Value]| {
        find(profiles, "", "Cgroup", "(unresolved)", "").map_or(0, |p| count(p, "uname"))
    };
    let unresolved_before = unresolved_uname(&agent.profiles()?);
    drop(agent);

    const COMPLETIONS: u32 = 8;
    const UNAMES: u32 = 50;
    ns.apply(&uname_job("counter", COMPLETIONS, 2, UNAMES, 8))?;
    cluster.wait_for("the job's first pod", Duration::from_secs(60), || {
        Ok((!cluster.pods(&ns.name, "job-name=counter")?.is_empty()).then_some(()))
    })?;
    let first = cluster.agent_pod()?;
    cluster.kubectl(&["delete", "pod", "-n", AGENT_NAMESPACE, &first])?;
    let second = cluster.wait_for("a new agent pod", Duration::from_secs(90), || {
        let pod = cluster.agent_pod()?;
        Ok((pod != first).then_some(pod))
    })?;
    cluster.restart_agent()?;
    let third = cluster.agent_pod()?;
    assert_ne!(third, second, "the rollout replaced the agent");
    let succeeded_during =
        cluster.json(&["get", "job", "-n", &ns.name, "counter"])?["status"]["succeeded"]
            .as_u64()
            .unwrap_or(0);
    eprintln!("{succeeded_during} of {COMPLETIONS} job pods had finished when the rollout ended");
    assert!(
        succeeded_during < u64::from(COMPLETIONS),
        "the job finished before the restarts were over: the test proves nothing"
    );
    wait_job(&cluster, &ns.name, "counter", Duration::from_secs(240))?;

    let agent = AgentAccess::to_pod(&cluster, third)?;
    let counted = settled_count(&agent, &ns.name, "counter", "count")?;
    let want = u64::from(COMPLETIONS) * (u64::from(UNAMES) + base);
    let unresolved_after = unresolved_uname(&agent.profiles()?);
    assert_eq!(
        counted,
        want,
        "uname of {COMPLETIONS} pods x ({UNAMES} + {base} per pod) across two agent restarts \
         (uname under (unresolved) meanwhile: {})",
        unresolved_after.saturating_sub(unresolved_before)
    );
    assert_eq!(
        unresolved_after, unresolved_before,
        "uname calls counted under (unresolved)"
    );
    // Nothing stays under a pod's fallback identity (`Pod/<uid>/<container id>`): what an
    // agent saved before the pod's metadata arrived moved to the Job, the sandboxes to its
    // `(sandbox)` profile.
    let uids: BTreeSet<String> = cluster
        .pods(&ns.name, "job-name=counter")?
        .iter()
        .filter_map(|pod| pod["metadata"]["uid"].as_str().map(str::to_owned))
        .collect();
    let leftovers: Vec<String> = agent
        .profiles()?
        .iter()
        .filter(|p| {
            p["workload_kind"] == "Pod"
                && p["workload"].as_str().is_some_and(|uid| uids.contains(uid))
        })
        .map(|p| format!("{}/{}", p["workload"], p["container"]))
        .collect();
    assert!(
        leftovers.is_empty(),
        "profiles left under the job pods' fallback identity: {leftovers:?}"
    );
    assert!(
        find(&agent.profiles()?, &ns.name, "Job", "counter", "(sandbox)").is_some(),
        "the job pods' sandboxes are counted apart"
    );
    // The DaemonSet's agent has no CAP_SYS_ADMIN: it still finds the program a previous agent
    // left attached (pinned), so no call is missed while it starts.
    let log = cluster.agent_log(&agent.pod)?;
    assert!(
        log.contains("programs_kept_attached=true"),
        "the restarted agent replaced the attached program:\n{log}"
    );
    Ok(())
}

/// A Prometheus server on loopback, killed on drop.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Prometheus {
    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    fn vector(&self, query: &str) -> anyhow::Result<Vec<Value>> {
        let encoded: String = query
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    (b as char).to_string()
                }
                other => format!("%{other:02X}"),
            })
            .collect();
        let (_, answer) = get_json(self.addr, &format!("/api/v1/query?query={encoded}"))?;
        anyhow::ensure!(answer["status"] == "success", "{query}: {answer}");
        Ok(answer["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Prometheus with Kubernetes service discovery: `RECORDER_PROMETHEUS`, else the one
/// `cargo xtask cluster build` builds (Debian's is built without Kubernetes discovery).
fn prometheus_binary() -> std::path::PathBuf {
    std::env::var_os("RECORDER_PROMETHEUS").map_or_else(
        || workspace().join("target/cluster/bin/prometheus"),
        std::path::PathBuf::from,
    )
}

/// The test kubeconfig's CA, client certificate and key as files.
fn kubeconfig_credentials(cluster: &Cluster, dir: &std::path::Path) -> anyhow::Result<()> {
    let config = cluster.json(&["config", "view", "--raw"])?;
    for (field, value, file) in [
        (
            "ca",
            &config["clusters"][0]["cluster"]["certificate-authority-data"],
            "ca.crt",
        ),
        (
            "cert",
            &config["users"][0]["user"]["client-certificate-data"],
            "client.crt",
        ),
        (
            "key",
            &config["users"][0]["user"]["client-key-data"],
            "client.key",
        ),
    ] {
        let encoded = value
            .as_str()
            .with_context(|| format!("kubeconfig without {field} data"))?;
        let mut child = Command::new("base64")
            .arg("-d")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(encoded.as_bytes())?;
        let output = child.wait_with_output()?;
        anyhow::ensure!(
            output.status.success(),
            "base64 -d of the kubeconfig's {field}"
        );
        write_private(&dir.join(file), &output.stdout)?;
    }
    Ok(())
}

/// The ServiceAccount whose token the test Prometheus scrapes with: bound to the metrics
/// reader role only.
const SCRAPER_ACCOUNT: &str = "ct-scraper";

/// 5. Prometheus finds the agent pod through `kubernetes_sd_configs` (role pod, the API server
///    with the test kubeconfig's client certificate) and scrapes series named by workload, with
///    a token of a service account bound to the metrics reader role.
#[test]
fn prometheus_discovers_the_agent_pod_and_scrapes_workload_series() -> anyhow::Result<()> {
    let _lock = cluster_lock();
    let Some(cluster) = Cluster::get() else {
        return Ok(());
    };
    let agent = AgentAccess::new(&cluster)?;
    let ns = cluster.namespace("ct-metrics")?;
    ns.apply(&busy_deployment())?;
    agent.wait("the busy Deployment's profile", |p| {
        find(p, &ns.name, "Deployment", "busy", "busy")
            .filter(|p| count(p, "uname") > 0)
            .cloned()
    })?;

    let dir = tempfile::tempdir()?;
    kubeconfig_credentials(&cluster, dir.path())?;
    // Prometheus scrapes with a service account token allowed to get /metrics only, as
    // deploy/overlays/prometheus-operator binds Prometheus' own account.
    let scraper = cluster.service_account_token(SCRAPER_ACCOUNT, &[METRICS_READER_ROLE])?;
    write_private(&dir.path().join("scrape.token"), scraper.as_bytes())?;
    let path = |file: &str| dir.path().join(file).display().to_string();
    let config = format!(
        "global:
  scrape_interval: 2s
  evaluation_interval: 2s
scrape_configs:
  - job_name: syscall-recorder-pods
    authorization:
      credentials_file: {token}
    kubernetes_sd_configs:
      - role: pod
        api_server: {API_SERVER}
        namespaces:
          names: [{AGENT_NAMESPACE}]
        tls_config:
          ca_file: {ca}
          cert_file: {cert}
          key_file: {key}
    relabel_configs:
      - source_labels: [__meta_kubernetes_pod_annotation_prometheus_io_scrape]
        regex: \"true\"
        action: keep
      - source_labels: [__meta_kubernetes_pod_container_port_number]
        regex: \"9477\"
        action: keep
      - source_labels: [__meta_kubernetes_pod_name]
        target_label: pod
",
        ca = path("ca.crt"),
        cert = path("client.crt"),
        key = path("client.key"),
        token = path("scrape.token"),
    );
    fs::write(dir.path().join("prometheus.yml"), config)?;
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
    let log = fs::File::create(dir.path().join("prometheus.log"))?;
    let child = Command::new(prometheus_binary())
        .arg(format!("--config.file={}", path("prometheus.yml")))
        .arg(format!("--storage.tsdb.path={}", path("data")))
        .arg(format!("--web.listen-address={addr}"))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting prometheus (cargo xtask cluster build builds it)")?;
    let prometheus = Prometheus { child, addr, dir };
    wait_for("prometheus /-/ready", Duration::from_secs(30), &mut || {
        Ok(matches!(http(addr, "GET", "/-/ready"), Ok((200, _))).then_some(()))
    })
    .with_context(|| prometheus.log())?;

    let query = format!(
        "syscall_recorder_syscalls_total{{namespace=\"{}\",workload_kind=\"Deployment\",workload=\"busy\",container=\"busy\",syscall=\"uname\"}}",
        ns.name
    );
    let series = wait_for(
        "the busy Deployment's series in Prometheus",
        Duration::from_secs(90),
        &mut || {
            let result = prometheus.vector(&query)?;
            Ok((!result.is_empty()).then_some(result))
        },
    )
    .with_context(|| {
        // A workload beyond --max-series is folded into workload="(folded)": say so.
        let folded = prometheus
            .vector("syscall_recorder_metrics_folded_workloads")
            .map(|v| serde_json::to_string(&v).unwrap_or_default())
            .unwrap_or_default();
        let targets = get_json(addr, "/api/v1/targets")
            .map(|(_, t)| t.to_string())
            .unwrap_or_default();
        format!(
            "folded workloads: {folded}\ntargets: {targets}\nlog: {}",
            prometheus.log()
        )
    })?;
    assert_eq!(series.len(), 1, "{series:?}");
    let labels = &series[0]["metric"];
    assert_eq!(
        labels["pod"],
        agent.pod.as_str(),
        "the series come from the discovered agent pod: {labels}"
    );
    assert_eq!(labels["job"], "syscall-recorder-pods");
    let up = prometheus.vector("up{job=\"syscall-recorder-pods\"}")?;
    assert_eq!(up.len(), 1, "one agent target: {up:?}");
    assert_eq!(up[0]["value"][1], "1", "{up:?}");
    Ok(())
}

/// The cgroup v2 path of a process (`0::/path`).
fn cgroup_of(pid: u32) -> anyhow::Result<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
        .context("no cgroup v2 line")
}

/// 6. No profile holds the agent's own syscalls (the agent is PID 1 of its pod's PID
///    namespace and must exclude itself, not the host's PID 1), and the host's PID 1 is counted.
#[test]
fn the_agent_excludes_itself_and_counts_the_hosts_pid_1() -> anyhow::Result<()> {
    let _lock = cluster_lock();
    let Some(cluster) = Cluster::get() else {
        return Ok(());
    };
    let agent = AgentAccess::new(&cluster)?;
    let identity = (
        AGENT_NAMESPACE,
        "DaemonSet",
        AGENT_DAEMONSET,
        AGENT_CONTAINER,
    );
    let agent_calls = |profiles: &[Value]| {
        find(profiles, identity.0, identity.1, identity.2, identity.3).map_or(0, total_calls)
    };
    let pid1_cgroup = cgroup_of(1)?;
    let pid1_workload = match pid1_cgroup.trim_start_matches('/') {
        "" => "/".to_owned(),
        rel => rel.to_owned(),
    };
    let pid1_calls =
        |profiles: &[Value]| find(profiles, "", "Cgroup", &pid1_workload, "").map(total_calls);
    // Let startup settle (runc init of the agent's container is counted, and fine).
    std::thread::sleep(Duration::from_secs(3));
    let before = agent.profiles()?;
    let started = Instant::now();
    // Keep the agent busy: API requests, and its own collection every second.
    while started.elapsed() < Duration::from_secs(6) {
        agent.profiles()?;
        let _ = agent.get("/metrics");
    }
    std::thread::sleep(Duration::from_secs(2));
    let after = agent.profiles()?;
    assert_eq!(
        agent_calls(&after),
        agent_calls(&before),
        "the agent's own syscalls were counted (pod {}): before {:?}, after {:?}",
        agent.pod,
        find(&before, identity.0, identity.1, identity.2, identity.3),
        find(&after, identity.0, identity.1, identity.2, identity.3)
    );
    let members = fs::read_to_string(
        tests::cgroup2_root()
            .context("cgroup2")?
            .join(pid1_cgroup.trim_start_matches('/'))
            .join("cgroup.procs"),
    )
    .unwrap_or_default();
    let alone = members.split_whitespace().eq(["1"]);
    if !alone {
        eprintln!(
            "note: the host's PID 1 shares its cgroup {pid1_cgroup} with {} other processes; \
             its count proves less than on a systemd host (init.scope)",
            members.split_whitespace().count().saturating_sub(1)
        );
    }
    let (Some(pid1_before), Some(pid1_after)) = (pid1_calls(&before), pid1_calls(&after)) else {
        panic!("no profile for the host's PID 1 cgroup {pid1_cgroup} ({pid1_workload})");
    };
    assert!(
        pid1_after > pid1_before,
        "the host's PID 1 cgroup {pid1_cgroup} was not counted over 8 s: {pid1_before} -> {pid1_after}"
    );
    Ok(())
}

/// Restores deploy/'s RBAC on drop.
struct RestoreRbac<'a>(&'a Cluster);

impl Drop for RestoreRbac<'_> {
    fn drop(&mut self) {
        if let Err(err) = self.0.deploy_agent() {
            eprintln!("restoring deploy/overlays/dev failed: {err:#}");
        }
    }
}

fn can_i(cluster: &Cluster, verb: &str, resource: &str) -> bool {
    cluster
        .command()
        .args(["auth", "can-i", verb, resource, "-n", "default"])
        .arg(format!(
            "--as=system:serviceaccount:{AGENT_NAMESPACE}:syscall-recorder"
        ))
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "yes")
}

/// RBAC denials are real: without the replicaset and job gets, owners are named by the
/// agent's name rules (attribution/kubernetes `resolve_workload` with `Lookup::Failed`): a
/// ReplicaSet's pod-template-hash is trimmed to a Deployment, a job's `-<8+ digits>` suffix to
/// a CronJob, even where the API would have said otherwise (a hand-made ReplicaSet, a job
/// without owner), which proves the lookups were denied. The denial is said once per denied
/// kind (a warning naming the missing grant), never once per pod or per round.
#[test]
fn owner_lookups_denied_by_rbac_fall_back_to_name_rules() -> anyhow::Result<()> {
    let _lock = cluster_lock();
    let Some(cluster) = Cluster::get() else {
        return Ok(());
    };
    // A fresh agent: what an earlier test's agent said about denials does not count here.
    let before = cluster.deploy_agent()?;
    cluster.restart_agent()?;
    let fresh = cluster.wait_for("the restarted agent pod", Duration::from_secs(60), || {
        let pod = cluster.agent_pod()?;
        Ok((pod != before).then_some(pod))
    })?;
    let agent = AgentAccess::to_pod(&cluster, fresh)?;
    let log_before = cluster.agent_log(&agent.pod)?;
    let _restore = RestoreRbac(&cluster);
    cluster.apply(
        "",
        "apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: syscall-recorder
rules:
  - apiGroups: [\"\"]
    resources: [pods]
    verbs: [list, watch]
  # Kept: without them the agent cannot authorize this test's reads of its API (503).
  - apiGroups: [authentication.k8s.io]
    resources: [tokenreviews]
    verbs: [create]
  - apiGroups: [authorization.k8s.io]
    resources: [subjectaccessreviews]
    verbs: [create]
",
    )?;
    cluster.wait_for("the agent's gets denied", Duration::from_secs(30), || {
        Ok(
            (!can_i(&cluster, "get", "replicasets.apps") && !can_i(&cluster, "get", "jobs.batch"))
                .then_some(()),
        )
    })?;
    assert!(
        can_i(&cluster, "watch", "pods"),
        "the pod watch stays allowed"
    );

    let ns = cluster.namespace("ct-rbac")?;
    let defaults = pod_defaults();
    let sleeper = container(
        "c",
        &["sh", "-c", "while true; do uname >/dev/null; sleep 1; done"],
    );
    ns.apply(&format!(
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: rbweb
spec:
  replicas: 1
  selector:
    matchLabels: {{app: rbweb}}
  template:
    metadata:
      labels: {{app: rbweb}}
    spec:
      {defaults}
      containers:
      {sleeper}
---
apiVersion: apps/v1
kind: ReplicaSet
metadata:
  name: solo-abc12
spec:
  replicas: 1
  selector:
    matchLabels: {{app: solo, pod-template-hash: abc12}}
  template:
    metadata:
      labels: {{app: solo, pod-template-hash: abc12}}
    spec:
      {defaults}
      containers:
      {sleeper}
---
apiVersion: batch/v1
kind: Job
metadata:
  name: plain-12345678
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      {defaults}
      containers:
      {sleeper}
"
    ))?;
    let want: BTreeSet<(String, String, String)> = [
        ("CronJob", "plain", "c"),
        ("CronJob", "plain", "(sandbox)"),
        ("Deployment", "rbweb", "c"),
        ("Deployment", "rbweb", "(sandbox)"),
        ("Deployment", "solo", "c"),
        ("Deployment", "solo", "(sandbox)"),
    ]
    .into_iter()
    .map(|(k, w, c)| (k.into(), w.into(), c.into()))
    .collect();
    agent.wait("the name-rule identities", |profiles| {
        let have: BTreeSet<_> = identities(profiles, &ns.name).into_iter().collect();
        (have == want).then_some(())
    })?;
    // Publishing is denied too (no SyscallProfile grants): the agent is not Ready until it
    // works again.
    cluster.wait_for("the agent pod NotReady", Duration::from_secs(60), || {
        let pod = cluster.json(&["get", "pod", "-n", AGENT_NAMESPACE, &agent.pod])?;
        Ok((!tests::cluster::is_ready(&pod)).then_some(()))
    })?;
    let log = cluster.agent_log(&agent.pod)?;
    let new = log.strip_prefix(log_before.as_str()).unwrap_or(&log);
    let forbidden = new
        .lines()
        .filter(|l| l.to_ascii_lowercase().contains("forbidden"))
        .count();
    eprintln!("Forbidden lines in the agent's log under the reduced role: {forbidden}");
    for kind in ["ReplicaSet", "Job"] {
        assert_eq!(
            new.lines()
                .filter(|l| l.contains("forbidden by RBAC") && l.contains(&format!("kind={kind} ")))
                .count(),
            1,
            "one warning names the denied {kind} gets:\n{new}"
        );
    }
    // The publishing denial is said once.
    assert_eq!(
        new.lines()
            .filter(|l| l.contains("publishing SyscallProfiles stopped"))
            .count(),
        1,
        "one error line says publishing is denied:\n{new}"
    );
    assert_eq!(forbidden, 3, "no other Forbidden line:\n{new}");
    let status = agent.status()?;
    assert!(
        status["publish"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("403")),
        "{status}"
    );
    drop(_restore);
    cluster.wait_for("the agent pod Ready again", Duration::from_secs(90), || {
        let pod = cluster.json(&["get", "pod", "-n", AGENT_NAMESPACE, &agent.pod])?;
        Ok(tests::cluster::is_ready(&pod).then_some(()))
    })?;
    Ok(())
}

/// The workload's SyscallProfile object: the one of deployment.busy.busy in `namespace`.
fn syscall_profile(cluster: &Cluster, namespace: &str, name: &str) -> anyhow::Result<Value> {
    cluster.json(&["get", "syscallprofiles", "-n", namespace, name])
}

/// #13 (first part): the agent publishes its node's contribution to one SyscallProfile per
/// workload container (deploy/'s CRD and RBAC), with the merge, printer columns, and no write
/// while the workload makes no new syscall.
#[test]
fn workload_profiles_are_published_as_syscall_profiles() -> anyhow::Result<()> {
    let _lock = cluster_lock();
    let Some(cluster) = Cluster::get() else {
        return Ok(());
    };
    let agent = AgentAccess::new(&cluster)?;
    let ns = cluster.namespace("ct-publish")?;
    ns.apply(&busy_deployment())?;
    let node = cluster.json(&["get", "nodes"])?["items"][0]["metadata"]["name"]
        .as_str()
        .context("node name")?
        .to_owned();
    let object = cluster.wait_for(
        "the busy Deployment's SyscallProfile with uname",
        Duration::from_secs(90),
        || {
            let Ok(object) = syscall_profile(&cluster, &ns.name, "deployment.busy.busy") else {
                return Ok(None);
            };
            let has_uname = object["status"]["architectures"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|arch| {
                    arch["syscalls"]
                        .as_array()
                        .is_some_and(|names| names.iter().any(|n| n == "uname"))
                });
            Ok(has_uname.then_some(object))
        },
    )?;
    assert_eq!(object["spec"]["workload"]["kind"], "Deployment", "{object}");
    assert_eq!(object["spec"]["workload"]["name"], "busy");
    assert_eq!(object["spec"]["container"], "busy");
    assert_eq!(object["spec"]["mode"], "Learning", "the CRD's default");
    let status = &object["status"];
    assert_eq!(status["nodeCount"], 1, "{status}");
    assert_eq!(status["nodes"][0]["node"], node.as_str());
    assert_eq!(status["nodes"][0]["arch"], "x86_64");
    let merged = status["architectures"][0]["syscalls"]
        .as_array()
        .context("merged names")?
        .len();
    assert_eq!(status["syscallCount"].as_u64(), Some(merged as u64));
    // Only workload containers are published: no sandbox, no host cgroup, no other object.
    let names: Vec<String> = cluster.json(&["get", "syscallprofiles", "-n", &ns.name])?["items"]
        .as_array()
        .context("items")?
        .iter()
        .filter_map(|o| o["metadata"]["name"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(names, ["deployment.busy.busy"]);
    let table = cluster.kubectl(&["get", "sysprof", "-n", &ns.name])?;
    for column in [
        "KIND",
        "WORKLOAD",
        "CONTAINER",
        "SYSCALLS",
        "NODES",
        "MODE",
        "STABLE",
        "LAST NEW",
    ] {
        assert!(table.contains(column), "printer column {column}:\n{table}");
    }

    // Steady state: the loop makes the same calls; once the set settled, passes write nothing.
    let passes = |status: &Value| status["publish"]["passes"].as_u64().unwrap_or(0);
    let settled = cluster.wait_for(
        "the published set to settle",
        Duration::from_secs(90),
        || {
            let before = syscall_profile(&cluster, &ns.name, "deployment.busy.busy")?;
            let start = passes(&agent.status()?);
            wait_for("a publishing pass", Duration::from_secs(30), &mut || {
                Ok((passes(&agent.status()?) > start).then_some(()))
            })?;
            let after = syscall_profile(&cluster, &ns.name, "deployment.busy.busy")?;
            Ok(
                (before["metadata"]["resourceVersion"] == after["metadata"]["resourceVersion"])
                    .then_some(after),
            )
        },
    )?;
    let version = settled["metadata"]["resourceVersion"].clone();
    let start = passes(&agent.status()?);
    wait_for(
        "two more publishing passes",
        Duration::from_secs(60),
        &mut || Ok((passes(&agent.status()?) >= start + 2).then_some(())),
    )?;
    let after = syscall_profile(&cluster, &ns.name, "deployment.busy.busy")?;
    assert_eq!(
        after["metadata"]["resourceVersion"], version,
        "a pass wrote although the syscall set did not change"
    );
    Ok(())
}

/// The agent's API and /metrics need a Kubernetes token whose account may get the path; the
/// probes need nothing. The reader (both roles) gets 200, a valid token without a binding 403,
/// the metrics-only scraper 200 on /metrics and 403 on the API, no or a bogus token 401. The
/// client commands say what is missing in one line.
#[test]
fn agent_http_requires_kubernetes_auth() -> anyhow::Result<()> {
    let _lock = cluster_lock();
    let Some(cluster) = Cluster::get() else {
        return Ok(());
    };
    let agent = AgentAccess::new(&cluster)?;
    let addr = agent.forward.addr;
    let nobody = cluster.service_account_token("ct-nobody", &[])?;
    let scraper = cluster.service_account_token(SCRAPER_ACCOUNT, &[METRICS_READER_ROLE])?;
    let status = |path: &str, token: Option<&str>| -> anyhow::Result<u16> {
        Ok(http_as(addr, "GET", path, token)?.0)
    };

    assert_eq!(status("/healthz", None)?, 200);
    assert_eq!(status("/readyz", None)?, 200);
    for path in ["/metrics", "/api/v1/profiles", "/api/v1/status"] {
        assert_eq!(status(path, None)?, 401, "{path} without a token");
        assert_eq!(
            status(path, Some("not-a-kubernetes-token"))?,
            401,
            "{path} with a bogus token"
        );
        assert_eq!(
            status(path, Some(&nobody))?,
            403,
            "{path} without a binding"
        );
        assert_eq!(
            status(path, Some(&agent.token))?,
            200,
            "{path} with the reader"
        );
    }
    let (code, body) = http_as(addr, "GET", "/api/v1/profiles", Some(&nobody))?;
    assert_eq!(code, 403);
    assert!(
        body.contains("system:serviceaccount:syscall-recorder:ct-nobody")
            && body.contains("get /api/v1/profiles"),
        "the refusal names user, verb and path: {body}"
    );
    // The scraper's binding may take a moment to reach the authorizer, and a refusal is
    // cached for 10 s.
    wait_for(
        "the scraper's token to be allowed on /metrics",
        Duration::from_secs(60),
        &mut || Ok((status("/metrics", Some(&scraper))? == 200).then_some(())),
    )?;
    assert_eq!(
        status("/api/v1/profiles", Some(&scraper))?,
        403,
        "the metrics reader cannot read profiles"
    );

    let url = agent.forward.url();
    let output = agent_cli(&["profiles", "--server", &url]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains(&format!(
            "the agent at {url} requires a Kubernetes bearer token: pass --token or --token-file"
        )),
        "{stderr}"
    );
    let output = agent_cli(&["profiles", "--server", &url, "--token", &nobody]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("forbidden: user"), "{stderr}");
    let dir = tempfile::tempdir()?;
    let token_file = dir.path().join("token");
    write_private(&token_file, agent.token.as_bytes())?;
    let output = agent_cli(&[
        "profiles",
        "--server",
        &url,
        "--token-file",
        token_file.to_str().context("utf-8 path")?,
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}
