//! All profiles the agent knows, by identity: the one place counter deltas are folded into
//! profiles.

use std::{
    collections::HashMap,
    time::{Duration, SystemTime},
};

use super::{Identity, Profile, WorkloadKind, syscalls::Arch};

/// All profiles the agent knows, by identity.
///
/// A hash map: every collection round looks up each active cgroup's profile, and in an ordered
/// map that is a dozen comparisons of identities sharing long prefixes (cgroup paths, pod
/// names), each a cache miss. Listings sort instead (rare, and off the collection path).
#[derive(Clone, Debug, Default)]
pub struct ProfileStore {
    profiles: HashMap<Identity, Profile>,
}

impl ProfileStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds counter deltas to `identity`'s profile, creating it on the first call.
    /// Returns whether a new syscall appeared.
    pub fn add_counts(
        &mut self,
        identity: &Identity,
        arch: Arch,
        deltas: &[u64],
        now: SystemTime,
    ) -> bool {
        if deltas.iter().all(|&delta| delta == 0) {
            return false;
        }
        self.with_profile(identity, now, |profile| {
            profile.add_counts(arch, deltas, now)
        })
    }

    /// Runs `f` on `identity`'s profile, created (first seen `now`) if missing: one lookup
    /// and no key clone for the common case of an existing profile.
    fn with_profile<R>(
        &mut self,
        identity: &Identity,
        now: SystemTime,
        f: impl FnOnce(&mut Profile) -> R,
    ) -> R {
        if let Some(profile) = self.profiles.get_mut(identity) {
            return f(profile);
        }
        f(self
            .profiles
            .entry(identity.clone())
            .or_insert_with(|| Profile::new(identity.clone(), now)))
    }

    /// Adds the container runtime's needs (`names`) to every container's profile (not to
    /// plain cgroups' or recorded commands'). Returns whether a profile grew.
    pub fn allow_runtime_names(&mut self, names: &[&str]) -> bool {
        let mut grew = false;
        for profile in self.profiles.values_mut() {
            if matches!(
                profile.identity.workload_kind,
                WorkloadKind::Kubernetes(_) | WorkloadKind::Pod | WorkloadKind::Container
            ) {
                grew |= profile.allow_runtime_names(names.iter().copied());
            }
        }
        grew
    }

    /// Like [`add_counts`](Self::add_counts) with sparse `(nr, delta)` pairs.
    pub fn add_sparse(
        &mut self,
        identity: &Identity,
        arch: Arch,
        deltas: &[(u16, u64)],
        now: SystemTime,
    ) -> bool {
        if deltas.iter().all(|&(_, delta)| delta == 0) {
            return false;
        }
        self.with_profile(identity, now, |profile| {
            profile.add_sparse(arch, deltas, now)
        })
    }

    /// Inserts a profile, merging with an existing one of the same identity.
    pub fn merge_profile(&mut self, profile: Profile) {
        match self.profiles.get_mut(&profile.identity) {
            Some(existing) => existing.merge(&profile),
            None => {
                self.profiles.insert(profile.identity.clone(), profile);
            }
        }
    }

    /// Freezes the baseline of every profile that is stable at `now` and has none yet
    /// (see [`Profile::freeze_baseline_if_stable`]). Returns how many were frozen.
    pub fn freeze_stable_baselines(&mut self, now: SystemTime, stable_after: Duration) -> usize {
        self.profiles
            .values_mut()
            .filter_map(|profile| {
                profile
                    .freeze_baseline_if_stable(now, stable_after)
                    .then_some(())
            })
            .count()
    }

    /// Sets the baseline of one profile (see [`Profile::set_baseline`]); false when unknown.
    pub fn set_baseline<I, S>(
        &mut self,
        identity: &Identity,
        syscalls: I,
        since: SystemTime,
    ) -> bool
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        match self.profiles.get_mut(identity) {
            Some(profile) => {
                profile.set_baseline(syscalls, since);
                true
            }
            None => false,
        }
    }

    /// One profile, to change in place (its identity must not change: see [`Self::rename`]).
    pub fn get_mut(&mut self, identity: &Identity) -> Option<&mut Profile> {
        self.profiles.get_mut(identity)
    }

    /// Moves a profile to another identity (merging), e.g. when metadata arrives.
    pub fn rename(&mut self, from: &Identity, to: &Identity) {
        if from == to {
            return;
        }
        if let Some(mut profile) = self.profiles.remove(from) {
            profile.identity = to.clone();
            self.merge_profile(profile);
        }
    }

    /// One profile.
    pub fn get(&self, identity: &Identity) -> Option<&Profile> {
        self.profiles.get(identity)
    }

    /// Every profile in no particular order: for whoever does not need the sort.
    pub fn values(&self) -> impl Iterator<Item = &Profile> {
        self.profiles.values()
    }

    /// All profiles, ordered by identity.
    pub fn iter(&self) -> impl Iterator<Item = &Profile> {
        let mut profiles: Vec<&Profile> = self.profiles.values().collect();
        profiles.sort_unstable_by(|a, b| a.identity.cmp(&b.identity));
        profiles.into_iter()
    }

    /// Number of profiles.
    pub fn len(&self) -> usize {
        self.profiles.len()
    }

    /// Whether there is no profile.
    pub fn is_empty(&self) -> bool {
        self.profiles.is_empty()
    }
}

/// The profile store as the agent shares it between the collection loop (the writer) and the
/// HTTP side (readers): the one place that knows its lock. Writes go through
/// [`update`](Self::update), so a round's folding, renames and baselines land in one critical
/// section; a panic while writing (a poisoned lock) leaves the store as the panic found it,
/// which is still a valid store, so readers and writers go on.
#[derive(Debug, Default)]
pub struct SharedProfiles {
    store: std::sync::RwLock<ProfileStore>,
}

impl SharedProfiles {
    /// A shared empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads the store (blocks while a write is under way).
    pub fn read(&self) -> std::sync::RwLockReadGuard<'_, ProfileStore> {
        self.store
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Changes the store under its write lock.
    pub fn update<R>(&self, change: impl FnOnce(&mut ProfileStore) -> R) -> R {
        change(
            &mut self
                .store
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}
