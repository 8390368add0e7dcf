//! Opt-in (`run --publish-spo`): every workload container's delivered profile also as a
//! security-profiles-operator `SeccompProfile`, so SPO's ProfileBinding can bind it. The API
//! version is the one the cluster's SPO serves as preferred (v1 since SPO 1.0, v1beta1 before),
//! found through discovery; SeccompProfile is cluster-scoped, named by
//! [`crate::export::seccomp::spo_name`]. The first contributing node of a workload (by name)
//! applies it (server-side apply, one field manager), only when the delivered set changed
//! since it last applied; after a restart it applies each once again (no change on the
//! server when nothing changed).

use std::{collections::HashMap, sync::Arc, time::Duration};

use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, Patch, PatchParams},
    discovery,
};
use tracing::{debug, info, warn};

use super::view::ClusterView;
use crate::{
    attribution::kubernetes::ApiReport,
    export::seccomp::{self, SPO_KIND, SpoSeccompProfile},
    profile::{Identity, Profile, syscalls::Arch},
};

/// SPO's API group.
pub const SPO_GROUP: &str = "security-profiles-operator.x-k8s.io";
/// Field manager of the applies.
const FIELD_MANAGER: &str = "syscall-recorder";
/// How often the view is looked at, and the CRD looked for while it is missing.
const POLL: Duration = Duration::from_secs(2);
const CRD_RETRY: Duration = Duration::from_secs(60);

/// The SeccompProfile of a delivered syscall set (the cluster's, so without one node's
/// learning times).
pub fn spo_of_names(identity: &Identity, names: &[&str], arch: Arch) -> SpoSeccompProfile {
    let mut profile = Profile::new(identity.clone(), std::time::SystemTime::UNIX_EPOCH);
    for name in names {
        profile.syscalls.insert((*name).to_owned(), 0);
    }
    let mut spo = seccomp::spo_profile(&profile, arch);
    spo.metadata
        .annotations
        .retain(|key, _| !key.ends_with("/first-seen") && !key.ends_with("/last-new-syscall"));
    spo
}

/// The SeccompProfile object of a delivered syscall set, in `api_version`.
pub fn spo_object(
    identity: &Identity,
    names: &[String],
    arch: Arch,
    api_version: &str,
) -> serde_json::Value {
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut spo = spo_of_names(identity, &names, arch);
    spo.api_version = api_version.to_owned();
    serde_json::to_value(&spo).unwrap_or_default()
}

/// Applies SeccompProfiles for the view's profiles until the task is dropped. Only the first
/// contributing node (by name) of a profile applies it, so one node writes each object, not
/// every node, and the content does not flip between nodes of different architectures.
pub async fn publish_spo(client: Client, view: Arc<ClusterView>, arch: Arch, node: String) {
    let resource = loop {
        match discovery::group(&client, SPO_GROUP).await {
            Ok(group) => match group.recommended_kind(SPO_KIND) {
                Some((resource, _)) => break resource,
                None => warn!(
                    "security-profiles-operator's API group has no SeccompProfile; --publish-spo waits for it"
                ),
            },
            Err(err) => {
                warn!(error = %ApiReport(&err), "security-profiles-operator's SeccompProfile CRD is not served; --publish-spo waits for it")
            }
        }
        tokio::time::sleep(CRD_RETRY).await;
    };
    info!(api_version = %resource.api_version, "publishing SeccompProfiles for security-profiles-operator");
    let api: Api<DynamicObject> = Api::all_with(client, &resource);
    let mut applied: HashMap<Identity, Vec<String>> = HashMap::new();
    let mut seen_generation = None;
    let mut failing = false;
    let mut ticker = tokio::time::interval(POLL);
    loop {
        ticker.tick().await;
        if !view.synced() || (seen_generation == Some(view.generation()) && !failing) {
            continue;
        }
        let (generation, profiles) = view.snapshot();
        failing = false;
        for (identity, profile) in profiles {
            if profile.first_node.as_deref() != Some(node.as_str())
                || applied.get(&identity) == Some(&profile.delivered)
            {
                continue;
            }
            match apply(&api, &resource, &identity, &profile.delivered, arch).await {
                Ok(name) => {
                    debug!(%identity, object = %name, "applied SeccompProfile");
                    applied.insert(identity, profile.delivered);
                }
                Err(err) => {
                    if !failing {
                        warn!(%identity, error = %err, "applying a SeccompProfile failed; retrying");
                    }
                    failing = true;
                }
            }
        }
        seen_generation = Some(generation);
    }
}

async fn apply(
    api: &Api<DynamicObject>,
    resource: &ApiResource,
    identity: &Identity,
    names: &[String],
    arch: Arch,
) -> Result<String, String> {
    let object = spo_object(identity, names, arch, &resource.api_version);
    let name = object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&object),
    )
    .await
    .map(|_| name)
    .map_err(|err| ApiReport(&err).to_string())
}
