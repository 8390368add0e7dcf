//! The collection thread: one round per interval (read the kernel counters, fold them into
//! the store in one write, rename and freeze baselines), then what follows from it — status and
//! metrics for the HTTP side, delivery to the seccomp dir, and state saves that let the slots
//! of removed cgroups go.

use std::{
    sync::{Arc, mpsc},
    time::{Duration, Instant, SystemTime},
};

use tracing::{info, warn};

use super::cgroup_events::Learned;
use crate::{
    attribution::kubernetes::Attribution,
    collection::{Collector, RoundStats},
    export::delivery::Delivery,
    kernel::KernelStats,
    profile::syscalls::GO_RUNTIME_CALLS,
    profile::{Identity, state::StateDir},
    report::Report,
    serve::{Shared, state::Condition},
};

/// How often learned profiles are flushed to the state dir (and on shutdown).
const STATE_SAVE_EVERY: Duration = Duration::from_secs(30);
/// How often at most the state is saved to let slots of removed cgroups go.
const RELEASE_SAVE_EVERY: Duration = Duration::from_secs(1);

/// Everything the collection thread owns; the HTTP side sees only [`Shared`].
#[derive(Debug)]
pub struct CollectionLoop {
    /// Rounds over the kernel counters.
    pub collector: Collector,
    /// What the HTTP side reads.
    pub shared: Arc<Shared>,
    /// Where profiles are saved.
    pub state: StateDir,
    /// Time between rounds.
    pub interval: Duration,
    /// Delivery to the kubelet seccomp dir, if asked for.
    pub delivery: Option<Delivery>,
    /// Kubernetes attribution, if on.
    pub attribution: Option<Arc<Attribution>>,
    /// Cgroup paths learned from creation events.
    pub learned: Learned,
}

impl CollectionLoop {
    /// Runs rounds until `stop` says so (or its sender is gone); the last round reads every
    /// slot and the state is saved.
    pub fn run(mut self, stop: &mpsc::Receiver<()>) {
        let mut next = Instant::now();
        let mut last_save = Instant::now();
        // The cluster view's generation the baselines were last aligned with.
        let mut aligned = None;
        // How many runtime needs every container profile was last given.
        let mut runtime_base = 0;
        loop {
            let stopping = match stop.recv_timeout(next.saturating_duration_since(Instant::now())) {
                Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => true,
                Err(mpsc::RecvTimeoutError::Timeout) => false,
            };
            next += self.interval;
            if stopping {
                // The last round reads every slot: without pinned maps the counters go with us.
                self.collector.sweep_next_round();
            }
            self.round(&mut aligned, &mut runtime_base);
            if let Some(delivery) = &mut self.delivery {
                delivery.deliver(&self.shared.profiles, self.shared.cluster.as_deref());
            }
            // Slots of removed cgroups are given back only once a save covers their last
            // counts; under churn that means a save about every second.
            let release_due =
                self.collector.has_pending_releases() && last_save.elapsed() >= RELEASE_SAVE_EVERY;
            if stopping || release_due || last_save.elapsed() >= STATE_SAVE_EVERY {
                last_save = Instant::now();
                self.save_and_release();
            }
            if stopping {
                return;
            }
            // After a long stall, do not try to catch up with a burst of rounds.
            if next < Instant::now() {
                next = Instant::now();
            }
        }
    }

    /// One round, folded into the store, recorded in the metrics and the status. `aligned` is
    /// the cluster view's generation the baselines were last aligned with.
    fn round(&mut self, aligned: &mut Option<u64>, runtime_base: &mut usize) {
        let started = Instant::now();
        for (id, path) in self.learned.take() {
            self.collector.resolver().insert(id, path);
        }
        let round = match &self.attribution {
            Some(attribution) => {
                self.collector
                    .collect(&|id: u64, path: Option<&str>, session: Option<&[u8]>| {
                        let own = attribution.identify(id, path);
                        match session {
                            Some(argv) => attribution.exec_identity(id, own, argv),
                            None => own,
                        }
                    })
            }
            None => {
                self.collector
                    .collect(&|_: u64, path: Option<&str>, session: Option<&[u8]>| {
                        let own = Identity::standalone(path);
                        match session {
                            Some(_) => own.exec_session(),
                            None => own,
                        }
                    })
            }
        };
        // The round's one write to the store: what it read (also if it failed part-way), the
        // renames it made possible, and the baselines that became due.
        let took = self.shared.profiles.update(|store| {
            let now = SystemTime::now();
            let mut new_syscall = self.collector.fold_into(store, now);
            // The runtime's needs after its filter applies join every container's profile; the
            // names are built only when that can change something: a new profile or syscall,
            // or a number the node's runtimes had not shown before (the set only grows).
            let base_len = self.collector.runtime_base_len();
            if base_len != 0 && (new_syscall || base_len != *runtime_base) {
                *runtime_base = base_len;
                let arch = self.shared.arch;
                let mut base: Vec<&str> = self
                    .collector
                    .runtime_base()
                    .filter_map(|nr| arch.syscall_name(nr))
                    .chain(
                        GO_RUNTIME_CALLS
                            .iter()
                            .copied()
                            .filter(|name| arch.syscall_number(name).is_some()),
                    )
                    .collect();
                base.sort_unstable();
                base.dedup();
                new_syscall |= store.allow_runtime_names(&base);
            }
            let renamed = match &self.attribution {
                Some(attribution) => attribution.apply_renames(store) > 0,
                None => false,
            };
            // The duration metric covers reading, resolving and folding, not the bookkeeping.
            let took = started.elapsed();
            // Drift is measured against the profile as it stood when it became stable, or
            // against what the cluster enforces: looked at again only when this node's sets or
            // the cluster's objects changed.
            store.freeze_stable_baselines(now, self.shared.stable_after);
            if let Some(view) = self.shared.cluster.as_deref().filter(|view| view.synced()) {
                let generation = view.generation();
                if new_syscall || renamed || *aligned != Some(generation) {
                    view.align_baselines(store, now);
                    *aligned = Some(generation);
                }
            }
            took
        });
        let kernel = match self.collector.counters().stats() {
            Ok(kernel) => Some(kernel),
            Err(err) => {
                warn!(error = %Report(&err), "reading kernel statistics failed");
                None
            }
        };
        self.shared
            .metrics
            .record_round(&round, kernel.as_ref(), took);
        match round {
            Ok(stats) => self.publish(&stats, kernel.unwrap_or_default(), started),
            Err(err) => warn!(error = %Report(&err), "collection failed"),
        }
    }

    /// Logs a round and shows it in `/api/v1/status`; the first one makes the agent ready.
    fn publish(&self, stats: &RoundStats, kernel: KernelStats, started: Instant) {
        let counters = self.collector.counters();
        tracing::debug!(
            cgroups = stats.cgroups,
            unresolved = stats.unresolved,
            released = stats.released,
            took_us = started.elapsed().as_micros() as u64,
            "collected"
        );
        if stats.lost_calls > 0 {
            warn!(
                lost_calls = stats.lost_calls,
                capacity = counters.capacity(),
                "cgroup capacity exhausted: calls of cgroups without a slot were not attributed (raise --max-cgroups)"
            );
        }
        {
            let mut status = self
                .shared
                .status
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            status.capacity = counters.capacity();
            status.cgroups = stats.cgroups;
            status.unresolved_cgroups = stats.unresolved;
            status.lost_calls = self.collector.lost_total();
            status.runtime_calls = self.collector.runtime_total();
            status.slot_exhausted = kernel.slot_exhausted;
            status.kernel_map_errors = kernel.map_errors;
            status.pinned_counters_reused = counters.continuity().reused_maps;
            status.last_collection_us = started.elapsed().as_micros() as u64;
            status.collections += 1;
        }
        if self.shared.readiness.met(Condition::FirstCollection) {
            info!(cgroups = stats.cgroups, "first collection done; ready");
        }
    }

    /// Saves the profiles with how far they include the kernel counters; once saved, the
    /// slots of removed cgroups can go (their last counts folded too).
    fn save_and_release(&mut self) {
        let profiles: Vec<_> = self.shared.profiles.read().iter().cloned().collect();
        match self
            .state
            .save(self.shared.arch, profiles, Some(self.collector.snapshot()))
        {
            Ok(()) => {
                let released = self.collector.release_pending();
                // What was released is folded also when a later release failed.
                self.shared
                    .profiles
                    .update(|store| self.collector.fold_into(store, SystemTime::now()));
                if let Err(err) = released {
                    warn!(error = %Report(&err), "giving slots back failed");
                }
            }
            Err(err) => warn!(error = %Report(&err), "saving profiles failed"),
        }
    }
}
