//! Kernel-side statistics: the program's own counters and the kernel's run statistics of the
//! attached programs.

use std::fs;

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
