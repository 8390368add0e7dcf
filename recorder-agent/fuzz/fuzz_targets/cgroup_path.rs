//! The cgroup path parser and the identity rule never panic, and what they extract comes from
//! the path (ids are 64 hex digits, pod UIDs are UUID-shaped).
#![no_main]

use libfuzzer_sys::fuzz_target;
use recorder_agent::{
    attribution::cgroup::{CgroupKind, classify},
    profile::Identity,
};

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    match classify(path) {
        CgroupKind::PodContainer {
            pod_uid,
            container_id,
            ..
        } => {
            assert!(container_id.is_empty() || container_id.len() == 64);
            assert!(pod_uid.len() == 32 || pod_uid.len() == 36);
            assert!(path.to_ascii_lowercase().contains(&container_id));
        }
        CgroupKind::Container { container_id, .. } => {
            assert_eq!(container_id.len(), 64);
            assert!(path.contains(&container_id));
        }
        CgroupKind::RuntimeHelper | CgroupKind::Other => {}
    }
    let identity = Identity::from_cgroup_path(path);
    // An identity's URL path parses back to the same identity.
    let url = identity.url_path();
    if let Ok(back) = recorder_agent::serve::api::parse_identity_path(&url) {
        assert_eq!(back, identity, "{url}");
    }
});
