//! The counters and activity marks mapped into the agent's memory. Every `unsafe` access to
//! them lives here: the mapping itself, plain volatile loads of a slot's counters, zeroing a
//! recycled slot, and taking a slot's activity mark.

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::maps::{Array, MapData, MapError};
use recorder_ebpf::{MAP_ACTIVE, MAP_COUNTS, SYSCALL_COLUMNS, SlotCounts, counter_index};

use super::{BpfError, map_err};

/// A `BPF_F_MMAPABLE` array map mapped into the agent (shared, read-write), unmapped on drop.
struct Mapping {
    base: std::ptr::NonNull<u8>,
    bytes: usize,
}

// SAFETY: plain shared memory owned by this value; every access goes through volatile or
// atomic operations on aligned integers, which is also all the kernel program does.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps the first `bytes` of the array `map` (named `name` in errors).
    fn new(map: &MapData, bytes: usize, name: &'static str) -> Result<Self, BpfError> {
        // SAFETY: a shared mapping of a BPF_F_MMAPABLE array from offset 0, no longer than the
        // array's data; the result is checked before use.
        let address = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        let failed = |io_error: io::Error| {
            map_err(name)(MapError::SyscallError(aya::sys::SyscallError {
                call: "mmap (needs BPF_F_MMAPABLE arrays, Linux 5.5+)",
                io_error,
            }))
        };
        if address == libc::MAP_FAILED {
            return Err(failed(io::Error::last_os_error()));
        }
        let base = std::ptr::NonNull::new(address.cast::<u8>())
            .ok_or_else(|| failed(io::Error::other("mapped at address 0")))?;
        Ok(Self { base, bytes })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `Mapping::new`; nothing refers to it
        // after drop.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.bytes) };
    }
}

/// The counters and activity marks, mapped into the agent: a collection reads a slot with
/// plain loads (no syscall, no copy), and a recycled slot is zeroed in place.
pub(super) struct MappedCounters {
    // Declared before the maps: unmapped before the maps' fds close.
    counts: Mapping,
    active: Mapping,
    /// Keep the maps alive.
    _maps: (Array<MapData, SlotCounts>, Array<MapData, u64>),
    /// Elements per slot: the CPU stride.
    pub(super) cpus: u32,
    /// Slots in the maps (capacity + 1).
    slots: u32,
}

impl MappedCounters {
    pub(super) fn map(
        counts: Array<MapData, SlotCounts>,
        active: Array<MapData, u64>,
        cpus: u32,
        slots: u32,
    ) -> Result<Self, BpfError> {
        use aya::maps::IterableMap as _;

        let count_bytes = std::mem::size_of::<SlotCounts>() * cpus as usize * slots as usize;
        let active_bytes = std::mem::size_of::<u64>() * slots as usize;
        Ok(Self {
            counts: Mapping::new(counts.map(), count_bytes, MAP_COUNTS)?,
            active: Mapping::new(active.map(), active_bytes, MAP_ACTIVE)?,
            _maps: (counts, active),
            cpus,
            slots,
        })
    }

    fn check(&self, slot: u32) -> Result<(), BpfError> {
        if slot < self.slots {
            Ok(())
        } else {
            Err(BpfError::SlotOutOfRange {
                slot,
                slots: self.slots,
            })
        }
    }

    /// The first counter of `slot` and the number of counters it has (all CPUs).
    fn slot_range(&self, slot: u32) -> Result<(*mut u64, usize), BpfError> {
        self.check(slot)?;
        let per_slot = self.cpus as usize * SYSCALL_COLUMNS;
        let first = counter_index(slot, 0, self.cpus) as usize * SYSCALL_COLUMNS;
        // SAFETY: `first + per_slot` counters are within the mapping (slot < slots).
        Ok((
            unsafe { self.counts.base.as_ptr().cast::<u64>().add(first) },
            per_slot,
        ))
    }

    pub(super) fn read_slot_into(
        &self,
        slot: u32,
        totals: &mut [u64; SYSCALL_COLUMNS],
    ) -> Result<(), BpfError> {
        let (first, len) = self.slot_range(slot)?;
        totals.fill(0);
        for cpu in 0..len / SYSCALL_COLUMNS {
            for (column, total) in totals.iter_mut().enumerate() {
                // SAFETY: in the mapping (see slot_range); volatile because the kernel program
                // adds to these counters concurrently (aligned u64 loads do not tear).
                let count = unsafe { first.add(cpu * SYSCALL_COLUMNS + column).read_volatile() };
                *total = total.wrapping_add(count);
            }
        }
        Ok(())
    }

    /// Zeroes a slot that no cgroup holds (nothing writes it any more).
    pub(super) fn zero_slot(&self, slot: u32) -> Result<(), BpfError> {
        let (first, len) = self.slot_range(slot)?;
        for i in 0..len {
            // SAFETY: in the mapping (see slot_range).
            unsafe { first.add(i).write_volatile(0) };
        }
        Ok(())
    }

    /// Whether `slot` was marked active, clearing the mark.
    pub(super) fn take_active(&self, slot: u32) -> Result<bool, BpfError> {
        self.check(slot)?;
        // SAFETY: an aligned u64 within the mapping (slot < slots); the kernel program only
        // ever stores 1 into it, so an atomic swap loses no mark set after it.
        let mark = unsafe {
            std::sync::atomic::AtomicU64::from_ptr(
                self.active.base.as_ptr().cast::<u64>().add(slot as usize),
            )
        };
        // Most slots are idle: a load leaves their line alone, where an unconditional swap
        // would take it exclusive every round.
        Ok(mark.load(std::sync::atomic::Ordering::Relaxed) != 0
            && mark.swap(0, std::sync::atomic::Ordering::SeqCst) != 0)
    }
}
