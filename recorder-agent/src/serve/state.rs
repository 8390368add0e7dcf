//! What the HTTP side reads and the collection loop writes: the profiles, readiness, the
//! status the last round left, and the metrics registry.

use std::sync::atomic::AtomicBool;

use super::metrics::{Metrics, MetricsOptions};
use crate::profile::{SharedProfiles, syscalls::Arch};

/// What the HTTP handlers read, shared with the collection loop.
#[derive(Debug)]
pub struct Shared {
    /// The profiles.
    pub profiles: SharedProfiles,
    /// Set once the programs are attached and the first collection ran.
    pub ready: AtomicBool,
    /// False until the Kubernetes pods of this node were listed (true outside Kubernetes).
    pub kubernetes_synced: AtomicBool,
    /// Node architecture, for seccomp export.
    pub arch: Arch,
    /// Quiet time after which a profile counts as stable.
    pub stable_after: std::time::Duration,
    /// The collection loop's view of the kernel side, for `/api/v1/status`.
    pub status: std::sync::Mutex<AgentStatus>,
    /// Prometheus metrics (`GET /metrics`).
    pub metrics: Metrics,
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
    /// Kernel slow-path runs that found no free slot, since the programs were loaded.
    pub slot_exhausted: u64,
    /// Map operations that failed in the kernel program (should stay 0).
    pub kernel_map_errors: u64,
    /// Counters continue from a previous agent (pinned).
    pub pinned_counters_reused: bool,
    /// Duration of the last collection, in microseconds.
    pub last_collection_us: u64,
    /// Collections done.
    pub collections: u64,
}

impl Shared {
    /// Empty shared state.
    pub fn new(arch: Arch, stable_after: std::time::Duration) -> Self {
        Self {
            profiles: SharedProfiles::new(),
            ready: AtomicBool::new(false),
            kubernetes_synced: AtomicBool::new(true),
            arch,
            stable_after,
            status: std::sync::Mutex::new(AgentStatus::default()),
            metrics: Metrics::new(MetricsOptions::default())
                .expect("metric names are valid constants"),
        }
    }

    /// Replaces the metrics (built with the agent's options).
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }
}
