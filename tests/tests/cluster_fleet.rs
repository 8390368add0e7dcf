//! #13 on the real cluster: profiles on every node through the Kubernetes API. Besides the
//! DaemonSet's agent on the real node, extra agents run as plain processes with their own
//! `--node-name` and `--seccomp-dir` (nodes without a kubelet). Pods of the same workload are
//! bound to those nodes through the API, and their "containers" are processes in cgroups laid
//! out as a kubelet's, so each extra agent attributes and publishes them like a real node.
//!
//! A missing cluster fails loudly; `RECORDER_SKIP_CLUSTER=1` skips explicitly.

use std::{
    collections::BTreeSet,
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde_json::Value;
use tests::{
    agent_bin, agent_cli,
    cluster::{
        API_READER_ROLE, BUSYBOX_IMAGE, Cluster, METRICS_READER_ROLE, SECCOMP_ROOT, TestNamespace,
        cluster_lock, wait_for, workspace,
    },
    free_port, get_json_as, http_as,
};

/// Where the fake kubelets' pod cgroups go (cgroup v2; a `kubepods` name so the layout parses
/// as a kubelet's, outside the real kubelet's own tree).
const FAKE_KUBEPODS: &str = "ct-fleet-kubepods";
/// Commands the fake containers run, one every few seconds, for new syscalls over a minute.
const COMMANDS: &[&str] = &[
    "uname -a",
    "id",
    "ls /",
    "date",
    "df /",
    "nproc",
    "stat /",
    "du -s /etc",
    "touch /tmp/ct-fleet-t",
    "mkdir -p /tmp/ct-fleet-d",
    "ln -sf /tmp /tmp/ct-fleet-l",
    "hostname",
    "cat /proc/self/stat",
];

fn cgroup2_root() -> PathBuf {
    let unified = Path::new("/sys/fs/cgroup/unified");
    if unified.join("cgroup.procs").exists() {
        unified.to_owned()
    } else {
        PathBuf::from("/sys/fs/cgroup")
    }
}

/// A kubeconfig for the agent's ServiceAccount (its deploy/ RBAC, as in the DaemonSet).
fn agent_kubeconfig(cluster: &Cluster, dir: &Path) -> anyhow::Result<PathBuf> {
    let config = cluster.json(&["config", "view", "--raw", "--minify"])?;
    let server = config["clusters"][0]["cluster"]["server"]
        .as_str()
        .context("server")?;
    let ca = config["clusters"][0]["cluster"]["certificate-authority-data"]
        .as_str()
        .context("ca")?;
    let token = cluster.kubectl(&[
        "create",
        "token",
        "syscall-recorder",
        "-n",
        "syscall-recorder",
        "--duration=1h",
    ])?;
    let path = dir.join("agent-kubeconfig");
    fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\n    \
             certificate-authority-data: {ca}\nusers:\n- name: u\n  user:\n    token: {}\n\
             contexts:\n- name: x\n  context: {{cluster: c, user: u}}\ncurrent-context: x\n",
            token.trim()
        ),
    )?;
    Ok(path)
}

/// An agent process for a node without a kubelet.
struct ExtraAgent {
    node: String,
    dir: PathBuf,
    addr: SocketAddr,
    child: Option<Child>,
    token: String,
}

impl ExtraAgent {
    fn start(
        node: &str,
        dir: &Path,
        kubeconfig: &Path,
        token: &str,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        fs::create_dir_all(dir)?;
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
        let mut agent = Self {
            node: node.to_owned(),
            dir: dir.to_owned(),
            addr,
            child: None,
            token: token.to_owned(),
        };
        agent.spawn(kubeconfig, extra)?;
        Ok(agent)
    }

    fn spawn(&mut self, kubeconfig: &Path, extra: &[&str]) -> anyhow::Result<()> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("agent.log"))?;
        let child = Command::new(agent_bin())
            .args(["run", "--kubernetes=on", "--no-pin", "--interval=500ms"])
            .args([
                "--publish-interval=1s",
                "--stable-after=1h",
                "--max-cgroups=512",
            ])
            .arg(format!("--listen={}", self.addr))
            .arg(format!("--node-name={}", self.node))
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .arg(format!(
                "--seccomp-dir={}",
                self.dir.join("seccomp").display()
            ))
            .arg(format!("--state-dir={}", self.dir.join("state").display()))
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting an extra agent")?;
        self.child = Some(child);
        wait_for(
            &format!("agent {} ready", self.node),
            Duration::from_secs(60),
            &mut || {
                if let Some(child) = self.child.as_mut()
                    && let Some(status) = child.try_wait()?
                {
                    anyhow::bail!("agent {} exited: {status}\n{}", self.node, self.log());
                }
                Ok(http_as(self.addr, "GET", "/readyz", None)
                    .is_ok_and(|(status, _)| status == 200)
                    .then_some(()))
            },
        )
        .with_context(|| self.log())
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    fn get(&self, path: &str) -> anyhow::Result<Value> {
        let (status, value) = get_json_as(self.addr, path, Some(&self.token))?;
        anyhow::ensure!(status == 200, "{path}: {status} {value}");
        Ok(value)
    }

    fn status(&self) -> anyhow::Result<Value> {
        self.get("/api/v1/status")
    }

    fn file(&self, relative: &str) -> PathBuf {
        self.dir.join("seccomp").join(relative)
    }

    /// SIGTERM and wait (a graceful stop saves the state).
    fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            let pid = i32::try_from(child.id())?;
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(20);
            while child.try_wait()?.is_none() {
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "agent {} did not stop",
                    self.node
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }
}

impl Drop for ExtraAgent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("agent {} log:\n{}", self.node, self.log());
        }
    }
}

/// A fake kubelet's container: a cgroup `FAKE_KUBEPODS/pod<uid>/<id>` and the processes put in
/// it; removed on drop.
struct FakeContainer {
    cgroup: PathBuf,
    children: Vec<Child>,
}

impl FakeContainer {
    fn new(pod_uid: &str, container_id: &str) -> anyhow::Result<Self> {
        let cgroup = cgroup2_root()
            .join(FAKE_KUBEPODS)
            .join(format!("pod{pod_uid}"))
            .join(container_id);
        fs::create_dir_all(&cgroup).with_context(|| format!("creating {}", cgroup.display()))?;
        Ok(Self {
            cgroup,
            children: Vec::new(),
        })
    }

    /// Runs `script` with `sh` inside the cgroup.
    fn run(&mut self, script: &str) -> anyhow::Result<()> {
        let procs = self.cgroup.join("cgroup.procs");
        let child = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo $$ > {} && exec sh -c '{script}'",
                procs.display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.children.push(child);
        Ok(())
    }
}

impl Drop for FakeContainer {
    fn drop(&mut self) {
        // Every process in the cgroup, not only our children (a shell's own children outlive
        // it): cgroup.kill (Linux 5.14), then the children reaped.
        let _ = fs::write(self.cgroup.join("cgroup.kill"), "1");
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = wait_for(
            "the fake container's processes gone",
            Duration::from_secs(10),
            &mut || {
                Ok(fs::read_to_string(self.cgroup.join("cgroup.procs"))
                    .map_or(true, |procs| procs.trim().is_empty())
                    .then_some(()))
            },
        );
        let _ = fs::remove_dir(&self.cgroup);
        if let Some(pod) = self.cgroup.parent() {
            let _ = fs::remove_dir(pod);
            if let Some(kubepods) = pod.parent() {
                let _ = fs::remove_dir(kubepods);
            }
        }
    }
}

/// Node objects without kubelets, and the pods bound to them: force-deleted on drop (nothing
/// would confirm their termination), before their namespace goes.
struct FakeNodes<'a> {
    cluster: &'a Cluster,
    nodes: Vec<String>,
    pods: Vec<(String, String)>,
}

impl Drop for FakeNodes<'_> {
    fn drop(&mut self) {
        for (namespace, pod) in &self.pods {
            let _ = self.cluster.kubectl(&[
                "delete",
                "pod",
                "-n",
                namespace,
                pod,
                "--grace-period=0",
                "--force",
                "--ignore-not-found",
            ]);
        }
        for node in &self.nodes {
            // The DaemonSet tolerates everything, so it made a pod for each of these nodes.
            let _ = self.cluster.kubectl(&[
                "delete",
                "pods",
                "-n",
                "syscall-recorder",
                "--field-selector",
                &format!("spec.nodeName={node}"),
                "--grace-period=0",
                "--force",
                "--ignore-not-found",
            ]);
            let _ = self.cluster.kubectl(&[
                "delete",
                "node",
                node,
                "--ignore-not-found",
                "--wait=false",
            ]);
        }
    }
}

/// SPO's SeccompProfile CRD, installed for the test, removed on drop.
struct SpoCrd<'a> {
    cluster: &'a Cluster,
}

impl Drop for SpoCrd<'_> {
    fn drop(&mut self) {
        let _ = self.cluster.kubectl(&[
            "delete",
            "crd",
            "seccompprofiles.security-profiles-operator.x-k8s.io",
            "--ignore-not-found",
            "--wait=false",
        ]);
    }
}

/// A container id for a fake pod: 64 hex digits from its name and the time.
fn container_id(seed: &str) -> String {
    use std::hash::{Hash as _, Hasher as _};
    let mut out = String::new();
    for round in 0..4u8 {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (seed, round, std::time::SystemTime::now()).hash(&mut hasher);
        out.push_str(&format!("{:016x}", hasher.finish()));
    }
    out
}

fn owner(uid: &str) -> String {
    format!(
        "ownerReferences: [{{apiVersion: v1, kind: ConfigMap, name: fleet, uid: {uid}, controller: true}}]"
    )
}

/// A pod of the `fleet` workload (owned by the ConfigMap `fleet`, a controller kind the
/// cluster runs nothing for), bound to `node`. Its fake container starts every command from
/// outside its cgroup, as an exec session would: the pod asks for exec sessions to count as
/// the container's own, which is what a real container's processes are.
fn fleet_pod(name: &str, node: Option<&str>, owner_uid: &str, command: &str) -> String {
    let node = node.map_or_else(String::new, |node| {
        format!("nodeName: {node}\n  tolerations: [{{operator: Exists}}]\n  ")
    });
    format!(
        "apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels: {{app: fleet}}
  annotations: {{syscall-recorder.io/exec-sessions: include}}
  {owner}
spec:
  {node}terminationGracePeriodSeconds: 1
  automountServiceAccountToken: false
  enableServiceLinks: false
  containers:
  - name: app
    image: {BUSYBOX_IMAGE}
    imagePullPolicy: Never
    command: [\"sh\", \"-c\", {command:?}]
",
        owner = owner(owner_uid),
    )
}

/// The workload that runs on the real node only.
fn solo_deployment() -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: solo
spec:
  replicas: 1
  selector:
    matchLabels: {{app: solo}}
  template:
    metadata:
      labels: {{app: solo}}
    spec:
      terminationGracePeriodSeconds: 1
      automountServiceAccountToken: false
      enableServiceLinks: false
      containers:
      - name: solo
        image: {BUSYBOX_IMAGE}
        imagePullPolicy: Never
        command: [\"sh\", \"-c\", \"while true; do uname >/dev/null; sleep 1; done\"]
"
    )
}

fn object(cluster: &Cluster, ns: &TestNamespace, name: &str) -> anyhow::Result<Value> {
    cluster.json(&["get", "syscallprofiles", "-n", &ns.name, name])
}

/// The cluster profile as `recorder-agent export --format json` gives it.
fn exported(kubeconfig: &Path, selector: &str) -> anyhow::Result<Value> {
    let output = agent_cli(&[
        "export",
        selector,
        "--format",
        "json",
        "--kubeconfig",
        &kubeconfig.display().to_string(),
    ]);
    anyhow::ensure!(
        output.status.success(),
        "export {selector}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(serde_json::from_slice(&output.stdout)?)
}

fn names(value: &Value) -> BTreeSet<String> {
    match value {
        Value::Object(map) => map.keys().cloned().collect(),
        Value::Array(items) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => BTreeSet::new(),
    }
}

fn node_names(exported: &Value, node: &str) -> Option<BTreeSet<String>> {
    exported["nodes"]
        .as_array()?
        .iter()
        .find(|entry| entry["node"] == node)
        .map(|entry| names(&entry["syscalls"]))
}

fn read(path: &Path) -> Option<Vec<u8>> {
    fs::read(path).ok()
}

/// Every node's file of `relative`, once all exist and are equal.
fn same_everywhere(
    what: &str,
    relative: &str,
    agents: &[&ExtraAgent],
    extra_check: impl Fn(&[u8]) -> bool,
) -> anyhow::Result<Vec<u8>> {
    let real = Path::new(SECCOMP_ROOT).join(relative);
    let mut last = Vec::new();
    wait_for(what, Duration::from_secs(90), &mut || {
        let mut files = vec![read(&real)];
        files.extend(agents.iter().map(|agent| read(&agent.file(relative))));
        last = files.clone();
        let Some(Some(first)) = files.first().cloned() else {
            return Ok(None);
        };
        Ok(
            (files.iter().all(|file| file.as_ref() == Some(&first)) && extra_check(&first))
                .then_some(first),
        )
    })
    .with_context(|| {
        format!(
            "{relative} at the deadline (real node, then extra agents): {:?}",
            last.iter()
                .map(|f| f.as_ref().map(|b| String::from_utf8_lossy(b).len()))
                .collect::<Vec<_>>()
        )
    })
}

fn contains_syscall(file: &[u8], name: &str) -> bool {
    serde_json::from_slice::<Value>(file).is_ok_and(|oci| tests::allowed(&oci).contains(name))
}

/// #13: a workload's merged profile reaches every node, byte for byte (also nodes it never ran
/// on); three agents contributing at once for a minute lose nothing and then write nothing;
/// freezing holds every file while drift shows; unfreezing takes it in; a restarted agent
/// rejoins without writes; the client commands work through the API and as a kubectl plugin;
/// SPO SeccompProfiles follow in the version SPO serves.
#[test]
fn profiles_reach_every_node_and_freezing_holds_them() -> anyhow::Result<()> {
    let _lock = cluster_lock();
    let Some(cluster) = Cluster::get() else {
        return Ok(());
    };
    cluster.deploy_agent()?;
    let admin = cluster.kubeconfig.clone();
    let admin_arg = admin.display().to_string();
    let work = tempfile::tempdir()?;
    let agent_kubeconfig = agent_kubeconfig(&cluster, work.path())?;
    let reader = cluster
        .service_account_token("ct-fleet-reader", &[API_READER_ROLE, METRICS_READER_ROLE])?;
    let ns = cluster.namespace("ct-fleet")?;
    ns.apply(&solo_deployment())?;
    ns.apply("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: fleet\n")?;
    let owner_uid =
        cluster.json(&["get", "configmap", "-n", &ns.name, "fleet"])?["metadata"]["uid"]
            .as_str()
            .context("configmap uid")?
            .to_owned();
    ns.apply(&fleet_pod(
        "fleet-real",
        None,
        &owner_uid,
        "while true; do uname >/dev/null; sleep 1; done",
    ))?;

    // Two nodes without kubelets, a fleet pod on each, its container a cgroup here.
    let nodes = ["ct-fleet-node-a", "ct-fleet-node-b"];
    let mut fake = FakeNodes {
        cluster: &cluster,
        nodes: Vec::new(),
        pods: Vec::new(),
    };
    let mut containers = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        cluster.apply(
            "",
            &format!(
                "apiVersion: v1\nkind: Node\nmetadata:\n  name: {node}\n  labels:\n    syscall-recorder.io/test: cluster\n"
            ),
        )?;
        fake.nodes.push((*node).to_owned());
        let pod = format!("fleet-{i}");
        ns.apply(&fleet_pod(&pod, Some(node), &owner_uid, "sleep 3600"))?;
        fake.pods.push((ns.name.clone(), pod.clone()));
        let uid = cluster.json(&["get", "pod", "-n", &ns.name, &pod])?["metadata"]["uid"]
            .as_str()
            .context("pod uid")?
            .to_owned();
        let id = container_id(&format!("{}{pod}", ns.name));
        let status = serde_json::json!({"status": {
            "phase": "Running",
            "containerStatuses": [{
                "name": "app", "containerID": format!("containerd://{id}"), "ready": true,
                "restartCount": 0, "image": BUSYBOX_IMAGE, "imageID": "",
                "state": {"running": {"startedAt": "2026-12-03T00:00:00Z"}}
            }]
        }});
        cluster.kubectl(&[
            "patch",
            "pod",
            "-n",
            &ns.name,
            &pod,
            "--subresource=status",
            "--type=merge",
            "-p",
            &status.to_string(),
        ])?;
        containers.push(FakeContainer::new(&uid, &id)?);
    }

    // SPO's CRD (what SPO 1.0 installs), for the agent of node a.
    let spo_crd = workspace().join("target/cluster/spo/seccompprofile.yaml");
    anyhow::ensure!(
        spo_crd.is_file(),
        "{} missing: `cargo xtask cluster build` fetches it",
        spo_crd.display()
    );
    let _spo = SpoCrd { cluster: &cluster };
    cluster.kubectl(&["apply", "-f", &spo_crd.display().to_string()])?;
    cluster.kubectl(&[
        "wait",
        "--for=condition=Established",
        "crd/seccompprofiles.security-profiles-operator.x-k8s.io",
        "--timeout=60s",
    ])?;
    // The agents' grant for it (deploy/overlays/spo).
    let spo_rbac = fs::read_to_string(workspace().join("deploy/overlays/spo/rbac.yaml"))?;
    cluster.apply("", &spo_rbac)?;

    // SPO objects are applied by a workload's first contributing node by name: node a sorts
    // before node b and the real node (syscall-recorder-node), whose agents run without it.
    let mut agent_a = ExtraAgent::start(
        nodes[0],
        &work.path().join("a"),
        &agent_kubeconfig,
        &reader,
        &["--publish-spo"],
    )?;
    let agent_b = ExtraAgent::start(
        nodes[1],
        &work.path().join("b"),
        &agent_kubeconfig,
        &reader,
        &[],
    )?;

    // A minute of contributions from every node at once: each fake container runs the commands
    // in its own order, a new one every 4.5 s.
    let started = Instant::now();
    for (i, container) in containers.iter_mut().enumerate() {
        let mut order: Vec<&str> = COMMANDS.to_vec();
        if i == 1 {
            order.reverse();
        }
        let script = format!(
            "for c in \"{}\"; do $c >/dev/null 2>&1; sleep 4.5; done; touch {}/done-{i}; sleep 3600",
            order.join("\" \""),
            work.path().display()
        );
        container.run(&script)?;
    }
    wait_for(
        "the minute of contributions",
        Duration::from_secs(150),
        &mut || {
            Ok((0..containers.len())
                .all(|i| work.path().join(format!("done-{i}")).exists())
                .then_some(()))
        },
    )?;
    eprintln!("contributions ran for {:.0?}", started.elapsed());

    // No contribution lost: each node's entry is what that node learned; the merge is their union.
    let selector = format!("{}/ConfigMap/fleet/app", ns.name);
    let profile_path = format!("/api/v1/profiles/{selector}");
    let mut last = Value::Null;
    let merged = wait_for(
        "every node's contribution in the object",
        Duration::from_secs(60),
        &mut || {
            let cluster_profile = exported(&admin, &selector)?;
            last = cluster_profile.clone();
            for agent in [&agent_a, &agent_b] {
                let local = names(&agent.get(&profile_path)?["syscalls"]);
                if node_names(&cluster_profile, &agent.node).as_ref() != Some(&local) {
                    return Ok(None);
                }
            }
            let entries = cluster_profile["nodes"].as_array().map_or(0, Vec::len);
            let union: BTreeSet<String> = cluster_profile["nodes"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|entry| names(&entry["syscalls"]))
                .collect();
            Ok((entries == 3 && union == names(&cluster_profile["syscalls"])).then_some(union))
        },
    )
    .with_context(|| format!("the cluster profile at the deadline: {last}"))?;
    assert!(
        merged.contains("statfs"),
        "df's statfs from a fake node: {merged:?}"
    );

    // Then no writes while nothing changes.
    let version = |cluster: &Cluster| -> anyhow::Result<Value> {
        Ok(object(cluster, &ns, "configmap.fleet.app")?["metadata"]["resourceVersion"].clone())
    };
    let writes = |agent: &ExtraAgent| -> anyhow::Result<u64> {
        Ok(agent.status()?["publish"]["writes"].as_u64().unwrap_or(0))
    };
    let before = version(&cluster)?;
    let writes_before = (writes(&agent_a)?, writes(&agent_b)?);
    let passes = agent_a.status()?["publish"]["passes"].as_u64().unwrap_or(0);
    // Two of the DaemonSet agent's 10 s passes and many of the extras' 1 s passes.
    std::thread::sleep(Duration::from_secs(22));
    assert!(agent_a.status()?["publish"]["passes"].as_u64().unwrap_or(0) >= passes + 10);
    assert_eq!(
        version(&cluster)?,
        before,
        "an object was rewritten in steady state"
    );
    assert_eq!((writes(&agent_a)?, writes(&agent_b)?), writes_before);

    // The same file on every node, byte for byte: for the fleet, and for `solo`, which ran
    // on the real node only.
    let fleet_file = format!("syscall-recorder/{}/configmap/fleet/app.json", ns.name);
    let frozen_bytes = same_everywhere(
        "the fleet's file on every node",
        &fleet_file,
        &[&agent_a, &agent_b],
        |f| contains_syscall(f, "statfs"),
    )?;
    same_everywhere(
        "solo's file on nodes it never ran on",
        &format!("syscall-recorder/{}/deployment/solo/solo.json", ns.name),
        &[&agent_a, &agent_b],
        |f| contains_syscall(f, "uname"),
    )?;

    // SPO: a SeccompProfile of the fleet in the version SPO 1.0 serves (v1).
    let spo = wait_for(
        "the fleet's SPO SeccompProfile",
        Duration::from_secs(60),
        &mut || {
            let list = cluster.json(&[
                "get",
                "seccompprofiles.security-profiles-operator.x-k8s.io",
                "-l",
                "syscall-recorder.io/workload=fleet",
            ])?;
            Ok(list["items"]
                .as_array()
                .and_then(|items| items.first().cloned()))
        },
    )?;
    assert_eq!(
        spo["apiVersion"], "security-profiles-operator.x-k8s.io/v1",
        "{spo}"
    );
    let spo_names: BTreeSet<String> = spo["spec"]["syscalls"][0]["names"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n.as_str().map(str::to_owned))
        .collect();
    let file_names = tests::allowed(&serde_json::from_slice(&frozen_bytes)?);
    assert_eq!(spo_names, file_names, "SPO's profile is the delivered one");

    // Freeze: the CLI through the API.
    let output = agent_cli(&["freeze", &selector, "--kubeconfig", &admin_arg]);
    let text = String::from_utf8_lossy(&output.stdout);
    eprintln!("$ recorder-agent freeze {selector}\n{text}");
    assert!(
        output.status.success() && text.contains("Frozen"),
        "{text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // A new syscall on node a (sync) is drift: in the status, the profile JSON, the metric...
    containers[0].run("sync")?;
    let drifted = wait_for(
        "sync as drift in the object",
        Duration::from_secs(60),
        &mut || {
            let object = object(&cluster, &ns, "configmap.fleet.app")?;
            let drift = object["status"]["drift"].to_string();
            Ok(drift.contains("\"sync\"").then_some(object))
        },
    )?;
    let condition = drifted["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Drift")
        .cloned()
        .context("Drift condition")?;
    assert_eq!(condition["status"], "True", "{condition}");
    let local = agent_a.get(&profile_path)?;
    assert_eq!(local["mode"], "Frozen", "{local}");
    assert!(
        local["unexpected_syscalls"]["sync"].as_u64() > Some(0),
        "{local}"
    );
    let (_, metrics) = http_as(agent_a.addr, "GET", "/metrics", Some(&reader))?;
    assert!(
        metrics.lines().any(
            |l| l.starts_with("syscall_recorder_unexpected_syscalls_total{")
                && l.contains("workload=\"fleet\"")
                && l.contains("syscall=\"sync\"")
        ),
        "no drift series for sync"
    );
    let table = agent_cli(&["profiles", "-n", &ns.name, "--kubeconfig", &admin_arg]);
    let table = String::from_utf8_lossy(&table.stdout);
    eprintln!("$ recorder-agent profiles -n {}\n{table}", ns.name);
    eprintln!(
        "$ kubectl get sysprof -n {}\n{}",
        ns.name,
        cluster.kubectl(&["get", "sysprof", "-n", &ns.name])?
    );
    let row = table
        .lines()
        .find(|l| l.contains("fleet"))
        .unwrap_or_default();
    assert!(row.contains("Frozen") && row.contains("sync"), "{table}");
    // ... while every node's file stays as frozen: checked over a few of the extra agents'
    // collections (each delivers every 500 ms) after they saw the drifted object.
    let collections = |agent: &ExtraAgent| -> anyhow::Result<u64> {
        Ok(agent.status()?["collections"].as_u64().unwrap_or(0))
    };
    let seen = (collections(&agent_a)?, collections(&agent_b)?);
    wait_for(
        "six more collections on each extra agent",
        Duration::from_secs(30),
        &mut || {
            for file in [
                Path::new(SECCOMP_ROOT).join(&fleet_file),
                agent_a.file(&fleet_file),
                agent_b.file(&fleet_file),
            ] {
                assert_eq!(
                    read(&file).as_ref(),
                    Some(&frozen_bytes),
                    "{} changed while frozen",
                    file.display()
                );
            }
            Ok(
                (collections(&agent_a)? >= seen.0 + 6 && collections(&agent_b)? >= seen.1 + 6)
                    .then_some(()),
            )
        },
    )?;

    // diff against the cluster's current profile: the frozen file lacks sync.
    let frozen_file = work.path().join("frozen.json");
    fs::write(&frozen_file, &frozen_bytes)?;
    let diff = agent_cli(&[
        "diff",
        &frozen_file.display().to_string(),
        &selector,
        "--kubeconfig",
        &admin_arg,
    ]);
    // The frozen set is what the cluster delivers: nothing added.
    assert_eq!(
        diff.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&diff.stdout)
    );

    // Unfreeze: every node's file takes sync in.
    let output = agent_cli(&["unfreeze", &selector, "--kubeconfig", &admin_arg]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let learned = same_everywhere(
        "sync in every node's file",
        &fleet_file,
        &[&agent_a, &agent_b],
        |f| contains_syscall(f, "sync"),
    )?;
    let diff = agent_cli(&[
        "diff",
        &frozen_file.display().to_string(),
        &selector,
        "--kubeconfig",
        &admin_arg,
    ]);
    let diff_text = String::from_utf8_lossy(&diff.stdout);
    eprintln!("$ recorder-agent diff frozen.json {selector}\n{diff_text}");
    assert_eq!(diff.status.code(), Some(1), "{diff_text}");
    assert!(diff_text.contains("+ sync"), "{diff_text}");

    // As a kubectl plugin.
    let plugins = work.path().join("plugins");
    fs::create_dir_all(&plugins)?;
    std::os::unix::fs::symlink(agent_bin(), plugins.join("kubectl-syscall_recorder"))?;
    let kubectl = workspace().join("target/cluster/bin/kubectl");
    let path = format!(
        "{}:{}",
        plugins.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let plugin = Command::new(&kubectl)
        .args(["syscall-recorder", "export", &selector])
        .env("PATH", path)
        .env("KUBECONFIG", &admin)
        .stdin(Stdio::null())
        .output()?;
    assert!(
        plugin.status.success(),
        "{}",
        String::from_utf8_lossy(&plugin.stderr)
    );
    assert_eq!(
        plugin.stdout, learned,
        "the plugin exports the delivered file"
    );

    // A restarted agent with its state rejoins without rewriting anything.
    agent_a.stop()?;
    let before = version(&cluster)?;
    let file_a = agent_a.file(&fleet_file);
    let modified = fs::metadata(&file_a)?.modified()?;
    agent_a.spawn(&agent_kubeconfig, &[])?;
    wait_for(
        "two passes of the restarted agent",
        Duration::from_secs(30),
        &mut || {
            Ok((agent_a.status()?["publish"]["passes"].as_u64().unwrap_or(0) >= 3).then_some(()))
        },
    )?;
    let status = agent_a.status()?;
    assert_eq!(status["publish"]["writes"], 0, "{status}");
    assert_eq!(version(&cluster)?, before);
    assert_eq!(
        fs::metadata(&file_a)?.modified()?,
        modified,
        "the file was rewritten"
    );

    // A deleted object is made again, with every node's contribution.
    cluster.kubectl(&[
        "delete",
        "syscallprofile",
        "-n",
        &ns.name,
        "configmap.fleet.app",
    ])?;
    wait_for(
        "the deleted object back with three nodes",
        Duration::from_secs(60),
        &mut || {
            let Ok(object) = object(&cluster, &ns, "configmap.fleet.app") else {
                return Ok(None);
            };
            Ok((object["status"]["nodeCount"] == 3).then_some(()))
        },
    )?;
    drop(agent_b);
    Ok(())
}
