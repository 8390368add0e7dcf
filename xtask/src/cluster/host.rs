//! What the host needs before the node starts, undone by `down`: a bpffs at /sys/fs/bpf, the
//! pod bridge with the node's address, a guard that keeps the bridge's traffic on this machine,
//! and the sysctls the kubelet and the bridge change (saved first, restored by `down`).

use std::{fs, path::Path, process::Command};

use anyhow::Context as _;

use super::{BRIDGE, Layout, NODE_IP, POD_SUBNET};
use crate::run_cmd;

/// Sysctls the kubelet (vm.*, kernel.*), the bridge plugin (ip_forward) and this file change.
const SYSCTLS: &[&str] = &[
    "net/ipv4/ip_forward",
    "net/bridge/bridge-nf-call-iptables",
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
];

/// Filter chains that keep the bridge's traffic between pods and this host.
const GUARD_INPUT: &str = "SYSREC-GUARD-IN";
const GUARD_FORWARD: &str = "SYSREC-GUARD-FWD";

fn saved_sysctls(layout: &Layout) -> std::path::PathBuf {
    layout.run.join("sysctl.saved")
}

fn bpffs_marker(layout: &Layout) -> std::path::PathBuf {
    layout.run.join("bpffs.mounted-by-xtask")
}

fn bpffs_shared_marker(layout: &Layout) -> std::path::PathBuf {
    layout.run.join("bpffs.made-shared-by-xtask")
}

/// Directories the cluster's daemons create: removed by `down` only when `up` saw them absent.
pub const CREATED_DIRS: [&str; 3] = ["/run/containerd", "/var/lib/cni", "/run/netns"];

fn created_marker(layout: &Layout, dir: &str) -> std::path::PathBuf {
    layout.run.join(format!("created{}", dir.replace('/', "-")))
}

/// Whether `dir` did not exist before the first `up`.
pub fn created_by_up(layout: &Layout, dir: &str) -> bool {
    created_marker(layout, dir).exists()
}

/// The mountinfo line of the topmost mount of `fstype` at `path`, split into fields.
fn mount_fields(path: &str, fstype: &str) -> Option<Vec<String>> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let sep = fields.iter().position(|f| *f == "-");
            (fields.get(4) == Some(&path) && sep.and_then(|i| fields.get(i + 1)) == Some(&fstype))
                .then(|| fields.iter().map(|f| (*f).to_owned()).collect())
        })
        .next_back()
}

/// Whether a file system of `fstype` is mounted at `path`.
pub fn mounted(path: &str, fstype: &str) -> bool {
    mount_fields(path, fstype).is_some()
}

/// Whether the mount of `fstype` at `path` propagates (mountinfo's optional `shared:N` field):
/// the kubelet refuses a `Bidirectional` volume whose host mount does not.
fn shared(path: &str, fstype: &str) -> bool {
    mount_fields(path, fstype).is_some_and(|fields| {
        fields
            .iter()
            .skip(6)
            .take_while(|f| *f != "-")
            .any(|f| f.starts_with("shared:"))
    })
}

pub fn prepare(layout: &Layout) -> anyhow::Result<()> {
    // bpffs, as an init system would mount it (the agent pins its programs there).
    if mounted("/sys/fs/bpf", "bpf") {
        eprintln!("cluster: bpffs mounted at /sys/fs/bpf");
    } else {
        fs::create_dir_all("/sys/fs/bpf").ok();
        run_cmd(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
            .context("mounting a bpffs at /sys/fs/bpf")?;
        fs::write(bpffs_marker(layout), "")?;
    }
    // systemd makes every mount shared; without it (this machine) mounts are private, and the
    // agent's init container mounts into /sys/fs/bpf with Bidirectional propagation.
    if !shared("/sys/fs/bpf", "bpf") {
        run_cmd(Command::new("mount").args(["--make-shared", "/sys/fs/bpf"]))
            .context("making /sys/fs/bpf a shared mount")?;
        fs::write(bpffs_shared_marker(layout), "")?;
        eprintln!("cluster: /sys/fs/bpf made a shared mount (as systemd would)");
    }

    for dir in CREATED_DIRS {
        let marker = created_marker(layout, dir);
        if !Path::new(dir).exists() && !marker.exists() {
            fs::write(marker, "")?;
        }
    }
    if !saved_sysctls(layout).exists() {
        let mut saved = String::new();
        for key in SYSCTLS {
            if let Ok(value) = fs::read_to_string(Path::new("/proc/sys").join(key)) {
                saved.push_str(&format!("{key}={}\n", value.trim()));
            }
        }
        fs::write(saved_sysctls(layout), saved)?;
        eprintln!(
            "cluster: saved {} sysctls (restored by down)",
            SYSCTLS.len()
        );
    }
    // Pods on the bridge reach Services through kube-proxy's iptables rules.
    let _ = fs::write("/proc/sys/net/bridge/bridge-nf-call-iptables", "1");

    // The bridge with the node's address: the API server binds to it before any pod exists.
    if !super::quiet_ok(Command::new("ip").args(["link", "show", BRIDGE])) {
        run_cmd(Command::new("ip").args(["link", "add", BRIDGE, "type", "bridge"]))?;
    }
    let addresses = Command::new("ip")
        .args(["-o", "addr", "show", "dev", BRIDGE])
        .output()?;
    if !String::from_utf8_lossy(&addresses.stdout).contains(&format!(" {NODE_IP}/")) {
        run_cmd(Command::new("ip").args(["addr", "add", &format!("{NODE_IP}/24"), "dev", BRIDGE]))?;
    }
    run_cmd(Command::new("ip").args(["link", "set", BRIDGE, "up"]))?;
    guard()
}

/// The jumps into the guard chains: (chain, match, guard chain).
fn jumps() -> [(&'static str, [&'static str; 2], &'static str); 3] {
    [
        ("INPUT", ["-d", POD_SUBNET], GUARD_INPUT),
        ("FORWARD", ["-i", BRIDGE], GUARD_FORWARD),
        ("FORWARD", ["-o", BRIDGE], GUARD_FORWARD),
    ]
}

fn iptables(args: &[&str]) -> bool {
    super::quiet_ok(Command::new("iptables").args(["-w", "5"]).args(args))
}

/// Bridge traffic stays on this machine: nothing is forwarded between the bridge and another
/// interface, and the node's bridge address takes connections only from the host or a pod.
fn guard() -> anyhow::Result<()> {
    let chains: [(&str, &[&[&str]]); 2] = [
        (
            GUARD_INPUT,
            &[
                &["-i", "lo", "-j", "RETURN"],
                &["-i", BRIDGE, "-j", "RETURN"],
                &["-j", "DROP"],
            ],
        ),
        (
            GUARD_FORWARD,
            &[
                &["-i", BRIDGE, "-o", BRIDGE, "-j", "RETURN"],
                &["-j", "DROP"],
            ],
        ),
    ];
    for (chain, rules) in chains {
        if iptables(&["-n", "-L", chain]) {
            continue;
        }
        run_cmd(Command::new("iptables").args(["-w", "5", "-N", chain]))?;
        for rule in rules {
            run_cmd(
                Command::new("iptables")
                    .args(["-w", "5", "-A", chain])
                    .args(*rule),
            )?;
        }
    }
    for (chain, matcher, target) in jumps() {
        let rule = [matcher[0], matcher[1], "-j", target];
        if !iptables(&[&["-C", chain][..], &rule].concat()) {
            run_cmd(
                Command::new("iptables")
                    .args(["-w", "5", "-I", chain, "1"])
                    .args(rule),
            )?;
        }
    }
    eprintln!(
        "cluster: bridge {BRIDGE} ({NODE_IP}/24) guarded by iptables chains {GUARD_INPUT}, {GUARD_FORWARD}"
    );
    Ok(())
}

/// Removes the guard chain and the bridge; restores the sysctls; unmounts the bpffs if `up`
/// mounted it.
pub fn undo(layout: &Layout) -> anyhow::Result<()> {
    for (chain, matcher, target) in jumps() {
        while iptables(&["-D", chain, matcher[0], matcher[1], "-j", target]) {}
    }
    for chain in [GUARD_INPUT, GUARD_FORWARD] {
        if iptables(&["-n", "-L", chain]) {
            iptables(&["-F", chain]);
            iptables(&["-X", chain]);
            eprintln!("cluster: removed iptables chain {chain}");
        }
    }
    if super::quiet_ok(Command::new("ip").args(["link", "show", BRIDGE])) {
        run_cmd(Command::new("ip").args(["link", "delete", BRIDGE]))?;
    }
    if let Ok(saved) = fs::read_to_string(saved_sysctls(layout)) {
        for line in saved.lines() {
            if let Some((key, value)) = line.split_once('=') {
                let _ = fs::write(Path::new("/proc/sys").join(key), value);
            }
        }
        eprintln!("cluster: restored sysctls");
    }
    if bpffs_marker(layout).exists() && mounted("/sys/fs/bpf", "bpf") {
        run_cmd(Command::new("umount").arg("/sys/fs/bpf"))?;
    } else if bpffs_shared_marker(layout).exists() && mounted("/sys/fs/bpf", "bpf") {
        run_cmd(Command::new("mount").args(["--make-private", "/sys/fs/bpf"]))?;
    }
    let _ = fs::remove_file(bpffs_marker(layout));
    let _ = fs::remove_file(bpffs_shared_marker(layout));
    Ok(())
}
