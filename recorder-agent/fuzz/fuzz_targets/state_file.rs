//! The state file reader never panics on any bytes, and what it accepts serialises back to
//! something it accepts again.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(state) = recorder_agent::profile::state::parse(data) {
        let again = serde_json::to_vec(&state).expect("a parsed state serialises");
        recorder_agent::profile::state::parse(&again).expect("and parses again");
    }
});
