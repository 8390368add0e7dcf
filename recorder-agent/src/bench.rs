//! The agent's side of `cargo xtask bench` (hidden subcommands): holding a program attached
//! while xtask runs its syscall loops, and timing collections over many active cgroups.

use std::{
    ffi::CString,
    fs,
    io::{self, BufRead as _, Write as _},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;

use crate::{
    bpf::{EmptyProbe, LoadOptions, Recorder},
    cgroup::{self, Resolver},
    collector::Collector,
    config::{BenchCollectArgs, BenchProbeArgs, BenchProgram},
    profile::{Identity, ProfileStore},
    syscalls::Arch,
};

/// `bench-probe`: attach, say `ready`, hold until stdin closes, then print kernel stats.
pub fn probe(args: &BenchProbeArgs) -> anyhow::Result<ExitCode> {
    let recorder = match args.program {
        BenchProgram::Empty => {
            let probe = EmptyProbe::attach()?;
            hold()?;
            drop(probe);
            println!("{{}}");
            return Ok(ExitCode::SUCCESS);
        }
        BenchProgram::Recorder => Recorder::load_and_attach(LoadOptions {
            capacity: args.max_cgroups,
            skip_tgid: std::process::id(),
            bpffs: None,
        })?,
    };
    hold()?;
    let stats = recorder.stats()?;
    println!(
        "{{\"cache_misses\":{},\"slots_allocated\":{},\"slot_exhausted\":{},\"map_errors\":{}}}",
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

    /// Runs /bin/true once in every cgroup: each makes a few dozen syscalls there.
    fn touch_all(&self) -> anyhow::Result<()> {
        let mut children = Vec::with_capacity(self.dirs.len());
        for dir in &self.dirs {
            let procs = CString::new(
                dir.join("cgroup.procs")
                    .into_os_string()
                    .into_encoded_bytes(),
            )?;
            let mut command = Command::new("/bin/true");
            command.stdin(Stdio::null()).stdout(Stdio::null());
            // SAFETY: only async-signal-safe calls on data prepared before the fork.
            unsafe {
                command.pre_exec(move || {
                    let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                    libc::close(fd);
                    if written == 1 {
                        Ok(())
                    } else {
                        Err(io::Error::last_os_error())
                    }
                });
            }
            children.push(command.spawn()?);
            // Bounded parallelism: a few hundred children at once at most.
            if children.len() >= 256 {
                for mut child in children.drain(..) {
                    child.wait()?;
                }
            }
        }
        for mut child in children {
            child.wait()?;
        }
        Ok(())
    }
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
            skip_tgid: std::process::id(),
            bpffs: None,
        })?;
        let cgroups = BenchCgroups::create(&root, n)?;
        let mut collector = Collector::new(recorder, Resolver::new(root.clone()), arch);
        let store = std::sync::RwLock::new(ProfileStore::new());
        let identify = |_id: u64, path: Option<&str>| {
            path.map_or_else(Identity::unresolved, Identity::from_cgroup_path)
        };
        // The first round resolves every new cgroup (a tree walk); it is reported apart.
        cgroups.touch_all()?;
        let started = Instant::now();
        let first = collector.collect(&store, SystemTime::now(), &identify)?;
        let first_round = started.elapsed();
        let mut times = Vec::new();
        let mut active = 0;
        for _ in 0..args.rounds {
            cgroups.touch_all()?;
            // Let the exits of the N processes settle: the round measures the collection, not
            // the kernel tearing down a thousand processes on the other core.
            std::thread::sleep(Duration::from_millis(300));
            let started = Instant::now();
            let round = collector.collect(&store, SystemTime::now(), &identify)?;
            times.push(started.elapsed());
            active = round.cgroups;
        }
        let steady = median(times);
        // The kernel side of a round alone: the slot table and every slot's counters.
        let mut reads = Vec::new();
        let mut buffer = Box::new([0; recorder_ebpf::SYSCALL_COLUMNS]);
        for _ in 0..args.rounds {
            let started = Instant::now();
            let slots = collector.recorder().slots()?;
            for (_, slot) in &slots {
                collector.recorder().read_slot_into(*slot, &mut buffer)?;
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
