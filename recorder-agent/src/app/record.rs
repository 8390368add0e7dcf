//! `recorder-agent record -- CMD`: runs one command in a fresh cgroup v2 child, counts its
//! syscalls (and its children's) from the very first one, and writes the learned profile.

use std::{
    ffi::CString,
    fs, io,
    os::unix::process::{CommandExt as _, ExitStatusExt as _},
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    sync::atomic::{AtomicI32, Ordering},
    thread,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, bail};
use recorder_ebpf::KIND_COMPAT;

use crate::{
    attribution::cgroup,
    config::RecordArgs,
    export::seccomp,
    kernel::{LoadOptions, Recorder, SkipTask},
    profile::state::write_atomic,
    profile::syscalls::{Arch, COMPAT_BASE},
    profile::{Identity, Profile, WorkloadKind},
    report::Report,
};

/// Parent of the per-run cgroups, directly under the cgroup2 root.
const PARENT: &str = "syscall-recorder";
/// How long leftover processes may take to die before the cgroup is left behind.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The pid SIGTERM/SIGHUP are forwarded to while the command runs.
static CHILD_PID: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward_signal(signal: libc::c_int) {
    let pid = CHILD_PID.load(Ordering::Relaxed);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(pid, signal) };
    }
}

/// The run's cgroup; removed on drop, also when recording fails half-way.
struct RunCgroup {
    dir: PathBuf,
    parent: PathBuf,
}

impl RunCgroup {
    fn create(root: &Path) -> anyhow::Result<Self> {
        let parent = root.join(PARENT);
        match fs::create_dir(&parent) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
            Err(err) => {
                return Err(err).with_context(|| format!("creating cgroup {}", parent.display()));
            }
        }
        let dir = parent.join(format!("record-{}", std::process::id()));
        fs::create_dir(&dir).with_context(|| format!("creating cgroup {}", dir.display()))?;
        Ok(Self { dir, parent })
    }

    fn procs(&self) -> Vec<i32> {
        fs::read_to_string(self.dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|line| line.trim().parse().ok())
            .collect()
    }

    /// Kills what the command left running (daemons, background jobs) and waits until the
    /// cgroup is empty. Returns how many processes were killed.
    fn drain(&self) -> usize {
        let left = self.procs();
        if left.is_empty() {
            return 0;
        }
        // cgroup.kill (5.14+) kills atomically, also processes forking meanwhile.
        if fs::write(self.dir.join("cgroup.kill"), "1").is_err() {
            for pid in &left {
                // SAFETY: plain syscall.
                unsafe { libc::kill(*pid, libc::SIGKILL) };
            }
        }
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while !self.procs().is_empty() && Instant::now() < deadline {
            for pid in self.procs() {
                // SAFETY: plain syscall; reaps nothing that is not ours.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            thread::sleep(Duration::from_millis(5));
        }
        left.len()
    }
}

impl Drop for RunCgroup {
    fn drop(&mut self) {
        self.drain();
        if let Err(err) = fs::remove_dir(&self.dir) {
            tracing::warn!(path = %self.dir.display(), error = %Report(&err), "could not remove the run's cgroup");
        }
        // Shared by concurrent runs: only removed when the last one is done.
        let _ = fs::remove_dir(&self.parent);
    }
}

/// Runs `record`; the exit code is the command's.
pub fn run(args: RecordArgs) -> anyhow::Result<ExitCode> {
    let arch =
        Arch::host().context("unsupported architecture (x86_64 and aarch64 are supported)")?;
    if let Some(parent) = args.output.parent().filter(|p| !p.as_os_str().is_empty())
        && !parent.is_dir()
    {
        bail!("output directory {} does not exist", parent.display());
    }
    let root = cgroup::find_cgroup2_mount()?;
    cgroup::check_cgroup2_dir(&root)?;
    crate::kernel::check_privileges()?;

    let recorder = Recorder::load_and_attach(LoadOptions {
        capacity: 256,
        skip: SkipTask::this_process()?,
        bpffs: None,
        cut_runtime: true,
    })?;
    let run_cgroup = RunCgroup::create(&root)?;
    let cgroup_id = cgroup::cgroup_id(&run_cgroup.dir).context("reading the cgroup id")?;
    // Not registered ahead: the kernel gives the cgroup its slots at its first call, and a
    // slot registered before the command would make the command an exec session into it.

    let procs_path = CString::new(
        run_cgroup
            .dir
            .join("cgroup.procs")
            .into_os_string()
            .into_encoded_bytes(),
    )
    .context("cgroup path contains NUL")?;
    let mut command = Command::new(&args.command[0]);
    command.args(&args.command[1..]);
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe calls
    // (open, write, close, signal) on data prepared before the fork.
    unsafe {
        command.pre_exec(move || {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            libc::signal(libc::SIGQUIT, libc::SIG_DFL);
            let fd = libc::open(procs_path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // "0" moves the writing process itself.
            let written = libc::write(fd, b"0".as_ptr().cast(), 1);
            let err = io::Error::last_os_error();
            libc::close(fd);
            if written != 1 {
                return Err(err);
            }
            Ok(())
        });
    }

    // Like `time`: the terminal's SIGINT/SIGQUIT go to the command; SIGTERM/SIGHUP are forwarded.
    // SAFETY: installing handlers that only make async-signal-safe calls.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGQUIT, libc::SIG_IGN);
        libc::signal(
            libc::SIGTERM,
            forward_signal as *const () as libc::sighandler_t,
        );
        libc::signal(
            libc::SIGHUP,
            forward_signal as *const () as libc::sighandler_t,
        );
    }
    let started = Instant::now();
    let start_time = SystemTime::now();
    let display = args.command.join(" ");
    let status = match command.spawn() {
        Ok(mut child) => {
            CHILD_PID.store(child.id() as i32, Ordering::Relaxed);
            let status = child.wait().context("waiting for the command")?;
            CHILD_PID.store(0, Ordering::Relaxed);
            Some(status)
        }
        Err(err) => {
            eprintln!("recorder-agent: cannot run {:?}: {err}", args.command[0]);
            None
        }
    };
    let elapsed = started.elapsed();
    let killed = run_cgroup.drain();

    let mut profile = Profile::new(
        Identity::with_kind("", WorkloadKind::Command, &display, ""),
        start_time,
    );
    // Its own calls and its compat calls (numbered from the compat table); the set-up between
    // joining the cgroup and the exec is the recorder's, in no slot of the cgroup.
    for (key, slot) in recorder.slots()? {
        if key.cgroup != cgroup_id {
            continue;
        }
        let totals = recorder.read_slot(slot)?;
        let base = if key.kind & KIND_COMPAT != 0 {
            COMPAT_BASE
        } else {
            0
        };
        let sparse: Vec<(u16, u64)> = totals
            .iter()
            .enumerate()
            .filter(|(_, count)| **count != 0)
            .map(|(nr, count)| ((base + nr) as u16, *count))
            .collect();
        profile.add_sparse(arch, &sparse, SystemTime::now());
    }
    drop(run_cgroup);
    drop(recorder);

    let bytes = seccomp::render(args.format, &profile, arch);
    write_atomic(&args.output, &bytes)
        .with_context(|| format!("writing {}", args.output.display()))?;

    let code = match status {
        None => 127,
        Some(status) => status
            .code()
            .or_else(|| status.signal().map(|signal| 128 + signal))
            .unwrap_or(1),
    };
    eprintln!(
        "recorder-agent: recorded {} syscalls ({} calls, {} unknown) of `{display}` in {:.3}s{}; exit {code}; wrote {} ({})",
        profile.syscalls.len(),
        profile.total_calls(),
        profile.unknown_syscalls,
        elapsed.as_secs_f64(),
        if killed > 0 {
            format!(", killed {killed} leftover process(es)")
        } else {
            String::new()
        },
        args.output.display(),
        args.format.describe()
    );
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}
