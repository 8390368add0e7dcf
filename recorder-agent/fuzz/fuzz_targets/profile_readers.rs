//! The readers of profile files (OCI seccomp, SPO SeccompProfile, the recorder's JSON) and of API paths
//! never panic on any input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use recorder_agent::{export::seccomp::OciSeccomp, profile::Profile};

fuzz_target!(|data: &[u8]| {
    if let Ok(oci) = serde_json::from_slice::<OciSeccomp>(data) {
        let _ = oci.allowed_names();
        let again = serde_json::to_vec(&oci).expect("serialises");
        let back: OciSeccomp = serde_json::from_slice(&again).expect("parses again");
        assert_eq!(back, oci);
    }
    if let Ok(profile) = serde_json::from_slice::<Profile>(data) {
        let _ = profile.total_calls();
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = recorder_agent::serve::api::parse_identity_path(text);
        // OCI, SPO or the recorder's JSON, detected from the fields (diff and merge read these).
        if let Ok(policy) =
            recorder_agent::export::compare::parse_policy(std::path::Path::new("fuzz.json"), text)
        {
            let _ = recorder_agent::export::compare::diff(&policy, &policy);
            let _ = recorder_agent::export::compare::merge(std::slice::from_ref(&policy));
        }
    }
});
