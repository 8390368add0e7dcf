//! `recorder-agent run`: start-up checks, loading, the collection thread, the HTTP server and
//! a graceful shutdown (final collection, state flush) on SIGINT/SIGTERM.

use std::{
    sync::{Arc, mpsc},
    thread,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, bail};
use tracing::{info, warn};

use crate::{
    attribution::cgroup::{self, Resolver},
    attribution::kubernetes,
    collection::Collector,
    config::{KubernetesMode, RunArgs},
    export::delivery::Delivery,
    kernel::{LoadOptions, Recorder},
    profile::Identity,
    profile::state::{Loaded, StateDir},
    profile::syscalls::Arch,
    report::Report,
    serve::{self, Shared, state::Condition},
};

/// How often learned profiles are flushed to the state dir (and on shutdown).
const STATE_SAVE_EVERY: Duration = Duration::from_secs(30);
/// How often at most the state is saved to let slots of removed cgroups go.
const RELEASE_SAVE_EVERY: Duration = Duration::from_secs(1);

/// `recorder-agent unpin`: removes the pins an agent left (uninstall).
pub fn unpin(args: &crate::config::UnpinArgs) -> anyhow::Result<std::process::ExitCode> {
    let removed = crate::kernel::unpin_all(&args.bpffs)?;
    eprintln!(
        "recorder-agent: removed {removed} pin(s) under {}",
        crate::kernel::pin_root(&args.bpffs).display()
    );
    Ok(std::process::ExitCode::SUCCESS)
}

/// Whether Kubernetes attribution is wanted, from the flag and the environment.
fn kubernetes_wanted(mode: KubernetesMode) -> bool {
    match mode {
        KubernetesMode::On => true,
        KubernetesMode::Off => false,
        KubernetesMode::Auto => {
            std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
                || std::env::var_os("KUBECONFIG").is_some()
        }
    }
}

/// Runs the agent until SIGINT/SIGTERM.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    // Kubernetes mode: the node name and a client first, so a misconfiguration fails before
    // anything is loaded.
    let kubernetes = if kubernetes_wanted(args.kubernetes)
        || (args.kubernetes == KubernetesMode::Auto && args.kubeconfig.is_some())
    {
        let node_name = args
            .node_name
            .clone()
            .filter(|name| !name.trim().is_empty())
            .ok_or(kubernetes::K8sError::NoNodeName)?;
        let options = kubernetes::Options {
            node_name,
            kubeconfig: args.kubeconfig.clone(),
        };
        Some((kubernetes::client(&options).await?, options))
    } else {
        None
    };
    let arch =
        Arch::host().context("unsupported architecture (x86_64 and aarch64 are supported)")?;
    let cgroup_root = cgroup::cgroup2_root(args.cgroup_root.as_deref())?;
    if cgroup::has_no_child_cgroups(&cgroup_root) {
        warn!(
            cgroup_root = %cgroup_root.display(),
            "the cgroup v2 hierarchy has no child cgroups: on a cgroup v1 host every process is in the v2 \
             root and syscalls cannot be told apart by container (use a cgroup v2 or hybrid host)"
        );
    }
    crate::kernel::check_privileges()?;

    let metrics = crate::serve::metrics::Metrics::new(crate::serve::metrics::MetricsOptions {
        max_series: args.max_series as usize,
        kubernetes: kubernetes.is_some(),
        capacity: args.max_cgroups,
        arch: Some(arch),
    })?;
    let shared = Arc::new(Shared::new(arch, args.stable_after).with_metrics(metrics));
    let attribution = kubernetes.map(|(client, options)| {
        shared.readiness.require(Condition::PodsSynced);
        let index = Arc::new(std::sync::Mutex::new(kubernetes::PodIndex::new()));
        let watch_shared = Arc::clone(&shared);
        let watch_index = Arc::clone(&index);
        info!(node = %options.node_name, "Kubernetes mode: watching this node's pods");
        tokio::spawn(async move {
            kubernetes::watch_pods(client, options.node_name, watch_index, || {
                watch_shared.readiness.met(Condition::PodsSynced);
            })
            .await;
        });
        Arc::new(kubernetes::Attribution::new(index))
    });
    let state = StateDir::new(args.state_dir.clone());
    let mut saved_kernel = None;
    match state.load().context("reading the state dir")? {
        Loaded::Empty => info!(path = %state.file().display(), "no saved profiles"),
        Loaded::Profiles(profiles, kernel) => {
            info!(path = %state.file().display(), profiles = profiles.len(), "restored profiles");
            saved_kernel = kernel;
            shared.profiles.update(|store| {
                for profile in profiles {
                    store.merge_profile(profile);
                }
            });
        }
        Loaded::MovedAside { reason, aside } => warn!(
            path = %state.file().display(),
            aside = %aside.display(),
            error = &reason as &dyn std::error::Error,
            "state file unreadable; moved aside, starting with no profiles"
        ),
    }

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let recorder = Recorder::load_and_attach(LoadOptions {
        capacity: args.max_cgroups,
        skip_tgid: std::process::id(),
        bpffs: (!args.no_pin).then(|| args.bpffs.clone()),
    })?;
    let continuity = recorder.continuity();
    info!(
        listen = %args.listen,
        cgroup_root = %cgroup_root.display(),
        capacity = recorder.capacity(),
        interval = ?args.interval,
        "attached to sys_enter; counting every cgroup"
    );
    let mut recorder = recorder;
    let learned = spawn_cgroup_events(&mut recorder, cgroup_root.clone())?;
    let mut collector = Collector::new(recorder, Resolver::new(cgroup_root), arch);
    if continuity.reused_maps {
        let restored = saved_kernel
            .as_ref()
            .is_some_and(|snapshot| collector.restore(snapshot));
        info!(
            programs_kept_attached = continuity.reused_programs,
            baselines_restored = restored,
            "continuing from pinned counters: syscalls made while no agent ran are included"
        );
        if !restored {
            warn!(
                "no saved baselines for the pinned counters: what they counted before is added again to the saved profiles"
            );
        }
    }
    let delivery = match &args.seccomp_dir {
        Some(dir) => {
            let delivery = Delivery::new(dir, arch)?;
            info!(dir = %dir.join(crate::export::delivery::SUBDIR).display(), "delivering profiles to the kubelet seccomp dir");
            Some(delivery)
        }
        None => None,
    };

    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let loop_shared = Arc::clone(&shared);
    let interval = args.interval;
    let collection = thread::Builder::new()
        .name("collector".into())
        .spawn(move || {
            collection_loop(
                collector,
                &loop_shared,
                &state,
                interval,
                &stop_rx,
                delivery,
                &Attributing {
                    attribution,
                    learned,
                },
            )
        })
        .context("starting the collection thread")?;

    let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, serve::router(Arc::clone(&shared)))
            .with_graceful_shutdown(async {
                let _ = shutdown_rx.await;
            })
            .await
    });

    wait_for_signal().await?;
    info!("shutting down: final collection and state flush");
    let _ = stop_tx.send(());
    let result = tokio::task::spawn_blocking(move || collection.join())
        .await
        .context("joining the collection thread")?;
    let _ = shutdown_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    match result {
        Ok(result) => result,
        Err(_) => bail!("the collection thread panicked"),
    }
}

async fn wait_for_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => {}
        result = tokio::signal::ctrl_c() => result.context("waiting for SIGINT")?,
    }
    Ok(())
}

fn identify(_cgroup: u64, path: Option<&str>) -> Identity {
    path.map_or_else(Identity::unresolved, Identity::from_cgroup_path)
}

/// Paths learned from cgroup creation events, waiting for the next round.
type Learned = Arc<std::sync::Mutex<Vec<(u64, String)>>>;

/// What the collection loop needs besides the collector for Kubernetes attribution.
struct Attributing {
    attribution: Option<Arc<kubernetes::Attribution>>,
    learned: Learned,
}

/// Starts the thread that turns cgroup creation events into (id, path) pairs while the
/// directory exists: a container that lives shorter than an interval is gone before the
/// collector's tree walk. A blocking poll thread instead of tokio's AsyncFd keeps the stat
/// off the runtime and independent of the HTTP side.
fn spawn_cgroup_events(
    recorder: &mut Recorder,
    root: std::path::PathBuf,
) -> anyhow::Result<Learned> {
    let learned: Learned = Arc::default();
    let Some(mut events) = recorder.take_cgroup_events() else {
        return Ok(learned);
    };
    let out = Arc::clone(&learned);
    thread::Builder::new()
        .name("cgroup-events".into())
        .spawn(move || {
            // Hybrid hosts report each path once per hierarchy: remember the recent ids.
            let mut recent = std::collections::HashSet::new();
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
                    out.lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .extend(batch);
                }
            }
        })
        .context("starting the cgroup events thread")?;
    Ok(learned)
}

fn collection_loop(
    mut collector: Collector,
    shared: &Shared,
    state: &StateDir,
    interval: Duration,
    stop: &mpsc::Receiver<()>,
    mut delivery: Option<Delivery>,
    attributing: &Attributing,
) -> anyhow::Result<()> {
    let mut next = Instant::now();
    let mut last_save = Instant::now();
    loop {
        let stopping = match stop.recv_timeout(next.saturating_duration_since(Instant::now())) {
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => true,
            Err(mpsc::RecvTimeoutError::Timeout) => false,
        };
        next += interval;
        if stopping {
            // The last round reads every slot: without pinned maps the counters go with us.
            collector.sweep_next_round();
        }
        let started = Instant::now();
        for (id, path) in std::mem::take(
            &mut *attributing
                .learned
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        ) {
            collector.resolver().insert(id, path);
        }
        let round = match &attributing.attribution {
            Some(attribution) => {
                collector.collect(&|id: u64, path: Option<&str>| attribution.identify(id, path))
            }
            None => collector.collect(&identify),
        };
        // The round's one write to the store: what it read (also if it failed part-way), the
        // renames it made possible, and the baselines that became due.
        let took = shared.profiles.update(|store| {
            let now = SystemTime::now();
            collector.fold_into(store, now);
            if let Some(attribution) = &attributing.attribution {
                attribution.apply_renames(store);
            }
            // The duration metric covers reading, resolving and folding, not the bookkeeping.
            let took = started.elapsed();
            // Drift is measured against the profile as it stood when it became stable.
            store.freeze_stable_baselines(now, shared.stable_after);
            took
        });
        shared
            .metrics
            .record_round(collector.counters(), &round, took);
        match round {
            Ok(stats) => {
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
                        capacity = collector.counters().capacity(),
                        "cgroup capacity exhausted: calls of cgroups without a slot were not attributed (raise --max-cgroups)"
                    );
                }
                let kernel = collector.counters().stats().unwrap_or_default();
                {
                    let mut status = shared
                        .status
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    status.capacity = collector.counters().capacity();
                    status.cgroups = stats.cgroups;
                    status.unresolved_cgroups = stats.unresolved;
                    status.lost_calls = collector.lost_total();
                    status.slot_exhausted = kernel.slot_exhausted;
                    status.kernel_map_errors = kernel.map_errors;
                    status.pinned_counters_reused = collector.counters().continuity().reused_maps;
                    status.last_collection_us = started.elapsed().as_micros() as u64;
                    status.collections += 1;
                }
                if shared.readiness.met(Condition::FirstCollection) {
                    info!(cgroups = stats.cgroups, "first collection done; ready");
                }
            }
            Err(err) => warn!(error = %Report(&err), "collection failed"),
        }
        if let Some(delivery) = &mut delivery {
            delivery.deliver(&shared.profiles);
        }
        // Slots of removed cgroups are given back only once a save covers their last counts;
        // under churn that means a save about every second.
        let release_due =
            collector.has_pending_releases() && last_save.elapsed() >= RELEASE_SAVE_EVERY;
        if stopping || release_due || last_save.elapsed() >= STATE_SAVE_EVERY {
            last_save = Instant::now();
            let profiles: Vec<_> = shared.profiles.read().iter().cloned().collect();
            match state.save(shared.arch, profiles, Some(collector.snapshot())) {
                Ok(()) => {
                    let released = collector.release_pending();
                    // What was released is folded also when a later release failed.
                    shared
                        .profiles
                        .update(|store| collector.fold_into(store, SystemTime::now()));
                    if let Err(err) = released {
                        warn!(error = %Report(&err), "giving slots back failed");
                    }
                }
                Err(err) => warn!(error = %Report(&err), "saving profiles failed"),
            }
        }
        if stopping {
            return Ok(());
        }
        // After a long stall, do not try to catch up with a burst of rounds.
        if next < Instant::now() {
            next = Instant::now();
        }
    }
}
