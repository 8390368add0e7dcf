//! `recorder-agent run`: real eBPF, test cgroups and runc containers with kubelet-style paths.

use std::time::Duration;

use serde_json::Value;
use tests::{
    Agent, BpfFs, Container, TestCgroup, agent_cli, count, count_any, get_json, http,
    kubepods_path, privileged, random_uid, runc_lock,
};

/// Directory creation, by whichever syscall the libc uses.
const MKDIR: &[&str] = &["mkdir", "mkdirat"];

#[test]
fn counts_per_cgroup_without_cross_talk() {
    if !privileged() {
        return;
    }
    let agent = Agent::start(&[]).expect("agent");
    let a = TestCgroup::new("crosstalk-a").expect("cgroup a");
    let b = TestCgroup::new("crosstalk-b").expect("cgroup b");
    let dir = tempfile::tempdir().expect("tempdir");
    const N: u64 = 25;
    for i in 0..N {
        a.run(
            "busybox",
            &[
                "mkdir",
                &dir.path().join(format!("d{i}")).display().to_string(),
            ],
        )
        .expect("mkdir");
        b.run("busybox", &["uname"]).expect("uname");
    }
    let pa = agent
        .wait_profile("profile of cgroup a", |p| {
            p["workload"] == a.rel.as_str() && count_any(p, MKDIR) >= N
        })
        .expect("a");
    let pb = agent
        .wait_profile("profile of cgroup b", |p| {
            p["workload"] == b.rel.as_str() && count(p, "uname") >= N
        })
        .expect("b");
    assert_eq!(pa["workload_kind"], "Cgroup");
    assert_eq!(pa["namespace"], "");
    assert_eq!(pa["container"], "");
    assert!(count(&pa, "execve") >= N, "{pa}");
    assert_eq!(count(&pa, "uname"), 0, "uname leaked into a: {pa}");
    assert_eq!(count_any(&pb, MKDIR), 0, "mkdir leaked into b: {pb}");
    for p in [&pa, &pb] {
        for field in ["first_seen", "last_seen"] {
            let text = p[field].as_str().expect("timestamp");
            assert!(
                text.len() >= 20 && text.ends_with('Z') && text.contains('T'),
                "{field}: {text}"
            );
        }
    }
    // One profile per cgroup, fetched by its identity (the path has a `/`).
    let (status, one) = get_json(agent.addr, &a.profile_path()).expect("GET one");
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["workload"], a.rel.as_str());
}

/// Short-lived processes of two cgroups taking turns on one CPU: each new task may get the
/// kernel stack (and so the cache key) of the one that just exited in the other cgroup, and
/// several live tasks share the CPU's cache. Every call must still land in its own cgroup.
#[test]
fn tasks_taking_turns_on_one_cpu_are_counted_exactly() {
    if !privileged() {
        return;
    }
    let agent = Agent::start(&[]).expect("agent");
    let a = TestCgroup::new("turns-a").expect("cgroup a");
    let b = TestCgroup::new("turns-b").expect("cgroup b");
    let dir = tempfile::tempdir().expect("tempdir");
    // `busybox uname` makes exactly one uname call and no mkdir; `busybox mkdir` the reverse.
    const N: u64 = 60;
    for i in 0..N {
        a.run("taskset", &["-c", "0", "busybox", "uname"])
            .expect("uname");
        let path = dir.path().join(format!("d{i}")).display().to_string();
        b.run("taskset", &["-c", "0", "busybox", "mkdir", &path])
            .expect("mkdir");
    }
    let pa = agent
        .wait_profile("uname calls of cgroup a", |p| {
            p["workload"] == a.rel.as_str() && count(p, "uname") >= N
        })
        .expect("a");
    let pb = agent
        .wait_profile("mkdir calls of cgroup b", |p| {
            p["workload"] == b.rel.as_str() && count_any(p, MKDIR) >= N
        })
        .expect("b");
    assert_eq!(count(&pa, "uname"), N, "{pa}");
    assert_eq!(count_any(&pa, MKDIR), 0, "{pa}");
    assert_eq!(count_any(&pb, MKDIR), N, "{pb}");
    assert_eq!(count(&pb, "uname"), 0, "{pb}");
}

/// Two shells in two cgroups fork children concurrently on one CPU. A child is created in its
/// parent's cgroup (no migration, so only task exit invalidates the cache) and often gets the
/// kernel stack of a child of the other shell that just exited.
#[test]
fn forked_children_of_two_cgroups_on_one_cpu_are_counted_exactly() {
    if !privileged() {
        return;
    }
    let agent = Agent::start(&[]).expect("agent");
    let a = TestCgroup::new("forks-a").expect("cgroup a");
    let b = TestCgroup::new("forks-b").expect("cgroup b");
    let dir = tempfile::tempdir().expect("tempdir");
    const N: u64 = 150;
    let dir_arg = dir.path().display().to_string();
    // busybox sh calls uname once at start; each child one uname or one mkdir.
    let script_a =
        format!("i=0; while [ $i -lt {N} ]; do /bin/busybox uname >/dev/null; i=$((i+1)); done");
    let script_b =
        format!("i=0; while [ $i -lt {N} ]; do /bin/busybox mkdir \"$1/d$i\"; i=$((i+1)); done");
    std::thread::scope(|scope| {
        let run_a =
            scope.spawn(|| a.run("taskset", &["-c", "0", "busybox", "sh", "-c", &script_a]));
        let run_b = scope.spawn(|| {
            b.run(
                "taskset",
                &["-c", "0", "busybox", "sh", "-c", &script_b, "sh", &dir_arg],
            )
        });
        run_a.join().expect("thread a").expect("loop a");
        run_b.join().expect("thread b").expect("loop b");
    });
    let pa = agent
        .wait_profile("uname calls of cgroup a", |p| {
            p["workload"] == a.rel.as_str() && count(p, "uname") > N
        })
        .expect("a");
    let pb = agent
        .wait_profile("mkdir calls of cgroup b", |p| {
            p["workload"] == b.rel.as_str() && count_any(p, MKDIR) >= N
        })
        .expect("b");
    assert_eq!(count(&pa, "uname"), N + 1, "{pa}");
    assert_eq!(count_any(&pa, MKDIR), 0, "{pa}");
    assert_eq!(count_any(&pb, MKDIR), N, "{pb}");
    assert_eq!(count(&pb, "uname"), 1, "{pb}");
}

#[test]
fn runc_container_with_kubelet_path_is_a_pod() {
    if !privileged() {
        return;
    }
    let _lock = runc_lock();
    let agent = Agent::start(&[]).expect("agent");
    let uid = random_uid();
    let container_id = tests::random_hex64();
    let path = kubepods_path("besteffort", &uid, &container_id);
    let container = Container::create(&path, &["sh", "-c", "uname; mkdir /tmp/x; echo done"], None)
        .expect("create");
    assert!(container.cgroup_id() != 0, "cgroup exists after create");
    container.start().expect("start");
    container
        .wait_stopped(Duration::from_secs(20))
        .expect("stopped");
    assert!(
        container.stdout().contains("done"),
        "{}",
        container.stderr()
    );
    let profile = agent
        .wait_profile("the container's Pod profile", |p| {
            p["workload_kind"] == "Pod" && p["workload"] == uid.as_str() && count(p, "uname") >= 1
        })
        .expect("pod profile");
    assert_eq!(profile["container"], container_id.as_str());
    assert_eq!(profile["namespace"], "");
    // runc's execve of the program is the runtime's (every container's profile allows it, with
    // no call of the container's own).
    assert!(
        profile["syscalls"].get("execve").is_some() && count_any(&profile, MKDIR) >= 1,
        "{profile}"
    );
    assert_eq!(count(&profile, "pivot_root"), 0, "{profile}");
    let (status, oci) = get_json(
        agent.addr,
        &format!("/api/v1/profiles/_/Pod/{uid}/{container_id}?format=oci"),
    )
    .expect("oci");
    assert_eq!(status, 200, "{oci}");
    let allowed: Vec<&str> = oci["syscalls"][0]["names"]
        .as_array()
        .expect("names")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        allowed.contains(&"uname") && allowed.contains(&"execve"),
        "{allowed:?}"
    );
    drop(container);
}

#[test]
fn the_agent_does_not_count_itself() {
    if !privileged() {
        return;
    }
    let own = TestCgroup::new("agent-self").expect("cgroup");
    let agent = Agent::start_in(&[], Some(&own)).expect("agent");
    // Keep the agent busy (HTTP, collections) and prove collections happen meanwhile.
    let witness = TestCgroup::new("agent-self-witness").expect("cgroup");
    for _ in 0..20 {
        let _ = http(agent.addr, "GET", "/api/v1/profiles");
    }
    witness.run("busybox", &["uname"]).expect("uname");
    agent
        .wait_profile("the witness", |p| p["workload"] == witness.rel.as_str())
        .expect("witness counted");
    // A few more rounds after the agent's busy phase.
    std::thread::sleep(Duration::from_millis(600));
    let profiles = agent.profiles().expect("profiles");
    assert!(
        !profiles.iter().any(|p| p["workload"] == own.rel.as_str()),
        "the agent's own cgroup has a profile: {}",
        Value::Array(profiles.clone())
    );
}

/// Starts the agent as pid `ns_pid` of a new PID namespace (with its own /proc), alone in
/// `own`: the shell that is pid 1 there sets the namespace's last pid, then forks the agent.
const IN_PID_NAMESPACE: &str = r#"
echo $(($1 - 1)) > /proc/sys/kernel/ns_last_pid || exit 1
shift
procs=$1
shift
(echo 0 > "$procs" && exec "$@")
exit $?
"#;

/// In a pod the agent's pid is a number of its own PID namespace, while the kernel sees host
/// pids. Here the agent runs in a new PID namespace with the pid a host process has there (as
/// a pod's agent is pid 1 and the host's init is pid 1): the agent itself must stay uncounted
/// over several rounds, and its host namesake (in another cgroup) must be counted.
#[test]
fn in_a_pid_namespace_the_agent_skips_itself_and_not_its_host_namesake() {
    if !privileged() {
        return;
    }
    let own = TestCgroup::new("agent-pidns").expect("cgroup");
    let namesake_cgroup = TestCgroup::new("agent-pidns-namesake").expect("cgroup");
    // A host process that polls 20 times a second without forking: its cgroup counts only it.
    let mut command = std::process::Command::new("busybox");
    command
        .args(["sh", "-c", "while :; do read -t 0.05 x; done"])
        .stdin(std::process::Stdio::piped());
    namesake_cgroup.move_on_exec(&mut command);
    let namesake = KillOnDrop(command.spawn().expect("namesake"));
    let ns_pid = namesake.0.id().to_string();

    let scripts = tempfile::tempdir().expect("tempdir");
    let script = scripts.path().join("in-pid-namespace.sh");
    std::fs::write(&script, IN_PID_NAMESPACE).expect("script");
    let procs = own.dir.join("cgroup.procs");
    let wrapper = [
        "unshare",
        "--pid",
        "--fork",
        "--mount-proc",
        "--kill-child",
        "busybox",
        "sh",
        script.to_str().expect("utf-8"),
        &ns_pid,
        procs.to_str().expect("utf-8"),
    ];
    let args = ["--kubernetes", "off", "--interval", "200ms"];
    // Dropped after the agent, before its cgroup: waits until the agent has exited for good,
    // so the cgroup can be removed.
    let agent_exited = ExitedOnDrop(std::cell::Cell::new(None));
    let agent = Agent::spawn_under(&wrapper, &args, None, tempfile::tempdir().expect("tempdir"))
        .expect("agent")
        .wait_ready()
        .expect("agent ready");

    // The set-up worked: the agent alone in its cgroup, with the namesake's pid in its namespace.
    let agent_pids = std::fs::read_to_string(&procs).expect("cgroup.procs");
    let agent_pid = agent_pids.trim();
    agent_exited.0.set(agent_pid.parse().ok());
    assert!(!agent_pid.contains('\n'), "one process: {agent_pids}");
    let status = std::fs::read_to_string(format!("/proc/{agent_pid}/status")).expect("status");
    let nspid = status
        .lines()
        .find_map(|line| line.strip_prefix("NSpid:"))
        .expect("NSpid");
    assert_eq!(
        nspid.split_whitespace().collect::<Vec<_>>(),
        [agent_pid, ns_pid.as_str()],
        "the agent's pids (host, namespace)"
    );

    let polls = |agent: &Agent, rel: &str| {
        agent
            .profiles()
            .unwrap_or_default()
            .iter()
            .find(|p| p["workload"] == rel)
            .map(|p| (count_any(p, &["poll", "ppoll"]), total_calls(p)))
    };
    // Several rounds while the agent serves requests: the namesake's count keeps growing.
    let first = agent
        .wait_profile("the namesake counted", |p| {
            p["workload"] == namesake_cgroup.rel.as_str() && count_any(p, &["poll", "ppoll"]) > 0
        })
        .expect("namesake counted");
    let first = count_any(&first, &["poll", "ppoll"]);
    let collections = |agent: &Agent| agent.status().ok().and_then(|s| s["collections"].as_u64());
    let start = collections(&agent).expect("collections");
    tests::poll("five more rounds", Duration::from_secs(20), || {
        let _ = http(agent.addr, "GET", "/api/v1/profiles");
        (collections(&agent)? >= start + 5).then_some(())
    })
    .expect("rounds");
    let (later, _) = polls(&agent, &namesake_cgroup.rel).expect("namesake profile");
    assert!(
        later > first,
        "the namesake is still counted: {first} then {later}"
    );
    let own_calls = polls(&agent, &own.rel).map_or(0, |(_, total)| total);
    assert_eq!(own_calls, 0, "the agent counted itself\n{}", agent.log());
}

/// Pinning: a `--bpffs` that is not a bpf filesystem gets one when the agent may mount it;
/// when it may not (no CAP_SYS_ADMIN, as in the DaemonSet's agent container) or pinning is
/// off, the agent runs and stays ready but says so in its status, metrics and /readyz.
#[test]
fn the_agent_mounts_a_missing_bpffs_or_reports_running_unpinned() {
    if !privileged() {
        return;
    }
    let pinned_metric = |agent: &Agent| {
        let (code, text) = http(agent.addr, "GET", "/metrics").expect("metrics");
        assert_eq!(code, 200);
        text.lines()
            .find_map(|l| l.strip_prefix("syscall_recorder_counters_pinned "))
            .map(str::to_owned)
    };
    let status_of = |agent: &Agent| {
        tests::poll("a collection", Duration::from_secs(20), || {
            agent
                .status()
                .ok()
                .filter(|s| s["collections"].as_u64() > Some(0))
        })
        .expect("status")
    };

    // Root with every capability: mounts one, pins, and says so.
    let dir = BpfFs::not_mounted().expect("tempdir");
    let bpffs = ["--bpffs", dir.path().to_str().expect("utf-8")];
    let agent = Agent::start(&bpffs).expect("agent");
    assert!(dir.is_mounted(), "{}", agent.log());
    assert!(
        agent.log().contains("mounted a bpf filesystem"),
        "{}",
        agent.log()
    );
    assert!(dir.path().join("syscall-recorder").is_dir());
    let status = status_of(&agent);
    assert_eq!(status["pinned"], true, "{status}");
    assert_eq!(status["unpinned_reason"], Value::Null, "{status}");
    assert_eq!(pinned_metric(&agent).as_deref(), Some("1"));
    let (code, ready) = get_json(agent.addr, "/readyz").expect("readyz");
    assert_eq!(
        (code, ready),
        (200, serde_json::json!({ "status": "ready" }))
    );
    drop(agent);

    // Without CAP_SYS_ADMIN: cannot mount, runs unpinned, ready, and says why.
    let dir = BpfFs::not_mounted().expect("tempdir");
    let bpffs = dir.path().to_str().expect("utf-8");
    let args = [
        "--kubernetes",
        "off",
        "--interval",
        "200ms",
        "--bpffs",
        bpffs,
    ];
    let agent = Agent::spawn_under(
        &["setpriv", "--bounding-set=-sys_admin", "--"],
        &args,
        None,
        tempfile::tempdir().expect("tempdir"),
    )
    .expect("agent")
    .wait_ready()
    .expect("ready although unpinned");
    assert!(!dir.is_mounted());
    let status = status_of(&agent);
    assert_eq!(status["pinned"], false, "{status}");
    let reason = status["unpinned_reason"].as_str().expect("a reason");
    assert!(
        reason.contains("not a bpf filesystem") && reason.contains(bpffs),
        "{reason}"
    );
    assert_eq!(pinned_metric(&agent).as_deref(), Some("0"));
    let (code, ready) = get_json(agent.addr, "/readyz").expect("readyz");
    assert_eq!(code, 200);
    let warning = ready["warnings"][0].as_str().expect("a readiness warning");
    assert!(
        warning.contains("not pinned") && warning.contains(reason),
        "{ready}"
    );
    drop(agent);

    // --no-pin: the same report, naming the flag.
    let agent = Agent::start(&[]).expect("agent");
    let status = status_of(&agent);
    assert_eq!(status["pinned"], false, "{status}");
    assert!(
        status["unpinned_reason"]
            .as_str()
            .is_some_and(|r| r.contains("--no-pin")),
        "{status}"
    );
}

/// Waits on drop (up to 10 s) until the process with this host pid is gone.
struct ExitedOnDrop(std::cell::Cell<Option<u32>>);

impl Drop for ExitedOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0.get() {
            let _ = tests::poll("the agent gone", Duration::from_secs(10), || {
                (!std::path::Path::new(&format!("/proc/{pid}")).exists()).then_some(())
            });
        }
    }
}

/// A child killed and reaped on drop.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Every call of a profile.
fn total_calls(profile: &Value) -> u64 {
    profile["syscalls"]
        .as_object()
        .map_or(0, |calls| calls.values().filter_map(Value::as_u64).sum())
}

#[test]
fn http_errors_are_json() {
    if !privileged() {
        return;
    }
    let agent = Agent::start(&[]).expect("agent");
    let (status, body) = get_json(agent.addr, "/healthz").expect("healthz");
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    for (method, path, want) in [
        ("GET", "/nope", 404),
        ("GET", "/api/v1/profiles/a/b", 400),
        ("GET", "/api/v1/profiles/_/Cgroup/%ff/_", 400),
        ("GET", "/api/v1/profiles/_/Cgroup/does-not-exist/_", 404),
        ("GET", "/api/v1/profiles/_/Cgroup/x/_?format=yaml", 400),
        (
            "GET",
            "/api/v1/profiles/%2e%2e/%2e%2e/%2e%2e/etc%2fpasswd",
            404,
        ),
        ("POST", "/api/v1/profiles", 405),
        ("DELETE", "/healthz", 405),
    ] {
        let (status, body) = http(agent.addr, method, path).expect("request");
        assert_eq!(status, want, "{method} {path}: {body}");
        let json: Value = serde_json::from_str(&body)
            .unwrap_or_else(|_| panic!("{method} {path}: not JSON: {body}"));
        assert!(json["error"].is_string(), "{method} {path}: {body}");
    }
    let (status, _) = http(agent.addr, "GET", "/healthz").expect("still alive");
    assert_eq!(status, 200);
}

#[test]
fn sigterm_flushes_state_and_a_restart_restores_it() {
    if !privileged() {
        return;
    }
    let mut agent = Agent::start(&[]).expect("agent");
    let cgroup = TestCgroup::new("state").expect("cgroup");
    cgroup.run("busybox", &["uname"]).expect("uname");
    let before = agent
        .wait_profile("profile", |p| {
            p["workload"] == cgroup.rel.as_str() && count(p, "uname") >= 1
        })
        .expect("profile");
    agent.signal(libc::SIGTERM);
    let status = agent
        .wait_exit(Duration::from_secs(5))
        .expect("exits within 5 s");
    assert!(status.success(), "{status}: {}", agent.log());
    let state = std::fs::read_to_string(agent.state_dir.path().join("profiles.json"))
        .expect("state written");
    assert!(state.contains(&cgroup.rel), "{state}");

    let restarted = Agent::start_with(&[], None, agent.into_state_dir()).expect("restart");
    let after = restarted
        .wait_profile("restored profile", |p| p["workload"] == cgroup.rel.as_str())
        .expect("restored");
    assert!(
        count(&after, "uname") >= count(&before, "uname"),
        "{before} vs {after}"
    );
}

#[test]
fn kubernetes_on_fails_with_a_clear_message() {
    let output = agent_cli(&["run", "--kubernetes", "on", "--listen", "127.0.0.1:0"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("Kubernetes") && stderr.lines().count() <= 2,
        "{stderr}"
    );
    let usage = agent_cli(&["run", "--interval", "never"]);
    assert_eq!(usage.status.code(), Some(2));
}
