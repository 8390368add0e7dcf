//! One collection round: read the counters of every slot that counted since the last round
//! (and of all slots in a periodic sweep), turn them into deltas since the last read,
//! attribute each slot to an identity (its cgroup's, or an exec session's), and give the slots
//! of removed cgroups back to the kernel. Compat slots' numbers are moved to the compat half
//! of the number space ([`COMPAT_BASE`]) before they are folded; the runtime slot's calls are
//! totalled, never folded into a profile. The deltas wait in the collector until [`Collector::fold_into`] adds them to the
//! profile store: the caller holds the store's lock for that, and only for that, so the
//! kernel reads and cgroup lookups of a round never block the readers of the store.

use std::{
    collections::{BTreeMap, HashMap},
    time::SystemTime,
};

use recorder_ebpf::{
    KIND_COMPAT, KIND_EXEC, OVERFLOW_SLOT, RUNTIME_BASE_SLOT, RUNTIME_SLOT, SYSCALL_COLUMNS,
    SlotKey,
};

use crate::{
    attribution::cgroup::Resolver,
    kernel::{BpfError, Recorder, Totals},
    profile::syscalls::{Arch, COMPAT_BASE},
    profile::{
        Identity, ProfileStore,
        state::{KernelSnapshot, SavedSlot},
    },
};

mod counters;
#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;

pub use counters::SlotCounters;

/// What a round did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RoundStats {
    /// Cgroups holding a slot at the start of the round.
    pub cgroups: usize,
    /// Cgroups whose path could not be resolved.
    pub unresolved: usize,
    /// Slots of removed cgroups queued for release (after the next state save).
    pub released: usize,
    /// Calls lost because no slot was free (since the previous round).
    pub lost_calls: u64,
    /// Calls of container runtimes' set-up (since the previous round).
    pub runtime_calls: u64,
    /// Slots whose counters were read (marked active, new, or in a full sweep).
    pub read: usize,
}

/// Non-zero counters by ascending syscall number. A slot's state is kept sparse: a cgroup
/// uses a few dozen of the 512 columns, and a round touches every active slot's state, so a
/// dense 4 KiB copy per slot would be most of a round's memory traffic.
type Sparse = Vec<(u16, u64)>;

#[derive(Debug)]
struct SlotState {
    key: SlotKey,
    totals: Sparse,
    identity: Option<Identity>,
    /// Consecutive rounds without a call.
    idle_rounds: u32,
}

/// How often (in rounds) a long-idle slot is checked for removal and re-identified.
const IDLE_RECHECK_ROUNDS: u32 = 8;

/// How often (in rounds) every slot is read, marked or not: it bounds how late the calls that
/// were in flight when the caches were invalidated (and so left no mark) are folded, for a
/// task that makes no further call.
const SWEEP_ROUNDS: u32 = 60;

/// The slots every cgroup shares, with their last totals kept in the collector.
#[derive(Clone, Copy, Debug)]
enum Shared {
    /// [`OVERFLOW_SLOT`].
    Overflow,
    /// [`RUNTIME_SLOT`].
    Runtime,
    /// [`RUNTIME_BASE_SLOT`].
    RuntimeBase,
}

/// Names a slot's workload: cgroup id, its path if resolved, and for an exec session's slot
/// the session's command line (argv strings, NUL-separated; empty if the kernel dropped it).
pub type Identify<'a> = dyn Fn(u64, Option<&str>, Option<&[u8]>) -> Identity + 'a;

/// A slot's deltas in the shared number space: a compat slot's columns are compat numbers.
fn numbered(key: SlotKey, mut delta: Sparse) -> Sparse {
    if key.kind & KIND_COMPAT != 0 {
        for (nr, _) in &mut delta {
            *nr += COMPAT_BASE as u16;
        }
    }
    delta
}

/// A saved sparse map as slot state: only columns that exist, only non-zero counts.
fn from_saved(saved: &BTreeMap<u16, u64>) -> Sparse {
    saved
        .iter()
        .filter(|(nr, count)| usize::from(**nr) < SYSCALL_COLUMNS && **count != 0)
        .map(|(&nr, &count)| (nr, count))
        .collect()
}

/// Collection state carried between rounds, over the kernel's counters (`C`: the attached
/// [`Recorder`], or a fake in tests).
#[derive(Debug)]
pub struct Collector<C = Recorder> {
    counters: C,
    resolver: Resolver,
    arch: Arch,
    last: HashMap<u32, SlotState>,
    overflow_last: Sparse,
    lost_total: u64,
    runtime_last: Sparse,
    runtime_total: u64,
    /// The runtime base slot's totals (see [`Collector::runtime_base`]).
    runtime_base_last: Sparse,
    /// Removed cgroups whose final counts are folded but not yet saved: their slots are given
    /// back only after the next state save, so a crash cannot lose those counts.
    /// Slot → cgroup: looked up for every slot of every round.
    pending_release: HashMap<u32, SlotKey>,
    /// The slot table as last read, with the kernel's allocation count at that time: iterating
    /// the hash map costs two syscalls per cgroup, so it is re-read only when that count moved.
    slot_table: Option<(u64, Vec<(SlotKey, u32)>)>,
    /// Where a slot's counters are read and summed; reused so it stays in cache.
    read_buffer: Totals,
    /// Rounds until the next full sweep; 0 means this round sweeps (so does the first).
    sweep_in: u32,
    /// The last round's deltas by slot, not folded yet: the identity is looked up in `last`
    /// when folding, not cloned.
    round_deltas: Vec<(u32, Sparse)>,
    /// Deltas not folded yet whose slot state may be gone by the time they are: final counts
    /// of released slots (the identity moved out of the state), and the deltas of a round
    /// that was not folded before the next round or release.
    detached_deltas: Vec<(Identity, Sparse)>,
}

/// `now - before` for the non-zero columns of `now`, as sparse deltas (non-zero only) and the
/// sparse form of `now`; a counter that went backwards was reset and counts from zero.
fn sparse_deltas(
    now: &[u64; SYSCALL_COLUMNS],
    before: &[(u16, u64)],
    delta: &mut Sparse,
    totals: &mut Sparse,
) {
    delta.clear();
    totals.clear();
    let mut previous = before.iter().peekable();
    for (nr, &count) in now.iter().enumerate() {
        if count == 0 {
            continue;
        }
        let nr = nr as u16;
        while previous.next_if(|(column, _)| *column < nr).is_some() {}
        let before = previous
            .next_if(|(column, _)| *column == nr)
            .map_or(0, |(_, count)| *count);
        let moved = if count >= before {
            count - before
        } else {
            count
        };
        if moved != 0 {
            delta.push((nr, moved));
        }
        totals.push((nr, count));
    }
}

impl<C: SlotCounters> Collector<C> {
    /// A collector over `counters`: an attached [`Recorder`] in the agent.
    pub fn new(counters: C, resolver: Resolver, arch: Arch) -> Self {
        Self {
            counters,
            resolver,
            arch,
            last: HashMap::new(),
            overflow_last: Vec::new(),
            lost_total: 0,
            runtime_last: Vec::new(),
            runtime_total: 0,
            runtime_base_last: Vec::new(),
            pending_release: HashMap::new(),
            slot_table: None,
            read_buffer: Box::new([0; SYSCALL_COLUMNS]),
            sweep_in: 0,
            round_deltas: Vec::new(),
            detached_deltas: Vec::new(),
        }
    }

    /// The (cgroup, slot) pairs with the allocation count they were read at, taken out of the
    /// cache when no slot was handed out since (the round puts them back).
    fn take_slot_table(&mut self) -> Result<(u64, Vec<(SlotKey, u32)>), BpfError> {
        let allocated = self.counters.slots_allocated()?;
        match self.slot_table.take() {
            Some((seen, table)) if seen == allocated => Ok((seen, table)),
            _ => Ok((allocated, self.counters.slots()?)),
        }
    }

    /// What the saved profiles include of the kernel counters (save it with them).
    pub fn snapshot(&self) -> KernelSnapshot {
        let mut slots: Vec<SavedSlot> = self
            .last
            .iter()
            .map(|(&slot, state)| SavedSlot {
                slot,
                cgroup: state.key.cgroup,
                kind: state.key.kind,
                session: state.key.session,
                identity: state.identity.clone(),
                totals: state.totals.iter().copied().collect(),
            })
            .collect();
        slots.sort_by_key(|saved| saved.slot);
        KernelSnapshot {
            counts_map_id: self.counters.continuity().counts_map_id,
            slots,
            overflow: self.overflow_last.iter().copied().collect(),
        }
    }

    /// Continues from a snapshot saved by a previous agent, if it describes the counters this
    /// agent reuses. Returns whether it did.
    pub fn restore(&mut self, snapshot: &KernelSnapshot) -> bool {
        let continuity = self.counters.continuity();
        if !continuity.reused_maps || snapshot.counts_map_id != continuity.counts_map_id {
            return false;
        }
        for saved in &snapshot.slots {
            self.last.insert(
                saved.slot,
                SlotState {
                    key: SlotKey {
                        cgroup: saved.cgroup,
                        session: saved.session,
                        kind: saved.kind,
                        _pad: 0,
                    },
                    totals: from_saved(&saved.totals),
                    identity: saved.identity.clone(),
                    idle_rounds: 0,
                },
            );
        }
        self.overflow_last = from_saved(&snapshot.overflow);
        true
    }

    /// Makes the next round read every slot, marked or not (a final collection).
    pub fn sweep_next_round(&mut self) {
        self.sweep_in = 0;
    }

    /// Whether slots wait for a state save before they can be given back.
    pub fn has_pending_releases(&self) -> bool {
        !self.pending_release.is_empty()
    }

    /// Gives back the slots of removed cgroups; call right after a successful state save, and
    /// [`fold_into`](Self::fold_into) after it. Counts that arrived after the final read
    /// (none, for a removed cgroup) are kept for folding too.
    pub fn release_pending(&mut self) -> Result<usize, BpfError> {
        self.detach_unfolded();
        let mut pending: Vec<(u32, SlotKey)> = self.pending_release.drain().collect();
        self.slot_table = None;
        let mut released = 0;
        let mut failure = None;
        for &(slot, key) in &pending {
            let last = match self.counters.release(key, slot) {
                Ok(last) => last,
                Err(err) => {
                    failure = Some(err);
                    break;
                }
            };
            released += 1;
            if let Some(state) = self.last.remove(&slot) {
                let (mut delta, mut totals) = (Vec::new(), Vec::new());
                sparse_deltas(&last, &state.totals, &mut delta, &mut totals);
                if let Some(identity) = state.identity
                    && !delta.is_empty()
                {
                    self.detached_deltas.push((identity, numbered(key, delta)));
                }
            }
            if key.kind == 0 {
                self.resolver.forget(key.cgroup);
            }
        }
        // What was released is kept for folding even when a later release failed; the rest
        // waits for the next save.
        self.pending_release.extend(pending.drain(released..));
        match failure {
            Some(err) => Err(err),
            None => Ok(released),
        }
    }

    /// Adds the deltas read since the last call (by rounds and releases) to `store`: the one
    /// step of a round that needs the store, so the caller runs it under the store's lock.
    /// What a failed round or release did read is folded too. Returns whether a profile
    /// gained a syscall (or a profile appeared).
    pub fn fold_into(&mut self, store: &mut ProfileStore, now: SystemTime) -> bool {
        let mut new_syscall = false;
        for (slot, delta) in self.round_deltas.drain(..) {
            if let Some(identity) = self
                .last
                .get(&slot)
                .and_then(|state| state.identity.as_ref())
            {
                new_syscall |= store.add_sparse(identity, self.arch, &delta, now);
            }
        }
        for (identity, delta) in self.detached_deltas.drain(..) {
            new_syscall |= store.add_sparse(&identity, self.arch, &delta, now);
        }
        new_syscall
    }

    /// Gives the unfolded deltas of the last round their identity before the slot states they
    /// refer to change (re-identified by a round, or removed by a release). The agent folds
    /// after every round and release, so there this finds nothing; only a caller that skips a
    /// fold pays an identity clone per delta.
    fn detach_unfolded(&mut self) {
        for (slot, delta) in self.round_deltas.drain(..) {
            if let Some(identity) = self
                .last
                .get(&slot)
                .and_then(|state| state.identity.clone())
            {
                self.detached_deltas.push((identity, delta));
            }
        }
    }

    /// The counters, read-only (capacity, statistics); slots change only through the
    /// collector.
    pub fn counters(&self) -> &C {
        &self.counters
    }

    /// The resolver.
    pub fn resolver(&mut self) -> &mut Resolver {
        &mut self.resolver
    }

    /// Calls lost since start because no slot was free.
    pub fn lost_total(&self) -> u64 {
        self.lost_total
    }

    /// Calls of container runtimes' set-up since start (in no profile).
    pub fn runtime_total(&self) -> u64 {
        self.runtime_total
    }

    /// What container runtimes did on this node between their set-up marker and a container's
    /// program, as syscall numbers: every container's filter must allow it. The union since the
    /// counters were loaded (it only grows).
    pub fn runtime_base(&self) -> impl Iterator<Item = usize> + '_ {
        self.runtime_base_last
            .iter()
            .map(|&(nr, _)| usize::from(nr))
    }

    /// Reads shared slot `slot`, keeps its totals as `which`'s last, and returns the calls it
    /// counted since the previous read.
    fn read_shared(&mut self, slot: u32, which: Shared) -> Result<u64, BpfError> {
        self.counters.read_slot_into(slot, &mut self.read_buffer)?;
        let last = match which {
            Shared::Overflow => &mut self.overflow_last,
            Shared::Runtime => &mut self.runtime_last,
            Shared::RuntimeBase => &mut self.runtime_base_last,
        };
        let (mut delta, mut totals) = (Vec::new(), Vec::new());
        sparse_deltas(&self.read_buffer, last, &mut delta, &mut totals);
        *last = totals;
        Ok(delta.iter().map(|(_, calls)| calls).sum())
    }

    /// How many syscall numbers [`runtime_base`](Self::runtime_base) holds (it only grows).
    pub fn runtime_base_len(&self) -> usize {
        self.runtime_base_last.len()
    }

    /// Runs one round; `identify` names the workload of a cgroup (id, path if resolved, and
    /// for an exec session's slot its command line). The deltas it read, also when it fails
    /// part-way, wait for [`fold_into`](Self::fold_into).
    pub fn collect(&mut self, identify: &Identify<'_>) -> Result<RoundStats, BpfError> {
        let result = self.round(identify);
        if result.is_err() {
            // Marks taken by a round that did not finish are gone: the next round reads all.
            self.sweep_in = 0;
        }
        result
    }

    fn round(&mut self, identify: &Identify<'_>) -> Result<RoundStats, BpfError> {
        self.detach_unfolded();
        self.resolver.begin_round();
        let (allocated, slots) = self.take_slot_table()?;
        let mut stats = RoundStats {
            cgroups: slots.len(),
            ..RoundStats::default()
        };
        let sweep = self.sweep_in == 0;
        self.sweep_in = if sweep {
            SWEEP_ROUNDS - 1
        } else {
            self.sweep_in - 1
        };
        // Which slots to read: marks are taken (cleared) first, then the caches invalidated,
        // so any call counted after the read below comes from a task that missed and marked its
        // slot again for the next round.
        let marks = slots
            .iter()
            .map(|&(_, slot)| self.counters.take_active(slot))
            .collect::<Result<Vec<bool>, _>>()?;
        self.counters.invalidate_caches()?;
        let mut failure = None;
        for (&(key, slot), marked) in slots.iter().zip(marks) {
            let cgroup = key.cgroup;
            // An exec session's command: looked up only when the slot is (re)identified.
            let session = || {
                (key.kind & KIND_EXEC != 0)
                    .then(|| self.counters.exec_command(key.session).unwrap_or_default())
            };
            if self.pending_release.contains_key(&slot) {
                continue;
            }
            // A slot new to us (or to its cgroup) is read whatever its mark says.
            let known = self.last.get(&slot).is_some_and(|state| state.key == key);
            let read = marked || sweep || !known;
            // The fallible read first, and a failure skips only this slot: its state stays as
            // it was (a slot without state would count all its totals again), and what the
            // other slots read is still folded.
            if read {
                if let Err(err) = self.counters.read_slot_into(slot, &mut self.read_buffer) {
                    failure.get_or_insert(err);
                    continue;
                }
                stats.read += 1;
            }
            let previous = self.last.remove(&slot).filter(|state| state.key == key);
            let (before, known, idle_before) = match previous {
                Some(state) => (state.totals, state.identity, Some(state.idle_rounds)),
                None => (Vec::new(), None, None),
            };
            let mut delta = Vec::new();
            let totals = if read {
                let mut totals = Vec::with_capacity(before.len() + 8);
                sparse_deltas(&self.read_buffer, &before, &mut delta, &mut totals);
                totals
            } else {
                before
            };
            let idle = delta.is_empty();
            let idle_rounds = match idle_before {
                Some(rounds) if idle => rounds.saturating_add(1),
                _ => 0,
            };
            // An idle slot is checked for removal when it has just gone idle (a container that
            // exited) and then every few rounds: a stat per slot per round would cost more
            // than reading its counters. A slot with activity cannot have been removed yet.
            let recheck_removal =
                idle && (idle_rounds == 1 || idle_rounds % IDLE_RECHECK_ROUNDS == 0);
            // Active slots are identified every round (Kubernetes metadata may just have
            // arrived); idle ones on the removal schedule.
            let recheck = !idle || recheck_removal;
            let identity = match known {
                Some(known) if !recheck => known,
                known => match self.resolver.resolve(cgroup) {
                    Some(path) => identify(cgroup, Some(path), session().as_deref()),
                    // A cgroup whose directory is gone keeps the identity it had (e.g. after a
                    // restart, from the saved state) instead of becoming "unresolved".
                    None if known.is_some() => {
                        stats.unresolved += 1;
                        known.unwrap_or_else(|| identify(cgroup, None, session().as_deref()))
                    }
                    // Gone before this agent found it (created and removed while no agent
                    // ran, or before a killed agent saved it): the kernel kept its path.
                    None => match self.counters.cgroup_path(cgroup) {
                        Some(path) => {
                            let identity = identify(cgroup, Some(&path), session().as_deref());
                            self.resolver.insert(cgroup, path);
                            identity
                        }
                        None => {
                            stats.unresolved += 1;
                            identify(cgroup, None, session().as_deref())
                        }
                    },
                },
            };
            // A removed cgroup has no tasks left: release reads its counters a last time and
            // folds what came after this round's read.
            if recheck_removal && self.resolver.is_removed(cgroup) {
                self.pending_release.insert(slot, key);
                stats.released += 1;
            }
            if !idle {
                self.round_deltas.push((slot, numbered(key, delta)));
            }
            self.last.insert(
                slot,
                SlotState {
                    key,
                    totals,
                    identity: Some(identity),
                    idle_rounds,
                },
            );
        }
        self.slot_table = Some((allocated, slots));
        // The shared slots, read every round: what they counted since the last read.
        match self.read_shared(RUNTIME_BASE_SLOT, Shared::RuntimeBase) {
            Ok(_) => {}
            Err(err) => {
                failure.get_or_insert(err);
            }
        }
        match self.read_shared(RUNTIME_SLOT, Shared::Runtime) {
            Ok(calls) => {
                stats.runtime_calls = calls;
                self.runtime_total = self.runtime_total.saturating_add(calls);
            }
            Err(err) => {
                failure.get_or_insert(err);
            }
        }
        match self.read_shared(OVERFLOW_SLOT, Shared::Overflow) {
            Ok(calls) => {
                stats.lost_calls = calls;
                self.lost_total = self.lost_total.saturating_add(calls);
            }
            Err(err) => {
                failure.get_or_insert(err);
            }
        }
        match failure {
            Some(err) => Err(err),
            None => Ok(stats),
        }
    }
}
