//! Detached daemons: started with their output in `logs/<name>.log` and their pid in
//! `run/<name>.pid`, found again by `status` and `down` through those files.

use std::{
    fs,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::Layout;

/// A daemon of the cluster.
#[derive(Debug)]
pub struct Daemon {
    pub name: &'static str,
    pub binary: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

fn pid_file(layout: &Layout, name: &str) -> PathBuf {
    layout.run.join(format!("{name}.pid"))
}

/// The pid of `name` when its pid file names a live process running `binary`.
pub fn running(layout: &Layout, name: &str, binary: &Path) -> Option<u32> {
    let pid: u32 = fs::read_to_string(pid_file(layout, name))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    (exe_of(pid).as_deref() == Some(binary)).then_some(pid)
}

/// The executable of a live process (a zombie has none).
pub fn exe_of(pid: u32) -> Option<PathBuf> {
    let exe = fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    // A replaced binary reads as "<path> (deleted)".
    let text = exe.to_string_lossy();
    Some(PathBuf::from(
        text.strip_suffix(" (deleted)").unwrap_or(&text),
    ))
}

/// Every live process whose executable lies under `dir`.
pub fn processes_under(dir: &Path) -> Vec<(u32, PathBuf)> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found: Vec<(u32, PathBuf)> = entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, exe_of(pid)?)))
        .filter(|(_, exe)| exe.starts_with(dir))
        .collect();
    found.sort();
    found
}

/// Starts `daemon` unless it runs already; returns whether it was started now.
pub fn start(layout: &Layout, daemon: &Daemon) -> anyhow::Result<bool> {
    if let Some(pid) = running(layout, daemon.name, &daemon.binary) {
        eprintln!("cluster: {} runs (pid {pid})", daemon.name);
        return Ok(false);
    }
    let log_path = layout.logs.join(format!("{}.log", daemon.name));
    let mut log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    writeln!(
        log,
        "---- xtask cluster: starting {} {}",
        daemon.binary.display(),
        daemon.args.join(" ")
    )?;
    let mut command = Command::new(&daemon.binary);
    command
        .args(&daemon.args)
        .envs(daemon.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group: a Ctrl-C on xtask does not reach the daemons.
        .process_group(0);
    let child = command
        .spawn()
        .with_context(|| format!("starting {}", daemon.binary.display()))?;
    let pid = child.id();
    fs::write(pid_file(layout, daemon.name), format!("{pid}\n"))?;
    eprintln!(
        "cluster: started {} (pid {pid}, log {})",
        daemon.name,
        log_path.display()
    );
    // The child is not waited for: it outlives xtask (and is re-parented).
    drop(child);
    Ok(true)
}

/// Stops `name` (SIGTERM, then SIGKILL after `grace`) and removes its pid file.
pub fn stop(layout: &Layout, name: &str, binary: &Path, grace: Duration) -> anyhow::Result<()> {
    let pid_path = pid_file(layout, name);
    if let Some(pid) = running(layout, name, binary) {
        eprintln!("cluster: stopping {name} (pid {pid})");
        kill_pid(pid, grace);
    }
    let _ = fs::remove_file(pid_path);
    Ok(())
}

/// SIGTERM, wait up to `grace` for the process to go, then SIGKILL.
pub fn kill_pid(pid: u32, grace: Duration) {
    let exe = exe_of(pid);
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .stderr(Stdio::null())
        .status();
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if exe_of(pid).is_none() || exe_of(pid) != exe {
            return;
        }
        thread::sleep(Duration::from_millis(50));
    }
    let _ = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .stderr(Stdio::null())
        .status();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && exe_of(pid).is_some() {
        thread::sleep(Duration::from_millis(50));
    }
}

/// Polls `check` every 100 ms until it holds; fails after `timeout` naming `what` and the log.
pub fn wait_for(
    what: &str,
    log: &Path,
    timeout: Duration,
    mut check: impl FnMut() -> bool,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        if check() {
            return Ok(started.elapsed());
        }
        if started.elapsed() > timeout {
            bail!(
                "{what} not ready after {timeout:?}; see {} (last lines: {})",
                log.display(),
                tail(log, 3)
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// The last `lines` lines of a file, on one line.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join(" | ")
}

/// A plain-HTTP GET on a loopback port: the status code, or None when nothing answers.
pub fn http_status(addr: &str, path: &str) -> Option<u16> {
    let addr: SocketAddr = addr.parse().ok()?;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = [0_u8; 64];
    let n = stream.read(&mut head).ok()?;
    let line = String::from_utf8_lossy(&head[..n]).into_owned();
    line.split_whitespace().nth(1)?.parse().ok()
}
