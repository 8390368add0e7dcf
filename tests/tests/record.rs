//! `recorder-agent record`: real eBPF, a real cgroup per run, busybox workloads.

use std::{
    fs,
    process::{Command, Stdio},
};

use serde_json::Value;
use tests::{agent_bin, agent_cli, cgroup2_root, count_any, privileged};

fn record(args: &[&str]) -> std::process::Output {
    agent_cli(&[&["record"], args].concat())
}

fn record_json(command: &[&str]) -> Value {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("profile.json");
    let mut args = vec!["--format", "json", "-o", out.to_str().expect("utf-8")];
    args.push("--");
    args.extend_from_slice(command);
    let output = record(&args);
    assert!(
        output.status.success(),
        "record failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&fs::read(&out).expect("profile written")).expect("profile JSON")
}

#[test]
fn counts_known_syscalls_under_their_names() {
    if !privileged() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    const N: usize = 37;
    let paths: Vec<String> = (0..N)
        .map(|i| dir.path().join(format!("d{i}")).display().to_string())
        .collect();
    let mut mkdir = vec!["busybox", "mkdir"];
    mkdir.extend(paths.iter().map(String::as_str));
    let profile = record_json(&mkdir);
    assert!(
        count_any(&profile, &["mkdir", "mkdirat"]) >= N as u64,
        "{profile}"
    );
    assert!(count_any(&profile, &["execve"]) >= 1, "{profile}");
    assert!(
        count_any(&profile, &["rmdir", "unlinkat"]) == 0,
        "{profile}"
    );
    let mut rmdir = vec!["busybox", "rmdir"];
    rmdir.extend(paths.iter().map(String::as_str));
    let profile = record_json(&rmdir);
    assert!(
        count_any(&profile, &["rmdir", "unlinkat"]) >= N as u64,
        "{profile}"
    );
    assert!(count_any(&profile, &["mkdir", "mkdirat"]) == 0, "{profile}");
    assert_eq!(profile["unknown_syscalls"], 0, "{profile}");
    assert!(dir.path().read_dir().expect("read dir").next().is_none());
}

#[test]
fn oci_profile_of_mkdir_and_uname() {
    if !privileged() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("p.json");
    let script = format!("mkdir {}/d; uname", dir.path().display());
    let output = record(&[
        "-o",
        out.to_str().expect("utf-8"),
        "--",
        "busybox",
        "sh",
        "-c",
        &script,
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "Linux",
        "stdout passes through"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "one summary line: {stderr}");
    assert!(stderr.contains("syscalls"), "{stderr}");
    let profile: Value = serde_json::from_slice(&fs::read(&out).expect("written")).expect("JSON");
    assert_eq!(profile["defaultAction"], "SCMP_ACT_ERRNO");
    assert_eq!(
        profile["architectures"][0],
        if cfg!(target_arch = "x86_64") {
            "SCMP_ARCH_X86_64"
        } else {
            "SCMP_ARCH_AARCH64"
        }
    );
    let allow = profile["syscalls"]
        .as_array()
        .expect("rules")
        .iter()
        .find(|rule| rule["action"] == "SCMP_ACT_ALLOW")
        .expect("allow rule");
    let names: Vec<&str> = allow["names"]
        .as_array()
        .expect("names")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(names, sorted, "names are sorted");
    assert!(
        names.iter().any(|n| *n == "mkdir" || *n == "mkdirat"),
        "{names:?}"
    );
    assert!(
        names.contains(&"uname") && names.contains(&"execve"),
        "{names:?}"
    );
    for name in &names {
        assert!(
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                && !name.bytes().all(|b| b.is_ascii_digit())
                && !name.starts_with("unknown")
                && !name.starts_with("syscall_"),
            "odd name {name:?}"
        );
    }
    assert!(dir.path().join("d").is_dir());
}

#[test]
fn exit_codes_pass_through() {
    if !privileged() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("p.json");
    let out = out.to_str().expect("utf-8");
    assert_eq!(
        record(&["-o", out, "--", "sh", "-c", "exit 7"])
            .status
            .code(),
        Some(7)
    );
    assert_eq!(
        record(&["-o", out, "--", "sh", "-c", "kill -9 $$"])
            .status
            .code(),
        Some(137)
    );
    let missing = record(&["-o", out, "--", "/nonexistent/command"]);
    assert_eq!(
        missing.status.code(),
        Some(127),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
}

#[test]
fn one_millisecond_command_and_fork_exec_children() {
    if !privileged() {
        return;
    }
    let short = record_json(&["/bin/true"]);
    assert!(count_any(&short, &["execve"]) >= 1, "{short}");
    assert!(count_any(&short, &["exit_group"]) >= 1, "{short}");

    let tree = record_json(&[
        "busybox",
        "sh",
        "-c",
        "busybox uname >/dev/null & wait; busybox true; /bin/true",
    ]);
    assert!(
        count_any(&tree, &["execve"]) >= 4,
        "sh, uname, true, /bin/true: {tree}"
    );
    assert!(
        count_any(&tree, &["clone", "clone3", "fork", "vfork"]) >= 2,
        "{tree}"
    );
    assert!(count_any(&tree, &["uname"]) >= 1, "{tree}");
    assert!(count_any(&tree, &["wait4", "waitid"]) >= 1, "{tree}");
}

#[test]
fn removes_its_cgroup_and_kills_leftovers() {
    if !privileged() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("p.json");
    // The command leaves a background sleeper behind.
    let child = Command::new(agent_bin())
        .args([
            "record",
            "-o",
            out.to_str().expect("utf-8"),
            "--",
            "sh",
            "-c",
            "sleep 60 >/dev/null 2>&1 & exit 3",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    let output = child.wait_with_output().expect("wait");
    assert_eq!(output.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("killed 1 leftover"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let cgroup = cgroup2_root()
        .expect("cgroup2")
        .join(format!("syscall-recorder/record-{pid}"));
    assert!(!cgroup.exists(), "{} left behind", cgroup.display());
}

#[test]
fn bad_arguments_are_usage_errors() {
    // No privileges needed: these fail before anything is loaded.
    let none = record(&[]);
    assert_eq!(none.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&none.stderr).contains("Usage"));
    let bad_format = record(&["--format", "yaml", "--", "true"]);
    assert_eq!(bad_format.status.code(), Some(2));
    let no_dir = record(&[
        "-o",
        "/nonexistent/dir/p.json",
        "--",
        "touch",
        "/tmp/recorder-must-not-run",
    ]);
    assert_eq!(no_dir.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&no_dir.stderr).contains("/nonexistent/dir"));
    assert!(!std::path::Path::new("/tmp/recorder-must-not-run").exists());
}
