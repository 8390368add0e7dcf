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

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use axum::{
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder, core::Collector as _, process_collector::ProcessCollector,
};
use tracing::warn;

use crate::{
    collection::{Collector, RoundStats},
    kernel::{self, BpfError},
    profile::syscalls::Arch,
    profile::{Identity, ProfileStore, WorkloadKind},
    serve::api::Shared,
};

/// Default of `--max-series`: about 150 workloads of 60 syscalls each, a heavy but sane
/// target for one Prometheus scrape.
pub const DEFAULT_MAX_SERIES: u32 = 10_000;

/// Workload label of the series everything beyond `--max-series` is folded into.
pub const FOLDED_WORKLOAD: &str = "(folded)";
/// Workload label of identities with pod UIDs or container ids in Kubernetes mode.
pub const UNATTRIBUTED_WORKLOAD: &str = "(unattributed)";

/// Metric-name prefix.
const PREFIX: &str = "syscall_recorder";

/// Gauges exported per workload besides the per-syscall counters.
const GAUGES_PER_WORKLOAD: usize = 5;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// A metric could not be built or registered (a programming error: names are constants).
    #[error("metric {name}: {source}")]
    Register {
        /// Metric name.
        name: String,
        /// The cause.
        #[source]
        source: prometheus::Error,
    },
    /// Encoding the exposition failed.
    #[error("encoding metrics: {0}")]
    Encode(#[from] prometheus::Error),
    /// Compressing the exposition failed.
    #[error("compressing metrics: {0}")]
    Compress(std::io::Error),
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
    slot_exhausted: IntCounter,
    map_errors: IntCounter,
    collection_errors: IntCounter,
    collection_duration: Histogram,
    bpf_stats_enabled: IntGauge,
    program_runs: IntCounterVec,
    program_run_nanoseconds: IntCounterVec,
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

fn name(suffix: &str) -> String {
    format!("{PREFIX}_{suffix}")
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
        let int_gauge =
            |suffix: &str, help: &str| register(r, suffix, IntGauge::new(name(suffix), help));
        let int_counter =
            |suffix: &str, help: &str| register(r, suffix, IntCounter::new(name(suffix), help));
        let capacity = int_gauge(
            "cgroup_capacity",
            "Cgroups the kernel can count at once (--max-cgroups).",
        )?;
        capacity.set(i64::from(options.capacity));
        let build_info = register(
            r,
            "build_info",
            IntGaugeVec::new(
                Opts::new(
                    name("build_info"),
                    "Agent version, kernel release and architecture of this node; always 1.",
                ),
                &["version", "kernel", "arch"],
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
                "cgroups_tracked",
                "Cgroups holding a counter slot in the kernel at the last collection.",
            )?,
            slots_read: int_gauge(
                "collection_slots_read",
                "Slots whose counters the last collection read: those that counted since the round before, new ones, and all of them in a periodic sweep.",
            )?,
            unresolved: int_gauge(
                "cgroups_unresolved",
                "Cgroups whose path could not be resolved at the last collection.",
            )?,
            released: int_counter(
                "cgroups_released_total",
                "Counter slots given back because their cgroup was removed.",
            )?,
            lost_calls: int_counter(
                "lost_calls_total",
                "Syscalls not attributed to any cgroup because the kernel ran out of slots (raise --max-cgroups).",
            )?,
            slot_exhausted: int_counter(
                "slot_exhausted_total",
                "Kernel-side slot allocations that found no free slot (capacity exhausted).",
            )?,
            map_errors: int_counter(
                "kernel_map_errors_total",
                "Unexpected BPF map operation failures in the kernel program.",
            )?,
            collection_errors: int_counter(
                "collection_errors_total",
                "Collection rounds that failed.",
            )?,
            collection_duration: register(
                r,
                "collection_duration_seconds",
                Histogram::with_opts(
                    HistogramOpts::new(
                        name("collection_duration_seconds"),
                        "Time one collection round took (read counters, resolve cgroups, fold).",
                    )
                    .buckets(vec![
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                    ]),
                ),
            )?,
            bpf_stats_enabled: int_gauge(
                "bpf_stats_enabled",
                "1 when kernel.bpf_stats_enabled is on and BPF program run statistics accumulate.",
            )?,
            program_runs: register(
                r,
                "bpf_program_runs_total",
                IntCounterVec::new(
                    Opts::new(
                        name("bpf_program_runs_total"),
                        "Runs of the agent's BPF programs (counted while kernel.bpf_stats_enabled is on).",
                    ),
                    &["program"],
                ),
            )?,
            program_run_nanoseconds: IntCounterVec::new(
                Opts::new(
                    name("bpf_program_run_seconds_total"),
                    "Time spent in the agent's BPF programs (counted while kernel.bpf_stats_enabled is on).",
                ),
                &["program"],
            )
            .map_err(|source| MetricsError::Register {
                name: name("bpf_program_run_seconds_total"),
                source,
            })?,
            registry,
            options,
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

    /// Records one collection round: its outcome and duration, and the kernel-side counters
    /// and program statistics read from the collector's recorder.
    pub fn record_round(
        &self,
        collector: &mut Collector,
        result: &Result<RoundStats, BpfError>,
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
            }
            Err(_) => self.collection_errors.inc(),
        }
        // Kernel counters are absolute: add what they grew by since the last round.
        let advance = |counter: &IntCounter, now: u64| {
            counter.inc_by(now.saturating_sub(counter.get()));
        };
        match collector.recorder().stats() {
            Ok(kernel) => {
                advance(&self.slot_exhausted, kernel.slot_exhausted);
                advance(&self.map_errors, kernel.map_errors);
            }
            Err(err) => warn!(error = %err, "reading kernel statistics failed"),
        }
        let enabled = kernel::bpf_stats_enabled();
        self.bpf_stats_enabled.set(i64::from(enabled));
        // Frozen while disabled: no need to ask the kernel.
        if enabled {
            match collector.recorder().program_stats() {
                Ok(programs) => {
                    for program in programs {
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
                Err(err) => warn!(error = %err, "reading BPF program statistics failed"),
            }
        }
    }

    /// The whole exposition (text format 0.0.4).
    pub fn render(
        &self,
        store: &ProfileStore,
        now: SystemTime,
        stable_after: Duration,
    ) -> Result<String, MetricsError> {
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
            &name("bpf_program_run_seconds_total"),
            "counter",
            "Time spent in the agent's BPF programs (counted while kernel.bpf_stats_enabled is on).",
        );
        for metric in family.get_metric() {
            let program = metric
                .get_label()
                .iter()
                .find(|label| label.name() == "program")
                .map_or("", |label| label.value());
            let _ = writeln!(
                out,
                "{}{{program=\"{}\"}} {}",
                name("bpf_program_run_seconds_total"),
                escape(program),
                metric.get_counter().get_value() / 1e9
            );
        }
    }
}

/// One exported workload: one or more profiles that share labels.
#[derive(Debug, Default)]
struct Group<'a> {
    syscalls: BTreeMap<&'a str, u64>,
    unexpected: BTreeMap<&'a str, u64>,
    unknown: u64,
    stable: bool,
    first_seen: Option<SystemTime>,
    last_seen: Option<SystemTime>,
    last_new_syscall: Option<SystemTime>,
}

impl<'a> Group<'a> {
    fn add(&mut self, profile: &'a crate::profile::Profile, stable: bool, first: bool) {
        for (name, &count) in &profile.syscalls {
            let entry = self.syscalls.entry(name).or_insert(0);
            *entry = entry.saturating_add(count);
        }
        for (name, &count) in &profile.unexpected_syscalls {
            let entry = self.unexpected.entry(name).or_insert(0);
            *entry = entry.saturating_add(count);
        }
        self.unknown = self.unknown.saturating_add(profile.unknown_syscalls);
        // A group is stable when all its profiles are.
        self.stable = if first { stable } else { self.stable && stable };
        self.first_seen = Some(
            self.first_seen
                .map_or(profile.first_seen, |t| t.min(profile.first_seen)),
        );
        self.last_seen = Some(
            self.last_seen
                .map_or(profile.last_seen, |t| t.max(profile.last_seen)),
        );
        self.last_new_syscall = Some(self.last_new_syscall.map_or(profile.last_new_syscall, |t| {
            t.max(profile.last_new_syscall)
        }));
    }

    fn merge(&mut self, other: Group<'a>) {
        for (name, count) in other.syscalls {
            let entry = self.syscalls.entry(name).or_insert(0);
            *entry = entry.saturating_add(count);
        }
        for (name, count) in other.unexpected {
            let entry = self.unexpected.entry(name).or_insert(0);
            *entry = entry.saturating_add(count);
        }
        self.unknown = self.unknown.saturating_add(other.unknown);
        let was_empty = self.first_seen.is_none();
        self.stable = if was_empty {
            other.stable
        } else {
            self.stable && other.stable
        };
        let min = |a: Option<SystemTime>, b: Option<SystemTime>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let max = |a: Option<SystemTime>, b: Option<SystemTime>| match (a, b) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        self.first_seen = min(self.first_seen, other.first_seen);
        self.last_seen = max(self.last_seen, other.last_seen);
        self.last_new_syscall = max(self.last_new_syscall, other.last_new_syscall);
    }

    fn series(&self) -> usize {
        self.syscalls.len()
            + self.unexpected.len()
            + usize::from(self.unknown > 0)
            + GAUGES_PER_WORKLOAD
    }
}

/// Whether a label value carries a pod UID or container id: a run of at least 32 hex digits
/// (dashes and underscores, as in UIDs and systemd-escaped UIDs, do not end the run).
pub fn has_id_token(text: &str) -> bool {
    let mut digits = 0;
    for ch in text.chars() {
        if ch.is_ascii_hexdigit() {
            digits += 1;
            if digits >= 32 {
                return true;
            }
        } else if ch != '-' && ch != '_' {
            digits = 0;
        }
    }
    false
}

/// The labels an identity is exported with (see the module docs for Kubernetes mode).
pub fn metric_identity(identity: &Identity, kubernetes: bool) -> Identity {
    let carries_ids = match &identity.workload_kind {
        WorkloadKind::Kubernetes(_) => false,
        WorkloadKind::Pod | WorkloadKind::Container => true,
        // Paths of cgroups outside any container may still name a pod or container.
        WorkloadKind::Cgroup | WorkloadKind::Command | WorkloadKind::Other(_) => {
            has_id_token(&identity.workload) || has_id_token(&identity.container)
        }
    };
    if kubernetes && carries_ids {
        Identity {
            workload: UNATTRIBUTED_WORKLOAD.to_owned(),
            container: String::new(),
            ..identity.clone()
        }
    } else {
        identity.clone()
    }
}

/// Escapes a label value for the text format (backslash, double quote, newline).
pub(crate) fn escape(value: &str) -> String {
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
pub(crate) fn identity_labels(identity: &Identity) -> String {
    format!(
        "namespace=\"{}\",workload_kind=\"{}\",workload=\"{}\",container=\"{}\"",
        escape(&identity.namespace),
        escape(identity.workload_kind.as_str()),
        escape(&identity.workload),
        escape(&identity.container)
    )
}

fn family_header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn unix_seconds(time: Option<SystemTime>) -> f64 {
    time.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A per-workload gauge: name suffix, help, value.
type GaugeSpec = (&'static str, &'static str, fn(&Group<'_>) -> f64);

/// A per-workload, per-syscall counter family: name suffix, help, the counts it shows.
type PerSyscallSpec = (
    &'static str,
    &'static str,
    for<'g, 'a> fn(&'g Group<'a>) -> &'g BTreeMap<&'a str, u64>,
);

/// Appends the per-workload families.
fn render_workloads(
    out: &mut String,
    store: &ProfileStore,
    now: SystemTime,
    stable_after: Duration,
    options: MetricsOptions,
) {
    let started = Instant::now();
    let mut groups: BTreeMap<Identity, Group<'_>> = BTreeMap::new();
    // Grouped by label set, which orders them: the store's own sort is not needed.
    for profile in store.values() {
        let labels = metric_identity(&profile.identity, options.kubernetes);
        let group = groups.entry(labels).or_default();
        let first = group.first_seen.is_none();
        group.add(profile, profile.is_stable(now, stable_after), first);
    }
    // Admission order: first seen, then identity, so a workload keeps its series while newer
    // ones are folded.
    let mut order: Vec<(Identity, Group<'_>)> = groups.into_iter().collect();
    order.sort_by(|(a_id, a), (b_id, b)| {
        a.first_seen.cmp(&b.first_seen).then_with(|| a_id.cmp(b_id))
    });
    let mut admitted: Vec<(Identity, Group<'_>)> = Vec::with_capacity(order.len());
    let mut folded = Group::default();
    let mut folded_workloads = 0usize;
    let mut used = 0usize;
    let mut full = false;
    for (identity, group) in order {
        let cost = group.series();
        if !full && used + cost <= options.max_series {
            used += cost;
            admitted.push((identity, group));
        } else {
            full = true;
            folded_workloads += 1;
            folded.merge(group);
        }
    }
    if folded_workloads > 0 {
        used += folded.series();
        admitted.push((Identity::new("", "", FOLDED_WORKLOAD, ""), folded));
    }

    let labels: Vec<String> = admitted.iter().map(|(id, _)| identity_labels(id)).collect();
    let groups = || admitted.iter().map(|(_, g)| g).zip(labels.iter());

    let per_syscall: [PerSyscallSpec; 2] = [
        (
            "syscalls_total",
            "Syscalls made by a workload's containers on this node, per syscall name.",
            |g| &g.syscalls,
        ),
        (
            "unexpected_syscalls_total",
            "Drift: calls to syscalls outside the workload's profile as it stood when it became stable (or as last delivered).",
            |g| &g.unexpected,
        ),
    ];
    for (suffix, help, counts) in per_syscall {
        let family = name(suffix);
        family_header(out, &family, "counter", help);
        for (group, labels) in groups() {
            for (syscall, count) in counts(group) {
                let _ = writeln!(
                    out,
                    "{family}{{{labels},syscall=\"{}\"}} {count}",
                    escape(syscall)
                );
            }
        }
    }
    let unknown = name("unknown_syscalls_total");
    family_header(
        out,
        &unknown,
        "counter",
        "Calls with a syscall number that has no name on this architecture.",
    );
    for (group, labels) in groups() {
        if group.unknown > 0 {
            let _ = writeln!(out, "{unknown}{{{labels}}} {}", group.unknown);
        }
    }
    let gauges: [GaugeSpec; GAUGES_PER_WORKLOAD] = [
        (
            "profile_syscalls",
            "Distinct syscalls in the workload's profile.",
            |g| g.syscalls.len() as f64,
        ),
        (
            "profile_stable",
            "1 when no new syscall appeared in the workload's profile for --stable-after.",
            |g| f64::from(u8::from(g.stable)),
        ),
        (
            "profile_first_seen_timestamp_seconds",
            "When the workload's first syscall was counted (Unix time).",
            |g| unix_seconds(g.first_seen),
        ),
        (
            "profile_last_seen_timestamp_seconds",
            "When the workload's last syscall was counted (Unix time).",
            |g| unix_seconds(g.last_seen),
        ),
        (
            "profile_last_new_syscall_timestamp_seconds",
            "When a syscall new to the workload's profile last appeared (Unix time).",
            |g| unix_seconds(g.last_new_syscall),
        ),
    ];
    for (suffix, help, value) in gauges {
        let family = name(suffix);
        family_header(out, &family, "gauge", help);
        for (group, labels) in groups() {
            let _ = writeln!(out, "{family}{{{labels}}} {}", value(group));
        }
    }
    for (suffix, help, value) in [
        ("profiles", "Profiles the agent holds.", store.len()),
        (
            "metrics_series",
            "Per-workload series in this exposition (bounded by --max-series, plus the folded workload).",
            used,
        ),
        (
            "metrics_series_limit",
            "--max-series: the limit of per-workload series.",
            options.max_series,
        ),
        (
            "metrics_folded_workloads",
            "Workloads folded into workload=\"(folded)\" because --max-series was reached.",
            folded_workloads,
        ),
    ] {
        let family = name(suffix);
        family_header(out, &family, "gauge", help);
        let _ = writeln!(out, "{family} {value}");
    }
    tracing::debug!(
        workloads = admitted.len(),
        series = used,
        folded = folded_workloads,
        took_us = started.elapsed().as_micros() as u64,
        "rendered workload metrics"
    );
}

/// Whether an `Accept-Encoding` value accepts gzip (and does not refuse it with `q=0`).
pub fn accepts_gzip(accept_encoding: &str) -> bool {
    let codings: Vec<(&str, bool)> = accept_encoding
        .split(',')
        .map(|part| {
            let mut pieces = part.split(';').map(str::trim);
            let coding = pieces.next().unwrap_or_default();
            let refused = pieces.any(|param| {
                param
                    .strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            (coding, refused)
        })
        .collect();
    // An explicit gzip entry wins over `*`.
    match codings
        .iter()
        .find(|(coding, _)| coding.eq_ignore_ascii_case("gzip"))
    {
        Some((_, refused)) => !refused,
        None => codings
            .iter()
            .any(|(coding, refused)| *coding == "*" && !refused),
    }
}

/// Gzips an exposition: Prometheus asks for it, and label-heavy text shrinks about 15x.
fn gzip(body: &str) -> std::io::Result<Vec<u8>> {
    use std::io::Write as _;
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 8),
        flate2::Compression::fast(),
    );
    encoder.write_all(body.as_bytes())?;
    encoder.finish()
}

fn error_response(message: String) -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        axum::Json(serde_json::json!({ "error": message })),
    )
        .into_response()
}

/// `GET /metrics`: rendered off the async workers (it holds the store's read lock and may
/// take milliseconds for thousands of series), gzipped when the scraper accepts it.
pub async fn handler(
    State(shared): State<Arc<Shared>>,
    headers: axum::http::HeaderMap,
) -> Response {
    let wants_gzip = headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(accepts_gzip);
    let rendered = tokio::task::spawn_blocking(move || {
        let body = {
            let store = shared
                .profiles
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            shared
                .metrics
                .render(&store, SystemTime::now(), shared.stable_after)?
        };
        Ok::<_, MetricsError>(if wants_gzip {
            (true, gzip(&body).map_err(MetricsError::Compress)?)
        } else {
            (false, body.into_bytes())
        })
    })
    .await;
    match rendered {
        Ok(Ok((true, body))) => (
            [
                (header::CONTENT_TYPE, prometheus::TEXT_FORMAT),
                (header::CONTENT_ENCODING, "gzip"),
            ],
            body,
        )
            .into_response(),
        Ok(Ok((false, body))) => {
            ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], body).into_response()
        }
        Ok(Err(err)) => error_response(err.to_string()),
        Err(err) => error_response(format!("rendering metrics: {err}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::Profile;

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
    fn gzip_negotiation() {
        assert!(accepts_gzip("gzip"));
        assert!(accepts_gzip("identity, gzip;q=0.5"));
        assert!(accepts_gzip("*"));
        assert!(!accepts_gzip("gzip;q=0"));
        assert!(!accepts_gzip("gzip;q=0, *"));
        assert!(!accepts_gzip("identity"));
        assert!(!accepts_gzip("br, deflate"));
        let body = "syscall_recorder_profiles 1\n".repeat(100);
        let packed = gzip(&body).expect("gzip");
        let mut text = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&packed[..]), &mut text)
            .expect("gunzip");
        assert_eq!(text, body);
        assert!(packed.len() < body.len() / 10);
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
