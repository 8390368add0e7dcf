//! What a collection round needs from the kernel counters, as a trait: the attached
//! [`Recorder`] implements it, and a round can be unit-tested against an in-memory fake.

use recorder_ebpf::{SYSCALL_COLUMNS, SlotKey};

use crate::kernel::{BpfError, Continuity, Recorder, Totals};

/// The kernel's per-cgroup counter slots as a round sees them: which cgroup holds which slot,
/// which slots counted since the last look, their totals, and giving a slot back.
///
/// The semantics are the kernel program's: a task marks its slot when it misses its CPU's
/// slot cache, so after [`invalidate_caches`](Self::invalidate_caches) every slot that keeps
/// counting is marked again; slot 0 ([`recorder_ebpf::OVERFLOW_SLOT`]) counts the calls of
/// cgroups that found no free slot.
pub trait SlotCounters {
    /// How many slots the kernel has handed out since loading: while it stays the same, so
    /// does the slot table (during collection, user space changes it only through
    /// [`release`](Self::release)).
    fn slots_allocated(&self) -> Result<u64, BpfError>;

    /// The (key, slot) pairs handed out.
    fn slots(&self) -> Result<Vec<(SlotKey, u32)>, BpfError>;

    /// Whether `slot` counted after a cache miss since the last call; clears the mark.
    fn take_active(&self, slot: u32) -> Result<bool, BpfError>;

    /// Invalidates every CPU's cached slots, so each task that counts again marks its slot.
    fn invalidate_caches(&mut self) -> Result<(), BpfError>;

    /// The totals of `slot`, summed over CPUs, into `totals`.
    fn read_slot_into(
        &self,
        slot: u32,
        totals: &mut [u64; SYSCALL_COLUMNS],
    ) -> Result<(), BpfError>;

    /// Gives the slot of a removed cgroup back (unregistered, zeroed, free again) and returns
    /// its final totals.
    fn release(&mut self, key: SlotKey, slot: u32) -> Result<Totals, BpfError>;

    /// The command line (argv strings, NUL-separated) of exec session `session`, if kept.
    fn exec_command(&self, session: u64) -> Option<Vec<u8>>;

    /// How the counters relate to the previous agent run: a saved snapshot applies only to
    /// reused counters of the same map.
    fn continuity(&self) -> Continuity;

    /// The path (relative to the cgroup2 root) the kernel saw `cgroup` created with, if it
    /// kept it: names a cgroup that was gone before the agent could find it.
    fn cgroup_path(&self, cgroup: u64) -> Option<String>;
}

// Plain delegation: the inherent methods are named explicitly, as the trait's have the same
// names.
impl SlotCounters for Recorder {
    fn slots_allocated(&self) -> Result<u64, BpfError> {
        Recorder::slots_allocated(self)
    }

    fn slots(&self) -> Result<Vec<(SlotKey, u32)>, BpfError> {
        Recorder::slots(self)
    }

    fn take_active(&self, slot: u32) -> Result<bool, BpfError> {
        Recorder::take_active(self, slot)
    }

    fn invalidate_caches(&mut self) -> Result<(), BpfError> {
        Recorder::invalidate_caches(self)
    }

    fn read_slot_into(
        &self,
        slot: u32,
        totals: &mut [u64; SYSCALL_COLUMNS],
    ) -> Result<(), BpfError> {
        Recorder::read_slot_into(self, slot, totals)
    }

    fn release(&mut self, key: SlotKey, slot: u32) -> Result<Totals, BpfError> {
        Recorder::release(self, key, slot)
    }

    fn exec_command(&self, session: u64) -> Option<Vec<u8>> {
        Recorder::exec_command(self, session)
    }

    fn continuity(&self) -> Continuity {
        Recorder::continuity(self)
    }

    fn cgroup_path(&self, cgroup: u64) -> Option<String> {
        Recorder::cgroup_path(self, cgroup)
    }
}
