//! An in-memory stand-in for the kernel counters, so a collection round is tested without a
//! kernel: a slot table with a free queue, per-slot totals that tests bump like the kernel
//! program would, activity marks driven by a cache generation, and injectable failures.

use std::{
    cell::{Cell, RefCell},
    collections::{HashMap, HashSet, VecDeque},
};

use recorder_ebpf::{FIRST_CGROUP_SLOT, OVERFLOW_SLOT, SYSCALL_COLUMNS, SlotKey};

use super::SlotCounters;
use crate::kernel::{BpfError, Continuity, Totals};

/// The kernel side of the recorder, in memory.
#[derive(Clone, Debug)]
pub(super) struct FakeCounters {
    /// (cgroup, slot) in allocation order.
    table: Vec<(u64, u32)>,
    /// Slots no cgroup holds, handed out from the front and given back at the end.
    free: VecDeque<u32>,
    /// Totals by slot; slot 0 is the overflow slot.
    counts: Vec<Totals>,
    /// Activity marks by slot. Cells: the trait clears marks and counts reads through `&self`,
    /// as the recorder does on its mapped memory.
    marks: Vec<Cell<bool>>,
    /// The cache generation in which each cgroup last counted: one that counts in a newer
    /// generation missed its cache and marks its slot, as a task in the kernel does.
    cached: HashMap<u64, u64>,
    generation: u64,
    /// Slots handed out since creation (the kernel's `slots_allocated` statistic).
    allocated: u64,
    continuity: Continuity,
    /// Successful reads by slot.
    reads: Vec<Cell<u32>>,
    /// Slots whose next read fails.
    failing_reads: RefCell<HashSet<u32>>,
    /// Releases that still succeed before one fails (`None`: all succeed).
    releases_before_failure: Option<u32>,
    /// Paths of created cgroups, as the kernel's `cgroup_mkdir` program keeps them.
    paths: HashMap<u64, String>,
}

/// An injected failure; any error does, the collector only passes it on.
fn injected(slot: u32) -> BpfError {
    BpfError::SlotOutOfRange { slot, slots: 0 }
}

impl FakeCounters {
    /// Counters for `capacity` cgroups, all slots free, not reused from a previous agent.
    pub(super) fn new(capacity: u32) -> Self {
        let slots = (capacity + FIRST_CGROUP_SLOT) as usize;
        Self {
            table: Vec::new(),
            free: (FIRST_CGROUP_SLOT..FIRST_CGROUP_SLOT + capacity).collect(),
            counts: vec![Box::new([0; SYSCALL_COLUMNS]); slots],
            marks: vec![Cell::new(false); slots],
            cached: HashMap::new(),
            generation: 0,
            allocated: 0,
            continuity: Continuity::default(),
            reads: vec![Cell::new(0); slots],
            failing_reads: RefCell::default(),
            releases_before_failure: None,
            paths: HashMap::new(),
        }
    }

    /// The kernel saw `cgroup` created at `path`.
    pub(super) fn created(&mut self, cgroup: u64, path: &str) {
        self.paths.insert(cgroup, path.to_owned());
    }

    /// Whether the kernel still keeps a path for `cgroup`.
    pub(super) fn keeps_path(&self, cgroup: u64) -> bool {
        self.paths.contains_key(&cgroup)
    }

    /// Sets how the counters relate to a previous agent run.
    pub(super) fn set_continuity(&mut self, continuity: Continuity) {
        self.continuity = continuity;
    }

    /// `calls` calls of syscall `nr` by a task of `cgroup`, counted as the kernel program
    /// does: a cgroup without a slot takes the first free one (or, with none free, counts in
    /// the overflow slot), and a cache miss marks the slot. Returns the slot counted in.
    pub(super) fn count(&mut self, cgroup: u64, nr: u16, calls: u64) -> u32 {
        let slot = match self.slot_of(cgroup) {
            Some(slot) => slot,
            None => match self.free.pop_front() {
                Some(slot) => {
                    self.table.push((cgroup, slot));
                    self.allocated += 1;
                    slot
                }
                None => OVERFLOW_SLOT,
            },
        };
        if slot != OVERFLOW_SLOT
            && self.cached.insert(cgroup, self.generation) != Some(self.generation)
        {
            self.marks[slot as usize].set(true);
        }
        self.counts[slot as usize][usize::from(nr)] += calls;
        slot
    }

    /// Calls that land in `cgroup`'s slot without marking it: those in flight when the caches
    /// were invalidated.
    pub(super) fn count_in_flight(&mut self, cgroup: u64, nr: u16, calls: u64) {
        let slot = self.slot_of(cgroup).expect("the cgroup holds a slot");
        self.counts[slot as usize][usize::from(nr)] += calls;
    }

    /// The slot `cgroup` holds.
    pub(super) fn slot_of(&self, cgroup: u64) -> Option<u32> {
        self.table
            .iter()
            .find(|(held_by, _)| *held_by == cgroup)
            .map(|&(_, slot)| slot)
    }

    /// Whether `slot` is in the free queue.
    pub(super) fn is_free(&self, slot: u32) -> bool {
        self.free.contains(&slot)
    }

    /// Successful reads of `slot` so far.
    pub(super) fn reads(&self, slot: u32) -> u32 {
        self.reads[slot as usize].get()
    }

    /// Makes the next read of `slot` fail.
    pub(super) fn fail_next_read(&mut self, slot: u32) {
        self.failing_reads.get_mut().insert(slot);
    }

    /// Makes the release after the next `succeeding` ones fail.
    pub(super) fn fail_release_after(&mut self, succeeding: u32) {
        self.releases_before_failure = Some(succeeding);
    }

    fn check(&self, slot: u32) -> Result<usize, BpfError> {
        let index = slot as usize;
        if index < self.counts.len() {
            Ok(index)
        } else {
            Err(BpfError::SlotOutOfRange {
                slot,
                slots: self.counts.len() as u32,
            })
        }
    }
}

impl SlotCounters for FakeCounters {
    fn slots_allocated(&self) -> Result<u64, BpfError> {
        Ok(self.allocated)
    }

    fn slots(&self) -> Result<Vec<(SlotKey, u32)>, BpfError> {
        Ok(self
            .table
            .iter()
            .map(|&(cgroup, slot)| {
                let key = SlotKey {
                    cgroup,
                    ..SlotKey::default()
                };
                (key, slot)
            })
            .collect())
    }

    fn take_active(&self, slot: u32) -> Result<bool, BpfError> {
        Ok(self.marks[self.check(slot)?].take())
    }

    fn invalidate_caches(&mut self) -> Result<(), BpfError> {
        self.generation += 1;
        Ok(())
    }

    fn read_slot_into(
        &self,
        slot: u32,
        totals: &mut [u64; SYSCALL_COLUMNS],
    ) -> Result<(), BpfError> {
        let index = self.check(slot)?;
        if self.failing_reads.borrow_mut().remove(&slot) {
            return Err(injected(slot));
        }
        *totals = *self.counts[index];
        self.reads[index].set(self.reads[index].get() + 1);
        Ok(())
    }

    fn release(&mut self, key: SlotKey, slot: u32) -> Result<Totals, BpfError> {
        let cgroup = key.cgroup;
        let index = self.check(slot)?;
        match &mut self.releases_before_failure {
            Some(0) => {
                self.releases_before_failure = None;
                return Err(injected(slot));
            }
            Some(left) => *left -= 1,
            None => {}
        }
        // The collector releases only what the slot table showed it.
        let held = self
            .table
            .iter()
            .position(|&entry| entry == (cgroup, slot))
            .expect("a released slot is held by its cgroup");
        self.table.remove(held);
        self.cached.remove(&cgroup);
        self.generation += 1;
        let totals = std::mem::replace(&mut self.counts[index], Box::new([0; SYSCALL_COLUMNS]));
        self.free.push_back(slot);
        self.paths.remove(&cgroup);
        Ok(totals)
    }

    fn continuity(&self) -> Continuity {
        self.continuity
    }

    fn cgroup_path(&self, cgroup: u64) -> Option<String> {
        self.paths.get(&cgroup).cloned()
    }

    fn exec_command(&self, _session: u64) -> Option<Vec<u8>> {
        None
    }
}
