//! Harness of the end-to-end tests: the agent binary as a process, an HTTP helper,
//! throw-away cgroups and real runc containers, each cleaned up on drop (also when a test
//! fails), and polling with deadlines instead of sleeps.

use std::{
    collections::BTreeSet,
    env, fs,
    io::Read as _,
    net::{SocketAddr, TcpListener},
    os::unix::{fs::MetadataExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Mutex, MutexGuard, OnceLock},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use recorder_agent::client::http::{Method, Server};

pub mod cluster;
pub mod fake_apiserver;
use serde_json::Value;

/// Whether privileged tests run. They fail loudly when BPF is unavailable unless
/// `RECORDER_SKIP_PRIVILEGED=1` is set explicitly, in which case this returns false.
pub fn privileged() -> bool {
    if env::var("RECORDER_SKIP_PRIVILEGED").is_ok_and(|v| v == "1") {
        eprintln!("RECORDER_SKIP_PRIVILEGED=1: skipping a privileged test");
        return false;
    }
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let caps = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    let has = |cap: u32| caps & (1 << cap) != 0;
    assert!(
        has(21) || (has(39) && has(38)),
        "privileged tests need root with CAP_BPF+CAP_PERFMON (or CAP_SYS_ADMIN); \
         set RECORDER_SKIP_PRIVILEGED=1 to skip them explicitly"
    );
    assert!(
        cgroup2_root().is_some(),
        "privileged tests need a cgroup v2 mount; set RECORDER_SKIP_PRIVILEGED=1 to skip them"
    );
    true
}

/// The agent binary: `RECORDER_AGENT_BIN` (set by `cargo xtask test`) or target/debug.
pub fn agent_bin() -> PathBuf {
    let path = env::var_os("RECORDER_AGENT_BIN").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/recorder-agent"),
        PathBuf::from,
    );
    assert!(
        path.exists(),
        "agent binary {} missing: run `cargo xtask test` (or `cargo build -p recorder-agent`)",
        path.display()
    );
    path
}

/// The mount points of the filesystems of type `fstypes`, from mountinfo.
fn mounts(fstypes: &[&str]) -> Vec<PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let fstype = right.split_whitespace().next()?;
            fstypes
                .contains(&fstype)
                .then(|| left.split_whitespace().nth(4).map(PathBuf::from))
                .flatten()
        })
        .collect()
}

/// The cgroup2 mount point, from mountinfo.
pub fn cgroup2_root() -> Option<PathBuf> {
    mounts(&["cgroup2"]).into_iter().next()
}

/// Every cgroup mount (v1 controllers and v2), for cleaning up runc's leftovers.
pub fn cgroup_mounts() -> Vec<PathBuf> {
    mounts(&["cgroup", "cgroup2"])
}

/// Polls `check` until it returns `Some` or the deadline passes.
pub fn poll<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// A free loopback port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding a loopback port")
}

/// A plain HTTP request without a body on loopback: (status, body). It goes through the
/// agent's own client (hyper-util), with the harness's 10 s timeout.
pub fn http(addr: SocketAddr, method: &str, path: &str) -> anyhow::Result<(u16, String)> {
    http_as(addr, method, path, None)
}

/// [`http`] with `Authorization: Bearer TOKEN` when given a token.
pub fn http_as(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    let server = Server::parse(&format!("http://{addr}"))?
        .with_timeout(Duration::from_secs(10))
        .with_token(token.map(str::to_owned));
    let (status, body) = server.request(Method::from_bytes(method.as_bytes())?, path)?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// GET returning JSON.
pub fn get_json(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, Value)> {
    get_json_as(addr, path, None)
}

/// [`get_json`] with a bearer token when given one.
pub fn get_json_as(
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
) -> anyhow::Result<(u16, Value)> {
    let (status, body) = http_as(addr, "GET", path, token)?;
    let value =
        serde_json::from_str(&body).with_context(|| format!("GET {path}: not JSON: {body:?}"))?;
    Ok((status, value))
}

/// A running agent, killed on drop.
#[derive(Debug)]
pub struct Agent {
    child: Child,
    /// Its HTTP address.
    pub addr: SocketAddr,
    /// Its state dir.
    pub state_dir: tempfile::TempDir,
    log: PathBuf,
    /// The bearer token its API reads send (an agent with `--http-auth kubernetes`).
    token: Option<String>,
}

impl Agent {
    /// Starts `recorder-agent run` on a free port with a fresh state dir and waits for /readyz.
    pub fn start(extra: &[&str]) -> anyhow::Result<Self> {
        Self::start_in(extra, None)
    }

    /// Like [`Agent::start`], with the agent process placed in `cgroup` before exec.
    pub fn start_in(extra: &[&str], cgroup: Option<&TestCgroup>) -> anyhow::Result<Self> {
        Self::start_with(extra, cgroup, tempfile::tempdir()?)
    }

    /// Starts an agent on an existing state dir (a restart).
    pub fn start_with(
        extra: &[&str],
        cgroup: Option<&TestCgroup>,
        state_dir: tempfile::TempDir,
    ) -> anyhow::Result<Self> {
        let mut args = vec!["--kubernetes", "off", "--interval", "200ms"];
        args.extend_from_slice(extra);
        Self::spawn(&args, cgroup, state_dir)?.wait_ready()
    }

    /// Starts `recorder-agent run ARGS` (plus a free `--listen` port and `--state-dir`)
    /// without the test defaults and without waiting for readiness.
    pub fn spawn(
        args: &[&str],
        cgroup: Option<&TestCgroup>,
        state_dir: tempfile::TempDir,
    ) -> anyhow::Result<Self> {
        Self::spawn_under(&[], args, cgroup, state_dir)
    }

    /// Like [`Agent::spawn`], run by `wrapper` (a command that ends by running the agent
    /// command line appended to it, e.g. `unshare --pid ...`). The wrapper must take the agent
    /// down with it when killed.
    pub fn spawn_under(
        wrapper: &[&str],
        args: &[&str],
        cgroup: Option<&TestCgroup>,
        state_dir: tempfile::TempDir,
    ) -> anyhow::Result<Self> {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
        let log = state_dir.path().join("agent.log");
        let mut command = match wrapper.split_first() {
            Some((program, wrapper_args)) => {
                let mut command = Command::new(program);
                command.args(wrapper_args).arg(agent_bin());
                command
            }
            None => Command::new(agent_bin()),
        };
        command.arg("run").args(args);
        // Pinned counters are shared by name: only tests that bring a bpffs of their own pin.
        if !args.contains(&"--bpffs") {
            command.arg("--no-pin");
        }
        command
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--state-dir")
            .arg(state_dir.path())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(fs::File::create(&log)?)
            .stderr(fs::File::create(&log)?);
        if let Some(cgroup) = cgroup {
            cgroup.move_on_exec(&mut command);
        }
        let child = command.spawn().context("starting the agent")?;
        Ok(Self {
            child,
            addr,
            state_dir,
            log,
            token: None,
        })
    }

    /// The same agent, its API read with `Authorization: Bearer TOKEN`.
    #[must_use]
    pub fn with_token(mut self, token: &str) -> Self {
        self.token = Some(token.to_owned());
        self
    }

    /// Waits until /readyz answers 200 (30 s), or fails with the agent's log.
    pub fn wait_ready(mut self) -> anyhow::Result<Self> {
        let addr = self.addr;
        let agent = &mut self;
        let ready = poll("agent /readyz", Duration::from_secs(30), || {
            if let Ok(Some(status)) = agent.child.try_wait() {
                return Some(Err(anyhow::anyhow!("agent exited early ({status})")));
            }
            match http(addr, "GET", "/readyz") {
                Ok((200, _)) => Some(Ok(())),
                _ => None,
            }
        });
        match ready {
            Ok(Ok(())) => Ok(self),
            Ok(Err(err)) | Err(err) => {
                let log = self.log();
                Err(err.context(format!("agent log:\n{log}")))
            }
        }
    }

    /// The agent's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// All profiles.
    pub fn profiles(&self) -> anyhow::Result<Vec<Value>> {
        let (status, value) = get_json_as(self.addr, "/api/v1/profiles", self.token.as_deref())?;
        anyhow::ensure!(status == 200, "GET /api/v1/profiles: {status}");
        Ok(value.as_array().cloned().unwrap_or_default())
    }

    /// Waits until a collection round started after this call has been folded: a fresh
    /// cgroup `name` runs one command and its profile appears, so every count made before the
    /// call is in the profiles.
    pub fn wait_for_a_round(&self, name: &str) {
        let witness = TestCgroup::new(name).expect("witness cgroup");
        witness.run("busybox", &["true"]).expect("witness runs");
        self.wait_profile("the witness profile", |p| {
            p["workload"] == witness.rel.as_str()
        })
        .expect("a collection round");
    }

    /// Polls until a profile matching `pred` exists and satisfies it.
    pub fn wait_profile(&self, what: &str, pred: impl Fn(&Value) -> bool) -> anyhow::Result<Value> {
        poll(what, Duration::from_secs(20), || {
            self.profiles().ok()?.into_iter().find(|p| pred(p))
        })
        .with_context(|| {
            format!(
                "profiles now: {}",
                self.profiles()
                    .map(|p| Value::Array(p).to_string())
                    .unwrap_or_default()
            )
        })
    }

    /// Resident memory in KiB (VmRSS).
    pub fn rss_kib(&self) -> u64 {
        fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// `GET /api/v1/status`.
    pub fn status(&self) -> anyhow::Result<Value> {
        let (code, value) = get_json_as(self.addr, "/api/v1/status", self.token.as_deref())?;
        anyhow::ensure!(code == 200, "status: {code}");
        Ok(value)
    }

    /// Sends a signal.
    pub fn signal(&self, signal: i32) {
        // SAFETY: plain syscall on our child's pid.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// Waits for the agent to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        poll("agent exit", timeout, || {
            self.child.try_wait().ok().flatten()
        })
    }

    /// Kills the agent and hands back its state dir, for a restart.
    pub fn into_state_dir(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let empty = tempfile::tempdir().expect("tempdir");
        std::mem::replace(&mut self.state_dir, empty)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A profile's syscall count (0 when absent).
pub fn count(profile: &Value, syscall: &str) -> u64 {
    profile["syscalls"][syscall].as_u64().unwrap_or(0)
}

/// The sum of a profile's counts of `syscalls` (e.g. `mkdir` and `mkdirat`, which libcs pick
/// between).
pub fn count_any(profile: &Value, syscalls: &[&str]) -> u64 {
    syscalls.iter().map(|syscall| count(profile, syscall)).sum()
}

/// The syscall names an OCI profile's `SCMP_ACT_ALLOW` rules list; panics on a profile
/// without rules, so an assertion that a name is absent cannot pass on an empty profile.
pub fn allowed(oci: &Value) -> BTreeSet<String> {
    oci["syscalls"]
        .as_array()
        .expect("rules")
        .iter()
        .filter(|rule| rule["action"] == "SCMP_ACT_ALLOW")
        .flat_map(|rule| rule["names"].as_array().expect("names").clone())
        .map(|name| name.as_str().expect("name").to_owned())
        .collect()
}

/// Runs the agent binary with `args` (a subcommand first) to completion, stdin closed.
pub fn agent_cli(args: &[&str]) -> std::process::Output {
    Command::new(agent_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running recorder-agent")
}

/// A kubelet container cgroup path with the cgroupfs driver: `/kubepods/QOS/pod<uid>/<id>`.
pub fn kubepods_path(qos: &str, pod_uid: &str, container_id: &str) -> String {
    format!("/kubepods/{qos}/pod{pod_uid}/{container_id}")
}

/// A cgroup v2 directory made for a test, removed on drop (its processes killed first).
#[derive(Debug)]
pub struct TestCgroup {
    /// Absolute path.
    pub dir: PathBuf,
    /// Path relative to the cgroup2 root.
    pub rel: String,
}

impl TestCgroup {
    /// Creates `<cgroup2>/recorder-tests/<name>-<pid>`.
    pub fn new(name: &str) -> anyhow::Result<Self> {
        let root = cgroup2_root().context("no cgroup2 mount")?;
        let rel = format!("recorder-tests/{name}-{}", std::process::id());
        let dir = root.join(&rel);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self { dir, rel })
    }

    /// Where the agent's API serves this cgroup's profile (kind `Cgroup`, path escaped).
    pub fn profile_path(&self) -> String {
        format!(
            "/api/v1/profiles/_/Cgroup/{}/_",
            self.rel.replace('/', "%2F")
        )
    }

    /// Makes `command` move itself into this cgroup before exec.
    pub fn move_on_exec(&self, command: &mut Command) {
        let procs = std::ffi::CString::new(
            self.dir
                .join("cgroup.procs")
                .into_os_string()
                .into_encoded_bytes(),
        )
        .expect("cgroup path without NUL");
        // SAFETY: only async-signal-safe calls (open, write, close) on data prepared before the
        // fork: the test process is multi-threaded, so nothing may allocate here.
        unsafe {
            command.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                let err = std::io::Error::last_os_error();
                libc::close(fd);
                if written == 1 { Ok(()) } else { Err(err) }
            });
        }
    }

    /// Runs a command in this cgroup to completion, returning its stdout.
    pub fn run(&self, program: &str, args: &[&str]) -> anyhow::Result<String> {
        let mut command = Command::new(program);
        command.args(args).stdin(Stdio::null());
        self.move_on_exec(&mut command);
        let output = command
            .output()
            .with_context(|| format!("running {program}"))?;
        anyhow::ensure!(
            output.status.success(),
            "{program} {args:?}: {}",
            output.status
        );
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = fs::write(self.dir.join("cgroup.kill"), "1");
        let _ = poll("test cgroup empty", Duration::from_secs(5), || {
            fs::read_to_string(self.dir.join("cgroup.procs"))
                .map_or(true, |p| p.trim().is_empty())
                .then_some(())
        });
        let _ = fs::remove_dir(&self.dir);
        if let Some(parent) = self.dir.parent() {
            let _ = fs::remove_dir(parent);
        }
    }
}

/// runc tests share parent cgroups (kubepods/...); one container lifecycle at a time per test
/// binary keeps one test's clean-up from racing another's create.
pub fn runc_lock() -> MutexGuard<'static, ()> {
    static LOCK: OnceLock<Mutex<()>> = OnceLock::new();
    LOCK.get_or_init(|| Mutex::new(()))
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Removes the busybox rootfs of test binaries that have exited (a static cannot be dropped,
/// so each run leaves its rootfs behind until the next run sweeps it).
fn sweep_stale_rootfs() {
    let Ok(entries) = fs::read_dir(env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("recorder-tests-rootfs-"))
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// A busybox root filesystem shared by the containers of a test binary.
pub fn busybox_rootfs() -> anyhow::Result<&'static Path> {
    static ROOTFS: OnceLock<PathBuf> = OnceLock::new();
    if let Some(path) = ROOTFS.get() {
        return Ok(path);
    }
    sweep_stale_rootfs();
    let dir = env::temp_dir().join(format!("recorder-tests-rootfs-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    for sub in ["bin", "tmp", "proc", "dev", "sys", "etc", "www"] {
        fs::create_dir_all(dir.join(sub))?;
    }
    let busybox = ["/usr/bin/busybox", "/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .context("busybox missing (cargo xtask setup installs busybox-static)")?;
    fs::copy(busybox, dir.join("bin/busybox"))?;
    let status = Command::new("chroot")
        .arg(&dir)
        .args(["/bin/busybox", "--install", "-s", "/bin"])
        .status()?;
    anyhow::ensure!(status.success(), "busybox --install failed");
    fs::write(dir.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n")?;
    fs::write(dir.join("etc/group"), "root:x:0:\n")?;
    Ok(ROOTFS.get_or_init(|| dir))
}

/// A runc container with a kubelet-style cgroup path, deleted (and its cgroups removed) on drop.
#[derive(Debug)]
pub struct Container {
    /// runc id (64 hex, like a CRI container id).
    pub id: String,
    /// `linux.cgroupsPath`.
    pub cgroups_path: String,
    bundle: tempfile::TempDir,
    runc_root: PathBuf,
}

/// A random 64-hex id.
pub fn random_hex64() -> String {
    let mut bytes = [0u8; 32];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("reading /dev/urandom");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A random pod UID.
pub fn random_uid() -> String {
    let hex = random_hex64();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

impl Container {
    /// `runc create` of `args` in a busybox rootfs under `cgroups_path`; host network (so
    /// loopback works without CAP_NET_ADMIN) and an optional seccomp profile.
    pub fn create(
        cgroups_path: &str,
        args: &[&str],
        seccomp: Option<&Value>,
    ) -> anyhow::Result<Self> {
        let container = Self::prepare(cgroups_path, args, seccomp, true)?;
        let status = container.runc_bundle(&["create"])?.status()?;
        anyhow::ensure!(
            status.success(),
            "runc create failed: {}",
            container.stderr()
        );
        Ok(container)
    }

    /// `runc run` in the foreground: the container is created, runs and is deleted (its
    /// cgroup removed) before this returns, as fast as runc can.
    pub fn run_and_delete(cgroups_path: &str, args: &[&str]) -> anyhow::Result<Self> {
        let container = Self::prepare(cgroups_path, args, None, true)?;
        let status = container.runc_bundle(&["run"])?.status()?;
        anyhow::ensure!(status.success(), "runc run failed: {}", container.stderr());
        Ok(container)
    }

    /// The bundle (config.json over the shared rootfs) and a fresh id; nothing runs yet.
    fn prepare(
        cgroups_path: &str,
        args: &[&str],
        seccomp: Option<&Value>,
        no_new_privileges: bool,
    ) -> anyhow::Result<Self> {
        let rootfs = busybox_rootfs()?;
        let bundle = tempfile::tempdir()?;
        let runc_root = env::temp_dir().join("recorder-tests-runc");
        fs::create_dir_all(&runc_root)?;
        let status = Command::new("runc")
            .args(["spec", "--bundle"])
            .arg(bundle.path())
            .stdin(Stdio::null())
            .status()
            .context("running runc (cargo xtask setup installs it)")?;
        anyhow::ensure!(status.success(), "runc spec failed");
        let config_path = bundle.path().join("config.json");
        let mut config: Value = serde_json::from_str(&fs::read_to_string(&config_path)?)?;
        config["root"] = serde_json::json!({ "path": rootfs, "readonly": false });
        config["process"]["terminal"] = Value::Bool(false);
        config["process"]["args"] = serde_json::json!(args);
        config["process"]["cwd"] = Value::String("/".into());
        config["process"]["noNewPrivileges"] = Value::Bool(no_new_privileges);
        config["linux"]["cgroupsPath"] = Value::String(cgroups_path.into());
        if let Some(namespaces) = config["linux"]["namespaces"].as_array_mut() {
            namespaces.retain(|ns| ns["type"] != "network");
        }
        // The shared rootfs is written by the workloads: give each its own /tmp.
        if let Some(mounts) = config["mounts"].as_array_mut() {
            mounts.push(serde_json::json!({
                "destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
                "options": ["nosuid", "nodev", "mode=1777"]
            }));
        }
        if let Some(seccomp) = seccomp {
            config["linux"]["seccomp"] = seccomp.clone();
        }
        fs::write(&config_path, serde_json::to_vec_pretty(&config)?)?;
        let id = random_hex64();
        Ok(Self {
            id,
            cgroups_path: cgroups_path.to_owned(),
            bundle,
            runc_root,
        })
    }

    fn runc(&self) -> Command {
        let mut command = Command::new("runc");
        command.arg("--root").arg(&self.runc_root);
        command
    }

    /// `runc VERB... --bundle B ID` with the workload's stdio on files in the bundle. Files,
    /// never pipes: runc hands its stdio to the container, which may outlive the reader.
    fn runc_bundle(&self, verb: &[&str]) -> anyhow::Result<Command> {
        let stdout = fs::File::create(self.bundle.path().join("stdout"))?;
        let stderr = fs::File::create(self.bundle.path().join("stderr"))?;
        let mut command = self.runc();
        command
            .args(verb)
            .arg("--bundle")
            .arg(self.bundle.path())
            .arg(&self.id)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        Ok(command)
    }

    /// `runc exec ID ARGS...` into the running container, stdio to files in the bundle
    /// (`exec-stdout`, `exec-stderr`); returns the command's exit code.
    pub fn exec(&self, args: &[&str]) -> anyhow::Result<i32> {
        let stdout = fs::File::create(self.bundle.path().join("exec-stdout"))?;
        let stderr = fs::File::create(self.bundle.path().join("exec-stderr"))?;
        let status = self
            .runc()
            .arg("exec")
            .arg(&self.id)
            .args(args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .status()?;
        Ok(status.code().unwrap_or(-1))
    }

    /// What the last [`Container::exec`] printed.
    pub fn exec_stdout(&self) -> String {
        fs::read_to_string(self.bundle.path().join("exec-stdout")).unwrap_or_default()
    }

    /// The container's cgroup v2 directory.
    pub fn cgroup_dir(&self) -> PathBuf {
        cgroup2_root()
            .unwrap_or_default()
            .join(self.cgroups_path.trim_start_matches('/'))
    }

    /// The container's cgroup id.
    pub fn cgroup_id(&self) -> u64 {
        fs::metadata(self.cgroup_dir())
            .map(|m| m.ino())
            .unwrap_or(0)
    }

    /// `runc start`.
    pub fn start(&self) -> anyhow::Result<()> {
        let status = self
            .runc()
            .arg("start")
            .arg(&self.id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        anyhow::ensure!(status.success(), "runc start failed");
        Ok(())
    }

    fn status(&self) -> Option<String> {
        let output = self
            .runc()
            .arg("state")
            .arg(&self.id)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        let state: Value = serde_json::from_slice(&output.stdout).ok()?;
        state["status"].as_str().map(str::to_owned)
    }

    /// Polls until the container stopped.
    pub fn wait_stopped(&self, timeout: Duration) -> anyhow::Result<()> {
        poll("container to stop", timeout, || {
            (self.status().as_deref() == Some("stopped")).then_some(())
        })
    }

    /// What the workload printed.
    pub fn stdout(&self) -> String {
        fs::read_to_string(self.bundle.path().join("stdout")).unwrap_or_default()
    }

    /// What the workload printed on stderr.
    pub fn stderr(&self) -> String {
        fs::read_to_string(self.bundle.path().join("stderr")).unwrap_or_default()
    }

    /// Creates, starts and waits for a container; returns it stopped.
    pub fn run_to_end(
        cgroups_path: &str,
        args: &[&str],
        seccomp: Option<&Value>,
    ) -> anyhow::Result<Self> {
        let container = Self::create(cgroups_path, args, seccomp)?;
        container.start()?;
        container.wait_stopped(Duration::from_secs(20))?;
        Ok(container)
    }
}

/// A finished foreground container run: the container (deleted on drop), its exit code.
#[derive(Debug)]
pub struct Finished {
    /// The container (stopped).
    pub container: Container,
    /// The workload's exit code (128+signal when killed), as `runc run` reports it.
    pub code: i32,
}

impl Container {
    /// `runc run --keep` in the foreground under `cgroups_path` with runc id `id`: the same
    /// bundle as [`Container::create`], stdio to files, and runc's exit status, which is the
    /// workload's. `--keep` leaves the stopped container and its cgroup until drop, so the
    /// agent can resolve the cgroup even when the workload is shorter than its interval.
    pub fn run_foreground(
        cgroups_path: &str,
        id: &str,
        args: &[&str],
        seccomp: Option<&Value>,
    ) -> anyhow::Result<Finished> {
        Self::run_foreground_nnp(cgroups_path, id, args, seccomp, true)
    }

    /// [`Container::run_foreground`] with `process.noNewPrivileges` as given (runc applies the
    /// seccomp filter just before the exec with it, before dropping privileges without it).
    pub fn run_foreground_nnp(
        cgroups_path: &str,
        id: &str,
        args: &[&str],
        seccomp: Option<&Value>,
        no_new_privileges: bool,
    ) -> anyhow::Result<Finished> {
        let mut container = Self::prepare(cgroups_path, args, seccomp, no_new_privileges)?;
        container.id = id.to_owned();
        let mut child = container.runc_bundle(&["run", "--keep"])?.spawn()?;
        let status = poll("runc run to finish", Duration::from_secs(30), || {
            child.try_wait().ok().flatten()
        });
        let status = match status {
            Ok(status) => status,
            Err(err) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(err);
            }
        };
        let code = status
            .code()
            .or_else(|| std::os::unix::process::ExitStatusExt::signal(&status).map(|s| 128 + s))
            .unwrap_or(-1);
        Ok(Finished { container, code })
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = self
            .runc()
            .args(["delete", "--force"])
            .arg(&self.id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        // runc leaves the parent directories in every hierarchy: remove them bottom-up.
        let parts: Vec<&str> = self.cgroups_path.trim_matches('/').split('/').collect();
        for mount in cgroup_mounts() {
            for depth in (1..=parts.len()).rev() {
                let _ = fs::remove_dir(mount.join(parts[..depth].join("/")));
            }
        }
    }
}

/// A private bpf filesystem mounted on a temp dir, unmounted on drop (which removes its pins).
#[derive(Debug)]
pub struct BpfFs {
    dir: tempfile::TempDir,
}

impl BpfFs {
    /// Mounts a fresh bpffs.
    pub fn mount() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let status = Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(dir.path())
            .stdin(Stdio::null())
            .status()?;
        anyhow::ensure!(status.success(), "mount -t bpf failed");
        Ok(Self { dir })
    }

    /// A temp dir with no bpffs yet, for an agent to mount one on; unmounted on drop too.
    pub fn not_mounted() -> anyhow::Result<Self> {
        Ok(Self {
            dir: tempfile::tempdir()?,
        })
    }

    /// Whether a bpffs is mounted there (the mount point's parent is on another filesystem).
    pub fn is_mounted(&self) -> bool {
        mounts(&["bpf"]).iter().any(|m| m == self.dir.path())
    }

    /// Its mount point.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for BpfFs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .status();
    }
}
