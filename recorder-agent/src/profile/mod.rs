//! The profile model: what one workload did (counts per syscall, unknown numbers, first and
//! last seen, the drift baseline), who it belongs to ([`identity`]), all profiles the agent
//! knows ([`store`]), syscall names per architecture ([`syscalls`]) and their persistence
//! ([`state`]). Pure: no kernel, no I/O but the state file.

pub mod identity;
pub mod state;
pub mod store;
pub mod syscalls;

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};

pub use identity::{Identity, IdentityError, WorkloadKind};
pub use store::{ProfileStore, SharedProfiles};
use syscalls::Arch;

/// RFC 3339 timestamps (UTC, milliseconds) for serde.
pub mod rfc3339 {
    use std::time::SystemTime;

    use serde::{Deserialize as _, Deserializer, Serializer, de::Error as _};

    /// Serializes as RFC 3339.
    pub fn serialize<S: Serializer>(time: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&humantime::format_rfc3339_millis(*time))
    }

    /// Parses RFC 3339 (any precision, `Z` or offset-less UTC).
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<SystemTime, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_rfc3339_weak(&text).map_err(D::Error::custom)
    }
}

/// What one workload has done.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    /// Whose profile this is.
    #[serde(flatten)]
    pub identity: Identity,
    /// Calls per syscall name.
    pub syscalls: BTreeMap<String, u64>,
    /// Calls whose number has no name on this architecture (never given an invented name).
    pub unknown_syscalls: u64,
    /// When the first call was counted.
    #[serde(with = "rfc3339")]
    pub first_seen: SystemTime,
    /// When the last call was counted.
    #[serde(with = "rfc3339")]
    pub last_seen: SystemTime,
    /// When a syscall appeared that the profile did not have before.
    #[serde(with = "rfc3339")]
    pub last_new_syscall: SystemTime,
    /// The syscall set drift is measured against: the profile as it stood when it first
    /// became stable, or as last delivered (see [`Profile::set_baseline`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<Baseline>,
    /// Drift: calls since the baseline was set to syscalls outside it, per name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub unexpected_syscalls: BTreeMap<String, u64>,
}

/// The syscall set a profile's drift is measured against.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Baseline {
    /// The allowed names.
    pub syscalls: BTreeSet<String>,
    /// When it was set.
    #[serde(with = "rfc3339")]
    pub since: SystemTime,
}

/// Adds `delta` to `name`'s count; returns whether `name` was new. Allocates the key only
/// when it is.
fn add_to(counts: &mut BTreeMap<String, u64>, name: &str, delta: u64) -> bool {
    match counts.get_mut(name) {
        Some(count) => {
            *count = count.saturating_add(delta);
            false
        }
        None => {
            counts.insert(name.to_owned(), delta);
            true
        }
    }
}

impl Profile {
    /// An empty profile first seen at `now`.
    pub fn new(identity: Identity, now: SystemTime) -> Self {
        Self {
            identity,
            syscalls: BTreeMap::new(),
            unknown_syscalls: 0,
            first_seen: now,
            last_seen: now,
            last_new_syscall: now,
            baseline: None,
            unexpected_syscalls: BTreeMap::new(),
        }
    }

    /// Sets the syscall set drift is measured against (e.g. the profile last delivered to
    /// the seccomp dir). Drift counted so far for names the new set allows is dropped; the
    /// rest keeps counting, so those counters stay monotonic.
    pub fn set_baseline<I, S>(&mut self, syscalls: I, since: SystemTime)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let syscalls: BTreeSet<String> = syscalls.into_iter().map(Into::into).collect();
        self.unexpected_syscalls
            .retain(|name, _| !syscalls.contains(name));
        self.baseline = Some(Baseline { syscalls, since });
    }

    /// Sets a baseline that is enforced elsewhere (a frozen cluster profile): calls already
    /// counted to names outside it are drift too, so calls made between the freeze and this
    /// node learning of it are not missed.
    pub fn set_enforced_baseline<I, S>(&mut self, syscalls: I, since: SystemTime)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.set_baseline(syscalls, since);
        let Some(baseline) = &self.baseline else {
            return;
        };
        for (name, &count) in &self.syscalls {
            // A name with no call of its own (the runtime's needs) is not drift.
            if count != 0 && !baseline.syscalls.contains(name) {
                let entry = self.unexpected_syscalls.entry(name.clone()).or_insert(0);
                *entry = (*entry).max(count);
            }
        }
    }

    /// Freezes the current syscall set as the baseline if the profile is stable at `now`
    /// and has none yet. Returns whether it did.
    pub fn freeze_baseline_if_stable(&mut self, now: SystemTime, stable_after: Duration) -> bool {
        if self.baseline.is_some() || !self.is_stable(now, stable_after) {
            return false;
        }
        let names: Vec<String> = self.syscalls.keys().cloned().collect();
        self.set_baseline(names, now);
        true
    }

    fn note_drift(&mut self, name: &str, delta: u64) {
        let Some(baseline) = &self.baseline else {
            return;
        };
        if baseline.syscalls.contains(name) {
            return;
        }
        add_to(&mut self.unexpected_syscalls, name, delta);
    }

    /// Adds per-number counter deltas (`deltas[nr]`); returns whether a new syscall appeared.
    pub fn add_counts(&mut self, arch: Arch, deltas: &[u64], now: SystemTime) -> bool {
        self.add_numbered(arch, deltas.iter().copied().enumerate(), now)
    }

    /// Adds sparse counter deltas, `(nr, delta)` pairs; returns whether a new syscall appeared.
    pub fn add_sparse(&mut self, arch: Arch, deltas: &[(u16, u64)], now: SystemTime) -> bool {
        self.add_numbered(
            arch,
            deltas.iter().map(|&(nr, delta)| (usize::from(nr), delta)),
            now,
        )
    }

    fn add_numbered(
        &mut self,
        arch: Arch,
        deltas: impl Iterator<Item = (usize, u64)>,
        now: SystemTime,
    ) -> bool {
        let mut any = false;
        let mut grew = false;
        for (nr, delta) in deltas {
            if delta == 0 {
                continue;
            }
            any = true;
            match arch.syscall_name(nr) {
                Some(name) => {
                    grew |= self.add_named(name, delta);
                    self.note_drift(name, delta);
                }
                None => self.unknown_syscalls = self.unknown_syscalls.saturating_add(delta),
            }
        }
        if any {
            self.touch(now, grew);
        }
        grew
    }

    fn add_named(&mut self, name: &str, delta: u64) -> bool {
        add_to(&mut self.syscalls, name, delta)
    }

    fn touch(&mut self, now: SystemTime, grew: bool) {
        self.first_seen = self.first_seen.min(now);
        self.last_seen = self.last_seen.max(now);
        if grew {
            self.last_new_syscall = self.last_new_syscall.max(now);
        }
    }

    /// Allows `names` without counting a call (the container runtime's own needs after its
    /// filter applies, see `recorder_ebpf::RUNTIME_BASE_SLOT`): each missing name is added with
    /// 0 calls. Returns whether one was missing.
    /// Not a new syscall of the workload's: stability and drift are left as they are.
    pub fn allow_runtime_names<'a>(&mut self, names: impl IntoIterator<Item = &'a str>) -> bool {
        let mut grew = false;
        for name in names {
            if !self.syscalls.contains_key(name) {
                self.syscalls.insert(name.to_owned(), 0);
                grew = true;
            }
        }
        grew
    }

    /// Folds another profile of the same workload into this one (replicas, re-attribution).
    pub fn merge(&mut self, other: &Self) {
        let mut grew = false;
        for (name, &count) in &other.syscalls {
            grew |= self.add_named(name, count);
        }
        self.unknown_syscalls = self.unknown_syscalls.saturating_add(other.unknown_syscalls);
        self.first_seen = self.first_seen.min(other.first_seen);
        self.last_seen = self.last_seen.max(other.last_seen);
        self.last_new_syscall = self.last_new_syscall.max(other.last_new_syscall);
        if grew {
            self.last_new_syscall = self.last_new_syscall.max(other.last_seen);
        }
        // Keep this profile's baseline (or adopt the other's); drift adds up, restricted to
        // what the kept baseline does not allow.
        if self.baseline.is_none() {
            self.baseline = other.baseline.clone();
        }
        for (name, &count) in &other.unexpected_syscalls {
            add_to(&mut self.unexpected_syscalls, name, count);
        }
        if let Some(baseline) = &self.baseline {
            self.unexpected_syscalls
                .retain(|name, _| !baseline.syscalls.contains(name));
        }
    }

    /// Total calls counted, named and unknown.
    pub fn total_calls(&self) -> u64 {
        self.syscalls
            .values()
            .fold(self.unknown_syscalls, |sum, count| {
                sum.saturating_add(*count)
            })
    }

    /// Whether no new syscall appeared for `stable_after` up to `now`.
    pub fn is_stable(&self, now: SystemTime, stable_after: Duration) -> bool {
        now.duration_since(self.last_new_syscall)
            .is_ok_and(|quiet| quiet >= stable_after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    #[test]
    fn counts_names_unknowns_and_times() {
        let mut store = ProfileStore::new();
        let identity = Identity::new("", "Cgroup", "x", "");
        let mut deltas = vec![0u64; recorder_ebpf::SYSCALL_COLUMNS];
        deltas[0] = 3; // read
        deltas[83] = 1; // mkdir
        deltas[400] = 2; // unassigned on x86_64
        deltas[511] = 5; // out of range
        assert!(store.add_counts(&identity, Arch::X86_64, &deltas, at(10)));
        // Same syscalls again: nothing new.
        assert!(!store.add_counts(&identity, Arch::X86_64, &deltas, at(20)));
        // All zero: no profile touched.
        assert!(!store.add_counts(&identity, Arch::X86_64, &[0; 4], at(30)));
        let profile = store.get(&identity).expect("profile");
        assert_eq!(profile.syscalls.get("read"), Some(&6));
        assert_eq!(profile.syscalls.get("mkdir"), Some(&2));
        assert_eq!(profile.syscalls.len(), 2);
        assert_eq!(profile.unknown_syscalls, 14);
        assert_eq!(profile.first_seen, at(10));
        assert_eq!(profile.last_seen, at(20));
        assert_eq!(profile.last_new_syscall, at(10));
        assert_eq!(profile.total_calls(), 22);
        assert!(profile.is_stable(at(70), Duration::from_secs(60)));
        assert!(!profile.is_stable(at(69), Duration::from_secs(60)));
    }

    #[test]
    fn rename_merges_without_loss() {
        let mut store = ProfileStore::new();
        let a = Identity::new("", "Pod", "uid", "cid");
        let b = Identity::new("ns", "Deployment", "web", "app");
        let mut deltas = vec![0u64; 512];
        deltas[0] = 1;
        store.add_counts(&a, Arch::X86_64, &deltas, at(1));
        deltas[1] = 4;
        store.add_counts(&b, Arch::X86_64, &deltas, at(5));
        store.rename(&a, &b);
        assert_eq!(store.len(), 1);
        let profile = store.get(&b).expect("merged");
        assert_eq!(profile.syscalls.get("read"), Some(&2));
        assert_eq!(profile.syscalls.get("write"), Some(&4));
        assert_eq!(profile.first_seen, at(1));
        assert_eq!(profile.last_seen, at(5));
    }

    #[test]
    fn drift_is_counted_against_the_frozen_baseline() {
        let mut store = ProfileStore::new();
        let identity = Identity::new("", "Cgroup", "x", "");
        let mut deltas = vec![0u64; 512];
        deltas[0] = 3; // read
        store.add_counts(&identity, Arch::X86_64, &deltas, at(0));
        // Not stable yet: nothing frozen, a new syscall is growth, not drift.
        assert_eq!(
            store.freeze_stable_baselines(at(30), Duration::from_secs(60)),
            0
        );
        deltas[1] = 1; // write
        store.add_counts(&identity, Arch::X86_64, &deltas, at(40));
        assert!(
            store
                .get(&identity)
                .expect("p")
                .unexpected_syscalls
                .is_empty()
        );
        // Stable at 100: frozen with {read, write}; only once.
        assert_eq!(
            store.freeze_stable_baselines(at(100), Duration::from_secs(60)),
            1
        );
        assert_eq!(
            store.freeze_stable_baselines(at(500), Duration::from_secs(60)),
            0
        );
        let mut drift = vec![0u64; 512];
        drift[0] = 5; // read: allowed
        drift[83] = 2; // mkdir: drift
        store.add_counts(&identity, Arch::X86_64, &drift, at(110));
        store.add_counts(&identity, Arch::X86_64, &drift, at(120));
        let profile = store.get(&identity).expect("p");
        assert_eq!(
            profile.unexpected_syscalls,
            BTreeMap::from([("mkdir".to_owned(), 4)])
        );
        assert_eq!(profile.syscalls.get("mkdir"), Some(&4));
        let baseline = profile.baseline.as_ref().expect("baseline");
        assert_eq!(baseline.since, at(100));
        assert_eq!(
            baseline
                .syscalls
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
            ["read", "write"]
        );
        // Persisted and read back.
        let json = serde_json::to_value(profile).expect("json");
        assert_eq!(json["unexpected_syscalls"]["mkdir"], 4);
        let back: Profile = serde_json::from_value(json).expect("back");
        assert_eq!(&back, profile);
        // A delivered baseline that allows mkdir drops its drift; another name keeps counting.
        assert!(store.set_baseline(&identity, ["read", "write", "mkdir"], at(130)));
        assert!(!store.set_baseline(&Identity::unresolved(), ["read"], at(130)));
        let mut more = vec![0u64; 512];
        more[83] = 1;
        more[63] = 1; // uname
        store.add_counts(&identity, Arch::X86_64, &more, at(140));
        assert_eq!(
            store.get(&identity).expect("p").unexpected_syscalls,
            BTreeMap::from([("uname".to_owned(), 1)])
        );
        // Merging another replica's drift keeps it, minus what the baseline allows.
        let mut other = Profile::new(identity.clone(), at(0));
        other.unexpected_syscalls.insert("uname".into(), 2);
        other.unexpected_syscalls.insert("read".into(), 9);
        store.merge_profile(other);
        assert_eq!(
            store.get(&identity).expect("p").unexpected_syscalls,
            BTreeMap::from([("uname".to_owned(), 3)])
        );
    }

    #[test]
    fn json_shape() {
        let mut profile = Profile::new(Identity::new("", "Cgroup", "x", ""), at(0));
        profile.syscalls.insert("read".into(), 2);
        let json = serde_json::to_value(&profile).expect("json");
        assert_eq!(json["namespace"], "");
        assert_eq!(json["workload_kind"], "Cgroup");
        assert_eq!(json["syscalls"]["read"], 2);
        assert_eq!(json["unknown_syscalls"], 0);
        assert_eq!(json["first_seen"], "2023-11-14T22:13:20.000Z");
        let back: Profile = serde_json::from_value(json).expect("parse back");
        assert_eq!(back, profile);
    }
}
