//! Kubernetes attribution: which workload a container cgroup belongs to.
//!
//! A watcher of the pods on this node (field selector `spec.nodeName=NODE`, kube-rs list +
//! watch with backoff; a 410 Gone relists) keeps a [`PodIndex`] from container id (init,
//! regular and ephemeral statuses, plus the last terminated id of restarted containers) to
//! `(namespace, workload kind, workload, container name)`. The workload is the pod's
//! controller resolved like a human would: ReplicaSet → its Deployment and Job → its CronJob
//! by a GET of the owner (cached), falling back to name rules when RBAC or the API says no.
//!
//! [`Attribution`] is what the collector calls for every cgroup: it joins the cgroup path's
//! container id with the index and remembers per cgroup which identity it was given, so a
//! cgroup first counted under its standalone (fallback) identity moves to its workload once
//! the pod arrives ([`Attribution::apply_renames`] merges the fallback profile into it).

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use futures_util::StreamExt as _;
use k8s_openapi::{
    api::{
        apps::v1::ReplicaSet,
        batch::v1::Job,
        core::v1::{ContainerStatus, Pod},
    },
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
};
use kube::{
    Api, Client,
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{
        WatchStreamExt as _,
        watcher::{self, Event},
    },
};
use tracing::{debug, info, warn};

use crate::{
    attribution::cgroup::{self, CgroupKind},
    profile::{Identity, ProfileStore, WorkloadKind},
};

/// How long a deleted pod stays in the index, so counts collected after the deletion (the
/// last round of a container, or a short-lived container seen late) still find their
/// workload.
pub const DELETED_POD_GRACE: Duration = Duration::from_secs(5 * 60);
/// How long the per-cgroup attribution is remembered after the cgroup was last counted.
const ATTRIBUTION_TTL: Duration = Duration::from_secs(15 * 60);
/// How long a failed owner lookup is trusted before it is tried again.
const FAILED_LOOKUP_TTL: Duration = Duration::from_secs(60);
/// Annotation kubelet puts on the mirror pod of a static pod (value: the config hash).
pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";
/// Prefix of ephemeral (debug) containers' container names in identities. `:` cannot occur
/// in a container name (a DNS-1123 label), so they never collide with, and never merge into,
/// the workload's own containers.
pub const EPHEMERAL_PREFIX: &str = "ephemeral:";
/// Container name of a pod's sandbox (the runtime's pause container) in identities: its calls
/// are the runtime's, counted apart from every container of the workload (`(` cannot occur in
/// a container name, and the name is never delivered as a seccomp file).
pub const SANDBOX_CONTAINER: &str = "(sandbox)";

/// Prefix of exec sessions' container names in identities (`kubectl exec`, `runc exec`): the
/// calls of a program started in a running container from outside, apart from the container's
/// own, unless the command is one of the container's exec probes or hooks.
pub const EXEC_PREFIX: &str = "exec:";
/// Pod annotation that puts exec sessions' calls into their container's profile (`include`).
pub const EXEC_SESSIONS_ANNOTATION: &str = "syscall-recorder.io/exec-sessions";

/// Whether a container name is one counted apart from the workload's own containers (a pod's
/// sandbox, a debugging session, an exec session): no pod spec enforces a profile for it, so
/// it is neither delivered nor published.
pub fn counted_apart(container: &str) -> bool {
    container == SANDBOX_CONTAINER
        || container.starts_with(EPHEMERAL_PREFIX)
        || container.starts_with(EXEC_PREFIX)
}

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum K8sError {
    /// Kubernetes mode without a node name.
    #[error(
        "Kubernetes mode needs the node name: pass --node-name or set NODE_NAME (in a DaemonSet: \
         env NODE_NAME from fieldRef spec.nodeName)"
    )]
    NoNodeName,
    /// The kubeconfig file could not be read.
    #[error("reading kubeconfig {path}")]
    Kubeconfig {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: Box<kube::config::KubeconfigError>,
    },
    /// No in-cluster config and no usable kubeconfig.
    #[error("no Kubernetes client config (in-cluster service account, KUBECONFIG or --kubeconfig)")]
    Infer(#[source] Box<kube::config::InferConfigError>),
    /// The client could not be built (TLS, proxy settings).
    #[error("building the Kubernetes client")]
    Client(#[source] Box<kube::Error>),
}

/// How to reach the API server.
#[derive(Clone, Debug)]
pub struct Options {
    /// This node's name (pods are watched with `spec.nodeName=<node>`).
    pub node_name: String,
    /// A kubeconfig file; without it, in-cluster config, then `KUBECONFIG` / `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
}

/// Builds a client like kubectl: an explicit kubeconfig, else in-cluster, else KUBECONFIG.
pub async fn client(options: &Options) -> Result<Client, K8sError> {
    let config = match &options.kubeconfig {
        Some(path) => {
            let kubeconfig =
                Kubeconfig::read_from(path).map_err(|source| K8sError::Kubeconfig {
                    path: path.clone(),
                    source: Box::new(source),
                })?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(|source| K8sError::Kubeconfig {
                    path: path.clone(),
                    source: Box::new(source),
                })?
        }
        None => kube::Config::infer()
            .await
            .map_err(|err| K8sError::Infer(Box::new(err)))?,
    };
    Client::try_from(config).map_err(|err| K8sError::Client(Box::new(err)))
}

/// The workload a pod belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    /// `Deployment`, `StatefulSet`, `DaemonSet`, `CronJob`, `Job`, `ReplicaSet`,
    /// `ReplicationController`, `StaticPod`, `Pod`, or another controller's kind.
    pub kind: String,
    /// Its name.
    pub name: String,
}

impl Workload {
    fn new(kind: &str, name: &str) -> Self {
        Self {
            kind: kind.to_owned(),
            name: name.to_owned(),
        }
    }
}

/// The result of looking up the owner (ReplicaSet or Job) of a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// The object was read: its controller, if it has one.
    Found(Option<OwnerRef>),
    /// Forbidden, not found, or the API failed: use the name rules.
    Failed,
}

/// The parts of an ownerReference that name a workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnerRef {
    /// `group/version` of the owner (`apps/v1`, `batch/v1`, a CRD's).
    pub api_version: String,
    /// Kind of the owner.
    pub kind: String,
    /// Name of the owner.
    pub name: String,
}

/// The controller ownerReference (`controller: true`) of an object.
pub fn controller_of(meta: &ObjectMeta) -> Option<OwnerRef> {
    meta.owner_references
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|owner: &&OwnerReference| owner.controller == Some(true))
        .map(|owner| OwnerRef {
            api_version: owner.api_version.clone(),
            kind: owner.kind.clone(),
            name: owner.name.clone(),
        })
}

/// What must be looked up to resolve a pod's workload: `(kind, name)` of a ReplicaSet or Job
/// controller, `None` when the pod's own metadata is enough.
pub fn lookup_needed(meta: &ObjectMeta) -> Option<OwnerRef> {
    if is_mirror_pod(meta) {
        return None;
    }
    controller_of(meta).filter(is_builtin_intermediate)
}

/// A ReplicaSet of `apps` or a Job of `batch`: controllers usually owned by the workload a
/// human names. A CRD that happens to be called `Job` is a workload of its own.
fn is_builtin_intermediate(owner: &OwnerRef) -> bool {
    let group = owner
        .api_version
        .split_once('/')
        .map_or("", |(group, _)| group);
    (owner.kind == "ReplicaSet" && group == "apps") || (owner.kind == "Job" && group == "batch")
}

fn is_mirror_pod(meta: &ObjectMeta) -> bool {
    meta.annotations
        .as_ref()
        .is_some_and(|annotations| annotations.contains_key(MIRROR_ANNOTATION))
}

/// Resolves a pod's workload from its metadata and, for ReplicaSet and Job controllers, the
/// result of reading that controller ([`lookup_needed`]).
pub fn resolve_workload(meta: &ObjectMeta, node_name: &str, lookup: Option<&Lookup>) -> Workload {
    let pod_name = meta.name.as_deref().unwrap_or_default();
    if is_mirror_pod(meta) {
        // Mirror pods are named `<manifest name>-<node>`; the manifest name is what a human
        // calls the static pod, and it is the same on every node.
        let name = pod_name
            .strip_suffix(node_name)
            .and_then(|rest| rest.strip_suffix('-'))
            .filter(|rest| !rest.is_empty())
            .unwrap_or(pod_name);
        return Workload::new("StaticPod", name);
    }
    let Some(owner) = controller_of(meta) else {
        return Workload::new("Pod", pod_name);
    };
    if !is_builtin_intermediate(&owner) {
        return Workload::new(&owner.kind, &owner.name);
    }
    match (owner.kind.as_str(), lookup) {
        ("ReplicaSet" | "Job", Some(Lookup::Found(Some(parent)))) => {
            Workload::new(&parent.kind, &parent.name)
        }
        ("ReplicaSet" | "Job", Some(Lookup::Found(None))) => {
            Workload::new(&owner.kind, &owner.name)
        }
        ("ReplicaSet", _) => {
            // `<deployment>-<pod-template-hash>`: trim the hash only when the pod's label
            // says it is one, so a hand-made ReplicaSet keeps its name.
            let hash = meta
                .labels
                .as_ref()
                .and_then(|labels| labels.get("pod-template-hash"));
            match hash.and_then(|hash| owner.name.strip_suffix(hash.as_str())) {
                Some(rest) if rest.len() > 1 && rest.ends_with('-') => {
                    Workload::new("Deployment", &rest[..rest.len() - 1])
                }
                _ => Workload::new("ReplicaSet", &owner.name),
            }
        }
        ("Job", _) => {
            // CronJob jobs are `<cronjob>-<scheduled time in minutes since the epoch>`: at
            // least 8 digits since 1970-03; shorter suffixes are a hand-made job's own name.
            match owner.name.rsplit_once('-') {
                Some((cronjob, digits))
                    if !cronjob.is_empty()
                        && digits.len() >= 8
                        && digits.bytes().all(|b| b.is_ascii_digit()) =>
                {
                    Workload::new("CronJob", cronjob)
                }
                _ => Workload::new("Job", &owner.name),
            }
        }
        _ => Workload::new(&owner.kind, &owner.name),
    }
}

/// The 64-hex id of a status `containerID` (`containerd://…`, `cri-o://…`, `docker://…`).
pub fn container_id(status_id: &str) -> Option<String> {
    let (_, id) = status_id.split_once("://")?;
    let id = id.to_ascii_lowercase();
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

/// Which list of a pod's statuses a container comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContainerClass {
    /// `initContainerStatuses` (sidecars too).
    Init,
    /// `containerStatuses`.
    Regular,
    /// `ephemeralContainerStatuses` (kubectl debug).
    Ephemeral,
}

/// One pod as the index keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodEntry {
    /// Namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// metadata.uid.
    pub uid: String,
    /// The resolved workload.
    pub workload: Workload,
    /// `(container id, container name, class)` of every status that has an id.
    pub containers: Vec<(String, String, ContainerClass)>,
    /// Every init and regular container of the spec has a status with an id: a container
    /// cgroup of this pod with another id is its sandbox, or a run the status does not show
    /// yet.
    pub complete: bool,
    /// The pod succeeded or failed: no container of it runs again, so an id its statuses do
    /// not list is the sandbox's.
    pub terminal: bool,
    /// `(container name, command)` of every exec probe and exec lifecycle hook of the spec:
    /// the kubelet runs them in the container, under its seccomp profile.
    pub exec_hooks: Vec<(String, Vec<String>)>,
    /// The pod asks for exec sessions to count as their container's own
    /// ([`EXEC_SESSIONS_ANNOTATION`]).
    pub exec_sessions_included: bool,
}

impl PodEntry {
    /// Builds the entry of a pod with its resolved workload.
    pub fn new(pod: &Pod, workload: Workload) -> Self {
        let mut containers = Vec::new();
        if let Some(status) = &pod.status {
            for (list, class) in [
                (&status.init_container_statuses, ContainerClass::Init),
                (&status.container_statuses, ContainerClass::Regular),
                (
                    &status.ephemeral_container_statuses,
                    ContainerClass::Ephemeral,
                ),
            ] {
                for status in list.as_deref().unwrap_or_default() {
                    for id in status_ids(status) {
                        containers.push((id, status.name.clone(), class));
                    }
                }
            }
        }
        let complete = pod.spec.as_ref().is_some_and(|spec| {
            spec.init_containers
                .iter()
                .flatten()
                .chain(&spec.containers)
                .all(|container| {
                    containers.iter().any(|(_, name, class)| {
                        *class != ContainerClass::Ephemeral && *name == container.name
                    })
                })
        });
        let terminal = pod
            .status
            .as_ref()
            .and_then(|status| status.phase.as_deref())
            .is_some_and(|phase| phase == "Succeeded" || phase == "Failed");
        let mut exec_hooks = Vec::new();
        if let Some(spec) = &pod.spec {
            for container in spec
                .init_containers
                .iter()
                .flatten()
                .chain(&spec.containers)
            {
                let probes = [
                    &container.liveness_probe,
                    &container.readiness_probe,
                    &container.startup_probe,
                ];
                let probe_commands = probes
                    .into_iter()
                    .flatten()
                    .filter_map(|probe| probe.exec.as_ref()?.command.clone());
                let hooks = container
                    .lifecycle
                    .as_ref()
                    .into_iter()
                    .flat_map(|lifecycle| {
                        [&lifecycle.post_start, &lifecycle.pre_stop]
                            .into_iter()
                            .flatten()
                            .filter_map(|hook| hook.exec.as_ref()?.command.clone())
                    });
                for command in probe_commands.chain(hooks) {
                    exec_hooks.push((container.name.clone(), command));
                }
            }
        }
        let exec_sessions_included = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|annotations| annotations.get(EXEC_SESSIONS_ANNOTATION))
            .is_some_and(|value| value == "include");
        Self {
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            workload,
            containers,
            complete,
            terminal,
            exec_hooks,
            exec_sessions_included,
        }
    }

    /// Whether an exec session with command line `argv` (NUL-terminated strings, possibly cut
    /// by the kernel) in container `container` counts as the container's own: one of its exec
    /// probes or hooks, or any session when the pod asks for it.
    pub fn exec_is_own(&self, container: &str, argv: &[u8]) -> bool {
        self.exec_sessions_included
            || self
                .exec_hooks
                .iter()
                .any(|(name, command)| name == container && command_matches(command, argv))
    }

    /// The identity of one of this pod's containers.
    pub fn identity(&self, container: &str, class: ContainerClass) -> Identity {
        let container = match class {
            ContainerClass::Ephemeral => format!("{EPHEMERAL_PREFIX}{container}"),
            ContainerClass::Init | ContainerClass::Regular => container.to_owned(),
        };
        Identity::with_kind(
            &self.namespace,
            WorkloadKind::Kubernetes(self.workload.kind.clone()),
            &self.workload.name,
            &container,
        )
    }
}

/// Whether the kernel's argv bytes (each string NUL-terminated, cut at
/// [`recorder_ebpf::EXEC_ARGV_MAX`] bytes) are `command`.
fn command_matches(command: &[String], argv: &[u8]) -> bool {
    let mut expected = Vec::new();
    for arg in command {
        expected.extend_from_slice(arg.as_bytes());
        expected.push(0);
    }
    if argv.len() >= recorder_ebpf::EXEC_ARGV_MAX {
        expected.starts_with(argv)
    } else {
        expected == argv
    }
}

/// The current id and, for a restarted container, the id of its previous run (whose last
/// counts may still be unresolved).
fn status_ids(status: &ContainerStatus) -> impl Iterator<Item = String> {
    let current = status.container_id.as_deref().and_then(container_id);
    let previous = status
        .last_state
        .as_ref()
        .and_then(|state| state.terminated.as_ref())
        .and_then(|terminated| terminated.container_id.as_deref())
        .and_then(container_id);
    current.into_iter().chain(previous)
}

/// Pods of this node by uid and their containers by id. Deleted pods linger for
/// [`DELETED_POD_GRACE`].
#[derive(Debug, Default)]
pub struct PodIndex {
    pods: HashMap<String, (PodEntry, Option<Instant>)>,
    containers: HashMap<String, (String, String, ContainerClass)>,
    /// Bumped by every change a fallback profile could be adopted after.
    generation: u64,
}

impl PodIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces a pod (ids of earlier runs it no longer lists stay until it goes).
    pub fn upsert(&mut self, entry: PodEntry) {
        self.generation += 1;
        for (id, name, class) in &entry.containers {
            self.containers
                .insert(id.clone(), (entry.uid.clone(), name.clone(), *class));
        }
        self.pods.insert(entry.uid.clone(), (entry, None));
    }

    /// Marks a pod deleted; it is dropped [`DELETED_POD_GRACE`] later.
    pub fn mark_deleted(&mut self, uid: &str, now: Instant) {
        if let Some((_, deleted)) = self.pods.get_mut(uid) {
            deleted.get_or_insert(now);
        }
    }

    /// After a relist: every pod the list did not contain was deleted meanwhile.
    pub fn mark_deleted_except(&mut self, present: &HashSet<String>, now: Instant) {
        for (uid, (_, deleted)) in &mut self.pods {
            if !present.contains(uid) {
                deleted.get_or_insert(now);
            }
        }
    }

    /// Drops pods deleted more than [`DELETED_POD_GRACE`] ago.
    pub fn prune(&mut self, now: Instant) {
        self.pods.retain(|_, (_, deleted)| {
            deleted.is_none_or(|at| now.saturating_duration_since(at) < DELETED_POD_GRACE)
        });
        let pods = &self.pods;
        self.containers
            .retain(|_, (uid, _, _)| pods.contains_key(uid));
    }

    /// Whether an exec session with command line `argv` in container `container_id` counts as
    /// the container's own (see [`PodEntry::exec_is_own`]); `false` for an unknown container.
    pub fn exec_is_own(&self, container_id: &str, argv: &[u8]) -> bool {
        let Some((uid, name, _)) = self.containers.get(container_id) else {
            return false;
        };
        self.pods
            .get(uid)
            .is_some_and(|(pod, _)| pod.exec_is_own(name, argv))
    }

    /// The workload identity of a container id, if its pod is known.
    pub fn identity(&self, container_id: &str) -> Option<Identity> {
        let (uid, name, class) = self.containers.get(container_id)?;
        let (pod, _) = self.pods.get(uid)?;
        Some(pod.identity(name, *class))
    }

    /// The pod's sandbox identity, if the pod is known and `complete` or terminal as asked.
    fn sandbox(&self, uid: &str, need: SandboxEvidence) -> Option<Identity> {
        let (pod, _) = self.pods.get(uid)?;
        let enough = match need {
            SandboxEvidence::Complete => pod.complete,
            SandboxEvidence::Terminal => pod.terminal,
        };
        enough.then(|| pod.identity(SANDBOX_CONTAINER, ContainerClass::Regular))
    }

    /// Number of pods (deleted ones included).
    pub fn len(&self) -> usize {
        self.pods.len()
    }

    /// Whether no pod is known.
    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }
}

/// An error of the Kubernetes client on one line: like `crate::report::Report`, but an API status is
/// printed once as `<code> <reason>: <message>` (kube's own message repeats it with a debug
/// dump of the status).
#[derive(Clone, Copy, Debug)]
pub struct ApiReport<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ApiReport<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut error: Option<&(dyn std::error::Error + 'static)> = Some(self.0);
        let mut first = true;
        while let Some(current) = error {
            if !first {
                f.write_str(": ")?;
            }
            first = false;
            if let Some(kube::Error::Api(status)) = current.downcast_ref::<kube::Error>() {
                return write!(f, "{} {}: {}", status.code, status.reason, status.message);
            }
            write!(f, "{current}")?;
            error = current.source();
        }
        Ok(())
    }
}

/// What makes an unlisted container id of a known pod its sandbox's.
#[derive(Clone, Copy, Debug)]
enum SandboxEvidence {
    /// The pod's every container has an id, and the cgroup is older than all of them (the
    /// runtime creates the sandbox first; a new run of a container is younger).
    Complete,
    /// The pod ended: nothing of it starts again.
    Terminal,
}

#[derive(Debug)]
struct Attributed {
    identity: Identity,
    workload: bool,
    /// The pod uid of the cgroup's path, empty for none.
    pod: String,
    /// The container id of the cgroup's path, empty for none: with no id and no workload the
    /// identity is final; with an id, the pod may still arrive.
    container: String,
    seen: Instant,
}

/// Names cgroups for the collector in Kubernetes mode and moves profiles from the fallback
/// identity to the workload when the pod arrives.
#[derive(Debug)]
pub struct Attribution {
    index: Arc<Mutex<PodIndex>>,
    attributed: Mutex<HashMap<u64, Attributed>>,
    renames: Mutex<Vec<(Identity, Identity)>>,
    /// The index generation the store was last searched for fallback profiles at (`None`:
    /// never, so saved ones are adopted on the first round).
    adopted_at: Mutex<Option<u64>>,
}

impl Attribution {
    /// Attribution over a shared index.
    pub fn new(index: Arc<Mutex<PodIndex>>) -> Self {
        Self {
            index,
            attributed: Mutex::new(HashMap::new()),
            renames: Mutex::new(Vec::new()),
            adopted_at: Mutex::new(None),
        }
    }

    /// The identity of cgroup `id` with path `path` (if resolved).
    ///
    /// Once a cgroup was given a workload identity it keeps it (its pod may be forgotten
    /// later). A cgroup first given its fallback identity (standalone rule: unique per
    /// container) gets a rename queued when its pod arrives.
    pub fn identify(&self, id: u64, path: Option<&str>) -> Identity {
        let now = Instant::now();
        let mut attributed = self
            .attributed
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Known cgroups are answered from what is stored; only one that waits for its pod
        // asks the index again.
        // `Some(found)` for a known cgroup; `found` is its workload when it waits for its pod and
        // the pod (or its sandbox rule) now names it.
        let found = attributed.get(&id).map(|known| {
            if known.workload || known.container.is_empty() {
                return None;
            }
            self.workload_of(&known.container)
                .or_else(|| self.sandbox_of(id, &known.pod, &attributed))
        });
        if let (Some(found), Some(known)) = (found, attributed.get_mut(&id)) {
            known.seen = now;
            let Some(identity) = found else {
                return known.identity.clone();
            };
            let previous = std::mem::replace(&mut known.identity, identity.clone());
            known.workload = true;
            self.renames
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((previous, identity.clone()));
            return identity;
        }
        let Some(path) = path else {
            // Shared by every unresolved cgroup: never tracked, never renamed.
            return Identity::unresolved();
        };
        let kind = cgroup::classify(path);
        let (container, pod) = match &kind {
            CgroupKind::PodContainer {
                container_id,
                pod_uid,
                ..
            } => (container_id.clone(), pod_uid.clone()),
            CgroupKind::Container { container_id, .. } => (container_id.clone(), String::new()),
            CgroupKind::RuntimeHelper | CgroupKind::Other => (String::new(), String::new()),
        };
        let workload = self
            .workload_of(&container)
            .or_else(|| self.sandbox_of(id, &pod, &attributed));
        let is_workload = workload.is_some();
        let identity = workload.unwrap_or_else(|| Identity::from_cgroup_kind(kind, path));
        attributed.insert(
            id,
            Attributed {
                identity: identity.clone(),
                workload: is_workload,
                pod,
                container,
                seen: now,
            },
        );
        identity
    }

    /// The sandbox identity for cgroup `id` of pod `pod` whose container id no status lists:
    /// the pod is complete and `id` is older than every attributed container cgroup of the
    /// pod (cgroup ids only grow), so it is not a container run the status does not show yet.
    fn sandbox_of(
        &self,
        id: u64,
        pod: &str,
        attributed: &HashMap<u64, Attributed>,
    ) -> Option<Identity> {
        if pod.is_empty() {
            return None;
        }
        let mut containers = attributed.iter().filter(|(other, known)| {
            **other != id
                && known.pod == pod
                && known.workload
                && known.identity.container != SANDBOX_CONTAINER
        });
        let first = containers.next()?;
        let older = std::iter::once(first)
            .chain(containers)
            .all(|(other, _)| id < *other);
        if !older {
            return None;
        }
        self.index
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .sandbox(pod, SandboxEvidence::Complete)
    }

    /// Moves profiles still under a pod container's fallback identity (`Pod/<uid>/<id>`) to
    /// where that container belongs once it is known: saved by an agent that stopped before
    /// the pod's metadata arrived, or folded for a cgroup removed meanwhile. A restarted agent
    /// restores them with no cgroup to re-identify, so they are matched by id: the index's
    /// containers, a cgroup this agent attributed, or the sandbox of a pod that ended.
    fn adopt_fallbacks(&self, store: &mut ProfileStore) -> usize {
        let fallbacks: Vec<Identity> = store
            .values()
            .map(|profile| &profile.identity)
            .filter(|identity| {
                identity.namespace.is_empty()
                    && identity.workload_kind == WorkloadKind::Pod
                    && !identity.container.is_empty()
            })
            .cloned()
            .collect();
        if fallbacks.is_empty() {
            return 0;
        }
        let attributed = self
            .attributed
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let index = self.index.lock().unwrap_or_else(PoisonError::into_inner);
        let mut moved = 0;
        for from in fallbacks {
            let to = index
                .identity(&from.container)
                .or_else(|| {
                    attributed
                        .values()
                        .find(|known| known.workload && known.container == from.container)
                        .map(|known| known.identity.clone())
                })
                .or_else(|| index.sandbox(&from.workload, SandboxEvidence::Terminal));
            if let Some(to) = to {
                debug!(%from, %to, "moving a saved fallback profile to its workload");
                store.rename(&from, &to);
                moved += 1;
            }
        }
        moved
    }

    /// The workload identity of a container id from the pod index (`None` for an empty id).
    /// The identity of an exec session's calls in cgroup `id`, whose own identity is `own`:
    /// `own` when the command line `argv` is one of the container's exec probes or hooks (the
    /// kubelet runs them under the container's seccomp profile, so they must stay allowed),
    /// else the session's own `exec:<container>`.
    pub fn exec_identity(&self, id: u64, own: Identity, argv: &[u8]) -> Identity {
        let container = self
            .attributed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
            .map(|known| known.container.clone())
            .unwrap_or_default();
        let is_own = !container.is_empty()
            && self
                .index
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .exec_is_own(&container, argv);
        if is_own { own } else { own.exec_session() }
    }

    fn workload_of(&self, container: &str) -> Option<Identity> {
        if container.is_empty() {
            return None;
        }
        self.index
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .identity(container)
    }

    /// Merges the profiles of cgroups whose identity changed this round into their new
    /// identity (after the round's counts were added, so nothing is counted twice), adopts
    /// saved fallback profiles whose container became known, and forgets cgroups not counted
    /// for a long time. Returns how many profiles moved.
    pub fn apply_renames(&self, store: &mut ProfileStore) -> usize {
        let renames =
            std::mem::take(&mut *self.renames.lock().unwrap_or_else(PoisonError::into_inner));
        for (from, to) in &renames {
            debug!(%from, %to, "pod metadata arrived: moving profile to its workload");
            store.rename(from, to);
        }
        // The store is searched only when something could have made a fallback adoptable: the
        // first round (saved profiles), a change of the index, or renames (a cgroup attributed).
        let generation = self
            .index
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .generation;
        let mut adopted_at = self
            .adopted_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let adopted = if *adopted_at != Some(generation) || !renames.is_empty() {
            *adopted_at = Some(generation);
            self.adopt_fallbacks(store)
        } else {
            0
        };
        drop(adopted_at);
        let now = Instant::now();
        self.attributed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|_, known| now.saturating_duration_since(known.seen) < ATTRIBUTION_TTL);
        self.index
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .prune(now);
        renames.len() + adopted
    }
}

#[derive(Debug)]
struct CachedLookup {
    result: Lookup,
    at: Instant,
}

/// Reads ReplicaSets and Jobs (controllers of pods) once each, caching the answer.
struct Owners {
    client: Client,
    cache: HashMap<(String, String, String), CachedLookup>,
    /// Owner kinds whose gets RBAC denies, warned about once per denial: it holds for every
    /// pod, so one line says it and the rest go to debug, until a get of the kind succeeds.
    forbidden: HashSet<String>,
}

impl Owners {
    async fn lookup(&mut self, namespace: &str, owner: &OwnerRef) -> Lookup {
        let key = (namespace.to_owned(), owner.kind.clone(), owner.name.clone());
        if let Some(cached) = self.cache.get(&key)
            && (cached.result != Lookup::Failed || cached.at.elapsed() < FAILED_LOOKUP_TTL)
        {
            return cached.result.clone();
        }
        let result = match owner.kind.as_str() {
            "ReplicaSet" => Api::<ReplicaSet>::namespaced(self.client.clone(), namespace)
                .get(&owner.name)
                .await
                .map(|rs| controller_of(&rs.metadata)),
            _ => Api::<Job>::namespaced(self.client.clone(), namespace)
                .get(&owner.name)
                .await
                .map(|job| controller_of(&job.metadata)),
        };
        let result = match result {
            Ok(parent) => {
                // Allowed again (RBAC fixed): a later denial is warned about again.
                if self.forbidden.remove(&owner.kind) {
                    info!(kind = %owner.kind, "owner lookups are allowed again");
                }
                Lookup::Found(parent)
            }
            Err(err) => {
                let denied = matches!(&err, kube::Error::Api(status) if status.code == 403);
                if denied && self.forbidden.insert(owner.kind.clone()) {
                    warn!(kind = %owner.kind, error = %ApiReport(&err),
                        "owner lookups are forbidden by RBAC: workloads are named by the name rules \
                         (grant get on replicasets.apps and jobs.batch, as deploy/ does)");
                } else {
                    debug!(kind = %owner.kind, name = %owner.name, %namespace, error = %ApiReport(&err),
                        "owner lookup failed; using name rules");
                }
                Lookup::Failed
            }
        };
        // Bounded: ReplicaSets and Jobs come and go; a full cache is simply started over.
        if self.cache.len() >= 4096 {
            self.cache.clear();
        }
        self.cache.insert(
            key,
            CachedLookup {
                result: result.clone(),
                at: Instant::now(),
            },
        );
        result
    }
}

/// Watches this node's pods into `index` until the task is dropped; `synced` is called after
/// every complete list (the first one makes the agent ready).
pub async fn watch_pods(
    client: Client,
    node_name: String,
    index: Arc<Mutex<PodIndex>>,
    synced: impl Fn() + Send,
) {
    let mut listed_once = false;
    let api: Api<Pod> = Api::all(client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node_name}"));
    let mut owners = Owners {
        client,
        cache: HashMap::new(),
        forbidden: HashSet::new(),
    };
    let mut stream = watcher::watcher(api, config).default_backoff().boxed();
    let mut listed: HashSet<String> = HashSet::new();
    while let Some(event) = stream.next().await {
        match event {
            Ok(Event::Init) => listed.clear(),
            Ok(Event::InitApply(pod)) => {
                if let Some(uid) = &pod.metadata.uid {
                    listed.insert(uid.clone());
                }
                apply(&pod, &node_name, &mut owners, &index).await;
            }
            Ok(Event::Apply(pod)) => apply(&pod, &node_name, &mut owners, &index).await,
            Ok(Event::Delete(pod)) => {
                if let Some(uid) = &pod.metadata.uid {
                    index
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .mark_deleted(uid, Instant::now());
                }
            }
            Ok(Event::InitDone) => {
                let pods = {
                    let mut index = index.lock().unwrap_or_else(PoisonError::into_inner);
                    index.mark_deleted_except(&listed, Instant::now());
                    listed.len()
                };
                synced();
                if !std::mem::replace(&mut listed_once, true) {
                    info!(node = %node_name, pods, "Kubernetes pods synced");
                } else {
                    debug!(node = %node_name, pods, "pods relisted");
                }
            }
            Err(err) => {
                warn!(error = %ApiReport(&err), "watching pods failed; retrying with backoff")
            }
        }
    }
}

async fn apply(pod: &Pod, node_name: &str, owners: &mut Owners, index: &Mutex<PodIndex>) {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    let lookup = match lookup_needed(&pod.metadata) {
        Some(owner) => Some(owners.lookup(namespace, &owner).await),
        None => None,
    };
    let workload = resolve_workload(&pod.metadata, node_name, lookup.as_ref());
    let entry = PodEntry::new(pod, workload);
    debug!(namespace = %entry.namespace, pod = %entry.name, kind = %entry.workload.kind,
        workload = %entry.workload.name, containers = entry.containers.len(), "pod");
    index
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .upsert(entry);
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::{ContainerState, ContainerStateTerminated, PodStatus};

    use super::*;

    const ID_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const ID_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    const ID_C: &str = "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc";
    const ID_D: &str = "dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd";
    const UID: &str = "8a1f0c4e-1b2c-4d3e-9f00-123456789abc";

    fn meta(name: &str, owner: Option<(&str, &str)>, labels: &[(&str, &str)]) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: Some("shop".into()),
            uid: Some(UID.into()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            owner_references: owner.map(|(kind, name)| {
                vec![OwnerReference {
                    api_version: if kind == "Job" { "batch/v1" } else { "apps/v1" }.into(),
                    kind: kind.into(),
                    name: name.into(),
                    uid: "u".into(),
                    controller: Some(true),
                    block_owner_deletion: Some(true),
                }]
            }),
            ..ObjectMeta::default()
        }
    }

    fn w(kind: &str, name: &str) -> Workload {
        Workload::new(kind, name)
    }

    #[test]
    fn owner_resolution_table() {
        let rs = meta(
            "web-7d4b9c6f5-x2x9q",
            Some(("ReplicaSet", "web-7d4b9c6f5")),
            &[("pod-template-hash", "7d4b9c6f5")],
        );
        let found = |kind: &str, name: &str| {
            Lookup::Found(Some(OwnerRef {
                api_version: "apps/v1".into(),
                kind: kind.into(),
                name: name.into(),
            }))
        };
        let job = meta(
            "nightly-29123456-abcde",
            Some(("Job", "nightly-29123456")),
            &[],
        );
        let cases: Vec<(&ObjectMeta, Option<Lookup>, Workload)> = vec![
            (
                &rs,
                Some(found("Deployment", "web")),
                w("Deployment", "web"),
            ),
            // 403/404: trim the pod-template-hash.
            (&rs, Some(Lookup::Failed), w("Deployment", "web")),
            // A ReplicaSet without a controller is the workload itself.
            (
                &rs,
                Some(Lookup::Found(None)),
                w("ReplicaSet", "web-7d4b9c6f5"),
            ),
            (
                &job,
                Some(found("CronJob", "nightly")),
                w("CronJob", "nightly"),
            ),
            (&job, Some(Lookup::Failed), w("CronJob", "nightly")),
            (
                &job,
                Some(Lookup::Found(None)),
                w("Job", "nightly-29123456"),
            ),
        ];
        for (meta, lookup, want) in &cases {
            assert!(lookup_needed(meta).is_some(), "{:?}", meta.owner_references);
            assert_eq!(&resolve_workload(meta, "node1", lookup.as_ref()), want);
        }
        // Name rules do not invent parents.
        let plain_rs = meta("cache-abc", Some(("ReplicaSet", "cache")), &[]);
        assert_eq!(
            resolve_workload(&plain_rs, "n", Some(&Lookup::Failed)),
            w("ReplicaSet", "cache")
        );
        let plain_job = meta("migrate-1-xyz", Some(("Job", "migrate-1")), &[]);
        assert_eq!(
            resolve_workload(&plain_job, "n", Some(&Lookup::Failed)),
            w("Job", "migrate-1")
        );
        let hash_is_name = meta(
            "x",
            Some(("ReplicaSet", "abc")),
            &[("pod-template-hash", "abc")],
        );
        assert_eq!(
            resolve_workload(&hash_is_name, "n", Some(&Lookup::Failed)),
            w("ReplicaSet", "abc")
        );
        // A CRD named Job is its own workload, never looked up in batch.
        let mut crd = meta("run-1-abc", Some(("Job", "run-12345678")), &[]);
        if let Some(owners) = crd.owner_references.as_mut() {
            owners[0].api_version = "example.com/v1".into();
        }
        assert!(lookup_needed(&crd).is_none());
        assert_eq!(
            resolve_workload(&crd, "n", Some(&Lookup::Failed)),
            w("Job", "run-12345678")
        );
        // Controllers resolved from the pod alone.
        for kind in [
            "StatefulSet",
            "DaemonSet",
            "ReplicationController",
            "Rollout",
        ] {
            let m = meta("db-0", Some((kind, "db")), &[]);
            assert!(lookup_needed(&m).is_none());
            assert_eq!(resolve_workload(&m, "n", None), w(kind, "db"));
        }
        let bare = meta("debug-shell", None, &[]);
        assert_eq!(resolve_workload(&bare, "n", None), w("Pod", "debug-shell"));
        // A non-controller owner is not a workload.
        let mut weak = meta("p", Some(("ReplicaSet", "r")), &[]);
        if let Some(owners) = weak.owner_references.as_mut() {
            owners[0].controller = None;
        }
        assert_eq!(resolve_workload(&weak, "n", None), w("Pod", "p"));
    }

    #[test]
    fn static_pods_use_the_manifest_name() {
        let mut m = meta("kube-apiserver-node1", Some(("Node", "node1")), &[]);
        m.annotations = Some(BTreeMap::from([(
            MIRROR_ANNOTATION.to_owned(),
            "0f1e2d3c4b5a69788796a5b4c3d2e1f0".to_owned(),
        )]));
        assert!(lookup_needed(&m).is_none());
        assert_eq!(
            resolve_workload(&m, "node1", None),
            w("StaticPod", "kube-apiserver")
        );
        // Another node name in the pod name: keep it whole.
        assert_eq!(
            resolve_workload(&m, "node2", None),
            w("StaticPod", "kube-apiserver-node1")
        );
        m.name = Some("node1".into());
        assert_eq!(resolve_workload(&m, "node1", None), w("StaticPod", "node1"));
    }

    #[test]
    fn container_ids_of_statuses() {
        assert_eq!(
            container_id(&format!("containerd://{ID_A}")).as_deref(),
            Some(ID_A)
        );
        assert_eq!(
            container_id(&format!("cri-o://{ID_A}")).as_deref(),
            Some(ID_A)
        );
        assert_eq!(
            container_id(&format!("docker://{}", ID_A.to_uppercase())).as_deref(),
            Some(ID_A)
        );
        for bad in [
            "",
            "containerd://",
            ID_A,
            "containerd://xyz",
            "://",
            "a://b://c",
        ] {
            assert_eq!(container_id(bad), None, "{bad}");
        }
        assert_eq!(
            container_id(&format!("containerd://{}é", &ID_A[..63])),
            None
        );
    }

    fn status(name: &str, id: Option<&str>, previous: Option<&str>) -> ContainerStatus {
        ContainerStatus {
            name: name.into(),
            container_id: id.map(|id| format!("containerd://{id}")),
            last_state: previous.map(|id| ContainerState {
                terminated: Some(ContainerStateTerminated {
                    container_id: Some(format!("containerd://{id}")),
                    ..ContainerStateTerminated::default()
                }),
                ..ContainerState::default()
            }),
            ..ContainerStatus::default()
        }
    }

    fn pod() -> Pod {
        Pod {
            metadata: meta(
                "web-7d4b9c6f5-x2x9q",
                Some(("ReplicaSet", "web-7d4b9c6f5")),
                &[("pod-template-hash", "7d4b9c6f5")],
            ),
            spec: None,
            status: Some(PodStatus {
                init_container_statuses: Some(vec![status("migrate", Some(ID_A), None)]),
                container_statuses: Some(vec![
                    status("app", Some(ID_B), Some(ID_D)),
                    status("starting", None, None),
                ]),
                ephemeral_container_statuses: Some(vec![status("debugger", Some(ID_C), None)]),
                ..PodStatus::default()
            }),
        }
    }

    #[test]
    fn index_joins_every_status_list() {
        let mut index = PodIndex::new();
        index.upsert(PodEntry::new(&pod(), w("Deployment", "web")));
        let id = |c: &str| Identity::new("shop", "Deployment", "web", c);
        assert_eq!(index.identity(ID_A), Some(id("migrate")));
        assert_eq!(index.identity(ID_B), Some(id("app")));
        assert_eq!(index.identity(ID_D), Some(id("app")));
        assert_eq!(index.identity(ID_C), Some(id("ephemeral:debugger")));
        assert_eq!(index.identity(&"e".repeat(64)), None);

        let t0 = Instant::now();
        index.mark_deleted(UID, t0);
        index.prune(t0 + Duration::from_secs(60));
        assert_eq!(
            index.identity(ID_B),
            Some(id("app")),
            "kept during the grace"
        );
        index.prune(t0 + DELETED_POD_GRACE);
        assert_eq!(index.identity(ID_B), None);
        assert!(index.is_empty());

        index.upsert(PodEntry::new(&pod(), w("Deployment", "web")));
        index.mark_deleted_except(&HashSet::new(), t0);
        index.prune(t0 + DELETED_POD_GRACE);
        assert!(index.is_empty(), "a relist without the pod deletes it");
    }

    #[test]
    fn exec_probes_and_hooks_are_the_containers_own_and_sessions_are_not() {
        use k8s_openapi::api::core::v1::{
            Container, ExecAction, Lifecycle, LifecycleHandler, PodSpec, Probe,
        };
        let exec = |command: &[&str]| ExecAction {
            command: Some(command.iter().map(|c| (*c).to_owned()).collect()),
        };
        let mut with_probes = pod();
        with_probes.spec = Some(PodSpec {
            containers: vec![Container {
                name: "app".into(),
                readiness_probe: Some(Probe {
                    exec: Some(exec(&["sh", "-c", "test -f /tmp/ready"])),
                    ..Probe::default()
                }),
                lifecycle: Some(Lifecycle {
                    pre_stop: Some(LifecycleHandler {
                        exec: Some(exec(&["/bin/drain"])),
                        ..LifecycleHandler::default()
                    }),
                    ..Lifecycle::default()
                }),
                ..Container::default()
            }],
            ..PodSpec::default()
        });
        let mut index = PodIndex::new();
        index.upsert(PodEntry::new(&with_probes, w("Deployment", "web")));
        assert!(index.exec_is_own(ID_B, b"sh\0-c\0test -f /tmp/ready\0"));
        assert!(index.exec_is_own(ID_B, b"/bin/drain\0"));
        // An interactive shell, the probe's command with other arguments, another container,
        // an unknown container.
        assert!(!index.exec_is_own(ID_B, b"sh\0"));
        assert!(!index.exec_is_own(ID_B, b"sh\0-c\0test -f /tmp/ready; id\0"));
        assert!(!index.exec_is_own(ID_A, b"/bin/drain\0"));
        assert!(!index.exec_is_own(&"e".repeat(64), b"/bin/drain\0"));
        // A command line the kernel cut: its first bytes decide.
        let long = "x".repeat(400);
        let mut long_probe = with_probes.clone();
        if let Some(spec) = &mut long_probe.spec {
            spec.containers[0].liveness_probe = Some(Probe {
                exec: Some(exec(&["echo", &long])),
                ..Probe::default()
            });
        }
        index.upsert(PodEntry::new(&long_probe, w("Deployment", "web")));
        let mut cut = b"echo\0".to_vec();
        cut.extend_from_slice(&long.as_bytes()[..recorder_ebpf::EXEC_ARGV_MAX - 5]);
        assert!(index.exec_is_own(ID_B, &cut));
        // The pod may ask for every session to count as the container's.
        let mut included = with_probes;
        included.metadata.annotations = Some(BTreeMap::from([(
            EXEC_SESSIONS_ANNOTATION.to_owned(),
            "include".to_owned(),
        )]));
        index.upsert(PodEntry::new(&included, w("Deployment", "web")));
        assert!(index.exec_is_own(ID_B, b"sh\0"));
        assert!(counted_apart("exec:app") && !counted_apart("app"));
        assert_eq!(
            Identity::new("shop", "Deployment", "web", "app").exec_session(),
            Identity::new("shop", "Deployment", "web", "exec:app")
        );
    }

    #[test]
    fn truncated_and_mangled_paths_never_panic() {
        let index = Arc::new(Mutex::new(PodIndex::new()));
        index
            .lock()
            .expect("lock")
            .upsert(PodEntry::new(&pod(), w("Deployment", "web")));
        let attribution = Attribution::new(index);
        let real = format!(
            "/system.slice/containerd.service/kubepods-burstable-pod{}.slice:cri-containerd:{ID_B}",
            UID.replace('-', "_")
        );
        let mut id = 0;
        for end in 0..=real.len() {
            for path in [
                &real[..end],
                &real[end..],
                &real.replace('/', "//")[..end],
                &format!("{}\u{0}é/../{}", &real[..end], &real[end..]),
            ] {
                id += 1;
                let identity = attribution.identify(id, Some(path));
                if identity.namespace == "shop" {
                    assert_eq!(identity.container, "app", "{path}");
                }
            }
        }
        assert_eq!(
            attribution.identify(u64::MAX, Some(&real)),
            Identity::new("shop", "Deployment", "web", "app")
        );
    }

    #[test]
    fn late_metadata_moves_counts_once() {
        let index = Arc::new(Mutex::new(PodIndex::new()));
        let attribution = Attribution::new(Arc::clone(&index));
        let mut store = ProfileStore::new();
        let path = format!(
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{ID_B}.scope",
            UID.replace('-', "_")
        );
        let arch = crate::profile::syscalls::Arch::X86_64;
        let mut deltas = vec![0u64; recorder_ebpf::SYSCALL_COLUMNS];
        deltas[0] = 3;
        let now = std::time::SystemTime::now();

        let first = attribution.identify(7, Some(&path));
        assert_eq!(first.workload_kind, "Pod");
        store.add_counts(&first, arch, &deltas, now);
        assert_eq!(attribution.apply_renames(&mut store), 0);

        index
            .lock()
            .expect("lock")
            .upsert(PodEntry::new(&pod(), w("Deployment", "web")));
        let second = attribution.identify(7, Some(&path));
        assert_eq!(second, Identity::new("shop", "Deployment", "web", "app"));
        store.add_counts(&second, arch, &deltas, now);
        assert_eq!(attribution.apply_renames(&mut store), 1);
        assert_eq!(store.len(), 1, "no double entries");
        assert_eq!(store.get(&second).map(|p| p.total_calls()), Some(6));

        // Sticky once attributed, even after the pod is forgotten.
        index.lock().expect("lock").prune(Instant::now());
        index
            .lock()
            .expect("lock")
            .mark_deleted(UID, Instant::now() - DELETED_POD_GRACE);
        index.lock().expect("lock").prune(Instant::now());
        assert_eq!(attribution.identify(7, Some(&path)), second);
        // Unresolved and non-container cgroups.
        assert_eq!(attribution.identify(8, None), Identity::unresolved());
        assert_eq!(
            attribution
                .identify(9, Some("system.slice/cron.service"))
                .workload_kind,
            "Cgroup"
        );
        assert_eq!(attribution.apply_renames(&mut store), 0);
    }
}

#[cfg(test)]
mod sandbox_tests {
    use k8s_openapi::api::core::v1::{Container, PodSpec, PodStatus};

    use super::*;
    use crate::profile::{Profile, syscalls::Arch};

    const UID: &str = "8a1f0c4e-1b2c-4d3e-9f00-123456789abc";
    const APP: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const SANDBOX: &str = "5555555555555555555555555555555555555555555555555555555555555555";
    const RERUN: &str = "eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee";

    fn job_pod(app_id: Option<&str>, phase: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("count-x2x9q".into()),
                namespace: Some("batch".into()),
                uid: Some(UID.into()),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "count".into(),
                    ..Container::default()
                }],
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                container_statuses: Some(vec![ContainerStatus {
                    name: "count".into(),
                    container_id: app_id.map(|id| format!("containerd://{id}")),
                    ..ContainerStatus::default()
                }]),
                ..PodStatus::default()
            }),
        }
    }

    fn workload() -> Workload {
        Workload {
            kind: "Job".into(),
            name: "count".into(),
        }
    }

    fn path(id: &str) -> String {
        format!("/kubepods/besteffort/pod{UID}/{id}")
    }

    fn calls(store: &mut ProfileStore, identity: &Identity, n: u64) {
        let mut deltas = vec![0u64; recorder_ebpf::SYSCALL_COLUMNS];
        deltas[63] = n;
        store.add_counts(
            identity,
            Arch::X86_64,
            &deltas,
            std::time::SystemTime::now(),
        );
    }

    #[test]
    fn api_errors_are_reported_once() {
        let status = kube::core::Status::failure("jobs.batch \"x\" is forbidden", "Forbidden")
            .with_code(403);
        let err = kube::Error::Api(Box::new(status));
        assert_eq!(
            ApiReport(&err).to_string(),
            "403 Forbidden: jobs.batch \"x\" is forbidden"
        );
        let io = std::io::Error::other("connection refused");
        assert_eq!(ApiReport(&io).to_string(), "connection refused");
    }

    #[test]
    fn a_restarted_agent_adopts_saved_fallback_profiles() {
        // Saved by an agent that stopped before the pod's metadata arrived.
        let mut store = ProfileStore::new();
        let app_fallback = Identity::new("", "Pod", UID, APP);
        let sandbox_fallback = Identity::new("", "Pod", UID, SANDBOX);
        calls(&mut store, &app_fallback, 50);
        calls(&mut store, &sandbox_fallback, 7);

        let index = Arc::new(Mutex::new(PodIndex::new()));
        let attribution = Attribution::new(Arc::clone(&index));
        assert_eq!(attribution.apply_renames(&mut store), 0, "no pod known yet");
        index
            .lock()
            .expect("lock")
            .upsert(PodEntry::new(&job_pod(Some(APP), "Running"), workload()));
        assert_eq!(attribution.apply_renames(&mut store), 1);
        let app = Identity::new("batch", "Job", "count", "count");
        assert_eq!(store.get(&app).map(Profile::total_calls), Some(50));
        assert!(
            store.get(&sandbox_fallback).is_some(),
            "a running pod's unlisted id may be a run its status does not show yet"
        );
        index
            .lock()
            .expect("lock")
            .upsert(PodEntry::new(&job_pod(Some(APP), "Succeeded"), workload()));
        assert_eq!(attribution.apply_renames(&mut store), 1);
        let sandbox = Identity::new("batch", "Job", "count", SANDBOX_CONTAINER);
        assert_eq!(store.get(&sandbox).map(Profile::total_calls), Some(7));
        assert_eq!(store.len(), 2, "nothing left under a fallback identity");
        assert_eq!(attribution.apply_renames(&mut store), 0);
    }

    #[test]
    fn the_sandbox_is_the_pods_oldest_unlisted_cgroup() {
        let index = Arc::new(Mutex::new(PodIndex::new()));
        let attribution = Attribution::new(Arc::clone(&index));
        let mut store = ProfileStore::new();
        // The sandbox (cgroup 10) runs before the container has an id: a fallback.
        index
            .lock()
            .expect("lock")
            .upsert(PodEntry::new(&job_pod(None, "Pending"), workload()));
        let early = attribution.identify(10, Some(&path(SANDBOX)));
        assert_eq!(early, Identity::new("", "Pod", UID, SANDBOX));
        calls(&mut store, &early, 3);
        index
            .lock()
            .expect("lock")
            .upsert(PodEntry::new(&job_pod(Some(APP), "Running"), workload()));
        let app = Identity::new("batch", "Job", "count", "count");
        assert_eq!(attribution.identify(11, Some(&path(APP))), app);
        let sandbox = Identity::new("batch", "Job", "count", SANDBOX_CONTAINER);
        assert_eq!(attribution.identify(10, Some(&path(SANDBOX))), sandbox);
        assert_eq!(attribution.apply_renames(&mut store), 1);
        assert_eq!(store.get(&sandbox).map(Profile::total_calls), Some(3));
        // A new run of the container (younger than the listed one) is not the sandbox, even
        // though the pod looks complete: it waits for its status.
        assert_eq!(
            attribution.identify(12, Some(&path(RERUN))),
            Identity::new("", "Pod", UID, RERUN)
        );
    }
}
