//! `cargo xtask cluster down`: every pod, container, process, mount, cgroup, network device and
//! iptables rule the cluster made goes, then the result is checked. Kept: the binaries, PKI,
//! configs, logs, containerd's image store (a warm `up` imports nothing) and
//! `/var/lib/kubelet/seccomp` (the agent's output). The test agent's state and pins (deploy/'s
//! hostPath `/var/lib/syscall-recorder` and `/sys/fs/bpf/syscall-recorder`) go: the workloads
//! they name died with etcd's data, and pinned programs would go on counting the host.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::bail;

use super::{BRIDGE, KUBELET_ROOT, Layout, config, host, procs};

/// deploy/base's hostPath for the agent's state.
const AGENT_STATE: &str = "/var/lib/syscall-recorder";
/// Where deploy/base's agent pins its maps and programs (`--bpffs /sys/fs/bpf`).
const AGENT_PINS: &str = "/sys/fs/bpf/syscall-recorder";

const NETNS_DIRS: [&str; 2] = ["/run/netns", "/var/run/netns"];

pub fn run(layout: &Layout) -> anyhow::Result<()> {
    let daemons = config::daemons(layout);
    let binary = |name: &str| -> PathBuf {
        daemons
            .iter()
            .find(|d| d.name == name)
            .map(|d| d.binary.clone())
            .unwrap_or_default()
    };
    let running = |name: &str| procs::running(layout, name, &binary(name)).is_some();
    let grace = Duration::from_secs(10);

    // 1. Pods go through the kubelet while it runs, so that CNI tears their networks down.
    if running("kube-apiserver") && running("kubelet") && running("containerd") {
        // Nothing may recreate what is deleted (DaemonSets, ReplicaSets, the scheduler).
        procs::stop(
            layout,
            "kube-controller-manager",
            &binary("kube-controller-manager"),
            grace,
        )?;
        procs::stop(layout, "kube-scheduler", &binary("kube-scheduler"), grace)?;
        eprintln!("cluster: deleting every pod");
        let _ = layout
            .kubectl()
            .args([
                "delete",
                "pods",
                "--all",
                "--all-namespaces",
                "--grace-period=1",
                "--wait=false",
                "--request-timeout=10s",
            ])
            .stdout(Stdio::null())
            .status();
        let started = Instant::now();
        loop {
            let pods = crate::setup::quiet(layout.kubectl().args([
                "get",
                "pods",
                "-A",
                "--no-headers",
                "--request-timeout=3s",
            ]));
            let tasks = running_tasks(layout);
            if pods.as_deref().is_some_and(|p| p.trim().is_empty()) && tasks == 0 {
                eprintln!(
                    "cluster: pods gone after {:.1} s",
                    started.elapsed().as_secs_f64()
                );
                break;
            }
            if started.elapsed() > Duration::from_secs(60) {
                eprintln!("cluster: pods still there after 60 s; removing them below the kubelet");
                break;
            }
            thread::sleep(Duration::from_millis(250));
        }
    }

    // 2. The daemons, consumers first; containerd last, after its containers.
    for name in [
        "kube-proxy",
        "kubelet",
        "kube-scheduler",
        "kube-controller-manager",
        "kube-apiserver",
        "etcd",
    ] {
        procs::stop(layout, name, &binary(name), grace)?;
    }
    if running("containerd") {
        remove_containers(layout);
    }
    procs::stop(layout, "containerd", &binary("containerd"), grace)?;

    // 3. Whatever survived: shims, containers' processes.
    for (pid, exe) in procs::processes_under(&layout.bin) {
        eprintln!("cluster: killing leftover {} (pid {pid})", exe.display());
        procs::kill_pid(pid, Duration::from_secs(2));
    }
    kill_kubepods_processes();

    // 4. Mounts (deepest first), network namespaces, cgroups.
    unmount_all(layout);
    for dir in NETNS_DIRS {
        for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
            if entry.file_name().to_string_lossy().starts_with("cni-") {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
    remove_kubepods_cgroups();

    // 5. kube-proxy's rules, the guard, the bridge, sysctls, bpffs.
    let cleanup_log = layout.logs.join("kube-proxy-cleanup.log");
    if let Ok(log) = fs::File::create(&cleanup_log) {
        let _ = Command::new(layout.bin.join("kube-proxy"))
            .arg("--cleanup")
            .stdout(log.try_clone().map_or(Stdio::null(), Stdio::from))
            .stderr(Stdio::from(log))
            .status();
        eprintln!(
            "cluster: kube-proxy --cleanup (log {})",
            cleanup_log.display()
        );
    }
    for tool in ["iptables", "ip6tables"] {
        remove_kube_chains(tool);
    }
    host::undo(layout)?;

    // 6. State: etcd's data, containerd's state, the kubelet's root (but its seccomp profiles),
    // the test agent's state and pins.
    remove_kubelet_root();
    for dir in [AGENT_STATE, AGENT_PINS] {
        if Path::new(dir).exists() {
            match fs::remove_dir_all(dir) {
                Ok(()) => eprintln!("cluster: removed {dir} (the test agent's)"),
                Err(err) => eprintln!("cluster: could not remove {dir}: {err}"),
            }
        }
    }
    for dir in host::CREATED_DIRS {
        if Path::new(dir).exists() && host::created_by_up(layout, dir) {
            // Network namespaces of others may live in /run/netns: only an empty one goes.
            let _ = if dir == "/run/netns" {
                fs::remove_dir(dir)
            } else {
                fs::remove_dir_all(dir)
            };
        }
    }
    if layout.run.exists() {
        fs::remove_dir_all(&layout.run)?;
    }
    // The kernel tears a network namespace (and its veth peer) down asynchronously: give what
    // is on its way out a few seconds before calling it left over.
    let started = Instant::now();
    loop {
        let left = leftovers(layout);
        if left.is_empty() {
            eprintln!(
                "cluster: down: no process, mount, cgroup, netns, link or iptables chain left"
            );
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(5) {
            bail!("cluster: down left: {}", left.join(", "));
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// Running tasks in containerd's CRI namespace.
fn running_tasks(layout: &Layout) -> usize {
    crate::setup::quiet(layout.ctr().args(["tasks", "ls"]))
        .map(|out| out.lines().filter(|l| l.contains("RUNNING")).count())
        .unwrap_or(0)
}

/// Kills and deletes every task and container containerd still has.
fn remove_containers(layout: &Layout) {
    let ids =
        crate::setup::quiet(layout.ctr().args(["containers", "ls", "-q"])).unwrap_or_default();
    let ids: Vec<&str> = ids
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if ids.is_empty() {
        return;
    }
    eprintln!("cluster: removing {} containers", ids.len());
    for id in &ids {
        let _ = layout
            .ctr()
            .args(["tasks", "kill", "--signal", "SIGKILL", id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    thread::sleep(Duration::from_millis(300));
    for id in &ids {
        let _ = layout
            .ctr()
            .args(["tasks", "delete", "--force", id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = layout
            .ctr()
            .args(["containers", "rm", id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Every cgroup hierarchy's `kubepods` directory.
fn kubepods_dirs() -> Vec<PathBuf> {
    fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join("kubepods"))
        .chain(std::iter::once(PathBuf::from("/sys/fs/cgroup/kubepods")))
        .filter(|path| path.is_dir())
        .collect()
}

/// Directories below `root`, deepest first (`root` last).
fn dirs_bottom_up(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in fs::read_dir(root).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(dirs_bottom_up(&entry.path()));
        }
    }
    out.push(root.to_path_buf());
    out
}

fn kill_kubepods_processes() {
    for root in kubepods_dirs() {
        for dir in dirs_bottom_up(&root) {
            let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
                eprintln!("cluster: killing pid {pid} left in {}", dir.display());
                procs::kill_pid(pid, Duration::from_secs(2));
            }
        }
    }
}

fn remove_kubepods_cgroups() {
    let mut removed = 0;
    for root in kubepods_dirs() {
        for dir in dirs_bottom_up(&root) {
            if fs::remove_dir(&dir).is_ok() {
                removed += 1;
            }
        }
    }
    if removed > 0 {
        eprintln!("cluster: removed {removed} kubepods cgroups");
    }
}

/// Mount points the cluster made: under target/cluster, the kubelet root, containerd's run dir,
/// pod network namespaces.
fn cluster_mounts(layout: &Layout) -> Vec<String> {
    let root = layout.root.display().to_string();
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut mounts: Vec<String> = info
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|point| point.replace("\\040", " "))
        .filter(|point| {
            point.starts_with(&format!("{root}/"))
                // The kubelet bind-mounts its root onto itself (to make it shared).
                || point == KUBELET_ROOT
                || point.starts_with(&format!("{KUBELET_ROOT}/"))
                || point.starts_with("/run/containerd/")
                || NETNS_DIRS
                    .iter()
                    .any(|dir| point.starts_with(&format!("{dir}/cni-")))
        })
        .collect();
    mounts.sort_by_key(|point| std::cmp::Reverse(point.len()));
    mounts.dedup();
    mounts
}

fn unmount_all(layout: &Layout) {
    // A mount can be stacked; a few rounds take all layers off.
    for _ in 0..5 {
        let mounts = cluster_mounts(layout);
        if mounts.is_empty() {
            return;
        }
        for point in mounts {
            let ok = Command::new("umount")
                .arg(&point)
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                let _ = Command::new("umount").args(["-l", &point]).status();
            }
        }
    }
}

/// Everything in the kubelet's root except `seccomp/` (profiles the agent wrote).
fn remove_kubelet_root() {
    for entry in fs::read_dir(KUBELET_ROOT).into_iter().flatten().flatten() {
        if entry.file_name() == "seccomp" {
            continue;
        }
        let path = entry.path();
        let _ = if entry.file_type().is_ok_and(|t| t.is_dir()) {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
    }
    // An empty root goes too.
    let _ = fs::remove_dir(KUBELET_ROOT);
}

/// The kubelet's own chains (KUBE-FIREWALL, KUBE-KUBELET-CANARY, KUBE-IPTABLES-HINT) and
/// whatever `kube-proxy --cleanup` left: every rule that jumps to a KUBE-* chain, then the
/// chains.
fn remove_kube_chains(tool: &str) {
    let Some(saved) = crate::setup::quiet(&mut Command::new(format!("{tool}-save"))) else {
        return;
    };
    let mut table = "";
    let mut jumps = Vec::new();
    let mut chains = Vec::new();
    for line in saved.lines() {
        if let Some(name) = line.strip_prefix('*') {
            table = name;
        } else if let Some(chain) = line.strip_prefix(":KUBE-") {
            let chain = chain.split_whitespace().next().unwrap_or_default();
            chains.push((table.to_owned(), format!("KUBE-{chain}")));
        } else if let Some(rule) = line.strip_prefix("-A ")
            && !rule.starts_with("KUBE-")
            && rule.contains(" -j KUBE-")
        {
            jumps.push((table.to_owned(), rule.to_owned()));
        }
    }
    if chains.is_empty() {
        return;
    }
    // The saved rule text is shell-quoted (comments): let sh split it.
    for (table, rule) in &jumps {
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!("{tool} -w 5 -t {table} -D {rule}"))
            .stderr(Stdio::null())
            .status();
    }
    for op in ["-F", "-X"] {
        for (table, chain) in &chains {
            let _ = Command::new(tool)
                .args(["-w", "5", "-t", table, op, chain])
                .stderr(Stdio::null())
                .status();
        }
    }
    eprintln!(
        "cluster: removed {} {tool} KUBE-* chains and {} jumps to them",
        chains.len(),
        jumps.len()
    );
}

/// Whatever the cluster made that is still there.
fn leftovers(layout: &Layout) -> Vec<String> {
    let mut left = Vec::new();
    for (pid, exe) in procs::processes_under(&layout.bin) {
        left.push(format!("process {pid} ({})", exe.display()));
    }
    for point in cluster_mounts(layout) {
        left.push(format!("mount {point}"));
    }
    for dir in kubepods_dirs() {
        left.push(format!("cgroup {}", dir.display()));
    }
    for dir in NETNS_DIRS {
        for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("cni-") {
                left.push(format!("netns {dir}/{name}"));
            }
        }
    }
    let links =
        crate::setup::quiet(Command::new("ip").args(["-o", "link", "show"])).unwrap_or_default();
    for line in links.lines() {
        if line.contains(&format!(" {BRIDGE}:")) || line.contains(&format!("master {BRIDGE}")) {
            left.push(format!(
                "link {}",
                line.split(':').nth(1).unwrap_or("").trim()
            ));
        }
    }
    for tool in ["iptables-save", "ip6tables-save"] {
        let rules = crate::setup::quiet(&mut Command::new(tool)).unwrap_or_default();
        let chains = rules
            .lines()
            .filter(|l| l.starts_with(":KUBE-") || l.starts_with(":SYSREC-"))
            .count();
        if chains > 0 {
            left.push(format!("{chains} chains KUBE-*/SYSREC-* in {tool}"));
        }
    }
    left
}
