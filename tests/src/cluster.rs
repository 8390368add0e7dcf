//! Harness of the real-cluster tests (tests/tests/cluster.rs): kubectl with the test
//! kubeconfig, apply/delete, waits with deadlines, `kubectl port-forward` as a child process
//! killed on drop, and namespaces made per test and deleted on drop (also when a test fails).
//!
//! The cluster is `cargo xtask cluster up` (kubeconfig `target/cluster/kubeconfig`, or
//! `RECORDER_KUBECONFIG`) with the agent image from `cargo xtask image`. A missing cluster
//! fails loudly; `RECORDER_SKIP_CLUSTER=1` skips the tests explicitly.

use std::{
    env, fs,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Mutex, MutexGuard, OnceLock, mpsc},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::Value;

/// The agent's namespace, DaemonSet and container (deploy/base).
pub const AGENT_NAMESPACE: &str = "syscall-recorder";
pub const AGENT_DAEMONSET: &str = "syscall-recorder";
pub const AGENT_CONTAINER: &str = "agent";
pub const AGENT_SELECTOR: &str =
    "app.kubernetes.io/name=syscall-recorder,app.kubernetes.io/component=agent";
/// What `cargo xtask image` imports and deploy/overlays/dev uses.
pub const AGENT_IMAGE: &str = "localhost/syscall-recorder/recorder-agent:dev";
/// The workload image `cargo xtask cluster up` imports.
pub const BUSYBOX_IMAGE: &str = "localhost/syscall-recorder/busybox:test";
/// The kubelet's seccomp root (the DaemonSet's --seccomp-dir).
pub const SECCOMP_ROOT: &str = "/var/lib/kubelet/seccomp";
/// The API server's address (the node's address on the cluster bridge).
pub const API_SERVER: &str = "https://10.244.0.1:6443";
/// deploy/base's roles for reading the agent over HTTP (`--http-auth kubernetes`).
pub const METRICS_READER_ROLE: &str = "syscall-recorder-metrics-reader";
pub const API_READER_ROLE: &str = "syscall-recorder-api-reader";

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// The tests share one agent (and restart it, or change its RBAC): one at a time.
pub fn cluster_lock() -> MutexGuard<'static, ()> {
    static LOCK: OnceLock<Mutex<()>> = OnceLock::new();
    LOCK.get_or_init(|| Mutex::new(()))
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The test cluster.
#[derive(Clone, Debug)]
pub struct Cluster {
    /// The admin kubeconfig.
    pub kubeconfig: PathBuf,
    kubectl: PathBuf,
}

impl Cluster {
    /// The cluster, or None when `RECORDER_SKIP_CLUSTER=1`; panics when no cluster answers.
    pub fn get() -> Option<Self> {
        if env::var("RECORDER_SKIP_CLUSTER").is_ok_and(|v| v == "1") {
            eprintln!("RECORDER_SKIP_CLUSTER=1: skipping a cluster test");
            return None;
        }
        let kubeconfig = env::var_os("RECORDER_KUBECONFIG").map_or_else(
            || workspace().join("target/cluster/kubeconfig"),
            PathBuf::from,
        );
        // kubectl of the cluster's own version when it was built, else the one on PATH.
        let own = workspace().join("target/cluster/bin/kubectl");
        let kubectl = if own.exists() {
            own
        } else {
            PathBuf::from("kubectl")
        };
        let cluster = Self {
            kubeconfig,
            kubectl,
        };
        assert!(
            cluster.kubeconfig.exists(),
            "no test cluster: {} missing. Run `cargo xtask cluster up && cargo xtask image` \
             (or `cargo xtask test`), or set RECORDER_SKIP_CLUSTER=1 to skip the cluster tests",
            cluster.kubeconfig.display()
        );
        if let Err(err) = cluster.kubectl(&["get", "--raw", "/readyz", "--request-timeout=5s"]) {
            panic!(
                "the test cluster does not answer ({err:#}). Run `cargo xtask cluster up && \
                 cargo xtask image`, or set RECORDER_SKIP_CLUSTER=1 to skip the cluster tests"
            );
        }
        Some(cluster)
    }

    /// A kubectl command with the test kubeconfig.
    pub fn command(&self) -> Command {
        let mut command = Command::new(&self.kubectl);
        command
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .stdin(Stdio::null());
        command
    }

    /// Runs kubectl to completion: its stdout, or an error with its stderr.
    pub fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        self.run_kubectl(args, None)
    }

    /// kubectl with `input` on stdin.
    pub fn kubectl_stdin(&self, args: &[&str], input: &str) -> anyhow::Result<String> {
        self.run_kubectl(args, Some(input))
    }

    fn run_kubectl(&self, args: &[&str], input: Option<&str>) -> anyhow::Result<String> {
        let mut child = self
            .command()
            .args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {}", self.kubectl.display()))?;
        if let Some(input) = input {
            child
                .stdin
                .take()
                .context("stdin")?
                .write_all(input.as_bytes())?;
        }
        let output = child.wait_with_output()?;
        if !output.status.success() {
            bail!(
                "kubectl {}: {}: {}{}",
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim(),
                input.map_or_else(String::new, |input| format!("\ninput:\n{input}"))
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// kubectl with `-o json`, parsed.
    pub fn json(&self, args: &[&str]) -> anyhow::Result<Value> {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let text = self.kubectl(&all)?;
        serde_json::from_str(&text).with_context(|| format!("kubectl {args:?}: not JSON"))
    }

    /// `kubectl apply -f -` of a YAML/JSON text in `namespace` ("" for the manifest's own).
    pub fn apply(&self, namespace: &str, manifest: &str) -> anyhow::Result<()> {
        let mut args = vec!["apply", "-f", "-"];
        if !namespace.is_empty() {
            args.extend(["-n", namespace]);
        }
        self.kubectl_stdin(&args, manifest).map(|_| ())
    }

    /// Polls `check` every half second until it returns `Some` or `timeout` passes; the error
    /// names `what` and the last failure `check` reported.
    pub fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut() -> anyhow::Result<Option<T>>,
    ) -> anyhow::Result<T> {
        wait_for(what, timeout, &mut check)
    }

    /// Waits for `kubectl rollout status` of `resource` (deployment/x, daemonset/x, ...).
    pub fn rollout(
        &self,
        namespace: &str,
        resource: &str,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let timeout_arg = format!("--timeout={}s", timeout.as_secs());
        self.kubectl(&["rollout", "status", "-n", namespace, resource, &timeout_arg])
            .map(|_| ())
            .with_context(|| self.describe_pods(namespace))
    }

    /// The pods of `namespace` matching `selector`, as JSON objects.
    pub fn pods(&self, namespace: &str, selector: &str) -> anyhow::Result<Vec<Value>> {
        let mut args = vec!["get", "pods", "-n", namespace];
        if !selector.is_empty() {
            args.extend(["-l", selector]);
        }
        let list = self.json(&args)?;
        Ok(list["items"].as_array().cloned().unwrap_or_default())
    }

    /// A short status line per pod of `namespace` (for failure messages).
    pub fn describe_pods(&self, namespace: &str) -> String {
        self.kubectl(&["get", "pods", "-n", namespace, "-o", "wide"])
            .unwrap_or_else(|err| format!("{err:#}"))
            + &self
                .kubectl(&["get", "events", "-n", namespace, "--sort-by=.lastTimestamp"])
                .map(|events| {
                    let lines: Vec<&str> = events.lines().collect();
                    lines[lines.len().saturating_sub(15)..].join("\n")
                })
                .unwrap_or_default()
    }

    /// Waits until the pod is in `phase` (Running, Succeeded, Failed).
    pub fn wait_phase(
        &self,
        namespace: &str,
        pod: &str,
        phases: &[&str],
        timeout: Duration,
    ) -> anyhow::Result<Value> {
        self.wait_for(
            &format!("pod {namespace}/{pod} in {phases:?}"),
            timeout,
            || {
                let pod = self.json(&["get", "pod", "-n", namespace, pod])?;
                let phase = pod["status"]["phase"].as_str().unwrap_or_default();
                Ok(phases.contains(&phase).then_some(pod))
            },
        )
        .with_context(|| self.describe_pods(namespace))
    }

    /// Applies deploy/overlays/dev and waits until one agent pod is Ready with the dev image;
    /// returns that pod's name.
    pub fn deploy_agent(&self) -> anyhow::Result<String> {
        let overlay = workspace().join("deploy/overlays/dev");
        self.kubectl(&["apply", "-k", overlay.to_str().context("path")?])?;
        self.rollout(
            AGENT_NAMESPACE,
            &format!("daemonset/{AGENT_DAEMONSET}"),
            Duration::from_secs(120),
        )?;
        self.agent_pod()
    }

    /// The name of the Ready, not terminating agent pod (waits up to a minute for one).
    pub fn agent_pod(&self) -> anyhow::Result<String> {
        self.wait_for("a Ready agent pod", Duration::from_secs(60), || {
            let pods = self.pods(AGENT_NAMESPACE, AGENT_SELECTOR)?;
            Ok(pods
                .iter()
                .filter(|pod| pod["metadata"]["deletionTimestamp"].is_null())
                .find(|pod| is_ready(pod))
                .and_then(|pod| pod["metadata"]["name"].as_str().map(str::to_owned)))
        })
        .with_context(|| self.describe_pods(AGENT_NAMESPACE))
    }

    /// Restarts the agent DaemonSet (`kubectl rollout restart`) and waits for the rollout.
    pub fn restart_agent(&self) -> anyhow::Result<()> {
        let daemonset = format!("daemonset/{AGENT_DAEMONSET}");
        self.kubectl(&["rollout", "restart", "-n", AGENT_NAMESPACE, &daemonset])?;
        self.rollout(AGENT_NAMESPACE, &daemonset, Duration::from_secs(120))
    }

    /// The agent container's log (all of it).
    pub fn agent_log(&self, pod: &str) -> anyhow::Result<String> {
        self.kubectl(&["logs", "-n", AGENT_NAMESPACE, pod, "-c", AGENT_CONTAINER])
    }

    /// A token of the ServiceAccount `account` in the agent's namespace (made if missing),
    /// bound to the ClusterRoles `roles` (none: a valid token that may read nothing). The
    /// bindings are `ct-ACCOUNT-ROLE`, labeled as test objects and left in place (applying them
    /// again is a no-op); the token lasts an hour.
    pub fn service_account_token(&self, account: &str, roles: &[&str]) -> anyhow::Result<String> {
        let mut manifest = format!(
            "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: {account}\n  namespace: \
             {AGENT_NAMESPACE}\n  labels:\n    syscall-recorder.io/test: cluster\n"
        );
        for role in roles {
            manifest.push_str(&format!(
                "---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\n\
                 metadata:\n  name: ct-{account}-{role}\n  labels:\n    \
                 syscall-recorder.io/test: cluster\nroleRef:\n  apiGroup: \
                 rbac.authorization.k8s.io\n  kind: ClusterRole\n  name: {role}\nsubjects:\n  \
                 - kind: ServiceAccount\n    name: {account}\n    namespace: {AGENT_NAMESPACE}\n"
            ));
        }
        self.apply("", &manifest)?;
        let token = self.kubectl(&[
            "create",
            "token",
            account,
            "-n",
            AGENT_NAMESPACE,
            "--duration=1h",
        ])?;
        let token = token.trim().to_owned();
        anyhow::ensure!(
            !token.is_empty(),
            "kubectl create token {account}: no token"
        );
        Ok(token)
    }

    /// `kubectl port-forward` to port `remote` of `pod`.
    pub fn port_forward(
        &self,
        namespace: &str,
        pod: &str,
        remote: u16,
    ) -> anyhow::Result<PortForward> {
        PortForward::start(self, namespace, pod, remote)
    }

    /// A namespace for one test, deleted on drop.
    pub fn namespace(&self, prefix: &str) -> anyhow::Result<TestNamespace> {
        TestNamespace::create(self, prefix)
    }
}

/// Whether a pod's Ready condition is True.
pub fn is_ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

/// Polls `check` every half second until `Some` or the deadline; the error carries the last
/// failure.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    check: &mut dyn FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    let mut last_error = None;
    loop {
        match check() {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(err) => last_error = Some(err),
        }
        if Instant::now() >= deadline {
            let last = last_error.map_or(String::new(), |err| format!(" (last error: {err:#})"));
            bail!("timed out after {timeout:?} waiting for {what}{last}");
        }
        thread::sleep(Duration::from_millis(500));
    }
}

/// A namespace made for a test (name `<prefix>-<random>`), deleted on drop without waiting.
#[derive(Debug)]
pub struct TestNamespace {
    cluster: Cluster,
    /// Its name.
    pub name: String,
}

impl TestNamespace {
    fn create(cluster: &Cluster, prefix: &str) -> anyhow::Result<Self> {
        let name = format!("{prefix}-{}", &crate::random_hex64()[..6]);
        cluster.apply(
            "",
            &format!(
                "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n  labels:\n    \
                 syscall-recorder.io/test: cluster\n"
            ),
        )?;
        let namespace = Self {
            cluster: cluster.clone(),
            name,
        };
        // Pods need the namespace's default ServiceAccount, which the controller-manager adds.
        cluster.wait_for(
            "the namespace's default ServiceAccount",
            Duration::from_secs(30),
            || {
                Ok(cluster
                    .kubectl(&["get", "serviceaccount", "default", "-n", &namespace.name])
                    .ok())
            },
        )?;
        Ok(namespace)
    }

    /// `kubectl apply` in this namespace.
    pub fn apply(&self, manifest: &str) -> anyhow::Result<()> {
        self.cluster.apply(&self.name, manifest)
    }

    /// kubectl with `-n <this namespace>` first (so that it never lands after a `--`).
    pub fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        self.cluster.kubectl(&all)
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "namespace {} at the failure:\n{}",
                self.name,
                self.cluster.describe_pods(&self.name)
            );
        }
        let _ = self.cluster.kubectl(&[
            "delete",
            "namespace",
            &self.name,
            "--wait=false",
            "--ignore-not-found",
        ]);
    }
}

/// A running `kubectl port-forward`, killed on drop.
#[derive(Debug)]
pub struct PortForward {
    child: Child,
    /// The local end.
    pub addr: SocketAddr,
}

impl PortForward {
    fn start(cluster: &Cluster, namespace: &str, pod: &str, remote: u16) -> anyhow::Result<Self> {
        let mut child = cluster
            .command()
            .args(["port-forward", "--address", "127.0.0.1", "-n", namespace])
            .arg(format!("pod/{pod}"))
            .arg(format!(":{remote}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting kubectl port-forward")?;
        let stdout = child.stdout.take().context("stdout")?;
        let (send, receive) = mpsc::channel();
        // `Forwarding from 127.0.0.1:PORT -> REMOTE`, then the reader keeps draining.
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.strip_prefix("Forwarding from ") {
                    let addr = rest
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_owned();
                    let _ = send.send(addr);
                }
            }
        });
        let addr = match receive.recv_timeout(Duration::from_secs(20)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                let mut stderr = String::new();
                if let Some(mut pipe) = child.stderr.take() {
                    let _ = pipe.read_to_string(&mut stderr);
                }
                let _ = child.wait();
                bail!("kubectl port-forward to {namespace}/{pod}:{remote} did not start: {stderr}");
            }
        };
        Ok(Self {
            child,
            addr: addr
                .parse()
                .with_context(|| format!("port-forward address {addr:?}"))?,
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for PortForward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The agent's profiles through `recorder-agent profiles -o json --server URL --token TOKEN`.
pub fn profiles(server: &str, token: &str) -> anyhow::Result<Vec<Value>> {
    let output = crate::agent_cli(&[
        "profiles", "-o", "json", "--server", server, "--token", token,
    ]);
    if !output.status.success() {
        bail!(
            "recorder-agent profiles: {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let value: Value = serde_json::from_slice(&output.stdout).context("profiles: not JSON")?;
    Ok(value.as_array().cloned().unwrap_or_default())
}

/// The profile with this identity.
pub fn find<'a>(
    profiles: &'a [Value],
    namespace: &str,
    kind: &str,
    workload: &str,
    container: &str,
) -> Option<&'a Value> {
    profiles.iter().find(|p| {
        p["namespace"] == namespace
            && p["workload_kind"] == kind
            && p["workload"] == workload
            && p["container"] == container
    })
}

/// `(kind, workload, container)` of every profile of `namespace`.
pub fn identities(profiles: &[Value], namespace: &str) -> Vec<(String, String, String)> {
    let mut all: Vec<(String, String, String)> = profiles
        .iter()
        .filter(|p| p["namespace"] == namespace)
        .map(|p| {
            let part = |key: &str| p[key].as_str().unwrap_or_default().to_owned();
            (part("workload_kind"), part("workload"), part("container"))
        })
        .collect();
    all.sort();
    all
}

/// The sum of a profile's counts.
pub fn total_calls(profile: &Value) -> u64 {
    profile["syscalls"].as_object().map_or(0, |syscalls| {
        syscalls.values().filter_map(Value::as_u64).sum()
    })
}

/// Writes a file readable only by root (keys for Prometheus).
pub fn write_private(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    fs::write(path, data).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(
        path,
        <fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o600),
    )?;
    Ok(())
}
