//! The cluster's profiles as this node sees them: every `SyscallProfile` object, watched from
//! the API, reduced to what the node delivers (the merged or frozen set for its architecture)
//! and what counts as drift. Written by the watch task, read by the delivery (kubelet files),
//! the HTTP API (`mode`, `unexpected_syscalls`) and the metrics.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{
        RwLock,
        atomic::{AtomicBool, Ordering},
    },
};

use super::{Mode, PublishError, delivered_names, object_name, publisher::SyscallProfile};
use crate::profile::{Identity, ProfileStore, syscalls::Arch};

/// One workload container's cluster-wide profile, as this node delivers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterProfile {
    /// `Learning` or `Frozen`.
    pub mode: Mode,
    /// Sorted names this node's file allows (the frozen set while frozen).
    pub delivered: Vec<String>,
    /// Nodes that contributed.
    pub nodes: u32,
    /// The frozen set (all architectures), while frozen.
    pub frozen: Option<BTreeSet<String>>,
    /// The first contributing node by name: the one that writes what must be written once
    /// (the SPO SeccompProfile).
    pub first_node: Option<String>,
}

/// The identity an object stands for and what this node delivers for it. An object whose name
/// is not the one its spec's identity publishes to (made by hand) is refused, so two objects
/// never compete for one file.
pub fn from_object(
    object: &SyscallProfile,
    arch: Arch,
) -> Result<(Identity, ClusterProfile), PublishError> {
    let namespace = object.metadata.namespace.clone().unwrap_or_default();
    let spec = &object.spec;
    let identity = Identity::new(
        &namespace,
        &spec.workload.kind,
        &spec.workload.name,
        &spec.container,
    );
    let name = object_name(&identity)?;
    let actual = object.metadata.name.clone().unwrap_or_default();
    if name != actual {
        return Err(PublishError::BadName {
            identity: identity.to_string(),
            name: actual,
        });
    }
    let status = object.status.clone().unwrap_or_default();
    let delivered = delivered_names(&status, arch)
        .into_iter()
        .map(str::to_owned)
        .collect();
    let frozen = status.frozen.as_ref().map(|frozen| {
        frozen
            .architectures
            .iter()
            .flat_map(|set| set.syscalls.iter().cloned())
            .collect()
    });
    Ok((
        identity,
        ClusterProfile {
            mode: spec.mode,
            delivered,
            nodes: status.node_count,
            frozen,
            first_node: status.nodes.first().map(|entry| entry.node.clone()),
        },
    ))
}

#[derive(Debug, Default)]
struct Inner {
    /// Bumped on every change, so readers skip unchanged views cheaply.
    generation: u64,
    profiles: HashMap<Identity, ClusterProfile>,
}

/// The shared view; empty and unsynced until the watch has listed every object once.
#[derive(Debug, Default)]
pub struct ClusterView {
    inner: RwLock<Inner>,
    synced: AtomicBool,
    /// Identities whose object went away, until the publisher takes them (it must write its
    /// contribution again, into a new object).
    deleted: std::sync::Mutex<Vec<Identity>>,
}

impl ClusterView {
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sets one identity's profile (a changed or new object).
    pub fn upsert(&self, identity: Identity, profile: ClusterProfile) {
        let mut inner = self.write();
        if inner.profiles.get(&identity) != Some(&profile) {
            inner.profiles.insert(identity, profile);
            inner.generation += 1;
        }
    }

    /// Drops one identity (its object was deleted).
    pub fn remove(&self, identity: &Identity) {
        let mut inner = self.write();
        if inner.profiles.remove(identity).is_some() {
            inner.generation += 1;
        }
        drop(inner);
        self.note_deleted([identity.clone()]);
    }

    /// Replaces everything (a complete list of the objects) and marks the view synced.
    pub fn replace_all(&self, profiles: HashMap<Identity, ClusterProfile>) {
        let mut inner = self.write();
        let gone: Vec<Identity> = inner
            .profiles
            .keys()
            .filter(|identity| !profiles.contains_key(*identity))
            .cloned()
            .collect();
        if inner.profiles != profiles {
            inner.profiles = profiles;
            inner.generation += 1;
        }
        drop(inner);
        self.note_deleted(gone);
        self.synced.store(true, Ordering::Release);
    }

    fn note_deleted(&self, identities: impl IntoIterator<Item = Identity>) {
        self.deleted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend(identities);
    }

    /// The identities whose objects were deleted since the last call.
    pub fn take_deleted(&self) -> Vec<Identity> {
        std::mem::take(
            &mut *self
                .deleted
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Whether every object was listed once: before that, nodes deliver what they learned.
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// Whether existing files of published workloads are left as they are: the objects are
    /// not listed yet. A restarted node must not narrow a file the cluster made to what it saw
    /// itself, however long the list takes (or while RBAC denies it: the status and the log say
    /// so); files that do not exist yet are written from this node's profile meanwhile.
    pub fn holds_existing_files(&self) -> bool {
        !self.synced()
    }

    /// Changes so far.
    pub fn generation(&self) -> u64 {
        self.read().generation
    }

    /// One identity's profile.
    pub fn get(&self, identity: &Identity) -> Option<ClusterProfile> {
        self.read().profiles.get(identity).cloned()
    }

    /// Runs `f` over every profile under one read of the view.
    pub fn with_profiles<R>(&self, f: impl FnOnce(&HashMap<Identity, ClusterProfile>) -> R) -> R {
        f(&self.read().profiles)
    }

    /// Every profile with the generation it belongs to.
    pub fn snapshot(&self) -> (u64, Vec<(Identity, ClusterProfile)>) {
        let inner = self.read();
        (
            inner.generation,
            inner
                .profiles
                .iter()
                .map(|(identity, profile)| (identity.clone(), profile.clone()))
                .collect(),
        )
    }

    /// Measures this node's drift against what the cluster delivers: a frozen profile's
    /// baseline is the frozen set (calls outside it count as `unexpected_syscalls`); while
    /// learning, names the cluster's file allows are never drift (another node learned them
    /// first, or an unfreeze took them in). Returns how many baselines changed.
    pub fn align_baselines(&self, store: &mut ProfileStore, now: std::time::SystemTime) -> usize {
        let inner = self.read();
        let mut changed = 0;
        for (identity, cluster) in &inner.profiles {
            let Some(profile) = store.get(identity) else {
                continue;
            };
            let next: Option<BTreeSet<String>> = match &cluster.frozen {
                Some(frozen) => profile
                    .baseline
                    .as_ref()
                    .is_none_or(|baseline| &baseline.syscalls != frozen)
                    .then(|| frozen.clone()),
                None => match &profile.baseline {
                    Some(baseline)
                        if profile
                            .unexpected_syscalls
                            .keys()
                            .any(|name| cluster.delivered.binary_search(name).is_ok()) =>
                    {
                        let mut names = baseline.syscalls.clone();
                        names.extend(cluster.delivered.iter().cloned());
                        Some(names)
                    }
                    _ => None,
                },
            };
            if let (Some(names), Some(profile)) = (next, store.get_mut(identity)) {
                if cluster.frozen.is_some() {
                    profile.set_enforced_baseline(names, now);
                } else {
                    profile.set_baseline(names, now);
                }
                changed += 1;
            }
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;
    use crate::export::publish::{
        ArchSyscalls, FrozenSet, SyscallProfileSpec, SyscallProfileStatus, WorkloadRef,
    };

    fn object(name: &str, frozen: Option<&[&str]>) -> SyscallProfile {
        let set = |names: &[&str]| ArchSyscalls {
            arch: "x86_64".into(),
            syscalls: names.iter().map(|n| (*n).to_owned()).collect(),
        };
        SyscallProfile {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some("shop".to_owned()),
                ..ObjectMeta::default()
            },
            spec: SyscallProfileSpec {
                workload: WorkloadRef {
                    kind: "Deployment".into(),
                    name: "web".into(),
                },
                container: "app".into(),
                mode: if frozen.is_some() {
                    Mode::Frozen
                } else {
                    Mode::Learning
                },
            },
            status: Some(SyscallProfileStatus {
                architectures: vec![set(&["read", "uname", "write"])],
                node_count: 2,
                frozen: frozen.map(|names| FrozenSet {
                    at: "2026-12-03T10:00:00Z".into(),
                    syscall_count: 2,
                    architectures: vec![set(names)],
                }),
                ..SyscallProfileStatus::default()
            }),
            ..SyscallProfile::default()
        }
    }

    #[test]
    fn objects_are_taken_by_their_spec_and_must_carry_its_name() {
        let (identity, profile) =
            from_object(&object("deployment.web.app", None), Arch::X86_64).expect("ok");
        assert_eq!(identity, Identity::new("shop", "Deployment", "web", "app"));
        assert_eq!(profile.delivered, ["read", "uname", "write"]);
        let (_, frozen) = from_object(
            &object("deployment.web.app", Some(&["read", "write"])),
            Arch::X86_64,
        )
        .expect("ok");
        assert_eq!(frozen.delivered, ["read", "write"]);
        // A hand-made object for the same workload under another name competes for nothing.
        let err = from_object(&object("my-copy", None), Arch::X86_64).expect_err("refused");
        assert!(err.to_string().contains("my-copy"), "{err}");
    }

    #[test]
    fn drift_is_measured_against_the_frozen_set_and_never_against_the_cluster_file() {
        let identity = Identity::new("shop", "Deployment", "web", "app");
        let t = |s| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        let mut store = ProfileStore::new();
        let mut deltas = vec![0u64; 400];
        deltas[0] = 1; // read
        deltas[1] = 1; // write
        store.add_counts(&identity, Arch::X86_64, &deltas, t(1));
        let view = ClusterView::default();
        let (_, frozen) = from_object(
            &object("deployment.web.app", Some(&["read", "write"])),
            Arch::X86_64,
        )
        .expect("ok");
        // uname (63) was called after the freeze, before this node saw the frozen object.
        let mut early = vec![0u64; 400];
        early[63] = 2;
        store.add_counts(&identity, Arch::X86_64, &early, t(1));
        view.replace_all(HashMap::from([(identity.clone(), frozen)]));
        assert_eq!(view.align_baselines(&mut store, t(2)), 1);
        assert_eq!(
            store
                .get(&identity)
                .expect("p")
                .unexpected_syscalls
                .get("uname"),
            Some(&2),
            "a call between the freeze and the alignment is drift"
        );
        assert_eq!(view.align_baselines(&mut store, t(3)), 0, "aligned once");
        // ptrace (101) is outside the frozen set: drift.
        let mut deltas = vec![0u64; 400];
        deltas[101] = 3;
        store.add_counts(&identity, Arch::X86_64, &deltas, t(4));
        assert_eq!(
            store.get(&identity).expect("p").unexpected_syscalls,
            std::collections::BTreeMap::from([("ptrace".to_owned(), 3), ("uname".to_owned(), 2)])
        );
        // Unfrozen with ptrace merged in: no longer drift.
        let mut learning = object("deployment.web.app", None);
        if let Some(status) = learning.status.as_mut() {
            status.architectures[0].syscalls.push("ptrace".into());
        }
        let (_, learning) = from_object(&learning, Arch::X86_64).expect("ok");
        view.upsert(identity.clone(), learning);
        assert_eq!(view.align_baselines(&mut store, t(5)), 1);
        assert!(
            store
                .get(&identity)
                .expect("p")
                .unexpected_syscalls
                .is_empty()
        );
    }
}
