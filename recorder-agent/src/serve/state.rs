//! What the HTTP side reads and the collection loop writes: the profiles, readiness, the
//! status the last round left, and the metrics registry.

use std::sync::atomic::{AtomicBool, Ordering};

use super::metrics::{Metrics, MetricsOptions};
use crate::{
    export::publish::view::ClusterView,
    profile::{SharedProfiles, syscalls::Arch},
};

/// What the HTTP handlers read, shared with the collection loop.
#[derive(Debug)]
pub struct Shared {
    /// The profiles.
    pub profiles: SharedProfiles,
    /// What the agent still waits for before it reports ready.
    pub readiness: Readiness,
    /// Node architecture, for seccomp export.
    pub arch: Arch,
    /// Quiet time after which a profile counts as stable.
    pub stable_after: std::time::Duration,
    /// The collection loop's view of the kernel side, for `/api/v1/status`.
    pub status: std::sync::Mutex<AgentStatus>,
    /// Prometheus metrics (`GET /metrics`).
    pub metrics: Metrics,
    /// The cluster's SyscallProfiles (Kubernetes mode with publishing).
    pub cluster: Option<std::sync::Arc<ClusterView>>,
}

/// Something the agent waits for before `/readyz` answers 200, in the order they are reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Condition {
    /// The pods of this node were listed from the Kubernetes API (Kubernetes mode only).
    PodsSynced,
    /// The programs are attached and the first collection ran.
    FirstCollection,
    /// SyscallProfiles can be published (Kubernetes mode): the API serves the resource and
    /// RBAC allows the writes. Unmet again when a pass is denied.
    Publishing,
}

impl Condition {
    /// What `/readyz` says while the condition is not met.
    pub fn waiting(self) -> &'static str {
        match self {
            Self::PodsSynced => {
                "not ready: the pods of this node are not synced from the Kubernetes API yet"
            }
            Self::FirstCollection => {
                "not ready: programs not attached or first collection not done"
            }
            Self::Publishing => {
                "not ready: SyscallProfiles cannot be published (see publish.last_error in /api/v1/status)"
            }
        }
    }
}

/// The agent's readiness as named conditions, each met once and for good.
#[derive(Debug)]
pub struct Readiness {
    pods_synced: AtomicBool,
    first_collection: AtomicBool,
    publishing: AtomicBool,
}

impl Default for Readiness {
    /// Waiting for the first collection only (no Kubernetes attribution).
    fn default() -> Self {
        Self {
            pods_synced: AtomicBool::new(true),
            first_collection: AtomicBool::new(false),
            publishing: AtomicBool::new(true),
        }
    }
}

impl Readiness {
    fn flag(&self, condition: Condition) -> &AtomicBool {
        match condition {
            Condition::PodsSynced => &self.pods_synced,
            Condition::FirstCollection => &self.first_collection,
            Condition::Publishing => &self.publishing,
        }
    }

    /// Also waits for `condition` (before anything reported ready).
    pub fn require(&self, condition: Condition) {
        self.flag(condition).store(false, Ordering::Release);
    }

    /// Marks `condition` met; returns whether it was not before.
    pub fn met(&self, condition: Condition) -> bool {
        !self.flag(condition).swap(true, Ordering::AcqRel)
    }

    /// Marks `condition` unmet again (a condition that can be lost, like publishing).
    pub fn unmet(&self, condition: Condition) {
        self.flag(condition).store(false, Ordering::Release);
    }

    /// The first condition not met yet, if any.
    pub fn waiting_for(&self) -> Option<Condition> {
        [
            Condition::PodsSynced,
            Condition::FirstCollection,
            Condition::Publishing,
        ]
        .into_iter()
        .find(|condition| !self.flag(*condition).load(Ordering::Acquire))
    }
}

/// What `GET /api/v1/status` answers: capacity use and losses.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct AgentStatus {
    /// Cgroups the kernel can count at once (`--max-cgroups`).
    pub capacity: u32,
    /// Cgroups holding a slot at the last collection.
    pub cgroups: usize,
    /// Of those, cgroups whose path could not be resolved.
    pub unresolved_cgroups: usize,
    /// Calls not attributed to any cgroup because no slot was free, since the agent started.
    pub lost_calls: u64,
    /// Calls of container runtimes' set-up (mounts, pivot_root, ... before a container's
    /// program runs), kept out of every profile, since the agent started.
    pub runtime_calls: u64,
    /// Kernel slow-path runs that found no free slot, since the programs were loaded.
    pub slot_exhausted: u64,
    /// Map operations that failed in the kernel program (should stay 0).
    pub kernel_map_errors: u64,
    /// Counters continue from a previous agent (pinned).
    pub pinned_counters_reused: bool,
    /// The counters are pinned in a bpf filesystem, so they survive an agent restart.
    pub pinned: bool,
    /// Why they are not (`null` when they are): what a restart will lose.
    pub unpinned_reason: Option<String>,
    /// Duration of the last collection, in microseconds.
    pub last_collection_us: u64,
    /// Collections done.
    pub collections: u64,
    /// Publishing to SyscallProfile objects (Kubernetes mode with `--publish`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publish: Option<PublishStatus>,
    /// The watch of the cluster's SyscallProfiles (Kubernetes mode with publishing).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterStatus>,
}

/// What `/api/v1/status` says about publishing.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct PublishStatus {
    /// This node's name in the objects.
    pub node: String,
    /// Workload containers whose contribution is in place.
    pub objects: usize,
    /// Status writes since start.
    pub writes: u64,
    /// 409 Conflicts retried since start.
    pub conflicts: u64,
    /// Passes done.
    pub passes: u64,
    /// Why the last pass stopped, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// The cluster view's state, in `/api/v1/status`.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ClusterStatus {
    /// SyscallProfile objects listed and delivered from.
    pub objects: usize,
    /// Whether the objects were listed at least once.
    pub synced: bool,
    /// The last watch error, until the watch works again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl Shared {
    /// Empty shared state.
    pub fn new(arch: Arch, stable_after: std::time::Duration) -> Self {
        Self {
            profiles: SharedProfiles::new(),
            readiness: Readiness::default(),
            arch,
            stable_after,
            status: std::sync::Mutex::new(AgentStatus::default()),
            metrics: Metrics::new(MetricsOptions::default())
                .expect("metric names are valid constants"),
            cluster: None,
        }
    }

    /// Sets the cluster view the watch task keeps.
    pub fn with_cluster(mut self, cluster: std::sync::Arc<ClusterView>) -> Self {
        self.cluster = Some(cluster);
        self
    }

    /// Replaces the metrics (built with the agent's options).
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_reports_the_first_unmet_condition() {
        let readiness = Readiness::default();
        assert_eq!(readiness.waiting_for(), Some(Condition::FirstCollection));
        readiness.require(Condition::PodsSynced);
        assert_eq!(readiness.waiting_for(), Some(Condition::PodsSynced));
        assert!(readiness.met(Condition::FirstCollection));
        assert!(!readiness.met(Condition::FirstCollection), "met once");
        assert_eq!(readiness.waiting_for(), Some(Condition::PodsSynced));
        assert!(readiness.met(Condition::PodsSynced));
        assert_eq!(readiness.waiting_for(), None);
    }
}
