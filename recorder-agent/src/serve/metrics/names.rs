//! Metric and label names, defined once: the exposition writes them and the Prometheus
//! client (`export --prometheus`) queries them, so renaming one cannot break the other.

use crate::profile::Identity;

/// Prefix of every metric name.
pub const PREFIX: &str = "syscall_recorder";

/// `syscall_recorder_<suffix>` as a constant.
macro_rules! metric {
    ($suffix:literal) => {
        concat!("syscall_recorder_", $suffix)
    };
}

/// Calls per syscall name, per workload.
pub const SYSCALLS_TOTAL: &str = metric!("syscalls_total");
/// Drift: calls outside the baseline, per syscall name, per workload.
pub const UNEXPECTED_SYSCALLS_TOTAL: &str = metric!("unexpected_syscalls_total");
/// Calls whose number has no name, per workload.
pub const UNKNOWN_SYSCALLS_TOTAL: &str = metric!("unknown_syscalls_total");
/// Distinct syscalls in a workload's profile.
pub const PROFILE_SYSCALLS: &str = metric!("profile_syscalls");
/// Whether a workload's profile is stable.
pub const PROFILE_STABLE: &str = metric!("profile_stable");
/// When a workload's first syscall was counted.
pub const PROFILE_FIRST_SEEN: &str = metric!("profile_first_seen_timestamp_seconds");
/// When a workload's last syscall was counted.
pub const PROFILE_LAST_SEEN: &str = metric!("profile_last_seen_timestamp_seconds");
/// When a syscall new to a workload's profile last appeared.
pub const PROFILE_LAST_NEW_SYSCALL: &str = metric!("profile_last_new_syscall_timestamp_seconds");
/// Profiles the agent holds.
pub const PROFILES: &str = metric!("profiles");
/// Per-workload series in the exposition.
pub const METRICS_SERIES: &str = metric!("metrics_series");
/// `--max-series`.
pub const METRICS_SERIES_LIMIT: &str = metric!("metrics_series_limit");
/// Workloads folded because `--max-series` was reached.
pub const METRICS_FOLDED_WORKLOADS: &str = metric!("metrics_folded_workloads");
/// Version, kernel and architecture of the node.
pub const BUILD_INFO: &str = metric!("build_info");
/// `--max-cgroups`.
pub const CGROUP_CAPACITY: &str = metric!("cgroup_capacity");
/// 1 when the counters are pinned in a bpf filesystem (they survive an agent restart).
pub const COUNTERS_PINNED: &str = metric!("counters_pinned");
/// Cgroups holding a slot.
pub const CGROUPS_TRACKED: &str = metric!("cgroups_tracked");
/// Slots the last collection read.
pub const COLLECTION_SLOTS_READ: &str = metric!("collection_slots_read");
/// Cgroups whose path could not be resolved.
pub const CGROUPS_UNRESOLVED: &str = metric!("cgroups_unresolved");
/// Slots given back.
pub const CGROUPS_RELEASED_TOTAL: &str = metric!("cgroups_released_total");
/// Calls lost for want of a slot.
pub const LOST_CALLS_TOTAL: &str = metric!("lost_calls_total");
/// Calls of container runtimes' set-up, in no profile.
pub const RUNTIME_CALLS_TOTAL: &str = metric!("runtime_calls_total");
/// Kernel slot allocations that found none free.
pub const SLOT_EXHAUSTED_TOTAL: &str = metric!("slot_exhausted_total");
/// Failed map operations in the kernel program.
pub const KERNEL_MAP_ERRORS_TOTAL: &str = metric!("kernel_map_errors_total");
/// Failed collection rounds.
pub const COLLECTION_ERRORS_TOTAL: &str = metric!("collection_errors_total");
/// Time per collection round.
pub const COLLECTION_DURATION_SECONDS: &str = metric!("collection_duration_seconds");
/// SyscallProfile status writes of this node's contributions.
pub const PUBLISH_WRITES_TOTAL: &str = metric!("publish_writes_total");
/// SyscallProfile writes refused with 409 Conflict and retried.
pub const PUBLISH_CONFLICTS_TOTAL: &str = metric!("publish_conflicts_total");
/// Publishing passes or objects that failed.
pub const PUBLISH_ERRORS_TOTAL: &str = metric!("publish_errors_total");
/// Whether the kernel accumulates BPF run statistics.
pub const BPF_STATS_ENABLED: &str = metric!("bpf_stats_enabled");
/// Runs of the agent's BPF programs.
pub const BPF_PROGRAM_RUNS_TOTAL: &str = metric!("bpf_program_runs_total");
/// Time in the agent's BPF programs.
pub const BPF_PROGRAM_RUN_SECONDS_TOTAL: &str = metric!("bpf_program_run_seconds_total");

/// Label names.
pub mod label {
    /// Kubernetes namespace of the workload.
    pub const NAMESPACE: &str = "namespace";
    /// Kind of the workload.
    pub const WORKLOAD_KIND: &str = "workload_kind";
    /// Name of the workload.
    pub const WORKLOAD: &str = "workload";
    /// Container of the workload.
    pub const CONTAINER: &str = "container";
    /// Syscall name.
    pub const SYSCALL: &str = "syscall";
    /// BPF program name.
    pub const PROGRAM: &str = "program";
    /// Agent version (`build_info`).
    pub const VERSION: &str = "version";
    /// Kernel release (`build_info`).
    pub const KERNEL: &str = "kernel";
    /// Node architecture (`build_info`).
    pub const ARCH: &str = "arch";
}

/// Escapes a label value for the text format (backslash, double quote, newline).
pub fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for ch in value.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            other => out.push(other),
        }
    }
    out
}

/// The four identity labels of a workload's series (also its PromQL selector).
pub fn identity_labels(identity: &Identity) -> String {
    format!(
        "{}=\"{}\",{}=\"{}\",{}=\"{}\",{}=\"{}\"",
        label::NAMESPACE,
        escape(&identity.namespace),
        label::WORKLOAD_KIND,
        escape(identity.workload_kind.as_str()),
        label::WORKLOAD,
        escape(&identity.workload),
        label::CONTAINER,
        escape(&identity.container)
    )
}
