//! Project tasks: `cargo xtask setup | build | run | test | cluster`.
//!
//! `setup` installs what a fresh Debian machine lacks (apt packages, the pinned toolchains: the
//! host one of rust-toolchain.toml with clippy and rustfmt, the nightly of `nightly-toolchain`
//! with `rust-src`, bpf-linker built against LLVM 22), idempotently and printing every step;
//! where it cannot install (not root, no apt) it prints the exact commands instead.

mod bench;
mod cluster;
mod image;
mod oci;
mod setup;

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, bail};

const USAGE: &str = "\
usage: cargo xtask <task>

tasks:
  setup [--build-only] install prerequisites (apt packages, the pinned toolchains, bpf-linker,
                   kubernetes-validate, cargo-fuzz); --build-only: just what building needs
  build [--release] build the agent (with its eBPF program)
  dist             build the release binary into target/dist/
  image            the agent's OCI image (no container engine needed) as
                   target/dist/recorder-agent-image.tar; imported into the test cluster
                   as localhost/syscall-recorder/recorder-agent:dev when it is up
  run [ARGS...]    setup, build (release) and run the agent on this host in standalone mode;
                   extra ARGS go to `recorder-agent run`
  test             setup, lint, and run every test (unit, eBPF, runc end-to-end, a short fuzz pass,
                   then a real cluster: up, `image`, tests/tests/cluster.rs, down)
  bench [kernel|publish]
                   (root) kernel cost vs an empty program and bpftrace, collection cost, footprint,
                   then SyscallProfile publishing against the test cluster's API server
                   (brought up and down again when it is not up); `kernel`: only the first part,
                   `publish`: only the second
  cluster build|up|down|status
                   (root) a real single-node Kubernetes cluster on this machine, built from
                   upstream sources (`build`: without starting it); admin kubeconfig in
                   target/cluster/kubeconfig
  fuzz [--seconds N] [TARGET...]
                   run the cargo-fuzz targets (default: all, 600 s each)
";

/// The cargo-fuzz targets (recorder-agent/fuzz).
const FUZZ_TARGETS: [&str; 3] = ["cgroup_path", "state_file", "profile_readers"];
/// Seconds per fuzz target inside `cargo xtask test`.
const TEST_FUZZ_SECONDS: u64 = 20;

fn main() -> anyhow::Result<()> {
    let mut args = env::args().skip(1);
    let task = args.next().unwrap_or_default();
    let rest: Vec<String> = args.collect();
    match task.as_str() {
        "setup" => setup::run(if rest.iter().any(|a| a == "--build-only") {
            setup::Scope::Build
        } else {
            setup::Scope::All
        }),
        "dist" => dist(),
        "image" => image::run(),
        "bench" if rest.first().is_some_and(|a| a == "publish") => {
            // Publishing needs no kernel program: no bpf-linker when the build skips it.
            if !env::var("RECORDER_SKIP_EBPF").is_ok_and(|v| v == "1") {
                setup::run(setup::Scope::Build)?;
            }
            let binary = build(true)?;
            bench::publish(&binary)
        }
        "bench" => {
            setup::run(setup::Scope::Build)?;
            setup::bpftrace();
            let binary = build(true)?;
            bench::run(&binary)?;
            if rest.first().is_some_and(|a| a == "kernel") {
                return Ok(());
            }
            bench::publish(&binary)
        }
        "fuzz" => {
            setup::run(setup::Scope::All)?;
            let mut seconds = 600;
            let mut targets = Vec::new();
            let mut args = rest.iter();
            while let Some(arg) = args.next() {
                if arg == "--seconds" {
                    seconds = args
                        .next()
                        .and_then(|s| s.parse().ok())
                        .context("--seconds needs a number")?;
                } else if FUZZ_TARGETS.contains(&arg.as_str()) {
                    targets.push(arg.as_str());
                } else {
                    bail!(
                        "unknown fuzz target {arg:?} (targets: {})",
                        FUZZ_TARGETS.join(", ")
                    );
                }
            }
            if targets.is_empty() {
                targets = FUZZ_TARGETS.to_vec();
            }
            fuzz(&targets, seconds)
        }
        "build" => {
            setup::run(setup::Scope::Build)?;
            build(rest.iter().any(|a| a == "--release")).map(|_| ())
        }
        "run" => run(&rest),
        "cluster" => cluster::run(&rest),
        "test" => test(),
        "help" | "--help" | "-h" => {
            print!("{USAGE}");
            Ok(())
        }
        other => {
            eprint!("unknown task {other:?}\n\n{USAGE}");
            std::process::exit(2);
        }
    }
}

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn cargo() -> Command {
    let mut command = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command.current_dir(workspace_root());
    command
}

/// Runs a command, echoing it, and fails with its status.
pub fn run_cmd(command: &mut Command) -> anyhow::Result<()> {
    eprintln!("xtask: $ {}", describe(command));
    let status = command
        .status()
        .with_context(|| format!("running {}", describe(command)))?;
    if !status.success() {
        bail!("{} failed: {status}", describe(command));
    }
    Ok(())
}

fn describe(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|arg| arg.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

fn build(release: bool) -> anyhow::Result<PathBuf> {
    let mut command = cargo();
    command.args(["build", "--package", "recorder-agent"]);
    if release {
        command.arg("--release");
    }
    run_cmd(&mut command)?;
    // Where cargo put it: CARGO_TARGET_DIR (as cargo reads it) when set.
    let target = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map_or_else(
            || workspace_root().join("target"),
            |dir| workspace_root().join(dir),
        );
    let binary = target
        .join(if release { "release" } else { "debug" })
        .join("recorder-agent");
    eprintln!("xtask: built {}", binary.display());
    Ok(binary)
}

/// Runs each target for `seconds` with libFuzzer (the pinned nightly, AddressSanitizer). The
/// corpus grows in recorder-agent/fuzz/corpus (not committed); the committed seeds are read too.
fn fuzz(targets: &[&str], seconds: u64) -> anyhow::Result<()> {
    let crate_dir = workspace_root().join("recorder-agent");
    let nightly = format!("+{}", setup::NIGHTLY);
    run_cmd(
        Command::new("cargo")
            .current_dir(&crate_dir)
            // All targets in one build (cargo fuzz builds one or all).
            .args([nightly.as_str(), "fuzz", "build"])
            .env("RECORDER_SKIP_EBPF", "1"),
    )?;
    for target in targets {
        let corpus = crate_dir.join("fuzz/corpus").join(target);
        std::fs::create_dir_all(&corpus)?;
        let seeds = crate_dir.join("fuzz/seeds").join(target);
        let started = Instant::now();
        run_cmd(
            Command::new("cargo")
                .current_dir(&crate_dir)
                .args([nightly.as_str(), "fuzz", "run", target])
                .arg(&corpus)
                .arg(&seeds)
                .arg("--")
                .arg(format!("-max_total_time={seconds}"))
                .arg("-rss_limit_mb=2048")
                .arg("-print_final_stats=1")
                // The fuzzed parsers do not need the kernel program.
                .env("RECORDER_SKIP_EBPF", "1"),
        )
        .with_context(|| format!("fuzz target {target} failed (crash input in recorder-agent/fuzz/artifacts/{target})"))?;
        eprintln!(
            "xtask: fuzzed {target} for {:.0?} without a crash",
            started.elapsed()
        );
    }
    Ok(())
}

fn dist() -> anyhow::Result<()> {
    setup::run(setup::Scope::Build)?;
    let binary = build(true)?;
    let dist = workspace_root().join("target").join("dist");
    std::fs::create_dir_all(&dist)?;
    let target = dist.join("recorder-agent");
    std::fs::copy(&binary, &target).with_context(|| format!("copying to {}", target.display()))?;
    let size = std::fs::metadata(&target)?.len();
    eprintln!(
        "xtask: {} ({:.1} MiB)",
        target.display(),
        size as f64 / (1024.0 * 1024.0)
    );
    Ok(())
}

fn run(extra: &[String]) -> anyhow::Result<()> {
    setup::run(setup::Scope::Build)?;
    let binary = build(true)?;
    let state_dir = workspace_root().join("target").join("recorder-state");
    let listen = extra
        .windows(2)
        .find(|pair| pair[0] == "--listen")
        .map_or("127.0.0.1:9477".to_owned(), |pair| pair[1].clone());
    eprintln!(
        "xtask: starting the agent (standalone); state in {}\n\
         xtask: look at http://{listen}/api/v1/profiles (and /readyz); Ctrl-C stops it",
        state_dir.display()
    );
    let mut command = Command::new(binary);
    command
        .args(["run", "--kubernetes", "off", "--state-dir"])
        .arg(&state_dir)
        .args(extra);
    run_cmd(&mut command)
}

fn test() -> anyhow::Result<()> {
    let started = Instant::now();
    setup::run(setup::Scope::All)?;
    // Lints first: cheap, and they fail fast.
    run_cmd(cargo().args(["fmt", "--all", "--check"]))?;
    run_cmd(cargo().args([
        "clippy",
        "--workspace",
        "--exclude",
        "recorder-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The kernel crate's shared ABI, as the host sees it.
    run_cmd(cargo().args([
        "clippy",
        "--package",
        "recorder-ebpf",
        "--lib",
        "--",
        "-D",
        "warnings",
    ]))?;
    let binary = build(false)?;
    let privileged = env::var("RECORDER_SKIP_PRIVILEGED").is_ok_and(|v| v == "1");
    if privileged {
        eprintln!("xtask: RECORDER_SKIP_PRIVILEGED=1: eBPF and runc tests are skipped");
    }
    // The host tests first, without the cluster: its kubelet owns /kubepods, which the runc
    // tests use too, so the two never overlap (a cluster left up by hand is taken down first).
    if !privileged && cluster::any_daemon_running() {
        eprintln!(
            "xtask: a test cluster is up; its kubelet would kill the runc tests' containers: taking it down"
        );
        cluster::run(&["down".to_owned()])?;
    }
    run_cmd(
        cargo()
            .args([
                "test",
                "--workspace",
                "--exclude",
                "recorder-ebpf",
                "--no-fail-fast",
            ])
            .env("RECORDER_AGENT_BIN", &binary)
            .env("RECORDER_SKIP_CLUSTER", "1"),
    )?;
    // A short pass over every fuzz target: a parser that panics on a known input fails here.
    fuzz(&FUZZ_TARGETS, TEST_FUZZ_SECONDS)?;
    if env::var("RECORDER_SKIP_CLUSTER").is_ok_and(|v| v == "1") {
        eprintln!("xtask: RECORDER_SKIP_CLUSTER=1: the real-cluster tests are skipped");
    } else if privileged {
        eprintln!("xtask: RECORDER_SKIP_PRIVILEGED=1: the real-cluster tests (root) are skipped");
    } else {
        cluster_tests(&binary)?;
    }
    eprintln!("xtask: all tests passed in {:.0?}", started.elapsed());
    Ok(())
}

/// The real-cluster tests: cluster up, the agent image built and imported, tests/tests/cluster.rs
/// and cluster_fleet.rs,
/// and the cluster down again whatever happened (the timings go to target/cluster/timings.log).
fn cluster_tests(binary: &Path) -> anyhow::Result<()> {
    let started = Instant::now();
    let result = (|| -> anyhow::Result<()> {
        cluster::run(&["up".to_owned()])?;
        let up = started.elapsed();
        image::run()?;
        let imaged = started.elapsed();
        run_cmd(
            cargo()
                .args([
                    "test",
                    "--package",
                    "tests",
                    "--test",
                    "cluster",
                    "--test",
                    "cluster_fleet",
                    "--",
                    "--test-threads=1",
                ])
                .env("RECORDER_AGENT_BIN", binary),
        )?;
        eprintln!(
            "xtask: cluster tests: up {:.0?}, image {:.0?}, tests {:.0?}",
            up,
            imaged - up,
            started.elapsed() - imaged
        );
        Ok(())
    })();
    let down = cluster::run(&["down".to_owned()]);
    eprintln!(
        "xtask: the cluster part took {:.0?} (up, image, tests, down)",
        started.elapsed()
    );
    result.and(down)
}
