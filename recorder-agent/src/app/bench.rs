//! The agent's side of `cargo xtask bench` (hidden subcommands): holding a program attached
//! while xtask runs its syscall loops, and timing collections over many active cgroups.

use std::{
    fs,
    io::{self, BufRead as _, Write as _},
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;

use crate::{
    attribution::cgroup::{self, Resolver},
    collection::Collector,
    config::{BenchCollectArgs, BenchProbeArgs, BenchProgram},
    kernel::{EmptyProbe, LoadOptions, Recorder, SkipTask},
    profile::syscalls::Arch,
    profile::{Identity, SharedProfiles},
};

/// `bench-probe`: attach, say `ready`, hold until stdin closes, then print kernel stats: the
/// recorder's cache misses, and for either program its run count and run time (which the
/// kernel accumulates only while `kernel.bpf_stats_enabled` is 1).
pub fn probe(args: &BenchProbeArgs) -> anyhow::Result<ExitCode> {
    let recorder = match args.program {
        BenchProgram::Empty => {
            let probe = EmptyProbe::attach()?;
            hold()?;
            let (runs, ns) = probe
                .program_stats()
                .map_or((0, 0), |stats| (stats.run_count, stats.run_time.as_nanos()));
            drop(probe);
            println!("{{\"run_count\":{runs},\"run_time_ns\":{ns}}}");
            return Ok(ExitCode::SUCCESS);
        }
        BenchProgram::Recorder => Recorder::load_and_attach(LoadOptions {
            capacity: args.max_cgroups,
            skip: SkipTask::this_process()?,
            bpffs: None,
            // The loops join their cgroups without an exec: counted as their cgroups' own, as
            // before phases existed (the cut only changes which slot a cache miss picks).
            cut_runtime: false,
        })?,
    };
    hold()?;
    let stats = recorder.stats()?;
    let (runs, ns) = recorder
        .attached_programs()
        .stats()
        .into_iter()
        .find(|stats| stats.program == recorder_ebpf::PROG_SYS_ENTER)
        .map_or((0, 0), |stats| (stats.run_count, stats.run_time.as_nanos()));
    println!(
        "{{\"cache_misses\":{},\"slots_allocated\":{},\"slot_exhausted\":{},\"map_errors\":{},\"run_count\":{runs},\"run_time_ns\":{ns}}}",
        stats.cache_misses, stats.slots_allocated, stats.slot_exhausted, stats.map_errors
    );
    Ok(ExitCode::SUCCESS)
}

fn hold() -> anyhow::Result<()> {
    println!("ready");
    io::stdout().flush()?;
    let mut sink = String::new();
    let stdin = io::stdin();
    while stdin.lock().read_line(&mut sink)? > 0 {
        sink.clear();
    }
    Ok(())
}

/// Cgroups made for a measurement, removed on drop.
struct BenchCgroups {
    parent: PathBuf,
    dirs: Vec<PathBuf>,
}

impl BenchCgroups {
    fn create(root: &Path, n: u32) -> anyhow::Result<Self> {
        let parent = root.join(format!("syscall-recorder-bench-{}", std::process::id()));
        fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
        let mut made = Self {
            parent,
            dirs: Vec::new(),
        };
        for i in 0..n {
            let dir = made.parent.join(format!("c{i}"));
            fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
            made.dirs.push(dir);
        }
        Ok(made)
    }

    /// Runs a short shell once in every cgroup: it moves itself there and execs /bin/true, a
    /// few dozen syscalls in all. The children are spawned with `posix_spawn` (no `pre_exec`):
    /// a forked copy of this process would leave its memory copy-on-write, and the timed
    /// collection would then pay page faults the agent (which forks nothing) never pays.
    fn touch_all(&self) -> anyhow::Result<()> {
        let mut children = Vec::with_capacity(self.dirs.len());
        for dir in &self.dirs {
            let child = Command::new("/bin/sh")
                .args([
                    "-c",
                    "echo $$ > \"$1/cgroup.procs\" && exec /bin/true",
                    "sh",
                ])
                .arg(dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()?;
            children.push((dir, child));
            // Bounded parallelism: a few hundred children at once at most.
            if children.len() >= 256 {
                for (dir, mut child) in children.drain(..) {
                    wait_ok(dir, &mut child)?;
                }
            }
        }
        for (dir, mut child) in children {
            wait_ok(dir, &mut child)?;
        }
        Ok(())
    }
}

fn wait_ok(dir: &Path, child: &mut std::process::Child) -> anyhow::Result<()> {
    let status = child.wait()?;
    anyhow::ensure!(
        status.success(),
        "joining {} and running /bin/true: {status}",
        dir.display()
    );
    Ok(())
}

impl Drop for BenchCgroups {
    fn drop(&mut self) {
        for dir in &self.dirs {
            let _ = fs::remove_dir(dir);
        }
        let _ = fs::remove_dir(&self.parent);
    }
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort_unstable();
    values.get(values.len() / 2).copied().unwrap_or_default()
}

/// `bench-collect`: for each size, N cgroups each run a process between two collections;
/// prints one JSON line per size with the median collection time.
pub fn collect(args: &BenchCollectArgs) -> anyhow::Result<ExitCode> {
    let arch = Arch::host().context("unsupported architecture")?;
    let root = cgroup::cgroup2_root(None)?;
    for &n in &args.cgroups {
        let recorder = Recorder::load_and_attach(LoadOptions {
            capacity: n + 256,
            skip: SkipTask::this_process()?,
            bpffs: None,
            cut_runtime: false,
        })?;
        let cgroups = BenchCgroups::create(&root, n)?;
        let mut collector = Collector::new(recorder, Resolver::new(root.clone()), arch);
        let store = SharedProfiles::new();
        let identify = |_id: u64, path: Option<&str>, _: Option<&[u8]>| Identity::standalone(path);
        // What the agent's loop does each round: collect, then fold under the store's lock.
        let mut round = || {
            let stats = collector.collect(&identify);
            store.update(|store| collector.fold_into(store, SystemTime::now()));
            stats
        };
        // The first round resolves every new cgroup (a tree walk); it is reported apart.
        cgroups.touch_all()?;
        let started = Instant::now();
        let first = round()?;
        let first_round = started.elapsed();
        let mut times = Vec::new();
        let mut active = 0;
        for _ in 0..args.rounds {
            cgroups.touch_all()?;
            // Let the exits of the N processes settle: the round measures the collection, not
            // the kernel tearing down a thousand processes on the other core.
            std::thread::sleep(Duration::from_millis(300));
            let started = Instant::now();
            let stats = round()?;
            times.push(started.elapsed());
            active = stats.read;
        }
        let steady = median(times);
        // The kernel side of a round alone: the slot table and every slot's counters.
        let mut reads = Vec::new();
        let mut buffer = Box::new([0; recorder_ebpf::SYSCALL_COLUMNS]);
        for _ in 0..args.rounds {
            let started = Instant::now();
            let slots = collector.counters().slots()?;
            for (_, slot) in &slots {
                collector.counters().read_slot_into(*slot, &mut buffer)?;
                std::hint::black_box(&buffer);
            }
            reads.push(started.elapsed());
        }
        let reads = median(reads);
        println!(
            "{{\"cgroups\":{n},\"slots_read\":{active},\"first_round_us\":{},\"median_us\":{},\"kernel_reads_us\":{},\"us_per_100\":{:.1},\"resolved_first\":{}}}",
            first_round.as_micros(),
            steady.as_micros(),
            reads.as_micros(),
            steady.as_secs_f64() * 1e6 * 100.0 / f64::from(n.max(1)),
            first.cgroups - first.unresolved,
        );
        io::stdout().flush()?;
    }
    Ok(ExitCode::SUCCESS)
}
