//! `cargo xtask cluster up | down | status`: a real single-node Kubernetes cluster on this
//! machine, built from upstream sources (Go module proxy) and kept on loopback and one private
//! bridge.
//!
//! Layout (under `target/cluster/`): `bin/` the built binaries (+ `bin/cni/`), `build/` the Go
//! build modules, `pki/` the CA and certificates, `etc/` generated configs and kubeconfigs,
//! `images/` the OCI archives, `containerd/` containerd's root (images, snapshots; kept),
//! `logs/<daemon>.log`, `run/` pid files, sockets, etcd's data and containerd's state (removed by
//! `down`), `kubeconfig` the admin kubeconfig, `timings.log` measured durations.
//!
//! Addresses: etcd 127.0.0.1:2379/2380; the API server, the kubelet (10250) and the node's
//! InternalIP on NODE_IP, the gateway address of the bridge BRIDGE (pods reach the API through
//! the `kubernetes` Service, which needs a non-loopback endpoint); every other port on 127.0.0.1.
//! kube-proxy (iptables mode) runs so that Services work: the agent's in-cluster client talks to
//! `kubernetes.default` (10.96.0.1). No CoreDNS: pods get no resolver (tests use IPs,
//! port-forward and the API).

mod build;
mod config;
mod down;
mod host;
mod pki;
mod procs;
pub mod versions;

use std::{
    fs,
    io::Write as _,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{oci, workspace_root};

pub const NODE_NAME: &str = "syscall-recorder-node";
/// The node's address: the gateway of the pod bridge.
pub const NODE_IP: &str = "10.244.0.1";
pub const POD_SUBNET: &str = "10.244.0.0/24";
pub const BRIDGE: &str = "srbr0";
pub const SERVICE_CIDR: &str = "10.96.0.0/24";
/// The `kubernetes` Service's ClusterIP (first address of SERVICE_CIDR).
pub const SERVICE_IP: &str = "10.96.0.1";
pub const API_PORT: u16 = 6443;
/// The kubelet's root: the agent delivers seccomp profiles to `<root>/seccomp`.
pub const KUBELET_ROOT: &str = "/var/lib/kubelet";
pub use versions::{BUSYBOX_IMAGE, PAUSE_IMAGE};

/// Debian packages the cluster needs: what each is for.
const APT_PACKAGES: &[(&str, &str)] = &[
    (
        "runc",
        "the OCI runtime containerd runs (crun refuses hybrid cgroups)",
    ),
    (
        "iptables",
        "kube-proxy's Service rules and the bridge guard",
    ),
    ("conntrack", "kube-proxy clears stale UDP flows"),
    ("openssl", "the cluster's certificates"),
    ("busybox-static", "the busybox workload image"),
    ("iproute2", "the pod bridge"),
];

const USAGE: &str = "usage: cargo xtask cluster build|up|down|status";

/// Where everything lives.
#[derive(Debug)]
pub struct Layout {
    pub root: PathBuf,
    pub bin: PathBuf,
    pub build: PathBuf,
    pub pki: PathBuf,
    pub etc: PathBuf,
    pub logs: PathBuf,
    pub run: PathBuf,
    pub images: PathBuf,
    pub containerd_root: PathBuf,
    pub kubeconfig: PathBuf,
}

impl Layout {
    pub fn new() -> Self {
        let root = workspace_root().join("target").join("cluster");
        // A worktree may link its target/cluster to another's: daemons are recognized by
        // their executable's real path, so the layout uses that path too.
        let root = fs::canonicalize(&root).unwrap_or(root);
        Self {
            bin: root.join("bin"),
            build: root.join("build"),
            pki: root.join("pki"),
            etc: root.join("etc"),
            logs: root.join("logs"),
            run: root.join("run"),
            images: root.join("images"),
            containerd_root: root.join("containerd"),
            kubeconfig: root.join("kubeconfig"),
            root,
        }
    }

    pub fn containerd_socket(&self) -> PathBuf {
        self.run.join("containerd").join("containerd.sock")
    }

    /// `ctr` against this cluster's containerd, in the CRI namespace.
    pub fn ctr(&self) -> Command {
        let mut command = Command::new(self.bin.join("ctr"));
        command
            .arg("--address")
            .arg(self.containerd_socket())
            .args(["--namespace", "k8s.io"]);
        command
    }

    /// Our kubectl (same version as the cluster) with the admin kubeconfig.
    pub fn kubectl(&self) -> Command {
        let mut command = Command::new(self.bin.join("kubectl"));
        command.arg("--kubeconfig").arg(&self.kubeconfig);
        command
    }
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let layout = Layout::new();
    match args.first().map(String::as_str) {
        Some("up") => up(&layout),
        Some("build") => {
            // Everything `up` needs that starts nothing: binaries, certificates, configs,
            // image archives.
            require_root()?;
            apt_packages()?;
            let started = Instant::now();
            let built_before = build_stamps(&layout);
            build::all(&layout)?;
            if build_stamps(&layout) != built_before {
                record(&layout, "build", started.elapsed());
            }
            pki::ensure(&layout)?;
            config::write_all(&layout)?;
            images(&layout).map(|_| ())
        }
        Some("down") => {
            require_root()?;
            let started = Instant::now();
            down::run(&layout)?;
            record(&layout, "down", started.elapsed());
            Ok(())
        }
        Some("status") => status(&layout),
        _ => bail!("{USAGE}"),
    }
}

fn require_root() -> anyhow::Result<()> {
    let uid = Command::new("id").arg("-u").output()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        bail!("the cluster needs root (it mounts, makes cgroups and a bridge, runs a kubelet)");
    }
    Ok(())
}

/// Appends `what took DURATION` to `timings.log` and prints it.
fn record(layout: &Layout, what: &str, took: Duration) {
    eprintln!("cluster: {what} took {:.1} s", took.as_secs_f64());
    let _ = fs::create_dir_all(&layout.root);
    if let Ok(mut file) = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(layout.root.join("timings.log"))
    {
        let now = Command::new("date")
            .arg("-Is")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        let _ = writeln!(file, "{now} {what} {:.1}s", took.as_secs_f64());
    }
}

fn apt_packages() -> anyhow::Result<()> {
    let installed = |package: &str| {
        Command::new("dpkg-query")
            .args(["-W", "-f=${Status}", package])
            .stderr(Stdio::null())
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
    };
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .filter(|(package, _)| !installed(package))
        .map(|(package, _)| *package)
        .collect();
    if missing.is_empty() {
        eprintln!("cluster: apt packages present");
        return Ok(());
    }
    for (package, why) in APT_PACKAGES.iter().filter(|(p, _)| missing.contains(p)) {
        eprintln!("cluster: missing {package}: {why}");
    }
    crate::run_cmd(Command::new("apt-get").args(["update", "-q"]))?;
    crate::run_cmd(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .context("installing the cluster's apt packages")
}

fn up(layout: &Layout) -> anyhow::Result<()> {
    require_root()?;
    let started = Instant::now();
    for dir in [&layout.logs, &layout.run, &layout.etc, &layout.bin] {
        fs::create_dir_all(dir)?;
    }
    apt_packages()?;
    let build_started = Instant::now();
    let built_before = build_stamps(layout);
    build::all(layout)?;
    if build_stamps(layout) != built_before {
        record(layout, "build", build_started.elapsed());
    }
    pki::ensure(layout)?;
    config::write_all(layout)?;
    let (pause_archive, busybox_archive) = images(layout)?;

    let start_started = Instant::now();
    host::prepare(layout)?;
    let daemons = config::daemons(layout);
    let log = |name: &str| layout.logs.join(format!("{name}.log"));
    let mut started_any = false;
    for daemon in &daemons {
        started_any |= procs::start(layout, daemon)?;
        let took = match daemon.name {
            "etcd" => procs::wait_for("etcd", &log("etcd"), Duration::from_secs(30), || {
                procs::http_status("127.0.0.1:2379", "/health") == Some(200)
            })?,
            "kube-apiserver" => procs::wait_for(
                "kube-apiserver",
                &log("kube-apiserver"),
                Duration::from_secs(60),
                || quiet_ok(layout.kubectl().args(["get", "--raw", "/readyz"])),
            )?,
            "containerd" => {
                let took = procs::wait_for(
                    "containerd",
                    &log("containerd"),
                    Duration::from_secs(30),
                    || quiet_ok(layout.ctr().arg("version")),
                )?;
                import(layout, &pause_archive, PAUSE_IMAGE)?;
                import(layout, &busybox_archive, BUSYBOX_IMAGE)?;
                took
            }
            "kubelet" => {
                procs::wait_for("kubelet", &log("kubelet"), Duration::from_secs(30), || {
                    procs::http_status("127.0.0.1:10248", "/healthz") == Some(200)
                })?
            }
            _ => Duration::ZERO,
        };
        if took > Duration::from_millis(200) {
            eprintln!(
                "cluster: {} ready after {:.1} s",
                daemon.name,
                took.as_secs_f64()
            );
        }
    }
    let took = procs::wait_for(
        "node Ready",
        &log("kubelet"),
        Duration::from_secs(120),
        || node_ready(layout) == Some(true),
    )?;
    eprintln!(
        "cluster: node {NODE_NAME} Ready after {:.1} s",
        took.as_secs_f64()
    );
    // A pod can be created once its namespace's ServiceAccount and CA ConfigMap exist (the
    // controller-manager makes both a moment after it starts).
    let took = procs::wait_for(
        "the default ServiceAccount and kube-root-ca.crt",
        &log("kube-controller-manager"),
        Duration::from_secs(60),
        || {
            quiet_ok(layout.kubectl().args([
                "get",
                "serviceaccount/default",
                "configmap/kube-root-ca.crt",
                "--namespace=default",
                "--request-timeout=3s",
            ]))
        },
    )?;
    if took > Duration::from_millis(200) {
        eprintln!(
            "cluster: namespace default ready for pods after {:.1} s",
            took.as_secs_f64()
        );
    }
    // Daemons without a readiness check (controller-manager, scheduler, kube-proxy) still run.
    for daemon in &daemons {
        if procs::running(layout, daemon.name, &daemon.binary).is_none() {
            let log = log(daemon.name);
            bail!(
                "{} exited; see {} (last lines: {})",
                daemon.name,
                log.display(),
                procs::tail(&log, 3)
            );
        }
    }
    if started_any {
        record(
            layout,
            "up (daemons started to node Ready and pods admitted)",
            start_started.elapsed(),
        );
        record(layout, "up (total, incl. build checks)", started.elapsed());
    } else {
        eprintln!(
            "cluster: already up ({:.1} s)",
            started.elapsed().as_secs_f64()
        );
    }
    eprintln!(
        "cluster: kubeconfig {}\ncluster: kubectl {} (v{}; the image's kubectl works too)\n\
         cluster: workload image {BUSYBOX_IMAGE} (imagePullPolicy: Never)",
        layout.kubeconfig.display(),
        layout.bin.join("kubectl").display(),
        versions::KUBERNETES.trim_start_matches('v'),
    );
    Ok(())
}

fn build_stamps(layout: &Layout) -> Vec<String> {
    versions::GO_BUILDS
        .iter()
        .map(|b| {
            fs::read_to_string(layout.bin.join(format!(".built-{}", b.name))).unwrap_or_default()
        })
        .collect()
}

/// Runs `command` silently; whether it succeeded.
fn quiet_ok(command: &mut Command) -> bool {
    command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether the node's Ready condition is True (None: the API does not answer).
fn node_ready(layout: &Layout) -> Option<bool> {
    let status = crate::setup::quiet(layout.kubectl().args([
        "get",
        "node",
        NODE_NAME,
        "--request-timeout=3s",
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
    ]))?;
    Some(status.trim() == "True")
}

/// Writes the two image archives (pause, busybox) when missing or changed.
fn images(layout: &Layout) -> anyhow::Result<(PathBuf, PathBuf)> {
    let pause = layout.images.join("pause.oci.tar");
    let busybox = layout.images.join("busybox.oci.tar");
    let digest = oci::write_archive(
        &pause,
        PAUSE_IMAGE,
        &oci::pause_entries(&layout.bin.join("pause"))?,
        &oci::Config {
            entrypoint: &["/pause"],
            created_by: "cargo xtask cluster",
            ..oci::Config::default()
        },
    )?;
    eprintln!("cluster: image {PAUSE_IMAGE} ({digest})");
    let digest = oci::write_archive(
        &busybox,
        BUSYBOX_IMAGE,
        &oci::busybox_entries(std::path::Path::new("/bin/busybox"))?,
        &oci::Config {
            cmd: &["sh"],
            created_by: "cargo xtask cluster",
            ..oci::Config::default()
        },
    )?;
    eprintln!("cluster: image {BUSYBOX_IMAGE} ({digest})");
    Ok((pause, busybox))
}

/// Imports an archive unless containerd has the image at the archive's digest already.
fn import(layout: &Layout, archive: &std::path::Path, reference: &str) -> anyhow::Result<()> {
    let index: serde_json::Value = {
        let file = fs::File::open(archive)?;
        let mut tar = tar::Archive::new(file);
        let mut found = None;
        for entry in tar.entries()? {
            let mut entry = entry?;
            if entry.path()?.as_os_str() == "index.json" {
                found = Some(serde_json::from_reader(&mut entry)?);
                break;
            }
        }
        found.context("archive without index.json")?
    };
    let digest = index["manifests"][0]["digest"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let listed = crate::setup::quiet(layout.ctr().args(["images", "ls"])).unwrap_or_default();
    if listed
        .lines()
        .any(|line| line.starts_with(&format!("{reference} ")) && line.contains(&digest))
    {
        eprintln!("cluster: {reference} imported already");
        return Ok(());
    }
    crate::run_cmd(
        layout
            .ctr()
            .args(["images", "import", "--platform", "linux/amd64"])
            .arg(archive),
    )
    .with_context(|| format!("importing {reference}"))
}

/// Whether this cluster's containerd answers (the cluster is up).
pub fn containerd_answers() -> bool {
    let layout = Layout::new();
    layout.containerd_socket().exists() && quiet_ok(layout.ctr().arg("version"))
}

/// Imports an OCI archive into the running cluster's containerd (unless present already).
pub fn import_image(archive: &std::path::Path, reference: &str) -> anyhow::Result<()> {
    import(&Layout::new(), archive, reference)
}

/// Whether any of the cluster's daemons runs (`up`, or a `down` that did not finish).
pub fn any_daemon_running() -> bool {
    let layout = Layout::new();
    config::daemons(&layout)
        .iter()
        .any(|daemon| procs::running(&layout, daemon.name, &daemon.binary).is_some())
}

/// Whether the cluster is up as `status` sees it: a daemon runs and the node answers Ready.
pub fn is_up() -> bool {
    any_daemon_running() && node_ready(&Layout::new()) == Some(true)
}

fn status(layout: &Layout) -> anyhow::Result<()> {
    let mut any = false;
    for daemon in config::daemons(layout) {
        match procs::running(layout, daemon.name, &daemon.binary) {
            Some(pid) => {
                any = true;
                println!("{:<24} running (pid {pid})", daemon.name);
            }
            None => println!("{:<24} stopped", daemon.name),
        }
    }
    let others = procs::processes_under(&layout.bin);
    let shims = others
        .iter()
        .filter(|(_, exe)| exe.ends_with("containerd-shim-runc-v2"))
        .count();
    println!("{:<24} {shims}", "containerd shims");
    if !any {
        println!("node {NODE_NAME}: cluster down");
        return Ok(());
    }
    match node_ready(layout) {
        Some(true) => println!("node {NODE_NAME}: Ready"),
        Some(false) => println!("node {NODE_NAME}: NotReady"),
        None => println!("node {NODE_NAME}: API server not answering"),
    }
    if let Some(pods) = crate::setup::quiet(layout.kubectl().args([
        "get",
        "pods",
        "-A",
        "--no-headers",
        "--request-timeout=3s",
    ])) {
        println!("pods: {}", pods.lines().count());
        print!("{pods}");
    }
    println!("kubeconfig: {}", layout.kubeconfig.display());
    Ok(())
}
