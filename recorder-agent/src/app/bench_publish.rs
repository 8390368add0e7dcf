//! `bench-publish`, the agent's side of `cargo xtask bench publish`: what publishing
//! SyscallProfiles costs a real API server. Simulated nodes, one [`Publisher`] and one task
//! each (real agents are separate processes that publish concurrently), all over one shared
//! kube client, publish synthetic profiles of many workloads: first a learning phase in which
//! new syscalls keep appearing (it holds the initial publish of every contribution), then a
//! drain (every node's last learning write lands), then a steady state in which only call
//! counts and times change, which by contract causes no write at all. Prints one JSON line:
//! per phase the API writes, conflicts and writes per minute; the objects' sizes; one object's
//! size extrapolated to 1,000 nodes.

use std::{
    process::ExitCode,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, bail};
use k8s_openapi::{api::core::v1::Namespace, apimachinery::pkg::apis::meta::v1::ObjectMeta};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, PostParams},
};
use serde_json::{Value, json};
use tokio::{sync::watch, task::JoinSet};

use crate::{
    attribution::kubernetes::{self, Options},
    config::BenchPublishArgs,
    export::publish::{
        GROUP, KIND, SyscallProfileStatus, VERSION, object_name,
        publisher::{KubeObjects, ObjectError, ProfileObjects, Publisher, SyscallProfile},
        recompute, spec_of,
    },
    profile::{Identity, Profile, syscalls::Arch},
    report::Report,
};

/// etcd's default request limit (`--max-request-bytes`), which bounds one stored object.
const ETCD_LIMIT: usize = 3 * 512 * 1024;
/// Per mille of a node's profiles that gain a syscall in each learning pass.
const LEARN_PER_MILLE: u64 = 50;
/// Syscalls every workload may use beyond the core; the first [`SHARED_EXTRAS`] of them every
/// node sees, the rest only some nodes (so merged sets differ from node sets).
const CANDIDATES: usize = 30;
/// Workload-specific syscalls every node of the workload sees.
const SHARED_EXTRAS: usize = 10;
/// Most node-specific syscalls a node starts with (0 to this many).
const MAX_NODE_EXTRAS: usize = 4;
/// How long the drain may take before the steady phase starts anyway.
const MAX_DRAIN: Duration = Duration::from_secs(60);
/// Nodes of the extrapolated object.
const EXTRAPOLATED_NODES: usize = 1_000;

/// What nearly every process calls: the common core of every simulated set (x86_64 names).
const CORE: [&str; 40] = [
    "read",
    "write",
    "openat",
    "close",
    "fstat",
    "newfstatat",
    "lseek",
    "mmap",
    "mprotect",
    "munmap",
    "brk",
    "rt_sigaction",
    "rt_sigprocmask",
    "rt_sigreturn",
    "ioctl",
    "pread64",
    "access",
    "getpid",
    "getuid",
    "getgid",
    "geteuid",
    "getegid",
    "futex",
    "epoll_wait",
    "epoll_ctl",
    "epoll_create1",
    "clone3",
    "execve",
    "exit_group",
    "arch_prctl",
    "set_tid_address",
    "set_robust_list",
    "rseq",
    "prlimit64",
    "getrandom",
    "sched_getaffinity",
    "madvise",
    "nanosleep",
    "clock_nanosleep",
    "fcntl",
];

/// A small deterministic generator (splitmix64): the same run makes the same sets.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Below `n` (which is not 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// In [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }
}

/// The simulated workloads: each one's candidate syscalls beyond the core.
#[derive(Debug)]
struct Workloads {
    namespace: String,
    /// Every x86_64 name outside the core.
    pool: Vec<&'static str>,
    /// Per workload, [`CANDIDATES`] names of the pool.
    candidates: Vec<Vec<&'static str>>,
}

impl Workloads {
    fn new(namespace: &str, count: usize) -> Self {
        let pool: Vec<&'static str> = (0..512)
            .filter_map(|nr| Arch::X86_64.syscall_name(nr))
            .filter(|name| !CORE.contains(name))
            .collect();
        let candidates = (0..count)
            .map(|w| {
                let mut rng = Rng(w as u64);
                let mut names = pool.clone();
                rng.shuffle(&mut names);
                names.truncate(CANDIDATES);
                names
            })
            .collect();
        Self {
            namespace: namespace.to_owned(),
            pool,
            candidates,
        }
    }

    fn identity(&self, workload: usize) -> Identity {
        Identity::new(
            &self.namespace,
            "Deployment",
            &format!("w{workload:04}"),
            "app",
        )
    }

    /// What node `node` has seen of every workload, in its own order (an agent's store is a
    /// hash map: each agent walks its profiles in another order).
    fn node_profiles(&self, node: usize, now: SystemTime) -> (Vec<Profile>, Vec<usize>) {
        let mut rng = Rng(0x5EED_0000 + node as u64);
        let mut order: Vec<usize> = (0..self.candidates.len()).collect();
        rng.shuffle(&mut order);
        let profiles = order
            .iter()
            .map(|&w| {
                let mut profile = Profile::new(self.identity(w), now);
                let own = rng.below(MAX_NODE_EXTRAS + 1);
                let extras = &self.candidates[w][SHARED_EXTRAS..];
                let own: Vec<&str> = (0..own).map(|_| extras[rng.below(extras.len())]).collect();
                let names = CORE
                    .iter()
                    .chain(&self.candidates[w][..SHARED_EXTRAS])
                    .chain(&own);
                for name in names {
                    profile
                        .syscalls
                        .insert((*name).to_owned(), 1 + rng.below(1000) as u64);
                }
                profile
            })
            .collect();
        (profiles, order)
    }

    /// A syscall `profile` of `workload` has not called: one of the workload's candidates
    /// while there are some left, else any.
    fn new_syscall(&self, workload: usize, profile: &Profile, rng: &mut Rng) -> &'static str {
        let unseen = |names: &[&'static str]| -> Vec<&'static str> {
            names
                .iter()
                .copied()
                .filter(|name| !profile.syscalls.contains_key(*name))
                .collect()
        };
        let mut left = unseen(&self.candidates[workload]);
        if left.is_empty() {
            left = unseen(&self.pool);
        }
        left.get(rng.below(left.len().max(1)))
            .copied()
            .unwrap_or("read")
    }
}

/// One simulated node's profiles.
#[derive(Debug)]
struct Node {
    name: String,
    profiles: Vec<Profile>,
    /// The workload index of each profile.
    workloads: Vec<usize>,
    rng: Rng,
}

impl Node {
    /// Busy workloads: more calls of syscalls already seen (never a write).
    fn count_calls(&mut self, now: SystemTime) {
        for profile in &mut self.profiles {
            if let Some(count) = profile.syscalls.values_mut().next() {
                *count += 1;
            }
            profile.last_seen = now;
        }
    }

    /// Learning: about [`LEARN_PER_MILLE`] of the profiles call a syscall new to this node.
    fn learn(&mut self, workloads: &Workloads, now: SystemTime) -> u64 {
        let mut learned = 0;
        for (profile, &workload) in self.profiles.iter_mut().zip(&self.workloads) {
            if self.rng.next() % 1000 < LEARN_PER_MILLE {
                let name = workloads.new_syscall(workload, profile, &mut self.rng);
                profile.syscalls.insert(name.to_owned(), 1);
                profile.last_new_syscall = now;
                learned += 1;
            }
        }
        learned
    }
}

/// The bench's phases, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Learning = 0,
    Drain = 1,
    Steady = 2,
    Done = 3,
}

/// API calls and pass results of one phase (an event counts in the phase it happens in).
#[derive(Debug, Default)]
struct Counts {
    gets: AtomicU64,
    creates: AtomicU64,
    status_replaces: AtomicU64,
    conflicts: AtomicU64,
    failed: AtomicU64,
    passes: AtomicU64,
    new_syscalls: AtomicU64,
}

impl Counts {
    fn json(&self, seconds: f64) -> Value {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let writes = load(&self.creates) + load(&self.status_replaces);
        json!({
            "seconds": round(seconds),
            "api_writes": writes,
            "creates": load(&self.creates),
            "status_replaces": load(&self.status_replaces),
            "conflicts": load(&self.conflicts),
            "failed": load(&self.failed),
            "gets": load(&self.gets),
            "passes": load(&self.passes),
            "new_syscalls": load(&self.new_syscalls),
            "writes_per_minute": round(writes as f64 * 60.0 / seconds.max(0.001)),
        })
    }
}

fn round(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

/// Counts per phase, and which phase it is.
#[derive(Debug, Default)]
struct Stats {
    phase: AtomicUsize,
    phases: [Counts; 4],
}

impl Stats {
    fn now(&self) -> &Counts {
        &self.phases[self.phase.load(Ordering::Relaxed).min(3)]
    }
}

/// Progress the controller waits on.
#[derive(Debug, Default)]
struct Progress {
    /// Simulated nodes.
    nodes: usize,
    first_passes: Mutex<Vec<Duration>>,
    /// Nodes whose every contribution is in place.
    initial_done: AtomicUsize,
    initial_done_at: Mutex<Option<Duration>>,
    /// Nodes that finished a complete pass that started after learning.
    drained: AtomicUsize,
}

/// [`KubeObjects`] counting its calls: the publisher's own stats say what it meant to do, this
/// says what the API server was asked.
#[derive(Clone, Debug)]
struct Counted {
    inner: KubeObjects,
    stats: Arc<Stats>,
}

impl ProfileObjects for Counted {
    async fn get(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<SyscallProfile>, ObjectError> {
        let result = self.inner.get(namespace, name).await;
        self.stats.now().gets.fetch_add(1, Ordering::Relaxed);
        result
    }

    async fn create(&self, object: &SyscallProfile) -> Result<SyscallProfile, ObjectError> {
        let result = self.inner.create(object).await;
        self.count(&result, |counts| &counts.creates);
        result
    }

    async fn replace_status(&self, object: &SyscallProfile) -> Result<SyscallProfile, ObjectError> {
        let result = self.inner.replace_status(object).await;
        self.count(&result, |counts| &counts.status_replaces);
        result
    }
}

impl Counted {
    fn count<T>(&self, result: &Result<T, ObjectError>, written: impl Fn(&Counts) -> &AtomicU64) {
        let counts = self.stats.now();
        match result {
            Ok(_) => written(counts).fetch_add(1, Ordering::Relaxed),
            Err(ObjectError::Conflict(_)) => counts.conflicts.fetch_add(1, Ordering::Relaxed),
            Err(_) => 0,
        };
    }
}

/// Sleeps `duration`; true when the bench ended meanwhile.
async fn sleep_or_done(phase: &mut watch::Receiver<Phase>, duration: Duration) -> bool {
    tokio::select! {
        () = tokio::time::sleep(duration) => false,
        _ = phase.wait_for(|phase| *phase == Phase::Done) => true,
    }
}

/// One simulated agent: a pass every `interval` (jittered by ±10 %, the first one at a random
/// point of the first interval, as agents start at different times).
#[allow(clippy::too_many_arguments)]
async fn node_task(
    mut node: Node,
    mut publisher: Publisher<Counted>,
    workloads: Arc<Workloads>,
    stats: Arc<Stats>,
    progress: Arc<Progress>,
    mut phase: watch::Receiver<Phase>,
    interval: Duration,
    started: Instant,
) {
    let contributions = node.profiles.len();
    if sleep_or_done(&mut phase, interval.mul_f64(node.rng.unit())).await {
        return;
    }
    let (mut first, mut complete_once, mut drained) = (true, false, false);
    loop {
        let now_phase = *phase.borrow_and_update();
        if now_phase == Phase::Done {
            return;
        }
        let pass_started = Instant::now();
        let now = SystemTime::now();
        node.count_calls(now);
        // The first pass publishes what the node has; learning goes on from the second.
        if now_phase == Phase::Learning && !first {
            let learned = node.learn(&workloads, now);
            stats.phases[Phase::Learning as usize]
                .new_syscalls
                .fetch_add(learned, Ordering::Relaxed);
        }
        let failed = match publisher.pass(&node.profiles, now).await {
            Ok(pass) => pass.failed,
            Err(err) => {
                tracing::warn!(node = node.name, error = %Report(&err), "pass stopped");
                1
            }
        };
        let counts = stats.now();
        counts.passes.fetch_add(1, Ordering::Relaxed);
        counts.failed.fetch_add(failed, Ordering::Relaxed);
        let complete = failed == 0 && publisher.published() == contributions;
        if first {
            first = false;
            lock(&progress.first_passes).push(pass_started.elapsed());
        }
        if complete && !complete_once {
            complete_once = true;
            if progress.initial_done.fetch_add(1, Ordering::SeqCst) + 1 == progress.nodes {
                *lock(&progress.initial_done_at) = Some(started.elapsed());
            }
        }
        if now_phase == Phase::Drain && complete && !drained {
            drained = true;
            progress.drained.fetch_add(1, Ordering::SeqCst);
        }
        let next = pass_started + interval.mul_f64(0.9 + 0.2 * node.rng.unit());
        if sleep_or_done(&mut phase, next.saturating_duration_since(Instant::now())).await {
            return;
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn median_max<T: Ord + Copy + Default>(mut values: Vec<T>) -> (T, T) {
    values.sort_unstable();
    (
        values.get(values.len() / 2).copied().unwrap_or_default(),
        values.last().copied().unwrap_or_default(),
    )
}

/// Removes a namespace left by an earlier run, then creates it.
async fn fresh_namespace(client: &Client, name: &str) -> anyhow::Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    let deadline = Instant::now() + Duration::from_secs(180);
    while let Some(namespace) = api.get_opt(name).await? {
        if namespace.metadata.deletion_timestamp.is_none() {
            eprintln!("bench-publish: deleting namespace {name} left by an earlier run");
            api.delete(name, &DeleteParams::default()).await?;
        }
        if Instant::now() > deadline {
            bail!("namespace {name} is still terminating after 180 s");
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    api.create(
        &PostParams::default(),
        &Namespace {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        },
    )
    .await
    .with_context(|| format!("creating namespace {name}"))?;
    Ok(())
}

/// Every object of the namespace, as the API returns them.
async fn list_all(api: &Api<SyscallProfile>) -> anyhow::Result<Vec<SyscallProfile>> {
    let mut objects = Vec::new();
    let mut params = ListParams::default().limit(200);
    loop {
        let page = api.list(&params).await?;
        let token = page.metadata.continue_.clone().filter(|t| !t.is_empty());
        objects.extend(page.items);
        match token {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(objects),
        }
    }
}

/// The serialized size of an object as stored (JSON, which is how etcd holds custom
/// resources).
fn json_size(object: &SyscallProfile) -> usize {
    serde_json::to_vec(object).map_or(0, |bytes| bytes.len())
}

/// An object with `nodes` entries, the largest measured object's entries repeated under
/// cloud-length node names, merged by the pure rules the publisher uses.
fn extrapolated(largest: &SyscallProfile, identity: &Identity, nodes: usize) -> SyscallProfile {
    let entries = largest
        .status
        .as_ref()
        .map(|status| status.nodes.clone())
        .unwrap_or_default();
    let mut status = SyscallProfileStatus::default();
    if !entries.is_empty() {
        status.nodes = (0..nodes)
            .map(|i| {
                let mut entry = entries[i % entries.len()].clone();
                entry.node = format!("ip-10-0-{}-{}.eu-west-1.compute.internal", i / 250, i % 250);
                entry
            })
            .collect();
        status.nodes.sort_by(|a, b| a.node.cmp(&b.node));
    }
    recompute(&mut status, std::time::SystemTime::now());
    SyscallProfile {
        api_version: format!("{GROUP}/{VERSION}"),
        kind: KIND.to_owned(),
        metadata: ObjectMeta {
            name: object_name(identity).ok(),
            namespace: Some(identity.namespace.clone()),
            ..ObjectMeta::default()
        },
        spec: spec_of(identity),
        status: Some(status),
    }
}

async fn measure(args: &BenchPublishArgs, client: Client) -> anyhow::Result<Value> {
    let namespace = args.namespace.as_str();
    fresh_namespace(&client, namespace).await?;
    let profiles_api: Api<SyscallProfile> = Api::namespaced(client.clone(), namespace);
    profiles_api
        .list(&ListParams::default().limit(1))
        .await
        .context("listing SyscallProfiles (is the CRD installed?)")?;

    let node_count = args.nodes as usize;
    let workloads = Arc::new(Workloads::new(namespace, args.workloads as usize));
    let stats = Arc::new(Stats::default());
    let progress = Arc::new(Progress {
        nodes: node_count,
        ..Progress::default()
    });
    let (phase_tx, phase_rx) = watch::channel(Phase::Learning);
    let started = Instant::now();
    let now = SystemTime::now();
    let mut tasks = JoinSet::new();
    for n in 0..node_count {
        let (profiles, order) = workloads.node_profiles(n, now);
        let name = format!("bench-node-{n:02}");
        let publisher = Publisher::new(
            Counted {
                inner: KubeObjects::new(client.clone()),
                stats: stats.clone(),
            },
            &name,
            Arch::X86_64,
            args.stable_after,
        );
        let node = Node {
            name,
            profiles,
            workloads: order,
            rng: Rng(0xB0DE_0000 + n as u64),
        };
        tasks.spawn(node_task(
            node,
            publisher,
            workloads.clone(),
            stats.clone(),
            progress.clone(),
            phase_rx.clone(),
            args.interval,
            started,
        ));
    }
    let set_phase = |phase: Phase| {
        stats.phase.store(phase as usize, Ordering::SeqCst);
        let _ = phase_tx.send(phase);
    };
    let say = |what: &str| {
        let counts = stats.now();
        eprintln!(
            "bench-publish: {:>4.0} s {what}: writes {}, conflicts {}, failed {}, nodes complete {}/{node_count}",
            started.elapsed().as_secs_f64(),
            counts.creates.load(Ordering::Relaxed) + counts.status_replaces.load(Ordering::Relaxed),
            counts.conflicts.load(Ordering::Relaxed),
            counts.failed.load(Ordering::Relaxed),
            progress.initial_done.load(Ordering::Relaxed),
        );
    };

    // Learning: at least `--learning`, and until every contribution was published once.
    let mut ticks = 0u64;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        ticks += 1;
        let elapsed = started.elapsed();
        let initial = progress.initial_done.load(Ordering::SeqCst) >= node_count;
        if ticks.is_multiple_of(10) {
            say("learning");
        }
        if elapsed >= args.learning && initial {
            break;
        }
        if elapsed >= args.learning.max(args.max_initial) {
            eprintln!("bench-publish: the initial publish is not complete; moving on");
            break;
        }
    }
    let learning_seconds = started.elapsed().as_secs_f64();
    set_phase(Phase::Drain);
    let drain_started = Instant::now();
    while progress.drained.load(Ordering::SeqCst) < node_count
        && drain_started.elapsed() < MAX_DRAIN
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let drained = progress.drained.load(Ordering::SeqCst) >= node_count;
    let drain_seconds = drain_started.elapsed().as_secs_f64();
    say("drained");

    // The objects as learning left them (reads only: not counted as the nodes' calls).
    let objects = list_all(&profiles_api).await?;
    let sizes: Vec<usize> = objects.iter().map(json_size).collect();
    let node_entries: Vec<usize> = objects
        .iter()
        .map(|o| o.status.as_ref().map_or(0, |s| s.nodes.len()))
        .collect();
    let (median_size, max_size) = median_max(sizes.clone());
    let (median_entries, _) = median_max(node_entries);
    let largest = objects
        .iter()
        .max_by_key(|o| json_size(o))
        .cloned()
        .unwrap_or_default();

    set_phase(Phase::Steady);
    let steady_started = Instant::now();
    let mut ticks = 0u64;
    while steady_started.elapsed() < args.steady {
        tokio::time::sleep(Duration::from_secs(1)).await;
        ticks += 1;
        if ticks.is_multiple_of(10) {
            say("steady");
        }
    }
    let steady_seconds = steady_started.elapsed().as_secs_f64();
    set_phase(Phase::Done);
    // A node still in its first pass would take minutes to finish it: stop every node now.
    tasks.shutdown().await;

    // 1,000 nodes: built by the merge rules, then written once and read back as a real check.
    let identity = workloads.identity(0);
    let extrapolated_identity = Identity::new(
        &identity.namespace,
        "Deployment",
        "extrapolated-1000-nodes",
        "app",
    );
    let big = extrapolated(&largest, &extrapolated_identity, EXTRAPOLATED_NODES);
    let built_size = json_size(&big);
    let objects_api = KubeObjects::new(client.clone());
    let stored_size = async {
        let mut created = objects_api.create(&big).await?;
        created.status = big.status.clone();
        objects_api.replace_status(&created).await?;
        let stored = objects_api
            .get(
                namespace,
                created.metadata.name.as_deref().unwrap_or_default(),
            )
            .await?;
        Ok::<_, ObjectError>(stored.as_ref().map_or(0, json_size))
    }
    .await;
    let stored_size = match stored_size {
        Ok(size) => json!(size),
        Err(err) => {
            // A refusal echoes the whole object: the start says why.
            let text: String = err.to_string().chars().take(300).collect();
            eprintln!("bench-publish: writing the 1,000-node object failed: {text}");
            json!(format!("error: {text}"))
        }
    };

    let (median_first, max_first) = median_max(lock(&progress.first_passes).clone());
    let initial_at = *lock(&progress.initial_done_at);
    let contributions = u64::from(args.workloads) * u64::from(args.nodes);
    // Each contribution's first write is one status replace: at the learning phase's rate,
    // this is how long all of them take (what an incomplete initial publish would need).
    let learning = &stats.phases[Phase::Learning as usize];
    let replaces_per_second =
        learning.status_replaces.load(Ordering::Relaxed) as f64 / learning_seconds.max(0.001);
    let estimated_initial = contributions as f64 / replaces_per_second.max(0.001);
    Ok(json!({
        "workloads": args.workloads,
        "nodes": args.nodes,
        "contributions": contributions,
        "interval_s": args.interval.as_secs_f64(),
        "learn_per_pass": LEARN_PER_MILLE as f64 / 1000.0,
        "initial_publish": {
            "complete": initial_at.is_some(),
            "seconds": initial_at.map(|d| round(d.as_secs_f64())),
            "status_replaces_per_s": round(replaces_per_second),
            "estimated_seconds": round(estimated_initial),
            "nodes_complete": progress.initial_done.load(Ordering::SeqCst),
            "first_pass_median_s": round(median_first.as_secs_f64()),
            "first_pass_max_s": round(max_first.as_secs_f64()),
        },
        "learning": stats.phases[Phase::Learning as usize].json(learning_seconds),
        "drain": {
            "complete": drained,
            "counts": stats.phases[Phase::Drain as usize].json(drain_seconds),
        },
        "steady": stats.phases[Phase::Steady as usize].json(steady_seconds),
        "object_size": {
            "objects": objects.len(),
            "node_entries_median": median_entries,
            "median_bytes": median_size,
            "max_bytes": max_size,
            "etcd_limit_bytes": ETCD_LIMIT,
            "max_ratio_of_limit": max_size as f64 / ETCD_LIMIT as f64,
        },
        "extrapolated": {
            "nodes": EXTRAPOLATED_NODES,
            "built_bytes": built_size,
            "stored_bytes": stored_size,
            "ratio_of_limit": built_size as f64 / ETCD_LIMIT as f64,
        },
    }))
}

/// `bench-publish`: measure, then delete the namespace (also after an error or Ctrl-C).
pub fn run(args: &BenchPublishArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let client = kubernetes::client(&Options {
            node_name: String::new(),
            kubeconfig: args.kubeconfig.clone(),
        })
        .await?;
        let result = tokio::select! {
            result = measure(args, client.clone()) => result,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        };
        // Namespace deletion removes the objects; it finishes in the background.
        let namespaces: Api<Namespace> = Api::all(client);
        match namespaces
            .delete(&args.namespace, &DeleteParams::default())
            .await
        {
            Ok(_) => eprintln!("bench-publish: namespace {} deleted", args.namespace),
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(err) => eprintln!(
                "bench-publish: deleting namespace {}: {}",
                args.namespace,
                Report(&err)
            ),
        }
        println!("{}", result?);
        Ok(ExitCode::SUCCESS)
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn simulated_sets_are_real_names_and_differ_between_nodes() {
        for name in CORE {
            assert!(Arch::X86_64.syscall_number(name).is_some(), "{name}");
        }
        let workloads = Workloads::new("bench", 20);
        let now = SystemTime::UNIX_EPOCH;
        let sets = |node: usize| {
            let (profiles, order) = workloads.node_profiles(node, now);
            let mut by_workload: Vec<(usize, BTreeSet<String>)> = order
                .into_iter()
                .zip(profiles)
                .map(|(w, p)| (w, p.syscalls.into_keys().collect()))
                .collect();
            by_workload.sort();
            by_workload
        };
        let (a, b) = (sets(0), sets(1));
        assert_eq!(a.len(), 20);
        assert!(
            a.iter()
                .all(|(_, set)| set.len() >= CORE.len() + SHARED_EXTRAS)
        );
        assert!(a != b, "node-specific extras");
        // Merged sets are larger than most node sets.
        let larger = a
            .iter()
            .zip(&b)
            .filter(|((_, x), (_, y))| x.union(y).count() > x.len())
            .count();
        assert!(larger > 5, "{larger}");
    }

    #[test]
    fn learning_adds_new_syscalls_to_about_five_percent() {
        let workloads = Workloads::new("bench", 1000);
        let (profiles, order) = workloads.node_profiles(3, SystemTime::UNIX_EPOCH);
        let before: usize = profiles.iter().map(|p| p.syscalls.len()).sum();
        let mut node = Node {
            name: "n".into(),
            profiles,
            workloads: order,
            rng: Rng(1),
        };
        let learned = node.learn(&workloads, SystemTime::UNIX_EPOCH);
        let after: usize = node.profiles.iter().map(|p| p.syscalls.len()).sum();
        assert_eq!(
            after - before,
            learned as usize,
            "every learned name is new"
        );
        assert!((25..=80).contains(&learned), "{learned}");
    }
}
