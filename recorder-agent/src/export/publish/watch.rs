//! Watches every `SyscallProfile` in the cluster into the node's [`ClusterView`] (what the
//! node delivers), and takes a mode change in: the first agent to see an object frozen records
//! the frozen set, the first to see it unfrozen drops it (resourceVersion-guarded like every
//! status write, so concurrent agents cannot record two different sets).

use std::{collections::HashMap, sync::Arc, time::SystemTime};

use futures_util::StreamExt as _;
use kube::{
    Api, Client,
    runtime::{
        WatchStreamExt as _,
        watcher::{self, Event},
    },
};
use tracing::{debug, info, warn};

use super::{
    apply_mode,
    publisher::{ObjectError, ProfileObjects, SyscallProfile},
    view::{ClusterProfile, ClusterView, from_object},
};
use crate::{
    attribution::kubernetes::ApiReport,
    profile::{Identity, syscalls::Arch},
};

/// What the watch reports to the agent's status.
pub trait WatchReport: Send {
    /// The objects were listed (again): `objects` of them.
    fn listed(&self, objects: usize);
    /// Watching failed (RBAC, CRD missing, API down); retried with backoff.
    fn failed(&self, error: &str);
}

/// Keeps `view` in line with the cluster's objects until the task is dropped.
pub async fn watch_profiles<O: ProfileObjects + Send + Sync>(
    client: Client,
    objects: O,
    view: Arc<ClusterView>,
    arch: Arch,
    report: impl WatchReport,
) {
    let api: Api<SyscallProfile> = Api::all(client);
    let mut stream = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut listing: HashMap<Identity, ClusterProfile> = HashMap::new();
    let mut listed_once = false;
    let mut refused = std::collections::HashSet::new();
    let mut last_error: Option<String> = None;
    while let Some(event) = stream.next().await {
        match event {
            Ok(Event::Init) => listing.clear(),
            Ok(Event::InitApply(object)) => {
                if let Some((identity, profile)) = take(&object, arch, &mut refused) {
                    listing.insert(identity, profile);
                }
                reconcile_mode(&objects, &object).await;
            }
            Ok(Event::InitDone) => {
                let count = listing.len();
                view.replace_all(std::mem::take(&mut listing));
                report.listed(count);
                if last_error.take().is_some() {
                    info!("watching SyscallProfiles works again");
                }
                if !std::mem::replace(&mut listed_once, true) {
                    info!(
                        objects = count,
                        "SyscallProfiles listed: delivering the cluster's profiles"
                    );
                }
            }
            Ok(Event::Apply(object)) => {
                if let Some((identity, profile)) = take(&object, arch, &mut refused) {
                    view.upsert(identity, profile);
                }
                reconcile_mode(&objects, &object).await;
            }
            Ok(Event::Delete(object)) => {
                if let Ok((identity, _)) = from_object(&object, arch) {
                    view.remove(&identity);
                }
            }
            Err(err) => {
                let text = ApiReport(&err).to_string();
                if last_error.as_deref() != Some(text.as_str()) {
                    warn!(error = %text, "watching SyscallProfiles failed; delivering this node's own profiles meanwhile, retrying with backoff");
                }
                report.failed(&text);
                last_error = Some(text);
            }
        }
    }
}

/// The object's identity and delivered set, or `None` (said once per object) when it cannot
/// be delivered.
fn take(
    object: &SyscallProfile,
    arch: Arch,
    refused: &mut std::collections::HashSet<String>,
) -> Option<(Identity, ClusterProfile)> {
    match from_object(object, arch) {
        Ok(taken) => Some(taken),
        Err(err) => {
            let key = format!(
                "{}/{}",
                object.metadata.namespace.as_deref().unwrap_or_default(),
                object.metadata.name.as_deref().unwrap_or_default()
            );
            if refused.insert(key.clone()) {
                warn!(object = %key, error = %err, "ignoring a SyscallProfile object");
            }
            None
        }
    }
}

/// Records or drops the frozen set when the object's mode asks for it. A conflict means
/// another agent (or a publisher) wrote first: the next event shows the result.
pub async fn reconcile_mode<O: ProfileObjects>(objects: &O, object: &SyscallProfile) -> bool {
    let mut status = object.status.clone().unwrap_or_default();
    if !apply_mode(object.spec.mode, &mut status, SystemTime::now()) {
        return false;
    }
    let mode_changed =
        status.frozen.is_some() != object.status.as_ref().is_some_and(|s| s.frozen.is_some());
    if !mode_changed {
        // Only conditions or derived fields differ (an object from an older agent): the next
        // contribution rewrites them; no write just for that.
        return false;
    }
    let mut next = object.clone();
    next.status = Some(status);
    let name = object.metadata.name.as_deref().unwrap_or_default();
    match objects.replace_status(&next).await {
        Ok(_) => {
            info!(object = %name, mode = ?object.spec.mode, "took a SyscallProfile's mode in");
            true
        }
        Err(ObjectError::Conflict(_)) => {
            debug!(object = %name, "mode taken in by another writer first");
            false
        }
        Err(err) => {
            warn!(object = %name, error = %err, "could not record a SyscallProfile's mode; the next change retries");
            false
        }
    }
}
