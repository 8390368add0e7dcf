//! Prometheus metrics on `GET /metrics`: per-workload syscall counters, profile state and
//! drift read from the [`ProfileStore`] at scrape time (no second bookkeeping on the
//! collection path), and the agent's own cost in an owned [`Registry`] (collection rounds,
//! kernel-side losses, BPF program run time, process CPU/memory, build info).
//!
//! Cardinality is bounded by `--max-series`: workloads are admitted in the order they were
//! first seen until their series would exceed the limit; the rest are folded into one
//! `workload="(folded)"` workload, and how many were folded is exported, so nothing is dropped
//! silently. In Kubernetes mode, identities that still carry pod UIDs or container ids (not
//! attributed to a Kubernetes object) are folded per namespace and kind into
//! `workload="(unattributed)"`, so no UID or container id becomes a label value.

pub mod names;
mod workloads;

use std::{
    fmt::Write as _,
    sync::OnceLock,
    time::{Duration, SystemTime},
};

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder, core::Collector as _, process_collector::ProcessCollector,
};

use crate::{
    collection::RoundStats,
    kernel::{self, AttachedPrograms, BpfError, KernelStats},
    profile::{ProfileStore, syscalls::Arch},
};
pub use names::*;
pub use workloads::{FOLDED_WORKLOAD, UNATTRIBUTED_WORKLOAD, has_id_token, metric_identity};
use workloads::{family_header, render_workloads};

/// Adds to a counter what an absolute kernel count grew by since it was last seen.
fn advance(counter: &IntCounter, now: u64) {
    counter.inc_by(now.saturating_sub(counter.get()));
}

/// Default of `--max-series`: about 150 workloads of 60 syscalls each, a heavy but sane
/// target for one Prometheus scrape.
pub const DEFAULT_MAX_SERIES: u32 = 10_000;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// A metric could not be built or registered (a programming error: names are constants).
    #[error("metric {name}")]
    Register {
        /// Metric name.
        name: String,
        /// The cause.
        #[source]
        source: prometheus::Error,
    },
    /// Encoding the exposition failed.
    #[error("encoding metrics")]
    Encode(#[from] prometheus::Error),
    /// Compressing the exposition failed.
    #[error("compressing metrics")]
    Compress(#[source] std::io::Error),
}

/// How the metrics behave.
#[derive(Clone, Copy, Debug)]
pub struct MetricsOptions {
    /// Limit of per-workload series (see the module docs).
    pub max_series: usize,
    /// Fold identities that carry pod UIDs or container ids.
    pub kubernetes: bool,
    /// `--max-cgroups`, exported as the capacity.
    pub capacity: u32,
    /// Node architecture, for `build_info`.
    pub arch: Option<Arch>,
}

impl Default for MetricsOptions {
    fn default() -> Self {
        Self {
            max_series: DEFAULT_MAX_SERIES as usize,
            kubernetes: false,
            capacity: 0,
            arch: Arch::host(),
        }
    }
}

/// The agent's metrics.
pub struct Metrics {
    registry: Registry,
    options: MetricsOptions,
    cgroups: IntGauge,
    slots_read: IntGauge,
    unresolved: IntGauge,
    released: IntCounter,
    lost_calls: IntCounter,
    runtime_calls: IntCounter,
    slot_exhausted: IntCounter,
    map_errors: IntCounter,
    collection_errors: IntCounter,
    publish_writes: IntCounter,
    publish_conflicts: IntCounter,
    publish_errors: IntCounter,
    collection_duration: Histogram,
    bpf_stats_enabled: IntGauge,
    counters_pinned: IntGauge,
    program_runs: IntCounterVec,
    program_run_nanoseconds: IntCounterVec,
    programs: OnceLock<AttachedPrograms>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

fn register<C: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    name: &str,
    metric: Result<C, prometheus::Error>,
) -> Result<C, MetricsError> {
    let metric = metric.map_err(|source| MetricsError::Register {
        name: name.to_owned(),
        source,
    })?;
    registry
        .register(Box::new(metric.clone()))
        .map_err(|source| MetricsError::Register {
            name: name.to_owned(),
            source,
        })?;
    Ok(metric)
}

/// The running kernel's release (`uname -r`).
fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|text| text.trim().to_owned())
        .unwrap_or_default()
}

impl Metrics {
    /// Builds the registry: self metrics, build info and the process collector.
    pub fn new(options: MetricsOptions) -> Result<Self, MetricsError> {
        let registry = Registry::new();
        let r = &registry;
        let int_gauge = |name: &str, help: &str| register(r, name, IntGauge::new(name, help));
        let int_counter = |name: &str, help: &str| register(r, name, IntCounter::new(name, help));
        let capacity = int_gauge(
            CGROUP_CAPACITY,
            "Cgroups the kernel can count at once (--max-cgroups).",
        )?;
        capacity.set(i64::from(options.capacity));
        let build_info = register(
            r,
            BUILD_INFO,
            IntGaugeVec::new(
                Opts::new(
                    BUILD_INFO,
                    "Agent version, kernel release and architecture of this node; always 1.",
                ),
                &[label::VERSION, label::KERNEL, label::ARCH],
            ),
        )?;
        build_info
            .with_label_values(&[
                env!("CARGO_PKG_VERSION").to_owned(),
                kernel_release(),
                match options.arch {
                    Some(Arch::X86_64) => "x86_64".to_owned(),
                    Some(Arch::Aarch64) => "aarch64".to_owned(),
                    None => std::env::consts::ARCH.to_owned(),
                },
            ])
            .set(1);
        let metrics = Self {
            cgroups: int_gauge(
                CGROUPS_TRACKED,
                "Cgroups holding a counter slot in the kernel at the last collection.",
            )?,
            slots_read: int_gauge(
                COLLECTION_SLOTS_READ,
                "Slots whose counters the last collection read: those that counted since the round before, new ones, and all of them in a periodic sweep.",
            )?,
            unresolved: int_gauge(
                CGROUPS_UNRESOLVED,
                "Cgroups whose path could not be resolved at the last collection.",
            )?,
            released: int_counter(
                CGROUPS_RELEASED_TOTAL,
                "Counter slots given back because their cgroup was removed.",
            )?,
            lost_calls: int_counter(
                LOST_CALLS_TOTAL,
                "Syscalls not attributed to any cgroup because the kernel ran out of slots (raise --max-cgroups).",
            )?,
            runtime_calls: int_counter(
                RUNTIME_CALLS_TOTAL,
                "Syscalls of container runtimes' set-up (before a container's program runs), kept out of every profile.",
            )?,
            slot_exhausted: int_counter(
                SLOT_EXHAUSTED_TOTAL,
                "Kernel-side slot allocations that found no free slot (capacity exhausted).",
            )?,
            map_errors: int_counter(
                KERNEL_MAP_ERRORS_TOTAL,
                "Unexpected BPF map operation failures in the kernel program.",
            )?,
            collection_errors: int_counter(
                COLLECTION_ERRORS_TOTAL,
                "Collection rounds that failed.",
            )?,
            publish_writes: int_counter(
                PUBLISH_WRITES_TOTAL,
                "SyscallProfile status writes of this node's contributions (only when a syscall set or stability changed).",
            )?,
            publish_conflicts: int_counter(
                PUBLISH_CONFLICTS_TOTAL,
                "SyscallProfile writes refused with 409 Conflict (another node wrote first) and retried.",
            )?,
            publish_errors: int_counter(
                PUBLISH_ERRORS_TOTAL,
                "SyscallProfile writes left for the next pass, and passes stopped by the API (denied, CRD missing).",
            )?,
            collection_duration: register(
                r,
                COLLECTION_DURATION_SECONDS,
                Histogram::with_opts(
                    HistogramOpts::new(
                        COLLECTION_DURATION_SECONDS,
                        "Time one collection round took (read counters, resolve cgroups, fold).",
                    )
                    .buckets(vec![
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                    ]),
                ),
            )?,
            counters_pinned: int_gauge(
                COUNTERS_PINNED,
                "1 when the kernel counters are pinned in a bpf filesystem and survive an agent restart; 0 when a restart loses what was not collected yet (see /api/v1/status unpinned_reason).",
            )?,
            bpf_stats_enabled: int_gauge(
                BPF_STATS_ENABLED,
                "1 when kernel.bpf_stats_enabled is on and BPF program run statistics accumulate.",
            )?,
            program_runs: register(
                r,
                BPF_PROGRAM_RUNS_TOTAL,
                IntCounterVec::new(
                    Opts::new(
                        BPF_PROGRAM_RUNS_TOTAL,
                        "Runs of the agent's BPF programs (counted while kernel.bpf_stats_enabled is on).",
                    ),
                    &[label::PROGRAM],
                ),
            )?,
            program_run_nanoseconds: IntCounterVec::new(
                Opts::new(
                    BPF_PROGRAM_RUN_SECONDS_TOTAL,
                    "Time spent in the agent's BPF programs (counted while kernel.bpf_stats_enabled is on).",
                ),
                &[label::PROGRAM],
            )
            .map_err(|source| MetricsError::Register {
                name: BPF_PROGRAM_RUN_SECONDS_TOTAL.to_owned(),
                source,
            })?,
            registry,
            options,
            programs: OnceLock::new(),
        };
        metrics
            .registry
            .register(Box::new(ProcessCollector::for_self()))
            .map_err(|source| MetricsError::Register {
                name: "process".to_owned(),
                source,
            })?;
        Ok(metrics)
    }

    /// Records one collection round: its outcome and duration, and the kernel program's own
    /// counters as the round read them (`None` when reading them failed).
    pub fn record_round(
        &self,
        result: &Result<RoundStats, BpfError>,
        kernel: Option<&KernelStats>,
        took: Duration,
    ) {
        self.collection_duration.observe(took.as_secs_f64());
        match result {
            Ok(stats) => {
                self.cgroups
                    .set(i64::try_from(stats.cgroups).unwrap_or(i64::MAX));
                self.slots_read
                    .set(i64::try_from(stats.read).unwrap_or(i64::MAX));
                self.unresolved
                    .set(i64::try_from(stats.unresolved).unwrap_or(i64::MAX));
                self.released.inc_by(stats.released as u64);
                self.lost_calls.inc_by(stats.lost_calls);
                self.runtime_calls.inc_by(stats.runtime_calls);
            }
            Err(_) => self.collection_errors.inc(),
        }
        if let Some(kernel) = kernel {
            advance(&self.slot_exhausted, kernel.slot_exhausted);
            advance(&self.map_errors, kernel.map_errors);
        }
    }

    /// One publishing pass: writes, conflicts and failures.
    pub fn record_publish(&self, writes: u64, conflicts: u64, errors: u64) {
        self.publish_writes.inc_by(writes);
        self.publish_conflicts.inc_by(conflicts);
        self.publish_errors.inc_by(errors);
    }

    /// Whether the counters are pinned (survive an agent restart).
    pub fn set_counters_pinned(&self, pinned: bool) {
        self.counters_pinned.set(i64::from(pinned));
    }

    /// The programs whose run statistics `/metrics` shows (set once they are attached).
    pub fn watch_programs(&self, programs: AttachedPrograms) {
        let _ = self.programs.set(programs);
    }

    /// Reads the programs' run statistics from the kernel, at scrape time: nothing is kept
    /// up to date between scrapes, and nothing is asked while the kernel does not count.
    fn refresh_program_stats(&self) {
        let enabled = kernel::bpf_stats_enabled();
        self.bpf_stats_enabled.set(i64::from(enabled));
        let Some(programs) = self.programs.get().filter(|_| enabled) else {
            return;
        };
        for program in programs.stats() {
            advance(
                &self.program_runs.with_label_values(&[program.program]),
                program.run_count,
            );
            advance(
                &self
                    .program_run_nanoseconds
                    .with_label_values(&[program.program]),
                u64::try_from(program.run_time.as_nanos()).unwrap_or(u64::MAX),
            );
        }
    }

    /// The whole exposition (text format 0.0.4).
    pub fn render(
        &self,
        store: &ProfileStore,
        now: SystemTime,
        stable_after: Duration,
    ) -> Result<String, MetricsError> {
        self.refresh_program_stats();
        let mut out = String::with_capacity(64 * 1024);
        TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out)?;
        self.render_run_seconds(&mut out);
        render_workloads(&mut out, store, now, stable_after, self.options);
        Ok(out)
    }

    /// Run time is kept in integer nanoseconds (exact, monotonic) and shown in seconds.
    fn render_run_seconds(&self, out: &mut String) {
        let families = self.program_run_nanoseconds.collect();
        let Some(family) = families.first() else {
            return;
        };
        if family.get_metric().is_empty() {
            return;
        }
        family_header(
            out,
            BPF_PROGRAM_RUN_SECONDS_TOTAL,
            "counter",
            "Time spent in the agent's BPF programs (counted while kernel.bpf_stats_enabled is on).",
        );
        for metric in family.get_metric() {
            let program = metric
                .get_label()
                .iter()
                .find(|pair| pair.name() == label::PROGRAM)
                .map_or("", |label| label.value());
            let _ = writeln!(
                out,
                "{}{{{}=\"{}\"}} {}",
                BPF_PROGRAM_RUN_SECONDS_TOTAL,
                label::PROGRAM,
                escape(program),
                metric.get_counter().get_value() / 1e9
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::{Identity, Profile};

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn profile(identity: Identity, first: u64, names: &[&str]) -> Profile {
        let mut p = Profile::new(identity, at(first));
        for (i, name) in names.iter().enumerate() {
            p.syscalls.insert((*name).to_owned(), i as u64 + 1);
        }
        p
    }

    fn options(max_series: usize, kubernetes: bool) -> MetricsOptions {
        MetricsOptions {
            max_series,
            kubernetes,
            capacity: 8,
            arch: Some(Arch::X86_64),
        }
    }

    #[test]
    fn ids_are_recognised() {
        assert!(has_id_token(&"ab".repeat(32)));
        assert!(has_id_token(
            "kubepods-besteffort-pod8a1f0c4e_1b2c_4d3e_9f00_123456789abc.slice"
        ));
        assert!(has_id_token("8a1f0c4e-1b2c-4d3e-9f00-123456789abc"));
        assert!(!has_id_token("system.slice/cron.service"));
        assert!(!has_id_token("deadbeef-cafe"));
        let k8s = |id: &Identity| metric_identity(id, true);
        let pod = Identity::new(
            "",
            "Pod",
            "8a1f0c4e-1b2c-4d3e-9f00-123456789abc",
            &"ab".repeat(32),
        );
        assert_eq!(
            k8s(&pod),
            Identity::new("", "Pod", UNATTRIBUTED_WORKLOAD, "")
        );
        assert_eq!(metric_identity(&pod, false), pod);
        let deploy = Identity::new("shop", "Deployment", "web", "nginx");
        assert_eq!(k8s(&deploy), deploy);
        let cron = Identity::new("", "Cgroup", "system.slice/cron.service", "");
        assert_eq!(k8s(&cron), cron);
    }

    #[test]
    fn exposition_has_every_family_and_escapes_labels() {
        let mut store = ProfileStore::new();
        let mut odd = profile(
            Identity::new("", "Cgroup", "we\"ird\\path\nx", ""),
            0,
            &["read", "write"],
        );
        odd.unknown_syscalls = 3;
        odd.set_baseline(["read"], at(1));
        odd.unexpected_syscalls.insert("write".into(), 2);
        store.merge_profile(odd);
        store.merge_profile(profile(
            Identity::new("ns", "Deployment", "web", "app"),
            5,
            &["read"],
        ));
        let metrics = Metrics::new(options(1000, false)).expect("metrics");
        let text = metrics
            .render(&store, at(10), Duration::from_secs(60))
            .expect("render");
        assert!(text.contains(
            "syscall_recorder_syscalls_total{namespace=\"\",workload_kind=\"Cgroup\",workload=\"we\\\"ird\\\\path\\nx\",container=\"\",syscall=\"write\"} 2"
        ), "{text}");
        assert!(text.contains("syscall_recorder_syscalls_total{namespace=\"ns\",workload_kind=\"Deployment\",workload=\"web\",container=\"app\",syscall=\"read\"} 1"));
        assert!(text.contains(
            "syscall_recorder_unexpected_syscalls_total{namespace=\"\",workload_kind=\"Cgroup\""
        ));
        assert!(text.contains(
            "syscall_recorder_unknown_syscalls_total{namespace=\"\",workload_kind=\"Cgroup\""
        ));
        assert!(text.contains("syscall_recorder_profile_syscalls{namespace=\"ns\",workload_kind=\"Deployment\",workload=\"web\",container=\"app\"} 1"));
        assert!(text.contains("syscall_recorder_profile_stable{namespace=\"ns\",workload_kind=\"Deployment\",workload=\"web\",container=\"app\"} 0"));
        assert!(
            text.contains("syscall_recorder_build_info{arch=\"x86_64\""),
            "{text}"
        );
        assert!(text.contains("syscall_recorder_cgroup_capacity 8"));
        assert!(text.contains("syscall_recorder_metrics_folded_workloads 0"));
        assert!(text.contains("process_cpu_seconds_total"));
        // Each family's header appears once.
        for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
            assert_eq!(text.matches(&format!("{line}\n")).count(), 1, "{line}");
        }
        let stable = metrics
            .render(&store, at(1000), Duration::from_secs(60))
            .expect("render");
        assert!(stable.contains("syscall_recorder_profile_stable{namespace=\"ns\",workload_kind=\"Deployment\",workload=\"web\",container=\"app\"} 1"));
    }

    #[test]
    fn series_beyond_the_limit_are_folded_and_counted() {
        let mut store = ProfileStore::new();
        // Each workload: 3 syscalls + 5 gauges = 8 series.
        for i in 0..5u64 {
            store.merge_profile(profile(
                Identity::new("", "Cgroup", &format!("w{i}"), ""),
                i,
                &["read", "write", "uname"],
            ));
        }
        let metrics = Metrics::new(options(20, false)).expect("metrics");
        let text = metrics
            .render(&store, at(10), Duration::from_secs(60))
            .expect("render");
        // The two oldest fit; the other three are folded, their calls summed, not dropped.
        assert!(text.contains("workload=\"w0\""));
        assert!(text.contains("workload=\"w1\""));
        assert!(!text.contains("workload=\"w2\""));
        assert!(text.contains(
            "syscall_recorder_syscalls_total{namespace=\"\",workload_kind=\"\",workload=\"(folded)\",container=\"\",syscall=\"uname\"} 9"
        ), "{text}");
        assert!(text.contains("syscall_recorder_metrics_folded_workloads 3"));
        assert!(text.contains("syscall_recorder_metrics_series 24"));
    }

    #[test]
    fn kubernetes_mode_folds_ids_per_kind() {
        let mut store = ProfileStore::new();
        for _ in 0..3 {
            let uid = format!("{:032x}", rand_like());
            store.merge_profile(profile(
                Identity::new("", "Pod", &uid, &"cd".repeat(32)),
                0,
                &["read"],
            ));
        }
        let metrics = Metrics::new(options(1000, true)).expect("metrics");
        let text = metrics
            .render(&store, at(10), Duration::from_secs(60))
            .expect("render");
        assert!(text.contains(
            "syscall_recorder_syscalls_total{namespace=\"\",workload_kind=\"Pod\",workload=\"(unattributed)\",container=\"\",syscall=\"read\"} 3"
        ), "{text}");
        assert!(!text.contains(&"cd".repeat(32)));
    }

    fn rand_like() -> u128 {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(1);
        u128::from(NEXT.fetch_add(1, Ordering::Relaxed)) * 0x1234_5678_9abc_def1_2345_6789
    }
}
