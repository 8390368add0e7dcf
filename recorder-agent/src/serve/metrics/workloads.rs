//! The per-workload families, rendered from the profile store at scrape time (no second
//! bookkeeping on the collection path): grouping by label set, the Kubernetes-mode folding of
//! unattributed identities, and the `--max-series` bound.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    time::{Duration, Instant, SystemTime},
};

use super::{
    MetricsOptions,
    names::{self, escape, identity_labels, label},
};
use crate::profile::{Identity, Profile, ProfileStore, WorkloadKind};

/// Workload label of the series everything beyond `--max-series` is folded into.
pub const FOLDED_WORKLOAD: &str = "(folded)";
/// Workload label of identities with pod UIDs or container ids in Kubernetes mode.
pub const UNATTRIBUTED_WORKLOAD: &str = "(unattributed)";

/// Gauges exported per workload besides the per-syscall counters.
const GAUGES_PER_WORKLOAD: usize = 5;

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
    fn add(&mut self, profile: &'a Profile, stable: bool, first: bool) {
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

pub(super) fn family_header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn unix_seconds(time: Option<SystemTime>) -> f64 {
    time.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A per-workload gauge: name, help, value.
type GaugeSpec = (&'static str, &'static str, fn(&Group<'_>) -> f64);

/// A per-workload, per-syscall counter family: name, help, the counts it shows.
type PerSyscallSpec = (
    &'static str,
    &'static str,
    for<'g, 'a> fn(&'g Group<'a>) -> &'g BTreeMap<&'a str, u64>,
);

/// Appends the per-workload families.
pub(super) fn render_workloads(
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
        admitted.push((
            Identity::with_kind("", WorkloadKind::Other(String::new()), FOLDED_WORKLOAD, ""),
            folded,
        ));
    }

    let labels: Vec<String> = admitted.iter().map(|(id, _)| identity_labels(id)).collect();
    let groups = || admitted.iter().map(|(_, g)| g).zip(labels.iter());

    let per_syscall: [PerSyscallSpec; 2] = [
        (
            names::SYSCALLS_TOTAL,
            "Syscalls made by a workload's containers on this node, per syscall name.",
            |g| &g.syscalls,
        ),
        (
            names::UNEXPECTED_SYSCALLS_TOTAL,
            "Drift: calls to syscalls outside the workload's profile as it stood when it became stable (or as last delivered).",
            |g| &g.unexpected,
        ),
    ];
    for (family, help, counts) in per_syscall {
        family_header(out, family, "counter", help);
        for (group, labels) in groups() {
            for (syscall, count) in counts(group) {
                let _ = writeln!(
                    out,
                    "{family}{{{labels},{}=\"{}\"}} {count}",
                    label::SYSCALL,
                    escape(syscall)
                );
            }
        }
    }
    let unknown = names::UNKNOWN_SYSCALLS_TOTAL;
    family_header(
        out,
        unknown,
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
            names::PROFILE_SYSCALLS,
            "Distinct syscalls in the workload's profile.",
            |g| g.syscalls.len() as f64,
        ),
        (
            names::PROFILE_STABLE,
            "1 when no new syscall appeared in the workload's profile for --stable-after.",
            |g| f64::from(u8::from(g.stable)),
        ),
        (
            names::PROFILE_FIRST_SEEN,
            "When the workload's first syscall was counted (Unix time).",
            |g| unix_seconds(g.first_seen),
        ),
        (
            names::PROFILE_LAST_SEEN,
            "When the workload's last syscall was counted (Unix time).",
            |g| unix_seconds(g.last_seen),
        ),
        (
            names::PROFILE_LAST_NEW_SYSCALL,
            "When a syscall new to the workload's profile last appeared (Unix time).",
            |g| unix_seconds(g.last_new_syscall),
        ),
    ];
    for (family, help, value) in gauges {
        family_header(out, family, "gauge", help);
        for (group, labels) in groups() {
            let _ = writeln!(out, "{family}{{{labels}}} {}", value(group));
        }
    }
    for (family, help, value) in [
        (names::PROFILES, "Profiles the agent holds.", store.len()),
        (
            names::METRICS_SERIES,
            "Per-workload series in this exposition (bounded by --max-series, plus the folded workload).",
            used,
        ),
        (
            names::METRICS_SERIES_LIMIT,
            "--max-series: the limit of per-workload series.",
            options.max_series,
        ),
        (
            names::METRICS_FOLDED_WORKLOADS,
            "Workloads folded into workload=\"(folded)\" because --max-series was reached.",
            folded_workloads,
        ),
    ] {
        family_header(out, family, "gauge", help);
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
