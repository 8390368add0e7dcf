//! The publishing task (Kubernetes mode): every `--publish-interval`, this node's
//! contributions that changed go to their SyscallProfile objects. A pass the API stops
//! (RBAC denies, CRD missing) is said once per cause, makes `/readyz` answer 503 until a pass
//! works again, and is retried; it never stops the agent.

use std::{sync::Arc, time::Duration, time::SystemTime};

use tracing::{error, info};

use crate::{
    export::publish::{
        publishable,
        publisher::{ProfileObjects, Publisher},
    },
    profile::Profile,
    report::Report,
    serve::{
        Shared,
        state::{Condition, PublishStatus},
    },
};

/// Runs passes forever (the task is dropped at shutdown).
pub async fn run<O: ProfileObjects + Send>(
    mut publisher: Publisher<O>,
    shared: Arc<Shared>,
    node: String,
    interval: Duration,
) {
    let mut said = None;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut status = PublishStatus {
        node,
        ..PublishStatus::default()
    };
    loop {
        ticker.tick().await;
        // A snapshot of the publishable profiles only, so no lock is held across API calls
        // and host cgroups, sandboxes and debugging sessions are not copied every pass.
        let profiles: Vec<Profile> = shared
            .profiles
            .read()
            .values()
            .filter(|profile| publishable(&profile.identity))
            .cloned()
            .collect();
        // A deleted object (kubectl delete, a namespace recreated, a restore) gets this node's
        // contribution again.
        if let Some(view) = &shared.cluster {
            for identity in view.take_deleted() {
                publisher.forget(&identity);
            }
        }
        let result = publisher.pass(&profiles, SystemTime::now()).await;
        status.passes += 1;
        match result {
            Ok(stats) => {
                shared
                    .metrics
                    .record_publish(stats.writes, stats.conflicts, stats.failed);
                status.writes += stats.writes;
                status.conflicts += stats.conflicts;
                status.last_error = None;
                if said.take().is_some() {
                    info!("publishing SyscallProfiles works again");
                }
                shared.readiness.met(Condition::Publishing);
            }
            Err(err) => {
                shared.metrics.record_publish(0, 0, 1);
                let text = Report(&err).to_string();
                if said != Some(err.cause()) {
                    error!(error = %text, "publishing SyscallProfiles stopped; retrying every pass");
                    said = Some(err.cause());
                }
                status.last_error = Some(text);
                shared.readiness.unmet(Condition::Publishing);
            }
        }
        status.objects = publisher.published();
        shared
            .status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .publish = Some(status.clone());
    }
}
