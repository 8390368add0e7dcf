//! The command line: every subcommand, flag and environment variable the agent accepts.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::export::Format;

/// The Kubernetes API calls the agent makes in Kubernetes mode: (API group, resource, verbs).
/// It watches the pods of its node, resolves controller owners with single GETs, publishes
/// its contribution to SyscallProfile objects (read, create, status update), watches them all
/// to deliver the merged profiles (list, watch), and reviews the bearer tokens and access of
/// HTTP callers (`--http-auth`). The deploy manifests' ClusterRole is tested against this list.
pub const KUBERNETES_API_ACCESS: &[(&str, &str, &[&str])] = &[
    ("", "pods", &["list", "watch"]),
    ("apps", "replicasets", &["get"]),
    ("batch", "jobs", &["get"]),
    (
        "syscall-recorder.io",
        "syscallprofiles",
        &["get", "list", "watch", "create"],
    ),
    ("syscall-recorder.io", "syscallprofiles/status", &["update"]),
    ("authentication.k8s.io", "tokenreviews", &["create"]),
    ("authorization.k8s.io", "subjectaccessreviews", &["create"]),
];

/// Default HTTP listen address: loopback only unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9477";

/// Records which syscalls every container makes, per workload, and turns them into seccomp
/// profiles.
#[derive(Debug, Parser)]
#[command(name = "recorder-agent", version, about, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the node agent: count syscalls of every cgroup, serve profiles over HTTP.
    Run(RunArgs),
    /// Run a command in a fresh cgroup and write the seccomp profile of what it did.
    Record(RecordArgs),
    /// List the profiles of a running agent.
    Profiles(ProfilesArgs),
    /// Export one profile (from an agent, or cluster-wide from Prometheus).
    Export(ExportArgs),
    /// Compare two profiles: exit 0 when NEW allows nothing OLD does not, 1 when it needs more.
    Diff(DiffArgs),
    /// Freeze a workload container's cluster-wide profile: every node's file stays as it is;
    /// syscalls outside it are drift.
    Freeze(ModeArgs),
    /// Unfreeze a workload container's profile: the files follow learning again.
    Unfreeze(ModeArgs),
    /// Merge profiles into one (union of syscalls and architectures).
    Merge(MergeArgs),
    /// Remove the pinned counters and programs an agent left in the bpf filesystem
    /// (uninstall); the programs detach once no agent runs.
    Unpin(UnpinArgs),
    /// Mount a bpf filesystem at PATH unless one is there (the DaemonSet's init container).
    #[command(hide = true)]
    MountBpffs(MountBpffsArgs),
    /// Benchmark helper for `cargo xtask bench`: attach a program, print one line, hold it
    /// until stdin closes, then print the kernel statistics.
    #[command(hide = true)]
    BenchProbe(BenchProbeArgs),
    /// Benchmark helper for `cargo xtask bench`: time collections over N active cgroups.
    #[command(hide = true)]
    BenchCollect(BenchCollectArgs),
    /// Benchmark helper for `cargo xtask bench`: simulated nodes publish SyscallProfiles to a
    /// real API server through a learning phase and a steady state; prints one JSON line.
    #[command(hide = true)]
    BenchPublish(BenchPublishArgs),
}

/// What `bench-probe` attaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BenchProgram {
    /// An empty sys_enter program (the floor).
    Empty,
    /// The recorder, as the agent loads it (not pinned).
    Recorder,
}

/// `recorder-agent bench-probe`.
#[derive(Debug, Args)]
pub struct BenchProbeArgs {
    /// Which program.
    #[arg(long, value_enum)]
    pub program: BenchProgram,
    /// Slots of the recorder.
    #[arg(long, default_value_t = 1024)]
    pub max_cgroups: u32,
}

/// `recorder-agent bench-collect`.
#[derive(Debug, Args)]
pub struct BenchCollectArgs {
    /// Numbers of active cgroups to measure, e.g. 100,1000.
    #[arg(long, value_delimiter = ',', default_value = "100,1000")]
    pub cgroups: Vec<u32>,
    /// Collections timed per size (the median is reported).
    #[arg(long, default_value_t = 15)]
    pub rounds: u32,
}

/// `recorder-agent bench-publish`.
#[derive(Debug, Args)]
pub struct BenchPublishArgs {
    /// Kubeconfig of the API server to measure (default: in-cluster, else KUBECONFIG).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Workload containers (one SyscallProfile each), seen on every simulated node.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub workloads: u32,
    /// Simulated nodes (one publisher each).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1_000))]
    pub nodes: u32,
    /// Namespace the objects go to: created, and deleted at the end.
    #[arg(long, default_value = "syscall-recorder-bench")]
    pub namespace: String,
    /// Learning phase: new syscalls keep appearing (it lasts at least until every node's
    /// first publish is complete).
    #[arg(long, default_value = "60s", value_parser = parse_interval)]
    pub learning: Duration,
    /// Longest the learning phase waits for the initial publish to complete (the bench then
    /// moves on and says how far it got).
    #[arg(long, default_value = "180s", value_parser = parse_interval)]
    pub max_initial: Duration,
    /// Steady phase: nothing changes but call counts.
    #[arg(long, default_value = "60s", value_parser = parse_interval)]
    pub steady: Duration,
    /// Time between one node's publishing passes (jittered, as the agents' own).
    #[arg(long, default_value = "10s", value_parser = parse_interval)]
    pub interval: Duration,
    /// Quiet time after which a profile is stable: above the run's length by default, so the
    /// steady phase measures a cluster where nothing changes, not the one-time stability flip.
    #[arg(long, default_value = "1h", value_parser = parse_interval)]
    pub stable_after: Duration,
}

/// `recorder-agent unpin`.
#[derive(Debug, Args)]
pub struct UnpinArgs {
    /// The bpf filesystem the agent pinned in.
    #[arg(long, env = "RECORDER_BPFFS", default_value = DEFAULT_BPFFS)]
    pub bpffs: PathBuf,
}

/// `recorder-agent mount-bpffs`.
#[derive(Debug, Args)]
pub struct MountBpffsArgs {
    /// Where to mount it (created if missing).
    #[arg(default_value = DEFAULT_BPFFS)]
    pub path: PathBuf,
}

/// Default bpf filesystem mount.
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf";

/// Default agent URL of the client subcommands.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:9477";

/// Table or JSON output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ListOutput {
    /// Aligned columns.
    Table,
    /// The API's JSON.
    Json,
}

/// Where the client commands read profiles: the cluster's SyscallProfiles through the API
/// when a kubeconfig is found (kubectl's rules: `--kubeconfig`, `KUBECONFIG`, `~/.kube/config`,
/// in-cluster), one agent's HTTP API when `--server` is given or no kubeconfig exists.
#[derive(Clone, Debug, Default, Args)]
pub struct ClusterArgs {
    /// Kubeconfig file: read the cluster's SyscallProfiles through the API.
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context (default: the current context).
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
}

/// The bearer token the client commands send to an agent that requires one (`--http-auth`).
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// Kubernetes bearer token for the agent (e.g. `kubectl create token SERVICEACCOUNT`).
    #[arg(
        long,
        env = "RECORDER_TOKEN",
        hide_env_values = true,
        conflicts_with = "token_file"
    )]
    pub token: Option<String>,
    /// File holding the bearer token (e.g. a pod's
    /// /var/run/secrets/kubernetes.io/serviceaccount/token).
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
}

/// `recorder-agent profiles`.
#[derive(Debug, Args)]
pub struct ProfilesArgs {
    /// One agent's URL (default: the cluster when a kubeconfig is found, else http://127.0.0.1:9477).
    #[arg(long, env = "RECORDER_SERVER")]
    pub server: Option<String>,
    /// The cluster.
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Only this namespace (cluster mode; default: all namespaces).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// The agent's credentials.
    #[command(flatten)]
    pub auth: TokenArgs,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = ListOutput::Table)]
    pub output: ListOutput,
}

/// `recorder-agent freeze` and `unfreeze`.
#[derive(Debug, Args)]
pub struct ModeArgs {
    /// NAMESPACE/KIND/WORKLOAD/CONTAINER of a SyscallProfile.
    #[arg(value_name = "SELECTOR")]
    pub selector: String,
    /// The cluster.
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// How long to wait for an agent to take the change in (0s: do not wait).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub wait: Duration,
}

/// `recorder-agent export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// NAMESPACE/KIND/WORKLOAD/CONTAINER (`_` for an empty part).
    #[arg(value_name = "SELECTOR")]
    pub selector: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Oci)]
    pub format: Format,
    /// Write here instead of stdout.
    #[arg(short = 'o', long = "output")]
    pub output: Option<PathBuf>,
    /// One agent's URL (default: the cluster when a kubeconfig is found, else http://127.0.0.1:9477).
    #[arg(long, env = "RECORDER_SERVER", conflicts_with = "prometheus")]
    pub server: Option<String>,
    /// The cluster.
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// The agent's credentials (not sent to --prometheus).
    #[command(flatten)]
    pub auth: TokenArgs,
    /// Build the profile cluster-wide from this Prometheus server instead of one agent.
    #[arg(long)]
    pub prometheus: Option<String>,
    /// With --prometheus: how far back to look (e.g. 30d, 12h).
    #[arg(long, default_value = "30d", requires = "prometheus")]
    pub range: String,
}

/// `recorder-agent diff`.
#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The profile in force: a file (OCI seccomp or recorder JSON), or a
    /// NAMESPACE/KIND/WORKLOAD/CONTAINER selector for the cluster's current profile.
    pub old: PathBuf,
    /// The candidate profile (a file or a selector).
    pub new: PathBuf,
    /// The cluster, for selectors.
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// `recorder-agent merge`.
#[derive(Debug, Args)]
pub struct MergeArgs {
    /// Profiles to merge (OCI seccomp).
    #[arg(required = true, num_args = 1..)]
    pub files: Vec<PathBuf>,
    /// Write here instead of stdout.
    #[arg(short = 'o', long = "output")]
    pub output: Option<PathBuf>,
}

/// Whether to attribute cgroups to Kubernetes workloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum KubernetesMode {
    /// On when running in a cluster (KUBERNETES_SERVICE_HOST) or KUBECONFIG is set.
    Auto,
    /// Always (fails without cluster access).
    On,
    /// Never: standalone identities from cgroup paths.
    Off,
}

/// Who may use the HTTP API and `/metrics` (`/healthz` and `/readyz` are always open).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum HttpAuth {
    /// `kubernetes` in Kubernetes mode, `none` otherwise (a standalone agent listens on
    /// loopback by default).
    Auto,
    /// A bearer token the API server authenticates (TokenReview) whose user may read what is
    /// asked (SubjectAccessReview): `get` on the URL `/metrics`, `get` on the namespace's
    /// `syscallprofiles.syscall-recorder.io` for a profile, `list` in all namespaces for the
    /// list and the status. Needs Kubernetes mode.
    Kubernetes,
    /// Anyone who reaches the listen address.
    None,
}

/// `recorder-agent run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// HTTP listen address (API, health).
    #[arg(long, env = "RECORDER_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Who may use the HTTP API and /metrics.
    #[arg(long, env = "RECORDER_HTTP_AUTH", value_enum, default_value_t = HttpAuth::Auto)]
    pub http_auth: HttpAuth,
    /// How often to collect the kernel counters (e.g. 1s, 500ms).
    #[arg(long, env = "RECORDER_INTERVAL", default_value = "1s", value_parser = parse_interval)]
    pub interval: Duration,
    /// Where learned profiles persist across restarts.
    #[arg(
        long,
        env = "RECORDER_STATE_DIR",
        default_value = "/var/lib/syscall-recorder"
    )]
    pub state_dir: PathBuf,
    /// The cgroup v2 mount to resolve cgroup ids against, or a directory whose `unified` child
    /// is (a hybrid host's /sys/fs/cgroup). Default: found in /proc/self/mountinfo.
    #[arg(long, env = "RECORDER_CGROUP_ROOT")]
    pub cgroup_root: Option<PathBuf>,
    /// Attribute cgroups to Kubernetes workloads.
    #[arg(long, env = "RECORDER_KUBERNETES", value_enum, default_value_t = KubernetesMode::Auto)]
    pub kubernetes: KubernetesMode,
    /// How many cgroups the kernel can count at once (kernel memory: 4 KiB per cgroup per CPU).
    #[arg(long, env = "RECORDER_MAX_CGROUPS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub max_cgroups: u32,
    /// A profile is stable once no new syscall appeared for this long.
    #[arg(long, env = "RECORDER_STABLE_AFTER", default_value = "10m", value_parser = parse_interval)]
    pub stable_after: Duration,
    /// bpf filesystem where counters and programs are pinned, so counting goes on while the
    /// agent restarts or upgrades (the agent mounts one there if it may; otherwise it runs
    /// unpinned and says so in its status, metrics and /readyz).
    #[arg(long, env = "RECORDER_BPFFS", default_value = DEFAULT_BPFFS)]
    pub bpffs: PathBuf,
    /// Do not pin: counters and programs go away with the agent.
    #[arg(long, env = "RECORDER_NO_PIN")]
    pub no_pin: bool,
    /// Limit of per-workload metric series on /metrics; workloads beyond it are folded into
    /// `workload="(folded)"` (counted in `syscall_recorder_metrics_folded_workloads`).
    #[arg(long, env = "RECORDER_MAX_SERIES", default_value_t = crate::serve::metrics::DEFAULT_MAX_SERIES, value_parser = clap::value_parser!(u32).range(100..))]
    pub max_series: u32,
    /// Kubelet seccomp root: profiles are written below `DIR/syscall-recorder/`.
    #[arg(long, env = "RECORDER_SECCOMP_DIR")]
    pub seccomp_dir: Option<PathBuf>,
    /// This node's name (Kubernetes mode: only this node's pods are watched).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// Kubeconfig file (default: in-cluster service account, else KUBECONFIG / ~/.kube/config).
    #[arg(long, env = "RECORDER_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// In Kubernetes mode, publish this node's contribution to each workload container's
    /// SyscallProfile object (`--publish=false` keeps profiles on the node).
    #[arg(long, env = "RECORDER_PUBLISH", default_value_t = true, action = clap::ArgAction::Set)]
    pub publish: bool,
    /// Also publish every workload container's delivered profile as a security-profiles-operator
    /// SeccompProfile (in the API version the cluster's SPO serves), for SPO's ProfileBinding.
    /// Needs the SPO RBAC of deploy/overlays/spo.
    #[arg(long, env = "RECORDER_PUBLISH_SPO")]
    pub publish_spo: bool,
    /// Time between publishing passes (each writes only what changed).
    #[arg(long, env = "RECORDER_PUBLISH_INTERVAL", default_value = "10s", value_parser = parse_interval)]
    pub publish_interval: Duration,
    /// The container runtime's own set-up (mounts, pivot_root, hostname, keyring, filters)
    /// before it runs the container's program: `exclude` keeps it out of profiles (verified
    /// for runc), `include` counts it as the container's (for runtimes whose boundary the
    /// agent does not know).
    #[arg(long, env = "RECORDER_RUNTIME_PHASE", value_enum, default_value_t = RuntimePhase::Exclude)]
    pub runtime_phase: RuntimePhase,
}

/// Whether a container runtime's set-up is part of a container's profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RuntimePhase {
    /// Counted apart (`syscall_recorder_runtime_syscalls_total`), in no profile.
    Exclude,
    /// Counted as the container's own.
    Include,
}

/// `recorder-agent record`.
#[derive(Debug, Args)]
pub struct RecordArgs {
    /// Where to write the profile.
    #[arg(short = 'o', long = "output", default_value = "seccomp-profile.json")]
    pub output: PathBuf,
    /// Profile format.
    #[arg(long, value_enum, default_value_t = Format::Oci)]
    pub format: Format,
    /// The command and its arguments (after `--`).
    #[arg(required = true, num_args = 1.., trailing_var_arg = true, allow_hyphen_values = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// Parses a positive duration such as `1s`, `250ms` or `2m`.
pub fn parse_interval(text: &str) -> Result<Duration, String> {
    let duration =
        humantime::parse_duration(text).map_err(|err| format!("{err} (e.g. 1s, 500ms)"))?;
    if duration < Duration::from_millis(10) {
        return Err("must be at least 10ms".to_owned());
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_defaults_and_errors() {
        let cli = Cli::try_parse_from(["recorder-agent", "run"]).expect("defaults");
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        assert_eq!(args.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(args.interval, Duration::from_secs(1));
        assert_eq!(args.http_auth, HttpAuth::Auto);
        for bad in [
            vec!["recorder-agent", "run", "--http-auth", "basic"],
            vec![
                "recorder-agent",
                "profiles",
                "--token",
                "t",
                "--token-file",
                "f",
            ],
            vec!["recorder-agent", "run", "--interval", "0s"],
            vec!["recorder-agent", "run", "--interval", "soon"],
            vec!["recorder-agent", "run", "--listen", "nowhere"],
            vec!["recorder-agent", "run", "--kubernetes", "maybe"],
            vec!["recorder-agent", "run", "--max-cgroups", "0"],
            vec!["recorder-agent", "record"],
            vec!["recorder-agent", "record", "--format", "xml", "--", "true"],
        ] {
            let err = Cli::try_parse_from(&bad).expect_err("must fail");
            assert_eq!(err.exit_code(), 2, "{bad:?}");
        }
    }

    #[test]
    fn record_takes_the_command_verbatim() {
        let cli = Cli::try_parse_from([
            "recorder-agent",
            "record",
            "-o",
            "p.json",
            "--",
            "sh",
            "-c",
            "exit 7",
        ])
        .expect("parse");
        let Command::Record(args) = cli.command else {
            panic!("not record")
        };
        assert_eq!(args.command, ["sh", "-c", "exit 7"]);
        assert_eq!(args.output, PathBuf::from("p.json"));
        assert_eq!(args.format, Format::Oci);
    }

    #[test]
    fn client_tokens() {
        let cli = Cli::try_parse_from(["recorder-agent", "profiles", "--token-file", "/t"])
            .expect("parse");
        let Command::Profiles(args) = cli.command else {
            panic!("not profiles")
        };
        assert_eq!(args.auth.token_file, Some(PathBuf::from("/t")));
        let cli = Cli::try_parse_from(["recorder-agent", "export", "a/b/c/d", "--token", "t"])
            .expect("parse");
        let Command::Export(args) = cli.command else {
            panic!("not export")
        };
        assert_eq!(args.auth.token.as_deref(), Some("t"));
    }
}
