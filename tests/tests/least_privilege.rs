//! Least-privilege profiles, end to end with runc and the running agent: the runtime's own
//! set-up stays out of a container's profile (and the profile still runs the workload with
//! `noNewPrivileges` true and false), 32-bit calls are named from their own table and put
//! `SCMP_ARCH_X86` in the profile only when made, and a `runc exec` session is counted in a
//! profile of its own.

use std::{fs, path::Path, process::Command, time::Duration};

use serde_json::Value;
use tests::{
    Agent, Container, Finished, agent_cli, allowed, busybox_rootfs, count, count_any,
    kubepods_path, poll, privileged, random_hex64, random_uid, runc_lock,
};

/// What runc's init does before any filter of the container can apply: never the workload's.
const RUNTIME_SET_UP: [&str; 10] = [
    "mount",
    "umount2",
    "pivot_root",
    "unshare",
    "setns",
    "keyctl",
    "mknodat",
    "symlinkat",
    "sethostname",
    "seccomp",
];

/// The profile of pod `uid`, container `container`, once a round folded it.
fn profile(agent: &Agent, uid: &str, container: &str) -> Value {
    agent
        .wait_profile(&format!("profile {uid}/{container}"), |p| {
            p["workload"] == uid && p["container"] == container
        })
        .expect("profile")
}

/// `recorder-agent export _/Pod/UID/CONTAINER` as OCI JSON.
fn export(agent: &Agent, uid: &str, container: &str, out: &Path) -> Value {
    let file = out.join(format!("{uid}-{}.json", container.replace(':', "_")));
    let output = agent_cli(&[
        "export",
        &format!("_/Pod/{uid}/{container}"),
        "--server",
        &format!("http://{}", agent.addr),
        "-o",
        &file.display().to_string(),
    ]);
    assert!(
        output.status.success(),
        "export: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&fs::read(&file).expect("exported")).expect("json")
}

/// Runs `args` as pod `uid`, container `id` (a new container of the same identity each time).
fn run(uid: &str, id: &str, args: &[&str], seccomp: Option<&Value>, nnp: bool) -> Finished {
    Container::run_foreground_nnp(
        &kubepods_path("besteffort", uid, id),
        id,
        args,
        seccomp,
        nnp,
    )
    .unwrap_or_else(|err| panic!("{args:?}: {err:#}"))
}

#[test]
fn the_runtime_set_up_stays_out_and_the_profile_runs_with_and_without_no_new_privileges() {
    if !privileged() {
        return;
    }
    let _lock = runc_lock();
    let agent = Agent::start(&[]).expect("agent");
    let out = tempfile::tempdir().expect("output dir");
    let quiet = ["sh", "-c", "echo one > /tmp/a; cat /tmp/a; ls /tmp; exit 4"];
    let named = ["sh", "-c", "hostname recorded-host; hostname"];
    let (quiet_uid, quiet_id) = (random_uid(), random_hex64());
    let (named_uid, named_id) = (random_uid(), random_hex64());
    // Learned once each way: runc applies the filter at another point with each.
    // (exit code, stdout) of each learning run; each run's container is gone before the
    // next one of the same id.
    let mut learned = Vec::new();
    for nnp in [true, false] {
        for (uid, id, args) in [
            (&quiet_uid, &quiet_id, &quiet),
            (&named_uid, &named_id, &named),
        ] {
            let finished = run(uid, id, args, None, nnp);
            learned.push((finished.code, finished.container.stdout()));
        }
    }
    assert_eq!(learned[0], (4, "one\na\n".to_owned()));
    // runc's default capabilities refuse it, but the workload made the call (and the
    // hostname runc set is left).
    assert_eq!(learned[1], (0, "runc\n".to_owned()));
    assert_eq!(learned[2], learned[0]);
    assert_eq!(learned[3], learned[1]);
    agent.wait_for_a_round("lp-round");

    let quiet_profile = profile(&agent, &quiet_uid, &quiet_id);
    for name in RUNTIME_SET_UP {
        assert_eq!(
            count(&quiet_profile, name),
            0,
            "{name} is the runtime's: {quiet_profile}"
        );
    }
    // What the workload itself does is there.
    assert!(
        count_any(&quiet_profile, &["openat", "open"]) > 0 && count(&quiet_profile, "execve") > 0
    );
    let named_profile = profile(&agent, &named_uid, &named_id);
    assert!(
        count(&named_profile, "sethostname") > 0,
        "the workload's own sethostname: {named_profile}"
    );
    // The set-up was counted, apart.
    let status = agent.status().expect("status");
    assert!(
        status["runtime_calls"].as_u64().unwrap_or(0) > 0,
        "{status}"
    );

    for (uid, id, args, expected) in [
        (&quiet_uid, &quiet_id, &quiet, &learned[0]),
        (&named_uid, &named_id, &named, &learned[1]),
    ] {
        let oci = export(&agent, uid, id, out.path());
        assert!(!allowed(&oci).contains("pivot_root"), "{oci}");
        assert_eq!(
            oci["architectures"],
            serde_json::json!(["SCMP_ARCH_X86_64"])
        );
        for nnp in [true, false] {
            let enforced = run(&random_uid(), &random_hex64(), args, Some(&oci), nnp);
            assert_eq!(
                (enforced.code, enforced.container.stdout()),
                expected.clone(),
                "{args:?} under its profile, noNewPrivileges {nnp}: {}",
                enforced.container.stderr()
            );
        }
    }
}

/// Makes the two ia32 calls of the issue from a 64-bit process (`int $0x80`), or as a real
/// i386 program when built with `-m32`.
const COMPAT_PROBE: &str = r#"
#include <stdio.h>
#include <unistd.h>
#include <sys/syscall.h>
static char msg[] = "compat write\n";
int main(void) {
#ifdef __x86_64__
    long uid, n;
    __asm__ volatile("int $0x80" : "=a"(uid) : "a"(199L) : "memory");
    __asm__ volatile("int $0x80" : "=a"(n) : "a"(4L), "b"(1L), "c"(msg), "d"((long)sizeof msg - 1) : "memory");
#else
    long uid = syscall(SYS_getuid32);
    long n = write(1, msg, sizeof msg - 1);
#endif
    printf("getuid32=%ld write=%ld\n", uid, n);
    fflush(stdout);
    return (uid < 0 || n != (long)sizeof msg - 1) ? 1 : 0;
}
"#;

/// Builds the probe with `flags` into the shared rootfs as `/bin/NAME`.
fn build_probe(name: &str, flags: &[&str]) {
    let dir = tempfile::tempdir().expect("build dir");
    let source = dir.path().join("probe.c");
    fs::write(&source, COMPAT_PROBE).expect("source");
    let target = busybox_rootfs().expect("rootfs").join("bin").join(name);
    let output = Command::new("gcc")
        .args(flags)
        .args(["-static", "-O1", "-o"])
        .arg(&target)
        .arg(&source)
        .output()
        .expect("gcc (cargo xtask setup installs gcc and gcc-multilib)");
    assert!(
        output.status.success(),
        "gcc {flags:?}: {} (cargo xtask setup installs gcc-multilib)",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn compat_calls_have_their_own_names_and_architecture() {
    if !privileged() || !cfg!(target_arch = "x86_64") {
        return;
    }
    let _lock = runc_lock();
    build_probe("int80", &[]);
    build_probe("i386", &["-m32"]);
    let agent = Agent::start(&[]).expect("agent");
    let out = tempfile::tempdir().expect("output dir");
    let expected_stdout = "compat write\ngetuid32=0 write=13\n";
    let probes = [
        ("int80", random_uid(), random_hex64()),
        ("i386", random_uid(), random_hex64()),
    ];
    for (program, uid, id) in &probes {
        let learned = run(uid, id, &[program], None, true);
        assert_eq!(
            (learned.code, learned.container.stdout()),
            (0, expected_stdout.to_owned()),
            "{program}: {}",
            learned.container.stderr()
        );
    }
    let (plain_uid, plain_id) = (random_uid(), random_hex64());
    let plain = run(
        &plain_uid,
        &plain_id,
        &["sh", "-c", "echo 64-bit only"],
        None,
        true,
    );
    assert_eq!(plain.code, 0);
    agent.wait_for_a_round("compat-round");

    for (program, uid, id) in &probes {
        let learned = profile(&agent, uid, id);
        assert!(count(&learned, "x86:getuid32") > 0, "{program}: {learned}");
        assert!(count(&learned, "x86:write") > 0, "{program}: {learned}");
        // The ia32 numbers are not read from the x86_64 table.
        assert_eq!(count(&learned, "fremovexattr"), 0, "{program}: {learned}");
        let oci = export(&agent, uid, id, out.path());
        assert_eq!(
            oci["architectures"],
            serde_json::json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"]),
            "{program}"
        );
        assert!(allowed(&oci).contains("getuid32"), "{program}: {oci}");
        let enforced = run(&random_uid(), &random_hex64(), &[program], Some(&oci), true);
        assert_eq!(
            (enforced.code, enforced.container.stdout()),
            (0, expected_stdout.to_owned()),
            "{program} under its profile {oci}: {}",
            enforced.container.stderr()
        );
    }

    // A 64-bit workload gets a 64-bit-only profile, and an ia32 call under it is refused.
    let plain_profile = profile(&agent, &plain_uid, &plain_id);
    let plain_oci = export(&agent, &plain_uid, &plain_id, out.path());
    assert_eq!(
        plain_oci["architectures"],
        serde_json::json!(["SCMP_ARCH_X86_64"]),
        "{plain_profile}"
    );
    let mut widened = plain_oci.clone();
    // The probe's own 64-bit start-up calls are allowed, so only the ia32 entry can fail.
    let mut names: Vec<Value> = widened["syscalls"][0]["names"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for name in [
        "arch_prctl",
        "brk",
        "exit_group",
        "getrandom",
        "mprotect",
        "newfstatat",
        "prlimit64",
        "readlink",
        "rseq",
        "set_robust_list",
        "set_tid_address",
        "write",
        "fstat",
        "ioctl",
    ] {
        names.push(Value::String(name.to_owned()));
    }
    widened["syscalls"][0]["names"] = Value::Array(names);
    let refused = run(
        &random_uid(),
        &random_hex64(),
        &["int80"],
        Some(&widened),
        true,
    );
    assert_ne!(
        refused.code,
        0,
        "an ia32 call under a 64-bit-only profile: {}",
        refused.container.stdout()
    );
}

#[test]
fn a_runc_exec_session_has_a_profile_of_its_own() {
    if !privileged() {
        return;
    }
    let _lock = runc_lock();
    let agent = Agent::start(&[]).expect("agent");
    let (uid, id) = (random_uid(), random_hex64());
    let container = Container::create(
        &kubepods_path("besteffort", &uid, &id),
        &[
            "sh",
            "-c",
            "while true; do cat /proc/self/stat > /dev/null; sleep 0.2; done",
        ],
        None,
    )
    .expect("container");
    // The profile is named by the cgroup path's container id, not the runc id.
    container.start().expect("start");
    let own = profile(&agent, &uid, &id);
    assert!(count(&own, "execve") > 0, "{own}");

    let code = container
        .exec(&["sh", "-c", "mkdir /tmp/from-exec && echo made"])
        .expect("runc exec");
    assert_eq!((code, container.exec_stdout()), (0, "made\n".to_owned()));
    let session = agent
        .wait_profile("the exec session's profile", |p| {
            p["workload"] == uid.as_str()
                && p["container"] == format!("exec:{id}")
                && count_any(p, &["mkdir", "mkdirat"]) > 0
        })
        .expect("exec profile");
    agent.wait_for_a_round("exec-round");
    let own = profile(&agent, &uid, &id);
    assert_eq!(
        count_any(&own, &["mkdir", "mkdirat"]),
        0,
        "the session's mkdir is not the container's: {own}"
    );
    // Nothing is lost: the session's calls are all in its profile (sh, mkdir, echo; its
    // execve is the runtime's), and the container went on counting.
    assert!(
        count(&session, "write") > 0 && count(&session, "exit_group") > 0,
        "{session}"
    );
    let later = poll(
        "the container to go on counting",
        Duration::from_secs(10),
        || {
            let now = profile(&agent, &uid, &id);
            (count(&now, "nanosleep") + count(&now, "clock_nanosleep")
                > count(&own, "nanosleep") + count(&own, "clock_nanosleep"))
            .then_some(now)
        },
    );
    assert!(later.is_ok(), "{own}");
}
