//! Profiles people can use, end to end: learn three busybox workloads in runc containers with
//! the running agent, export them with the CLI, enforce them with runc (same exit code and
//! output; an unrecorded syscall gets EPERM), the kubelet-dir delivery, and `diff`/`merge`
//! on the real exported files.

use std::{
    collections::BTreeSet,
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use serde_json::Value;
use tests::{
    Agent, Container, agent_cli, allowed, count, free_port, kubepods_path, poll, privileged,
    random_hex64, random_uid, runc_lock,
};

/// Runs the agent binary as a client (no containers involved: pipes are fine).
fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// One workload: its name and `sh -c` script (`{port}` is replaced by a free port per run).
struct Workload {
    name: &'static str,
    script: &'static str,
    code: i32,
    expect_stdout: &'static str,
}

const WORKLOADS: [Workload; 3] = [
    Workload {
        name: "fileio",
        script: "set -e
echo 'line one' > /tmp/a.txt
echo 'line two' >> /tmp/a.txt
cat /tmp/a.txt > /tmp/b.txt
cp /tmp/b.txt /tmp/c.txt
mv /tmp/c.txt /tmp/d.txt
wc -l < /tmp/d.txt
sha256sum /tmp/d.txt
rm /tmp/a.txt
ls /tmp",
        code: 0,
        expect_stdout: "b.txt\nd.txt\n",
    },
    Workload {
        name: "httpd",
        // The CGI answers its body after a pause, so wget always meets an empty socket and
        // polls: learning sees the path that a fast static answer only takes sometimes.
        script: "set -e
httpd -p 127.0.0.1:{port} -h /www
wget -q -O - http://127.0.0.1:{port}/index.html
wget -q -O /tmp/got.html http://127.0.0.1:{port}/index.html
cat /tmp/got.html
wget -q -O - http://127.0.0.1:{port}/cgi-bin/slow.cgi",
        code: 0,
        expect_stdout: "hello over loopback\nhello over loopback\nslow hello\n",
    },
    Workload {
        name: "forkexec",
        script: "for i in 1 2 3; do /bin/sh -c \"echo child $i\"; done
echo abc | tr a-z A-Z
( exit 3 ); echo \"subshell exit $?\"
env GREETING=hi /bin/sh -c 'echo $GREETING from a grandchild'
sleep 0.05 & wait $!; echo \"waited $?\"
exit 5",
        code: 5,
        expect_stdout: "child 1\nchild 2\nchild 3\nABC\nsubshell exit 3\nhi from a grandchild\nwaited 0\n",
    },
];

impl Workload {
    fn script(&self) -> String {
        self.script.replace("{port}", &free_port().to_string())
    }

    /// Runs in a fresh kubelet-style pod cgroup: (pod uid, container id, run).
    fn run(&self, seccomp: Option<&Value>) -> (String, String, tests::Finished) {
        self.run_as(random_uid(), random_hex64(), seccomp)
    }

    /// Runs as pod `uid`, container `id` (the same identity again: one more learning run).
    fn run_as(
        &self,
        uid: String,
        id: String,
        seccomp: Option<&Value>,
    ) -> (String, String, tests::Finished) {
        let path = kubepods_path("besteffort", &uid, &id);
        let script = self.script();
        let finished = Container::run_foreground(&path, &id, &["sh", "-c", &script], seccomp)
            .unwrap_or_else(|err| panic!("{}: {err:#}", self.name));
        (uid, id, finished)
    }
}

/// How many runs a profile is learned from: a profile comes from watching a workload for a
/// while, and a single run can miss a timing-dependent path (e.g. EAGAIN then poll).
const LEARNING_RUNS: usize = 3;

/// The httpd workload's documents, in the shared busybox rootfs (read-only use).
fn prepare_www() {
    let www = tests::busybox_rootfs().expect("rootfs").join("www");
    fs::create_dir_all(www.join("cgi-bin")).expect("www");
    fs::write(www.join("index.html"), "hello over loopback\n").expect("index");
    let cgi = www.join("cgi-bin/slow.cgi");
    fs::write(
        &cgi,
        "#!/bin/sh\necho 'Content-Type: text/plain'\necho\nsleep 0.2\necho 'slow hello'\n",
    )
    .expect("cgi");
    fs::set_permissions(&cgi, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
}

#[test]
fn learned_profiles_run_the_same_workloads_under_runc() {
    if !privileged() {
        return;
    }
    let _lock = runc_lock();
    let seccomp_dir = tempfile::tempdir().expect("seccomp dir");
    let seccomp_arg = seccomp_dir.path().display().to_string();
    let agent = Agent::start(&["--seccomp-dir", &seccomp_arg]).expect("agent");
    let server = format!("http://{}", agent.addr);
    let out = tempfile::tempdir().expect("output dir");
    let mut exported: Vec<PathBuf> = Vec::new();
    let mut sizes = Vec::new();
    prepare_www();

    for workload in &WORKLOADS {
        // Learn without a filter: seccomp runs before sys_enter.
        let (uid, id) = (random_uid(), random_hex64());
        for _ in 1..LEARNING_RUNS {
            let (_, _, run) = workload.run_as(uid.clone(), id.clone(), None);
            assert_eq!(
                run.code,
                workload.code,
                "{}: {}",
                workload.name,
                run.container.stderr()
            );
        }
        let (uid, id, learned) = workload.run_as(uid, id, None);
        let stdout = learned.container.stdout();
        assert_eq!(
            learned.code,
            workload.code,
            "{}: {stdout} {}",
            workload.name,
            learned.container.stderr()
        );
        assert!(
            stdout.ends_with(workload.expect_stdout),
            "{}: {stdout:?}",
            workload.name
        );
        agent.wait_for_a_round(&format!("round-{}", workload.name));

        let selector = format!("_/Pod/{uid}/{id}");
        let file = out.path().join(format!("{}.json", workload.name));
        let output = agent_cli(&[
            "export",
            &selector,
            "--server",
            &server,
            "-o",
            &file.display().to_string(),
        ]);
        assert!(output.status.success(), "export: {}", text(&output.stderr));
        let oci: Value = serde_json::from_slice(&fs::read(&file).expect("exported")).expect("json");
        assert_eq!(oci["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(oci["defaultErrnoRet"], 1);
        let names = allowed(&oci);
        // The denied call is the `mkdir` syscall where it exists (x86_64), else ftruncate.
        let (denied_syscall, denied_script) = if cfg!(target_arch = "x86_64") {
            ("mkdir", "mkdir /tmp/denied")
        } else {
            ("ftruncate", "truncate -s 5 /tmp/denied")
        };
        assert!(
            !names.contains(denied_syscall),
            "{}: the denial check needs a profile without {denied_syscall}: {names:?}",
            workload.name
        );
        sizes.push((workload.name, names.len()));

        // The same profile was delivered to the kubelet dir, and is not rewritten without a
        // new syscall.
        let delivered = seccomp_dir
            .path()
            .join(format!("syscall-recorder/_/pod/{uid}/{id}.json"));
        let delivered_oci: Value = poll("the delivered profile", Duration::from_secs(10), || {
            serde_json::from_slice(&fs::read(&delivered).ok()?).ok()
        })
        .expect("delivered");
        assert_eq!(delivered_oci, oci, "{}", workload.name);
        let inode = fs::metadata(&delivered).expect("delivered").ino();
        agent.wait_for_a_round(&format!("again-{}", workload.name));
        assert_eq!(fs::metadata(&delivered).expect("delivered").ino(), inode);

        // Enforced: the same exit code and output.
        let (_, _, enforced) = workload.run(Some(&oci));
        assert_eq!(
            (enforced.code, enforced.container.stdout()),
            (learned.code, stdout.clone()),
            "{} under its profile; stderr: {}",
            workload.name,
            enforced.container.stderr()
        );
        assert!(
            !enforced.container.stderr().contains("not permitted"),
            "{}: {}",
            workload.name,
            enforced.container.stderr()
        );

        // A syscall the workload never made is refused.
        let uid = random_uid();
        let id = random_hex64();
        let denied = Container::run_foreground(
            &kubepods_path("besteffort", &uid, &id),
            &id,
            &["sh", "-c", denied_script],
            Some(&oci),
        )
        .expect("denied run");
        assert_ne!(denied.code, 0, "{}", workload.name);
        assert!(
            denied
                .container
                .stderr()
                .contains("Operation not permitted"),
            "{}: {:?}",
            workload.name,
            denied.container.stderr()
        );
        exported.push(file);
    }
    eprintln!("learned profile sizes (allowed syscalls): {sizes:?}");

    diff_and_merge_real_files(&exported, out.path());
    other_formats_and_listing(&agent, &server, out.path());
}

fn diff_and_merge_real_files(files: &[PathBuf], out: &Path) {
    let [fileio, httpd, forkexec] = files else {
        panic!("three files")
    };
    let arg = |path: &Path| path.display().to_string();
    let same = agent_cli(&["diff", &arg(fileio), &arg(fileio)]);
    assert_eq!(same.status.code(), Some(0), "{}", text(&same.stderr));
    assert!(text(&same.stdout).contains("NEW allows nothing OLD does not"));

    let grown = agent_cli(&["diff", &arg(fileio), &arg(httpd)]);
    assert_eq!(grown.status.code(), Some(1), "{}", text(&grown.stderr));
    let report = text(&grown.stdout);
    assert!(
        report.lines().any(|line| line == "+ socket")
            && report.lines().any(|line| line == "+ bind"),
        "{report}"
    );

    let merged = out.join("merged.json");
    let merge = agent_cli(&[
        "merge",
        &arg(fileio),
        &arg(httpd),
        &arg(forkexec),
        "-o",
        &arg(&merged),
    ]);
    assert!(merge.status.success(), "{}", text(&merge.stderr));
    let merged_oci: Value =
        serde_json::from_slice(&fs::read(&merged).expect("merged")).expect("json");
    let union: BTreeSet<String> = files
        .iter()
        .flat_map(|file| {
            allowed(&serde_json::from_slice(&fs::read(file).expect("read")).expect("json"))
        })
        .collect();
    assert_eq!(allowed(&merged_oci), union);
    assert_eq!(merged_oci["defaultAction"], "SCMP_ACT_ERRNO");
    for file in files {
        let narrower = agent_cli(&["diff", &arg(&merged), &arg(file)]);
        assert_eq!(
            narrower.status.code(),
            Some(0),
            "{}",
            text(&narrower.stdout)
        );
    }
    let wider = agent_cli(&["diff", &arg(forkexec), &arg(&merged)]);
    assert_eq!(wider.status.code(), Some(1), "{}", text(&wider.stdout));

    // The merged profile runs every workload.
    for workload in &WORKLOADS {
        let (_, _, run) = workload.run(Some(&merged_oci));
        assert_eq!(
            run.code,
            workload.code,
            "{} under the merged profile: {}",
            workload.name,
            run.container.stderr()
        );
        assert!(
            run.container.stdout().ends_with(workload.expect_stdout),
            "{}",
            workload.name
        );
    }

    // Mixed default actions are refused; unreadable input is a diff error (2).
    let mut kill: Value = serde_json::from_slice(&fs::read(fileio).expect("read")).expect("json");
    kill["defaultAction"] = Value::String("SCMP_ACT_KILL_PROCESS".into());
    kill.as_object_mut()
        .expect("object")
        .remove("defaultErrnoRet");
    let kill_file = out.join("kill.json");
    fs::write(&kill_file, serde_json::to_vec(&kill).expect("json")).expect("write");
    let mixed = agent_cli(&["merge", &arg(fileio), &arg(&kill_file)]);
    assert_eq!(mixed.status.code(), Some(1));
    assert!(
        text(&mixed.stderr).contains("defaultAction"),
        "{}",
        text(&mixed.stderr)
    );
    assert!(mixed.stdout.is_empty());
    let corrupt = out.join("corrupt.json");
    fs::write(&corrupt, "{\"defaultAction\": ").expect("write");
    for args in [
        vec!["diff".to_owned(), arg(fileio), arg(&corrupt)],
        vec![
            "diff".to_owned(),
            arg(fileio),
            arg(&out.join("missing.json")),
        ],
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let bad = agent_cli(&args);
        assert_eq!(bad.status.code(), Some(2), "{args:?}");
        assert!(text(&bad.stderr).contains("error"), "{}", text(&bad.stderr));
    }
}

fn other_formats_and_listing(agent: &Agent, server: &str, out: &Path) {
    let profiles = agent.profiles().expect("profiles");
    // A workload's profile (it ran a command), not the one of a container that its profile
    // stopped before exec: uids sort at random, so "the first pod profile" is either.
    let pod = profiles
        .iter()
        .find(|p| p["workload_kind"] == "Pod" && count(p, "execve") >= 1)
        .expect("a pod profile with execve");
    let selector = format!(
        "_/Pod/{}/{}",
        pod["workload"].as_str().expect("uid"),
        pod["container"].as_str().expect("cid")
    );
    let json_file = out.join("recorder.json");
    let spo_file = out.join("spo.json");
    let oci_file = out.join("pod-oci.json");
    for (format, file) in [("json", &json_file), ("spo", &spo_file), ("oci", &oci_file)] {
        let output = agent_cli(&[
            "export",
            &selector,
            "--format",
            format,
            "--server",
            server,
            "-o",
            &file.display().to_string(),
        ]);
        assert!(
            output.status.success(),
            "{format}: {}",
            text(&output.stderr)
        );
    }
    let json: Value = serde_json::from_slice(&fs::read(&json_file).expect("json")).expect("json");
    assert_eq!(json["workload"], pod["workload"]);
    assert!(count(&json, "execve") >= 1, "{json}");
    assert!(json["first_seen"].is_string() && json["last_new_syscall"].is_string());
    let spo: Value = serde_json::from_slice(&fs::read(&spo_file).expect("spo")).expect("json");
    assert_eq!(
        spo["apiVersion"],
        "security-profiles-operator.x-k8s.io/v1beta1"
    );
    assert_eq!(spo["kind"], "SeccompProfile");
    let name = spo["metadata"]["name"].as_str().expect("name");
    assert!(
        name.len() <= 63
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !name.starts_with('-')
            && !name.ends_with('-'),
        "{name}"
    );
    assert!(spo["spec"].get("defaultErrnoRet").is_none());
    assert_eq!(spo["spec"]["defaultAction"], "SCMP_ACT_ERRNO");
    // The three formats allow the same syscalls.
    for (a, b) in [
        (&json_file, &oci_file),
        (&oci_file, &json_file),
        (&spo_file, &oci_file),
        (&oci_file, &spo_file),
    ] {
        let diff = agent_cli(&["diff", &a.display().to_string(), &b.display().to_string()]);
        assert_eq!(
            diff.status.code(),
            Some(0),
            "{}{}",
            text(&diff.stdout),
            text(&diff.stderr)
        );
    }

    let listing = agent_cli(&["profiles", "--server", server]);
    assert!(listing.status.success(), "{}", text(&listing.stderr));
    let table = text(&listing.stdout);
    let header = table.lines().next().expect("header");
    for column in [
        "NAMESPACE",
        "KIND",
        "WORKLOAD",
        "CONTAINER",
        "SYSCALLS",
        "CALLS",
        "LAST NEW SYSCALL",
        "STABLE",
    ] {
        assert!(header.contains(column), "{header}");
    }
    let row = table
        .lines()
        .find(|line| line.contains(pod["container"].as_str().expect("cid")))
        .expect("the pod's row");
    let distinct = pod["syscalls"]
        .as_object()
        .expect("syscalls")
        .len()
        .to_string();
    assert!(
        row.split_whitespace().any(|cell| cell == distinct),
        "{row} / {distinct}"
    );
    assert!(
        row.ends_with(" no"),
        "learned seconds ago: not stable under the 10m default: {row}"
    );
    let listing = agent_cli(&["profiles", "--server", server, "-o", "json"]);
    let list: Value = serde_json::from_slice(&listing.stdout).expect("json list");
    // Profiles only ever get added: at least those seen before.
    assert!(
        list.as_array()
            .is_some_and(|list| list.len() >= profiles.len()),
        "{list}"
    );
}

#[test]
fn client_errors_are_clear() {
    // Unreachable server.
    let port = free_port();
    let output = agent_cli(&["profiles", "--server", &format!("http://127.0.0.1:{port}")]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("cannot reach") && stderr.lines().count() == 1,
        "{stderr}"
    );
    // Malformed selector: a usage error.
    let output = agent_cli(&[
        "export",
        "a/b/c",
        "--server",
        &format!("http://127.0.0.1:{port}"),
    ]);
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output.stderr).contains("NAMESPACE/KIND/WORKLOAD/CONTAINER"));
    // Bad flags.
    assert_eq!(
        agent_cli(&["export", "_/Pod/a/b", "--format", "yaml"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(agent_cli(&["diff", "only-one"]).status.code(), Some(2));
    assert_eq!(agent_cli(&["merge"]).status.code(), Some(2));
    let output = agent_cli(&["profiles", "--server", "https://example.invalid"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stderr).contains("https is not supported"));
}

#[test]
fn unknown_profile_is_a_clear_404() {
    if !privileged() {
        return;
    }
    let agent = Agent::start(&[]).expect("agent");
    let output = agent_cli(&[
        "export",
        "_/Cgroup/no/such/cgroup/_",
        "--server",
        &format!("http://{}", agent.addr),
    ]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("not found") && stderr.contains("_/Cgroup/no/such/cgroup/_"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty());
}
