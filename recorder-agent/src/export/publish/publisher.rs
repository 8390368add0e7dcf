//! Writes this node's contribution to each workload container's `SyscallProfile`, only when
//! it changed, without losing another node's concurrent write: every status write carries the
//! `resourceVersion` it was computed from, and a 409 Conflict reads the object again and
//! re-merges (optimistic concurrency, as controllers do). The API is behind
//! [`ProfileObjects`], so the rules are tested with a fake that can conflict on demand.

use std::{borrow::Cow, collections::HashMap, future::Future, time::Duration, time::SystemTime};

use k8s_openapi::{NamespaceResourceScope, apimachinery::pkg::apis::meta::v1::ObjectMeta};
use kube::{Api, Client, Resource, api::PostParams};
use serde::{Deserialize, Serialize};

use super::{
    GROUP, KIND, NodeContribution, PLURAL, PublishError, SyscallProfileSpec, SyscallProfileStatus,
    VERSION, apply_mode, contribution, merge_into, needs_write, object_name, publishable, spec_of,
};
use crate::{
    attribution::kubernetes::ApiReport,
    profile::{Identity, Profile, syscalls::Arch},
};

/// Attempts at one object's write before the pass gives up on it (it is retried next pass).
const ATTEMPTS: usize = 5;
/// First wait before a failed object is tried again; doubled per failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(10);
/// Longest wait before a failed object is tried again (a namespace may come back).
const MAX_BACKOFF: Duration = Duration::from_secs(600);

/// The `SyscallProfile` object.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SyscallProfile {
    /// `syscall-recorder.io/v1alpha1` (the API server refuses a body without it).
    #[serde(rename = "apiVersion", default = "api_version")]
    pub api_version: String,
    /// `SyscallProfile`.
    #[serde(default = "kind")]
    pub kind: String,
    /// Standard object metadata.
    pub metadata: ObjectMeta,
    /// Which workload container, and the mode.
    pub spec: SyscallProfileSpec,
    /// The merge and the node entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<SyscallProfileStatus>,
}

fn api_version() -> String {
    format!("{GROUP}/{VERSION}")
}

fn kind() -> String {
    KIND.to_owned()
}

impl Resource for SyscallProfile {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        Cow::Borrowed(KIND)
    }
    fn group(_: &()) -> Cow<'_, str> {
        Cow::Borrowed(GROUP)
    }
    fn version(_: &()) -> Cow<'_, str> {
        Cow::Borrowed(VERSION)
    }
    fn plural(_: &()) -> Cow<'_, str> {
        Cow::Borrowed(PLURAL)
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// How an API call failed, as far as the publisher cares.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    /// 409: the object changed since it was read (or was created meanwhile).
    #[error("conflict: {0}")]
    Conflict(String),
    /// 403: RBAC denies the call.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// 404 for the object's namespace: the workload's namespace is gone.
    #[error("the namespace is gone: {0}")]
    NamespaceGone(String),
    /// 404 on the resource itself: the CRD is not installed.
    #[error("the {PLURAL}.{GROUP} resource is not served (is the CRD installed?): {0}")]
    NoResource(String),
    /// Anything else (network, 5xx, a refused object).
    #[error("{0}")]
    Other(String),
}

/// The calls the publisher makes: one object at a time, by namespace and name.
pub trait ProfileObjects {
    /// The object, or `None` when there is none.
    fn get(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<Option<SyscallProfile>, ObjectError>> + Send;
    /// Creates the object (its status is ignored by the API); returns it as stored.
    fn create(
        &self,
        object: &SyscallProfile,
    ) -> impl Future<Output = Result<SyscallProfile, ObjectError>> + Send;
    /// Replaces the status, guarded by the object's `resourceVersion`.
    fn replace_status(
        &self,
        object: &SyscallProfile,
    ) -> impl Future<Output = Result<SyscallProfile, ObjectError>> + Send;
}

/// [`ProfileObjects`] through the API server.
#[derive(Clone)]
pub struct KubeObjects {
    client: Client,
}

impl std::fmt::Debug for KubeObjects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeObjects").finish_non_exhaustive()
    }
}

impl KubeObjects {
    /// Over a configured client.
    pub fn new(client: Client) -> Self {
        Self { client }
    }

    fn api(&self, namespace: &str) -> Api<SyscallProfile> {
        Api::namespaced(self.client.clone(), namespace)
    }
}

fn classify(err: kube::Error) -> ObjectError {
    let text = ApiReport(&err).to_string();
    match &err {
        kube::Error::Api(status) => {
            match status.code {
                409 => ObjectError::Conflict(text),
                403 => ObjectError::Forbidden(text),
                404 if status
                    .details
                    .as_ref()
                    .is_some_and(|d| d.kind == "namespaces") =>
                {
                    ObjectError::NamespaceGone(text)
                }
                // A 404 whose details name no object is the resource path itself.
                404 if status.details.as_ref().is_none_or(|d| d.name.is_empty()) => {
                    ObjectError::NoResource(text)
                }
                _ => ObjectError::Other(text),
            }
        }
        _ => ObjectError::Other(text),
    }
}

impl ProfileObjects for KubeObjects {
    async fn get(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<SyscallProfile>, ObjectError> {
        self.api(namespace).get_opt(name).await.map_err(classify)
    }

    async fn create(&self, object: &SyscallProfile) -> Result<SyscallProfile, ObjectError> {
        let namespace = object.metadata.namespace.clone().unwrap_or_default();
        self.api(&namespace)
            .create(&PostParams::default(), object)
            .await
            .map_err(classify)
    }

    async fn replace_status(&self, object: &SyscallProfile) -> Result<SyscallProfile, ObjectError> {
        let namespace = object.metadata.namespace.clone().unwrap_or_default();
        let name = object.metadata.name.clone().unwrap_or_default();
        self.api(&namespace)
            .replace_status(&name, &PostParams::default(), object)
            .await
            .map_err(classify)
    }
}

/// What one pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PassStats {
    /// Status writes that succeeded.
    pub writes: u64,
    /// Objects created.
    pub created: u64,
    /// Writes refused with 409 and retried.
    pub conflicts: u64,
    /// Objects left for the next pass.
    pub failed: u64,
    /// Objects whose name or entries could not be published (said once each).
    pub rejected: u64,
}

/// The failure that stopped a pass: the API denies or does not serve the resource.
#[derive(Debug, thiserror::Error)]
#[error("publishing SyscallProfiles: {0}")]
pub struct PassError(#[source] pub ObjectError);

impl PassError {
    /// The cause without the object it happened on: the same cause on another object is
    /// the same news.
    pub fn cause(&self) -> std::mem::Discriminant<ObjectError> {
        std::mem::discriminant(&self.0)
    }
}

/// Publishes this node's contributions.
pub struct Publisher<O> {
    objects: O,
    node: String,
    arch: Arch,
    stable_after: Duration,
    /// What this agent wrote or found in place, per identity.
    published: HashMap<Identity, NodeContribution>,
    /// Identities said to be unpublishable (logged once).
    rejected: std::collections::HashSet<Identity>,
    /// Identities whose last write failed: when to try again and the wait after that (warned
    /// about once until a write works).
    failing: HashMap<Identity, (SystemTime, Duration)>,
}

impl<O> std::fmt::Debug for Publisher<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("node", &self.node)
            .field("published", &self.published.len())
            .finish_non_exhaustive()
    }
}

impl<O: ProfileObjects> Publisher<O> {
    /// A publisher for node `node`.
    pub fn new(objects: O, node: &str, arch: Arch, stable_after: Duration) -> Self {
        Self {
            objects,
            node: node.to_owned(),
            arch,
            stable_after,
            published: HashMap::new(),
            rejected: std::collections::HashSet::new(),
            failing: HashMap::new(),
        }
    }

    /// Identities whose contribution is in place.
    pub fn published(&self) -> usize {
        self.published.len()
    }

    /// Forgets what was published for `identity` (its object was deleted): the next pass
    /// writes the contribution again, into a new object.
    pub fn forget(&mut self, identity: &Identity) {
        self.published.remove(identity);
        self.failing.remove(identity);
    }

    /// Writes every contribution that changed since it was last in place. A 403 or a missing
    /// CRD stops the pass (the next pass tries again); other failures leave that object for
    /// the next pass.
    pub async fn pass(
        &mut self,
        profiles: &[Profile],
        now: SystemTime,
    ) -> Result<PassStats, PassError> {
        let mut stats = PassStats::default();
        for profile in profiles {
            let identity = &profile.identity;
            if !publishable(identity) || self.rejected.contains(identity) {
                continue;
            }
            let mine = contribution(profile, &self.node, self.arch, now, self.stable_after);
            if !needs_write(self.published.get(identity), &mine) {
                continue;
            }
            if self
                .failing
                .get(identity)
                .is_some_and(|(next_try, _)| now < *next_try)
            {
                continue;
            }
            let name = match object_name(identity) {
                Ok(name) => name,
                Err(err) => {
                    tracing::warn!(error = %err, "not publishing a profile");
                    self.rejected.insert(identity.clone());
                    stats.rejected += 1;
                    continue;
                }
            };
            match self.write(identity, &name, mine, now, &mut stats).await {
                Ok(()) => {
                    self.failing.remove(identity);
                }
                Err(err @ (ObjectError::Forbidden(_) | ObjectError::NoResource(_))) => {
                    return Err(PassError(err));
                }
                Err(err) => {
                    let backoff = match self.failing.get(identity) {
                        Some((_, backoff)) => (*backoff * 2).min(MAX_BACKOFF),
                        None => {
                            // A gone namespace is the normal end of a workload: no warning.
                            if matches!(err, ObjectError::NamespaceGone(_)) {
                                tracing::debug!(%identity, error = %err, "not publishing: the namespace is gone");
                            } else {
                                tracing::warn!(%identity, object = %name, error = %err, "publishing a profile failed; retrying with backoff");
                            }
                            FIRST_BACKOFF
                        }
                    };
                    self.failing
                        .insert(identity.clone(), (now + backoff, backoff));
                    stats.failed += 1;
                }
            }
        }
        Ok(stats)
    }

    /// Read, merge, write with the read `resourceVersion`; on conflict, again.
    async fn write(
        &mut self,
        identity: &Identity,
        name: &str,
        mine: NodeContribution,
        now: SystemTime,
        stats: &mut PassStats,
    ) -> Result<(), ObjectError> {
        let namespace = identity.namespace.as_str();
        let mut last = None;
        for _ in 0..ATTEMPTS {
            let mut object = match self.objects.get(namespace, name).await? {
                Some(object) => object,
                None => match self
                    .objects
                    .create(&SyscallProfile {
                        api_version: api_version(),
                        kind: kind(),
                        metadata: ObjectMeta {
                            name: Some(name.to_owned()),
                            namespace: Some(namespace.to_owned()),
                            ..ObjectMeta::default()
                        },
                        spec: spec_of(identity),
                        status: None,
                    })
                    .await
                {
                    Ok(object) => {
                        stats.created += 1;
                        object
                    }
                    // Another node created it first: read theirs.
                    Err(ObjectError::Conflict(text)) => {
                        stats.conflicts += 1;
                        last = Some(ObjectError::Conflict(text));
                        continue;
                    }
                    Err(err) => return Err(err),
                },
            };
            let mut status = object.status.take().unwrap_or_default();
            let in_place = status
                .nodes
                .iter()
                .find(|entry| entry.node == self.node)
                .cloned();
            if !needs_write(in_place.as_ref(), &mine) {
                // A restarted agent finds its entry as it left it: nothing to write.
                self.published
                    .insert(identity.clone(), in_place.unwrap_or(mine));
                return Ok(());
            }
            // A freeze not taken in yet takes the set as it was before this contribution.
            apply_mode(object.spec.mode, &mut status, now);
            for err in merge_into(&mut status, mine.clone(), now) {
                log_bad_entry(name, &err);
            }
            object.status = Some(status);
            match self.objects.replace_status(&object).await {
                Ok(_) => {
                    stats.writes += 1;
                    self.published.insert(identity.clone(), mine);
                    return Ok(());
                }
                Err(ObjectError::Conflict(text)) => {
                    stats.conflicts += 1;
                    last = Some(ObjectError::Conflict(text));
                }
                Err(err) => return Err(err),
            }
        }
        Err(last.unwrap_or_else(|| ObjectError::Other("no attempt made".to_owned())))
    }
}

fn log_bad_entry(name: &str, err: &PublishError) {
    tracing::warn!(object = name, error = %err, "a node entry of a SyscallProfile does not decode; left out of the merge");
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    };

    use super::*;
    use crate::export::publish::{decode_syscalls, tests::at};

    /// An API server in memory: objects by (namespace, name) with a resourceVersion, a
    /// conflict injected on demand, and a count of writes.
    #[derive(Clone, Default)]
    struct Fake {
        objects: Arc<Mutex<HashMap<(String, String), SyscallProfile>>>,
        version: Arc<AtomicUsize>,
        conflicts_to_inject: Arc<AtomicUsize>,
        writes: Arc<AtomicUsize>,
        forbid: Arc<Mutex<bool>>,
        /// Calls made (any kind).
        calls: Arc<AtomicUsize>,
    }

    impl Fake {
        fn key(object: &SyscallProfile) -> (String, String) {
            (
                object.metadata.namespace.clone().unwrap_or_default(),
                object.metadata.name.clone().unwrap_or_default(),
            )
        }

        fn bump(&self, object: &mut SyscallProfile) {
            let version = self.version.fetch_add(1, Ordering::SeqCst) + 1;
            object.metadata.resource_version = Some(version.to_string());
        }

        fn status(&self, namespace: &str, name: &str) -> SyscallProfileStatus {
            self.objects.lock().expect("lock")[&(namespace.to_owned(), name.to_owned())]
                .status
                .clone()
                .unwrap_or_default()
        }
    }

    impl ProfileObjects for Fake {
        async fn get(
            &self,
            namespace: &str,
            name: &str,
        ) -> Result<Option<SyscallProfile>, ObjectError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if *self.forbid.lock().expect("lock") {
                return Err(ObjectError::Forbidden("403 Forbidden: test".into()));
            }
            if namespace == "gone" {
                return Err(ObjectError::NamespaceGone(
                    "404 NotFound: namespaces \"gone\"".into(),
                ));
            }
            Ok(self
                .objects
                .lock()
                .expect("lock")
                .get(&(namespace.to_owned(), name.to_owned()))
                .cloned())
        }

        async fn create(&self, object: &SyscallProfile) -> Result<SyscallProfile, ObjectError> {
            let mut objects = self.objects.lock().expect("lock");
            let key = Self::key(object);
            if objects.contains_key(&key) {
                return Err(ObjectError::Conflict("409 AlreadyExists".into()));
            }
            let mut stored = object.clone();
            stored.status = None;
            self.bump(&mut stored);
            objects.insert(key, stored.clone());
            Ok(stored)
        }

        async fn replace_status(
            &self,
            object: &SyscallProfile,
        ) -> Result<SyscallProfile, ObjectError> {
            let mut objects = self.objects.lock().expect("lock");
            let key = Self::key(object);
            let stored = objects
                .get_mut(&key)
                .ok_or_else(|| ObjectError::Other("404".into()))?;
            // Another writer got in first: its write bumps the version.
            if self
                .conflicts_to_inject
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                let mut theirs = stored.status.clone().unwrap_or_default();
                merge_into(
                    &mut theirs,
                    NodeContribution {
                        node: "other-node".into(),
                        arch: "x86_64".into(),
                        syscalls: super::super::encode_syscalls(Arch::X86_64, ["ptrace"]),
                        ..NodeContribution::default()
                    },
                    SystemTime::UNIX_EPOCH,
                );
                stored.status = Some(theirs);
                let version = self.version.fetch_add(1, Ordering::SeqCst) + 1;
                stored.metadata.resource_version = Some(version.to_string());
            }
            if stored.metadata.resource_version != object.metadata.resource_version {
                return Err(ObjectError::Conflict("409 Conflict".into()));
            }
            stored.status.clone_from(&object.status);
            let version = self.version.fetch_add(1, Ordering::SeqCst) + 1;
            stored.metadata.resource_version = Some(version.to_string());
            self.writes.fetch_add(1, Ordering::SeqCst);
            Ok(stored.clone())
        }
    }

    fn profile(identity: Identity, names: &[&str], calls: u64) -> Profile {
        let mut profile = Profile::new(identity, at(0));
        for name in names {
            profile.syscalls.insert((*name).to_owned(), calls);
        }
        profile.last_seen = at(calls);
        profile
    }

    fn web() -> Identity {
        Identity::new("shop", "Deployment", "web", "app")
    }

    fn names(status: &SyscallProfileStatus) -> Vec<String> {
        status
            .architectures
            .iter()
            .flat_map(|a| a.syscalls.clone())
            .collect()
    }

    #[tokio::test]
    async fn writes_only_changes_and_loses_no_concurrent_write() {
        let fake = Fake::default();
        let stable_after = Duration::from_secs(600);
        let mut a = Publisher::new(fake.clone(), "node-a", Arch::X86_64, stable_after);
        let mut b = Publisher::new(fake.clone(), "node-b", Arch::X86_64, stable_after);
        let host = Identity::new("", "Cgroup", "system.slice/cron.service", "");

        let first = [
            profile(web(), &["read", "uname"], 5),
            profile(host.clone(), &["read"], 5),
            profile(
                Identity::new("shop", "Deployment", "web", "(sandbox)"),
                &["pause"],
                1,
            ),
        ];
        let stats = a.pass(&first, at(10)).await.expect("pass");
        assert_eq!((stats.created, stats.writes), (1, 1), "{stats:?}");
        assert_eq!(
            fake.objects.lock().expect("lock").len(),
            1,
            "only the workload"
        );

        // Node b writes while another writer gets in first twice: it re-reads and re-merges.
        fake.conflicts_to_inject.store(2, Ordering::SeqCst);
        let stats = b
            .pass(&[profile(web(), &["read", "openat"], 3)], at(10))
            .await
            .expect("pass");
        assert_eq!((stats.conflicts, stats.writes), (2, 1), "{stats:?}");
        let status = fake.status("shop", "deployment.web.app");
        assert_eq!(
            status
                .nodes
                .iter()
                .map(|e| e.node.as_str())
                .collect::<Vec<_>>(),
            ["node-a", "node-b", "other-node"]
        );
        assert_eq!(names(&status), ["openat", "ptrace", "read", "uname"]);

        // Steady state: more calls, same set: no write from either node.
        let writes = fake.writes.load(Ordering::SeqCst);
        for round in 0..10 {
            let calls = 100 + round;
            a.pass(&[profile(web(), &["read", "uname"], calls)], at(20 + round))
                .await
                .expect("pass");
            b.pass(
                &[profile(web(), &["read", "openat"], calls)],
                at(20 + round),
            )
            .await
            .expect("pass");
        }
        assert_eq!(
            fake.writes.load(Ordering::SeqCst),
            writes,
            "no steady-state writes"
        );

        // A new syscall on node a is written, and keeps b's entry.
        let stats = a
            .pass(&[profile(web(), &["read", "uname", "futex"], 200)], at(40))
            .await
            .expect("pass");
        assert_eq!(stats.writes, 1);
        let status = fake.status("shop", "deployment.web.app");
        let b_entry = status.nodes.iter().find(|e| e.node == "node-b").expect("b");
        assert_eq!(
            decode_syscalls("node-b", Arch::X86_64, &b_entry.syscalls).expect("decode"),
            ["openat", "read"].into_iter().collect()
        );
        assert_eq!(
            names(&status),
            ["futex", "openat", "ptrace", "read", "uname"]
        );
    }

    #[tokio::test]
    async fn a_restarted_agent_rewrites_nothing_unchanged() {
        let fake = Fake::default();
        let stable_after = Duration::from_secs(600);
        let profiles = [profile(web(), &["read", "uname"], 5)];
        let mut first = Publisher::new(fake.clone(), "node-a", Arch::X86_64, stable_after);
        first.pass(&profiles, at(10)).await.expect("pass");
        let writes = fake.writes.load(Ordering::SeqCst);
        let mut restarted = Publisher::new(fake.clone(), "node-a", Arch::X86_64, stable_after);
        let stats = restarted.pass(&profiles, at(20)).await.expect("pass");
        assert_eq!(stats, PassStats::default());
        assert_eq!(restarted.published(), 1);
        assert_eq!(fake.writes.load(Ordering::SeqCst), writes);
    }

    #[tokio::test]
    async fn failed_objects_back_off_and_do_not_stop_the_others() {
        let fake = Fake::default();
        let mut publisher = Publisher::new(
            fake.clone(),
            "node-a",
            Arch::X86_64,
            Duration::from_secs(600),
        );
        let profiles = [
            profile(
                Identity::new("gone", "Deployment", "old", "app"),
                &["read"],
                1,
            ),
            profile(web(), &["read"], 1),
        ];
        let stats = publisher.pass(&profiles, at(0)).await.expect("pass");
        assert_eq!((stats.failed, stats.writes), (1, 1), "{stats:?}");
        // Within the first backoff (10 s) the failed object is not tried at all.
        let calls = fake.calls.load(Ordering::SeqCst);
        let stats = publisher.pass(&profiles, at(5)).await.expect("pass");
        assert_eq!(stats, PassStats::default());
        assert_eq!(
            fake.calls.load(Ordering::SeqCst),
            calls,
            "no call while backing off"
        );
        // Then again, and the wait doubles: nothing at +11 + 15 s, a try at +11 + 21 s.
        assert_eq!(
            publisher
                .pass(&profiles, at(11))
                .await
                .expect("pass")
                .failed,
            1
        );
        assert_eq!(
            publisher
                .pass(&profiles, at(26))
                .await
                .expect("pass")
                .failed,
            0
        );
        assert_eq!(
            publisher
                .pass(&profiles, at(32))
                .await
                .expect("pass")
                .failed,
            1
        );
    }

    #[tokio::test]
    async fn a_denied_api_stops_the_pass_with_one_error() {
        let fake = Fake::default();
        *fake.forbid.lock().expect("lock") = true;
        let mut publisher = Publisher::new(
            fake.clone(),
            "node-a",
            Arch::X86_64,
            Duration::from_secs(600),
        );
        let profiles = [
            profile(web(), &["read"], 1),
            profile(
                Identity::new("shop", "Deployment", "api", "app"),
                &["read"],
                1,
            ),
        ];
        let err = publisher
            .pass(&profiles, at(1))
            .await
            .expect_err("forbidden");
        assert!(matches!(err.0, ObjectError::Forbidden(_)), "{err}");
        *fake.forbid.lock().expect("lock") = false;
        let stats = publisher
            .pass(&profiles, at(2))
            .await
            .expect("allowed again");
        assert_eq!(stats.writes, 2);
    }
}
