//! `cargo xtask bench`: what the recorder costs, measured against no program (baseline), an
//! empty `sys_enter` program (the floor) and, where installed, bpftrace (the peer); then the
//! cost of a collection and the agent's footprint. Ratios and differences come from one run:
//! absolute nanoseconds differ between machines and runs.
//!
//! Method (as in shared/reference/perf-anchors.md): a C loop pinned to CPU 0 runs chunks of
//! syscalls and reports the 10th percentile of ns per syscall; every variant run follows a
//! baseline run, variants are shuffled each round, and a figure is the median over rounds of
//! (variant - the baseline right before it); "vs floor" is the median over rounds of the
//! difference to the floor run of the same round. A second pass turns on
//! `kernel.bpf_stats_enabled` and reads the kernel's own timing of each program run (empty
//! program vs recorder): it excludes the loop's scheduling noise, which in the context-switch
//! case is larger than the difference being measured.

use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{cluster, run_cmd, workspace_root};

const LOOP_C: &str = r#"
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now_ns(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec * 1e9 + t.tv_nsec; }
static void pin(int cpu) { cpu_set_t s; CPU_ZERO(&s); CPU_SET(cpu, &s); sched_setaffinity(0, sizeof s, &s); }
static int cmp(const void *a, const void *b) { double x = *(const double *)a, y = *(const double *)b; return x < y ? -1 : x > y; }
static void join(const char *base, int i) {
    char p[4096]; snprintf(p, sizeof p, "%s/t%d/cgroup.procs", base, i);
    int fd = open(p, O_WRONLY); if (fd < 0) { perror(p); exit(1); }
    if (write(fd, "0", 1) != 1) { perror("cgroup.procs"); exit(1); } close(fd);
}

/* loop getppid|mix CHUNKS PER_CHUNK
   loop ring CHUNKS PER_CHUNK K CGROUP_BASE  (K processes in K cgroups pass a token on CPU 0)
   prints the 10th percentile of ns per syscall over the chunks */
int main(int argc, char **argv) {
    if (argc < 4) return 2;
    const char *mode = argv[1]; int chunks = atoi(argv[2]); int per = atoi(argv[3]);
    double *r = malloc(sizeof(double) * chunks);
    pin(0);
    if (!strcmp(mode, "getppid") || !strcmp(mode, "mix")) {
        int zero = open("/dev/zero", O_RDONLY), null = open("/dev/null", O_WRONLY);
        char buf[64]; struct stat st;
        for (int i = 0; i < per; i++) syscall(SYS_getppid);
        for (int c = 0; c < chunks; c++) {
            double t0 = now_ns();
            if (mode[0] == 'g') { for (int i = 0; i < per; i++) syscall(SYS_getppid); }
            else { for (int i = 0; i < per; i += 4) { if (read(zero, buf, 64) < 0 || write(null, buf, 64) < 0) return 1; fstat(zero, &st); syscall(SYS_getpid); } }
            r[c] = (now_ns() - t0) / per;
        }
    } else if (!strcmp(mode, "ring") && argc >= 6) {
        int k = atoi(argv[4]); const char *base = argv[5]; int fds[64][2];
        if (k < 2 || k > 64) return 2;
        for (int i = 0; i < k; i++) if (pipe(fds[i])) return 1;
        for (int i = 1; i < k; i++) {
            if (fork() == 0) {
                join(base, i); pin(0); char b;
                for (;;) {
                    if (read(fds[i][0], &b, 1) != 1) _exit(0);
                    if (write(fds[(i + 1) % k][1], &b, 1) != 1) _exit(0);
                    if (b == 'q') _exit(0);
                }
            }
        }
        join(base, 0);
        char b = 'x'; int rounds = per / (2 * k); if (rounds < 1) rounds = 1;
        for (int w = 0; w < 200; w++) { if (write(fds[1][1], &b, 1) != 1 || read(fds[0][0], &b, 1) != 1) return 1; }
        for (int c = 0; c < chunks; c++) {
            double t0 = now_ns();
            for (int j = 0; j < rounds; j++) { if (write(fds[1][1], &b, 1) != 1 || read(fds[0][0], &b, 1) != 1) return 1; }
            r[c] = (now_ns() - t0) / (rounds * 2.0 * k);
        }
        b = 'q'; if (write(fds[1][1], &b, 1) != 1) return 1; if (read(fds[0][0], &b, 1) != 1) return 1;
        while (wait(NULL) > 0) {}
    } else return 2;
    qsort(r, chunks, sizeof(double), cmp);
    printf("%.3f\n", r[chunks / 10]);
    return 0;
}
"#;

const BPFTRACE_PROGRAM: &str =
    "tracepoint:raw_syscalls:sys_enter { @[cgroup, args->id] = count(); }";
const RING_TASKS: usize = 8;
const ROUNDS: usize = 11;
/// Runs per program of the in-program timing pass (`kernel.bpf_stats_enabled`).
const STATS_ROUNDS: usize = 5;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Variant {
    Empty,
    Recorder,
    Bpftrace,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Self::Empty => "empty raw_tracepoint (floor)",
            Self::Recorder => "syscall-recorder",
            Self::Bpftrace => "bpftrace @[cgroup, id] = count()",
        }
    }
}

/// A program attached for one measurement; detached on drop or by [`Attached::finish`].
struct Attached {
    variant: Variant,
    child: Child,
    /// Drains the program's output; yields its last line (the probe's kernel statistics).
    output: Option<thread::JoinHandle<Option<String>>>,
}

impl Attached {
    fn start(variant: Variant, agent: &Path) -> anyhow::Result<Self> {
        let mut command = match variant {
            Variant::Empty | Variant::Recorder => {
                let mut command = Command::new(agent);
                command.args([
                    "bench-probe",
                    "--program",
                    if variant == Variant::Empty {
                        "empty"
                    } else {
                        "recorder"
                    },
                ]);
                command
            }
            Variant::Bpftrace => {
                let mut command = Command::new("bpftrace");
                command.args(["-e", BPFTRACE_PROGRAM]);
                command
            }
        };
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", variant.name()))?;
        let stdout = child.stdout.take().context("stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        // Both say a line once attached: "ready" and "Attaching 1 probe...".
        let ready = lines.next().transpose()?.unwrap_or_default();
        if !(ready.starts_with("ready") || ready.starts_with("Attaching")) {
            let _ = child.kill();
            bail!("{} did not attach: {ready:?}", variant.name());
        }
        // Keep draining (bpftrace prints its map at exit) so it never blocks on a full pipe.
        let output = thread::spawn(move || lines.map_while(Result::ok).last());
        Ok(Self {
            variant,
            child,
            output: Some(output),
        })
    }

    /// Detaches and returns the statistics the program printed last (JSON), if any.
    fn finish(mut self) -> Option<serde_json::Value> {
        self.stop();
        let line = self.output.take()?.join().ok().flatten()?;
        serde_json::from_str(&line).ok()
    }

    fn stop(&mut self) {
        // The probe exits when its stdin closes (printing its statistics); bpftrace on SIGINT.
        drop(self.child.stdin.take());
        if self.variant == Variant::Bpftrace {
            // SAFETY: plain syscall on our child's pid.
            unsafe { libc_kill(self.child.id() as i32, 2) };
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        if self.output.is_some() {
            self.stop();
        }
    }
}

/// Turns `kernel.bpf_stats_enabled` on while it lives and restores the previous value; absent
/// when the kernel has no such switch.
struct StatsSwitch {
    previous: String,
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl StatsSwitch {
    fn new() -> Option<Self> {
        let previous = fs::read_to_string(BPF_STATS).ok()?;
        Some(Self { previous })
    }

    fn set(&self, on: bool) -> anyhow::Result<()> {
        fs::write(BPF_STATS, if on { "1" } else { "0" })
            .with_context(|| format!("writing {BPF_STATS}"))
    }
}

impl Drop for StatsSwitch {
    fn drop(&mut self) {
        let _ = fs::write(BPF_STATS, self.previous.trim());
    }
}

/// Median ns per run inside the empty program and inside the recorder while the loop `args`
/// runs, measured by the kernel with run statistics on (which the wall-clock rounds are not).
/// The runs are every syscall on the host in that time; the loop makes nearly all of them.
fn in_program_ns(
    stats: &StatsSwitch,
    agent: &Path,
    binary: &Path,
    args: &[String],
) -> anyhow::Result<(f64, f64)> {
    stats.set(true)?;
    let result = (|| {
        let mut per_run: BTreeMap<Variant, Vec<f64>> = BTreeMap::new();
        for round in 0..STATS_ROUNDS {
            for variant in order(round, &[Variant::Empty, Variant::Recorder]) {
                let attached = Attached::start(variant, agent)?;
                run_loop(binary, args)?;
                let stats = attached.finish().unwrap_or_default();
                let (runs, ns) = (
                    stats["run_count"].as_f64().unwrap_or(0.0),
                    stats["run_time_ns"].as_f64().unwrap_or(0.0),
                );
                if runs > 0.0 {
                    per_run.entry(variant).or_default().push(ns / runs);
                }
            }
        }
        let pick = |variant| {
            per_run
                .get(&variant)
                .cloned()
                .map(median)
                .context("the kernel reported no program runs")
        };
        Ok((pick(Variant::Empty)?, pick(Variant::Recorder)?))
    })();
    stats.set(false)?;
    result
}

/// Syscalls one run of the loop makes, about: chunks × calls per chunk.
fn loop_calls(args: &[String]) -> f64 {
    let number = |i: usize| {
        args.get(i)
            .and_then(|a| a.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    number(1) * number(2)
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, signal: i32) -> i32;
}

/// The ring's cgroups, removed on drop.
struct RingCgroups {
    base: PathBuf,
}

impl RingCgroups {
    fn create(root: &Path) -> anyhow::Result<Self> {
        let base = root.join(format!(
            "syscall-recorder-bench-ring-{}",
            std::process::id()
        ));
        for i in 0..RING_TASKS {
            fs::create_dir_all(base.join(format!("t{i}")))
                .with_context(|| format!("creating cgroups under {}", base.display()))?;
        }
        Ok(Self { base })
    }
}

impl Drop for RingCgroups {
    fn drop(&mut self) {
        for i in 0..RING_TASKS {
            let _ = fs::remove_dir(self.base.join(format!("t{i}")));
        }
        let _ = fs::remove_dir(&self.base);
    }
}

fn cgroup2_root() -> anyhow::Result<PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo")?;
    text.lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            (right.split_whitespace().next()? == "cgroup2")
                .then(|| left.split_whitespace().nth(4).map(PathBuf::from))
                .flatten()
        })
        .context("no cgroup2 mount")
}

/// Whether bpftrace can attach its tracepoint: it needs tracefs (raw tracepoints, which the
/// recorder uses, do not), so tracefs is mounted when missing.
fn peer_available(agent: &Path) -> bool {
    let installed = Command::new("bpftrace")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !installed {
        eprintln!(
            "bench: bpftrace not installed: the peer rows are skipped (apt-get install bpftrace)"
        );
        return false;
    }
    if !Path::new("/sys/kernel/tracing/events/raw_syscalls").exists() {
        eprintln!(
            "bench: mounting tracefs at /sys/kernel/tracing (bpftrace's tracepoints need it)"
        );
        let _ = Command::new("mount")
            .args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"])
            .status();
    }
    match Attached::start(Variant::Bpftrace, agent) {
        Ok(_) => true,
        Err(err) => {
            eprintln!("bench: bpftrace cannot attach ({err:#}): the peer rows are skipped");
            false
        }
    }
}

fn run_loop(binary: &Path, args: &[String]) -> anyhow::Result<f64> {
    let output = Command::new(binary)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running the syscall loop")?;
    if !output.status.success() {
        bail!("syscall loop {args:?} failed: {}", output.status);
    }
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .context("syscall loop output")
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// A tiny deterministic shuffle (no rand dependency): rotates by the round number.
fn order(round: usize, variants: &[Variant]) -> Vec<Variant> {
    let mut out = variants.to_vec();
    out.rotate_left(round % variants.len().max(1));
    if round % 2 == 1 {
        out.reverse();
    }
    out
}

/// Runs the whole benchmark and prints markdown tables.
pub fn run(agent: &Path) -> anyhow::Result<()> {
    let dir = workspace_root().join("target").join("bench");
    fs::create_dir_all(&dir)?;
    let source = dir.join("loop.c");
    fs::write(&source, LOOP_C)?;
    let binary = dir.join("loop");
    run_cmd(
        Command::new("gcc")
            .args(["-O2", "-o"])
            .arg(&binary)
            .arg(&source),
    )?;

    let mut variants = vec![Variant::Empty, Variant::Recorder];
    if peer_available(agent) {
        variants.push(Variant::Bpftrace);
    }
    let ring = RingCgroups::create(&cgroup2_root()?)?;
    // The kernel's own timing of each program run: free of the loop's scheduling noise.
    let mut stats_switch = StatsSwitch::new();
    let ring_base = ring.base.display().to_string();
    let cases: Vec<(&str, Vec<String>)> = vec![
        (
            "steady: getppid",
            ["getppid", "100", "10000"].map(String::from).to_vec(),
        ),
        (
            "steady: read/write/fstat/getpid",
            ["mix", "100", "10000"].map(String::from).to_vec(),
        ),
        (
            "worst: 8 cgroups, a context switch before every syscall",
            vec![
                "ring".into(),
                "60".into(),
                "4000".into(),
                RING_TASKS.to_string(),
                ring_base.clone(),
            ],
        ),
    ];

    let mut rows = Vec::new();
    let mut in_program = Vec::new();
    for (case, args) in &cases {
        // Per round, one run of each variant, each right after its own baseline run.
        let mut added: BTreeMap<Variant, Vec<f64>> = BTreeMap::new();
        let mut baselines = Vec::new();
        let mut misses = Vec::new();
        for round in 0..ROUNDS {
            for variant in order(round, &variants) {
                let baseline = run_loop(&binary, args)?;
                let attached = Attached::start(variant, agent)?;
                let with = run_loop(&binary, args)?;
                let stats = attached.finish();
                if variant == Variant::Recorder
                    && let Some(count) = stats.as_ref().and_then(|s| s["cache_misses"].as_f64())
                {
                    misses.push(count * 1000.0 / loop_calls(args).max(1.0));
                }
                baselines.push(baseline);
                added.entry(variant).or_default().push(with - baseline);
            }
            eprint!(".");
        }
        let baseline = median(baselines);
        let floor = added.get(&Variant::Empty).cloned().unwrap_or_default();
        for variant in &variants {
            let runs = added.get(variant).cloned().unwrap_or_default();
            // Against the floor run of the same round: slow drift of the host cancels out.
            let vs_floor = median(runs.iter().zip(&floor).map(|(v, f)| v - f).collect());
            let add = median(runs);
            let misses = if *variant == Variant::Recorder && !misses.is_empty() {
                format!("{:.2}", median(misses.clone()))
            } else {
                "".to_owned()
            };
            rows.push(format!(
                "| {case} | {} | {add:+.1} | {:.2}x | {vs_floor:+.1} | {misses} |",
                variant.name(),
                (baseline + add) / baseline,
            ));
        }
        rows.push(format!(
            "| {case} | (baseline: {baseline:.1} ns/syscall) | | | | |"
        ));
        if let Some(stats) = &stats_switch {
            match in_program_ns(stats, agent, &binary, args) {
                Ok(ns) => in_program.push((*case, ns)),
                // Optional: a read-only /proc/sys (a container) loses only this table.
                Err(err) => {
                    eprintln!("bench: no in-program timing ({err:#})");
                    stats_switch = None;
                }
            }
        }
    }
    drop(ring);
    eprintln!();
    println!("\n### Kernel cost per syscall ({ROUNDS} interleaved rounds, medians)\n");
    // Cache misses come from the kernel's own counter: unlike nanoseconds on a shared VM,
    // they do not drift between runs, and a miss is what makes a syscall expensive.
    println!(
        "| case | program | ns/syscall added | vs baseline | vs floor | cache misses per 1,000 syscalls |"
    );
    println!("|---|---|---|---|---|---|");
    for row in rows {
        println!("{row}");
    }
    drop(stats_switch);
    if !in_program.is_empty() {
        println!(
            "\n### Time inside the program per syscall (kernel.bpf_stats_enabled, {STATS_ROUNDS} runs each, medians)\n"
        );
        println!("| case | empty program (floor) | syscall-recorder | recorder − floor |");
        println!("|---|---|---|---|");
        for (case, (empty, recorder)) in in_program {
            println!(
                "| {case} | {empty:.1} ns | {recorder:.1} ns | {:+.1} ns |",
                recorder - empty
            );
        }
    }

    println!("\n### Collection (one round, every slot read; release build)\n");
    let output = Command::new(agent)
        .args(["bench-collect", "--cgroups", "100,1000", "--rounds", "10"])
        .stdin(Stdio::null())
        .output()
        .context("bench-collect")?;
    if !output.status.success() {
        bail!(
            "bench-collect failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    println!(
        "| active cgroups | median collection | per 100 cgroups | first round (resolves paths) |"
    );
    println!("|---|---|---|---|");
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let value: serde_json::Value =
            serde_json::from_str(line).context("bench-collect output")?;
        println!(
            "| {} | {:.2} ms | {:.2} ms | {:.2} ms |",
            value["cgroups"],
            value["median_us"].as_f64().unwrap_or(0.0) / 1000.0,
            value["us_per_100"].as_f64().unwrap_or(0.0) / 1000.0,
            value["first_round_us"].as_f64().unwrap_or(0.0) / 1000.0,
        );
    }

    footprint(agent, 1000)?;
    Ok(())
}

/// The agent's RSS and CPU with `n` live cgroups (each holding a slot) at a 1 s interval.
fn footprint(agent: &Path, n: usize) -> anyhow::Result<()> {
    let root = cgroup2_root()?.join(format!(
        "syscall-recorder-bench-footprint-{}",
        std::process::id()
    ));
    let cleanup = |root: &Path| {
        for i in 0..n {
            let dir = root.join(format!("c{i}"));
            let _ = fs::write(dir.join("cgroup.kill"), "1");
        }
        thread::sleep(Duration::from_millis(300));
        for i in 0..n {
            let _ = fs::remove_dir(root.join(format!("c{i}")));
        }
        let _ = fs::remove_dir(root);
    };
    let state = tempfile_dir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut agent_child = Command::new(agent)
        .args([
            "run",
            "--kubernetes",
            "off",
            "--no-pin",
            "--interval",
            "1s",
            "--max-cgroups",
            "2048",
        ])
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--state-dir")
        .arg(&state)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let result = (|| -> anyhow::Result<()> {
        thread::sleep(Duration::from_secs(2));
        for i in 0..n {
            let dir = root.join(format!("c{i}"));
            fs::create_dir_all(&dir)?;
            // A process in each cgroup: its first syscalls give the cgroup a slot, which every
            // collection then reads.
            let mut child = Command::new("sh")
                .args([
                    "-c",
                    "echo $$ > \"$0\"/cgroup.procs && exec sleep 600",
                    dir.to_str().unwrap_or_default(),
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?;
            let _ = child.try_wait();
        }
        thread::sleep(Duration::from_secs(5));
        let pid = agent_child.id();
        let cpu = |pid: u32| -> anyhow::Result<f64> {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
            let fields: Vec<&str> = stat
                .rsplit_once(')')
                .map(|(_, r)| r)
                .unwrap_or("")
                .split_whitespace()
                .collect();
            let ticks: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
                + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
            Ok(ticks / 100.0)
        };
        let before = cpu(pid)?;
        let started = Instant::now();
        thread::sleep(Duration::from_secs(20));
        let used = cpu(pid)? - before;
        let seconds = started.elapsed().as_secs_f64();
        let mut status = String::new();
        fs::File::open(format!("/proc/{pid}/status"))?.read_to_string(&mut status)?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_owned())
                .unwrap_or_default()
        };
        println!("\n### Agent footprint ({n} live cgroups, 1 s interval, release build)\n");
        println!(
            "| RSS | of which private (RssAnon) | of which mapped (RssFile: the binary and the kernel's counter maps) | CPU (share of one core, over {seconds:.0} s) |"
        );
        println!("|---|---|---|---|");
        println!(
            "| {} | {} | {} | {:.2} % |",
            field("VmRSS:"),
            field("RssAnon:"),
            field("RssFile:"),
            used / seconds * 100.0
        );
        Ok(())
    })();
    let _ = agent_child.kill();
    let _ = agent_child.wait();
    cleanup(&root);
    let _ = fs::remove_dir_all(&state);
    std::io::stdout().flush()?;
    result
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "syscall-recorder-bench-state-{}",
        std::process::id()
    ));
    fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// `bench-publish`'s defaults, spelled out so the heading says what was measured.
const PUBLISH_WORKLOADS: u32 = 1000;
const PUBLISH_NODES: u32 = 50;

/// SyscallProfile publishing against the test cluster's API server (brought up for this when
/// it is not up, and taken down again): 1,000 workloads over 50 simulated nodes, in the
/// learning phase and in steady state. Prints a table and a summary and writes the figures to
/// `target/bench/results.json` under `publish`.
pub fn publish(agent: &Path) -> anyhow::Result<()> {
    let brought_up = !cluster::is_up();
    if brought_up {
        eprintln!("bench: the test cluster is not up: bringing it up for the publish bench");
        cluster::run(&["up".to_owned()])?;
    }
    let result = publish_on_cluster(agent);
    if brought_up {
        let down = cluster::run(&["down".to_owned()]);
        result.and(down)
    } else {
        result
    }
}

fn publish_on_cluster(agent: &Path) -> anyhow::Result<()> {
    let layout = cluster::Layout::new();
    let crd = workspace_root().join("deploy/base/syscallprofile-crd.yaml");
    run_cmd(layout.kubectl().arg("apply").arg("-f").arg(&crd))?;
    run_cmd(layout.kubectl().args([
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/syscallprofiles.syscall-recorder.io",
    ]))?;
    let dir = workspace_root().join("target").join("bench");
    fs::create_dir_all(&dir)?;
    let log_path = dir.join("bench-publish.log");
    eprintln!(
        "bench: publishing from {PUBLISH_NODES} simulated nodes (a few minutes; log in {})",
        log_path.display()
    );
    let mut child = Command::new(agent)
        .arg("bench-publish")
        .arg("--kubeconfig")
        .arg(&layout.kubeconfig)
        .args(["--workloads", &PUBLISH_WORKLOADS.to_string()])
        .args(["--nodes", &PUBLISH_NODES.to_string()])
        // Every node contributing to every workload is the worst case: its first publish takes
        // minutes on a 2-core API server, and the bench reports it complete.
        .args(["--max-initial", "900s"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting bench-publish")?;
    // Every line to the log; the bench's own progress lines to the terminal as well (the
    // publisher's per-object warnings of a conflict storm would drown them).
    let stderr = child.stderr.take().context("stderr")?;
    let mut log = fs::File::create(&log_path)?;
    let echo = thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = writeln!(log, "{line}");
            if line.starts_with("bench-publish:") {
                eprintln!("{line}");
            }
        }
    });
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .context("stdout")?
        .read_to_string(&mut stdout)?;
    let status = child.wait()?;
    let _ = echo.join();
    if !status.success() {
        bail!(
            "bench-publish failed ({status}); see {}",
            log_path.display()
        );
    }
    let figures: serde_json::Value =
        serde_json::from_str(stdout.trim().lines().last().unwrap_or(""))
            .context("bench-publish output")?;
    print_publish(&figures);
    let results = dir.join("results.json");
    let mut all: serde_json::Value = fs::read_to_string(&results)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .filter(serde_json::Value::is_object)
        .unwrap_or_else(|| serde_json::json!({}));
    all["publish"] = figures;
    fs::write(&results, serde_json::to_string_pretty(&all)?)?;
    eprintln!("bench: figures in {}", results.display());
    Ok(())
}

fn print_publish(figures: &serde_json::Value) {
    let f = |value: &serde_json::Value| value.as_f64().unwrap_or(f64::NAN);
    let kib = |value: &serde_json::Value| f(value) / 1024.0;
    println!(
        "\n### Publishing SyscallProfiles ({} workloads × {} simulated nodes, real API server, {} s interval)\n",
        figures["workloads"], figures["nodes"], figures["interval_s"]
    );
    println!(
        "| phase | duration | API writes (creates + status) | writes per minute | conflicts (409, retried) | failed | GETs |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (name, phase) in [
        ("learning (incl. initial publish)", &figures["learning"]),
        ("drain (last learning writes)", &figures["drain"]["counts"]),
        ("steady state", &figures["steady"]),
    ] {
        println!(
            "| {name} | {:.0} s | {} | {:.0} | {} | {} | {} |",
            f(&phase["seconds"]),
            phase["api_writes"],
            f(&phase["writes_per_minute"]),
            phase["conflicts"],
            phase["failed"],
            phase["gets"],
        );
    }
    let size = &figures["object_size"];
    let big = &figures["extrapolated"];
    println!(
        "\n| object size | median | max | max vs etcd's 1.5 MiB | {} nodes (extrapolated) | vs 1.5 MiB |",
        big["nodes"]
    );
    println!("|---|---|---|---|---|---|");
    println!(
        "| {} node entries | {:.1} KiB | {:.1} KiB | {:.2} % | {:.1} KiB (stored: {}) | {:.1} % |",
        size["node_entries_median"],
        kib(&size["median_bytes"]),
        kib(&size["max_bytes"]),
        f(&size["max_ratio_of_limit"]) * 100.0,
        kib(&big["built_bytes"]),
        big["stored_bytes"],
        f(&big["ratio_of_limit"]) * 100.0,
    );
    let initial = &figures["initial_publish"];
    let steady_writes = figures["steady"]["api_writes"].as_u64().unwrap_or(u64::MAX);
    let complete = initial["complete"].as_bool() == Some(true);
    let drained = figures["drain"]["complete"].as_bool() == Some(true);
    let initial_text = if complete {
        format!("took {:.0} s", f(&initial["seconds"]))
    } else {
        format!(
            "was NOT complete when the learning phase ended ({} of {} nodes; at {:.0} status writes/s all would take about {:.0} s)",
            initial["nodes_complete"],
            figures["nodes"],
            f(&initial["status_replaces_per_s"]),
            f(&initial["estimated_seconds"]),
        )
    };
    let steady_text = match (steady_writes, drained) {
        (0, _) => "as it must: nothing changed".to_owned(),
        (n, true) => format!("{n} writes while nothing changed: a bug"),
        (n, false) => {
            format!("{n} writes: the learning backlog had not drained, so this is no steady state")
        }
    };
    println!(
        "\nThe initial publish of all {} contributions {initial_text} (first pass per node: median {:.0} s, max {:.0} s); \
         learning wrote {:.0} times per minute with {} conflicts retried and {} objects left for a later pass; \
         steady state wrote {:.0} times per minute ({}). \
         An object with {} node entries is {:.1} KiB at most ({:.2} % of etcd's limit); with {} nodes it would be {:.1} KiB ({:.1} %).",
        figures["contributions"],
        f(&initial["first_pass_median_s"]),
        f(&initial["first_pass_max_s"]),
        f(&figures["learning"]["writes_per_minute"]),
        figures["learning"]["conflicts"],
        figures["learning"]["failed"],
        f(&figures["steady"]["writes_per_minute"]),
        steady_text,
        size["node_entries_median"],
        kib(&size["max_bytes"]),
        f(&size["max_ratio_of_limit"]) * 100.0,
        big["nodes"],
        kib(&big["built_bytes"]),
        f(&big["ratio_of_limit"]) * 100.0,
    );
}
