//! `recorder-agent run`: start-up checks, loading, the collection thread, the HTTP server and
//! a graceful shutdown (final collection, state flush) on SIGINT/SIGTERM.

use std::{
    path::Path,
    sync::{Arc, mpsc},
    thread,
    time::Duration,
};

use anyhow::{Context as _, bail};
use tracing::{info, warn};

use super::{cgroup_events, collection_loop::CollectionLoop, publish_loop};
use crate::{
    attribution::{
        cgroup::{self, Resolver},
        kubernetes,
    },
    collection::Collector,
    config::{HttpAuth, KubernetesMode, MountBpffsArgs, RunArgs, RuntimePhase, UnpinArgs},
    export::{
        delivery::{self, Delivery},
        publish::{
            publisher::{KubeObjects, Publisher},
            spo,
            view::ClusterView,
            watch::{self, WatchReport},
        },
    },
    kernel::{self, LoadOptions, Recorder, SkipTask},
    profile::{
        state::{KernelSnapshot, Loaded, StateDir},
        syscalls::Arch,
    },
    report::Report,
    serve::{
        self, Shared,
        auth::{Gate, KubeReviewer},
        metrics::{Metrics, MetricsOptions},
        state::{ClusterStatus, Condition},
    },
};

/// The profile watch's reports, into `/api/v1/status`.
struct ClusterReport(Arc<Shared>);

impl ClusterReport {
    fn update(&self, change: impl FnOnce(&mut ClusterStatus)) {
        let mut status = self
            .0
            .status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        change(status.cluster.get_or_insert_with(ClusterStatus::default));
    }
}

impl WatchReport for ClusterReport {
    fn listed(&self, objects: usize) {
        self.update(|status| {
            status.objects = objects;
            status.synced = true;
            status.last_error = None;
        });
    }

    fn failed(&self, error: &str) {
        self.update(|status| status.last_error = Some(error.to_owned()));
    }
}

/// `recorder-agent unpin`: removes the pins an agent left (uninstall).
pub fn unpin(args: &UnpinArgs) -> anyhow::Result<std::process::ExitCode> {
    let removed = kernel::unpin_all(&args.bpffs)?;
    eprintln!(
        "recorder-agent: removed {removed} pin(s) under {}",
        kernel::pin_root(&args.bpffs).display()
    );
    Ok(std::process::ExitCode::SUCCESS)
}

/// `recorder-agent mount-bpffs PATH`: mounts a bpf filesystem at PATH unless one is there (the
/// DaemonSet's init container, so the distroless image needs no shell or mount binary).
pub fn mount_bpffs(args: &MountBpffsArgs) -> anyhow::Result<std::process::ExitCode> {
    if kernel::mount_bpffs(&args.path)? {
        eprintln!(
            "recorder-agent: mounted a bpf filesystem at {}",
            args.path.display()
        );
    } else {
        eprintln!(
            "recorder-agent: {} is a bpf filesystem already",
            args.path.display()
        );
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// Whether Kubernetes attribution is wanted, from the flag and the environment.
fn kubernetes_wanted(args: &RunArgs) -> bool {
    match args.kubernetes {
        KubernetesMode::On => true,
        KubernetesMode::Off => false,
        KubernetesMode::Auto => {
            std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
                || std::env::var_os("KUBECONFIG").is_some()
                || args.kubeconfig.is_some()
        }
    }
}

/// The authorization of HTTP callers `--http-auth` asks for (said at start), or an error when
/// it needs a Kubernetes client the agent does not have.
fn http_gate(
    args: &RunArgs,
    client: Option<&kube::Client>,
) -> anyhow::Result<Option<Arc<Gate<KubeReviewer>>>> {
    let client = match (args.http_auth, client) {
        (HttpAuth::None, _) | (HttpAuth::Auto, None) => {
            if client.is_some() || !args.listen.ip().is_loopback() {
                warn!(listen = %args.listen, "HTTP authorization is off: the API and /metrics \
                    answer anyone who reaches the listen address (--http-auth)");
            } else {
                info!(listen = %args.listen, "HTTP authorization is off (standalone, loopback)");
            }
            return Ok(None);
        }
        (HttpAuth::Kubernetes, None) => bail!(
            "--http-auth kubernetes needs Kubernetes mode (--kubernetes on, or auto with cluster access)"
        ),
        (HttpAuth::Kubernetes | HttpAuth::Auto, Some(client)) => client,
    };
    info!(listen = %args.listen, open = ?serve::auth::OPEN_PATHS,
        "HTTP authorization: Kubernetes bearer tokens (TokenReview) allowed to read /metrics \
         (nonResourceURLs) or the SyscallProfiles a request shows (SubjectAccessReview)");
    Ok(Some(Arc::new(Gate::new(KubeReviewer::new(client.clone())))))
}

/// Runs the agent until SIGINT/SIGTERM.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    // Kubernetes mode: the node name and a client first, so a misconfiguration fails before
    // anything is loaded.
    let kubernetes = if kubernetes_wanted(&args) {
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
    let gate = http_gate(&args, kubernetes.as_ref().map(|(client, _)| client))?;
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
    kernel::check_privileges()?;

    let metrics = Metrics::new(MetricsOptions {
        max_series: args.max_series as usize,
        kubernetes: kubernetes.is_some(),
        capacity: args.max_cgroups,
        arch: Some(arch),
    })?;
    let mut shared = Shared::new(arch, args.stable_after).with_metrics(metrics);
    let cluster_view =
        (kubernetes.is_some() && args.publish).then(|| Arc::new(ClusterView::default()));
    if let Some(view) = &cluster_view {
        shared = shared.with_cluster(Arc::clone(view));
    }
    let shared = Arc::new(shared);
    let attribution = kubernetes.map(|(client, options)| {
        shared.readiness.require(Condition::PodsSynced);
        if let Some(view) = &cluster_view {
            info!("watching the cluster's SyscallProfiles: this node delivers every workload's merged profile");
            tokio::spawn(watch::watch_profiles(
                client.clone(),
                KubeObjects::new(client.clone()),
                Arc::clone(view),
                arch,
                ClusterReport(Arc::clone(&shared)),
            ));
            if args.publish_spo {
                tokio::spawn(spo::publish_spo(
                    client.clone(),
                    Arc::clone(view),
                    arch,
                    options.node_name.clone(),
                ));
            }
        } else if args.publish_spo {
            warn!("--publish-spo needs --publish: no SeccompProfile is published");
        }
        if args.publish {
            shared.readiness.require(Condition::Publishing);
            let publisher = Publisher::new(
                KubeObjects::new(client.clone()),
                &options.node_name,
                arch,
                args.stable_after,
            );
            info!(node = %options.node_name, interval = ?args.publish_interval,
                "publishing this node's contributions to SyscallProfile objects");
            tokio::spawn(publish_loop::run(
                publisher,
                Arc::clone(&shared),
                options.node_name.clone(),
                args.publish_interval,
            ));
        }
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
    let saved_kernel = restore_profiles(&state, &shared)?;

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let mut recorder = Recorder::load_and_attach(LoadOptions {
        capacity: args.max_cgroups,
        skip: SkipTask::this_process()?,
        bpffs: (!args.no_pin).then(|| args.bpffs.clone()),
        cut_runtime: args.runtime_phase == RuntimePhase::Exclude,
    })?;
    info!(
        listen = %args.listen,
        cgroup_root = %cgroup_root.display(),
        capacity = recorder.capacity(),
        interval = ?args.interval,
        "attached to sys_enter; counting every cgroup"
    );
    shared.metrics.watch_programs(recorder.attached_programs());
    let unpinned = recorder.unpinned_reason().map(str::to_owned);
    shared.metrics.set_counters_pinned(unpinned.is_none());
    {
        let mut status = shared
            .status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        status.pinned = unpinned.is_none();
        status.unpinned_reason = unpinned;
    }
    let learned = match recorder.take_cgroup_events() {
        Some(events) => cgroup_events::spawn(events, cgroup_root.clone())?,
        None => cgroup_events::Learned::default(),
    };
    let mut collector = Collector::new(recorder, Resolver::new(cgroup_root), arch);
    continue_from(&mut collector, saved_kernel.as_ref());
    let delivery = match &args.seccomp_dir {
        Some(dir) => Some(start_delivery(dir, arch)?),
        None => None,
    };

    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let collection = CollectionLoop {
        collector,
        shared: Arc::clone(&shared),
        state,
        interval: args.interval,
        delivery,
        attribution,
        learned,
    };
    let collection = thread::Builder::new()
        .name("collector".into())
        .spawn(move || collection.run(&stop_rx))
        .context("starting the collection thread")?;

    let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
    let router = serve::router_with_auth(Arc::clone(&shared), gate);
    let server = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async {
                let _ = shutdown_rx.await;
            })
            .await
    });

    wait_for_signal().await?;
    info!("shutting down: final collection and state flush");
    let _ = stop_tx.send(());
    let joined = tokio::task::spawn_blocking(move || collection.join())
        .await
        .context("joining the collection thread")?;
    let _ = shutdown_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    if joined.is_err() {
        bail!("the collection thread panicked");
    }
    Ok(())
}

/// Loads the saved profiles into the store; returns how far they include the kernel counters.
/// A state file this agent cannot read was moved aside: the agent starts empty, loudly.
fn restore_profiles(state: &StateDir, shared: &Shared) -> anyhow::Result<Option<KernelSnapshot>> {
    match state.load().context("reading the state dir")? {
        Loaded::Empty => {
            info!(path = %state.file().display(), "no saved profiles");
            Ok(None)
        }
        Loaded::Profiles(profiles, kernel) => {
            info!(path = %state.file().display(), profiles = profiles.len(), "restored profiles");
            shared.profiles.update(|store| {
                for profile in profiles {
                    store.merge_profile(profile);
                }
            });
            Ok(kernel)
        }
        Loaded::MovedAside { reason, aside } => {
            warn!(
                path = %state.file().display(),
                aside = %aside.display(),
                error = %Report(&reason),
                "state file unreadable; moved aside, starting with no profiles"
            );
            Ok(None)
        }
    }
}

/// With pinned counters of a previous agent, continues from its saved snapshot: what was
/// counted while no agent ran is added, nothing twice.
fn continue_from(collector: &mut Collector, saved: Option<&KernelSnapshot>) {
    let continuity = collector.counters().continuity();
    if !continuity.reused_maps {
        return;
    }
    let restored = saved.is_some_and(|snapshot| collector.restore(snapshot));
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

fn start_delivery(dir: &Path, arch: Arch) -> anyhow::Result<Delivery> {
    let delivery = Delivery::new(dir, arch)?;
    info!(dir = %dir.join(delivery::SUBDIR).display(), "delivering profiles to the kubelet seccomp dir");
    Ok(delivery)
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
