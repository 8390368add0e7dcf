//! The thread that turns the kernel's cgroup creation events into (id, path) pairs while the
//! directory still exists: a container that lives shorter than a collection interval is gone
//! before the collector's tree walk would find it.

use std::{
    collections::HashSet,
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError},
    thread,
    time::Duration,
};

use anyhow::Context as _;
use tracing::warn;

use crate::{attribution::cgroup, kernel::CgroupEvents, report::Report};

/// Paths learned from cgroup creation events, waiting for the next round.
#[derive(Clone, Debug, Default)]
pub struct Learned(Arc<Mutex<Vec<(u64, String)>>>);

impl Learned {
    /// Takes what was learned since the last call.
    pub fn take(&self) -> Vec<(u64, String)> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn extend(&self, batch: Vec<(u64, String)>) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(batch);
    }
}

/// Starts the thread over `events` (paths relative to `root`, the cgroup2 mount). A blocking
/// poll thread instead of tokio's AsyncFd keeps the stat off the runtime and independent of
/// the HTTP side.
pub fn spawn(mut events: CgroupEvents, root: PathBuf) -> anyhow::Result<Learned> {
    let learned = Learned::default();
    let out = learned.clone();
    thread::Builder::new()
        .name("cgroup-events".into())
        .spawn(move || {
            // Hybrid hosts report each path once per hierarchy: remember the recent ids.
            let mut recent = HashSet::new();
            loop {
                if let Err(err) = events.wait(Duration::from_millis(500)) {
                    warn!(error = %Report(&err), "waiting for cgroup events failed; stopping them");
                    return;
                }
                let mut batch = Vec::new();
                events.drain(|path| {
                    let rel = path.trim_start_matches('/');
                    // Directories of v1-only hierarchies do not exist under the cgroup2 root.
                    if let Ok(id) = cgroup::cgroup_id(&root.join(rel))
                        && recent.insert(id)
                    {
                        batch.push((id, rel.to_owned()));
                    }
                });
                if recent.len() > 16_384 {
                    recent.clear();
                }
                if !batch.is_empty() {
                    out.extend(batch);
                }
            }
        })
        .context("starting the cgroup events thread")?;
    Ok(learned)
}
