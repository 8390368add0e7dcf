//! Kernel-side statistics: the program's own counters and the kernel's run statistics of the
//! attached programs.

use std::{collections::HashMap, fs};

use aya::programs::loaded_programs;

/// Kernel-side counters, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelStats {
    /// Cache misses (slow-path runs).
    pub cache_misses: u64,
    /// Slots handed out by the kernel.
    pub slots_allocated: u64,
    /// Slow-path runs that found no free slot (calls then went to the overflow slot).
    pub slot_exhausted: u64,
    /// Map operations that failed unexpectedly.
    pub map_errors: u64,
    /// Lost allocation races (harmless).
    pub slot_races: u64,
}

/// Run statistics of one of our programs. The kernel only accumulates them while
/// `kernel.bpf_stats_enabled` is 1 (it costs a few ns per run), so they are frozen otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProgramStats {
    /// Program name (`PROG_*` of the ABI).
    pub program: &'static str,
    /// Runs counted.
    pub run_count: u64,
    /// Time spent in the program.
    pub run_time: std::time::Duration,
}

/// Whether the kernel accumulates program run statistics (`kernel.bpf_stats_enabled`).
pub fn bpf_stats_enabled() -> bool {
    fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").is_ok_and(|text| text.trim() == "1")
}

/// The attached programs by name and kernel id: enough to read their run statistics at any
/// time and from any thread (a scrape), without the recorder.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AttachedPrograms(pub(super) Vec<(&'static str, u32)>);

impl AttachedPrograms {
    /// Run count and run time of each program still loaded (see [`ProgramStats`]).
    pub fn stats(&self) -> Vec<ProgramStats> {
        let loaded: HashMap<u32, (u64, std::time::Duration)> = loaded_programs()
            .flatten()
            .map(|info| (info.id(), (info.run_count(), info.run_time())))
            .collect();
        self.0
            .iter()
            .filter_map(|&(program, id)| {
                loaded.get(&id).map(|&(run_count, run_time)| ProgramStats {
                    program,
                    run_count,
                    run_time,
                })
            })
            .collect()
    }
}
