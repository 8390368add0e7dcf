//! The kernel program: counts every syscall per (cgroup v2, syscall number) in per-CPU blocks.
//! The ABI and the design are described in `lib.rs`.
#![no_std]
#![no_main]
// The bpf target has no atomic read-modify-write in `core::sync::atomic`; the intrinsic lowers
// to the BPF atomic add instruction. The crate is only ever built with nightly (aya-build).
#![feature(core_intrinsics)]
#![expect(
    internal_features,
    reason = "core_intrinsics is the only atomic add on the bpf target"
)]

use core::{
    intrinsics::{AtomicOrdering, atomic_xadd},
    ptr,
};

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_NOEXIST, bpf_pidns_info},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_ns_current_pid_tgid, bpf_get_smp_processor_id,
        bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes,
    },
    macros::{map, raw_tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, Queue, RingBuf},
    programs::RawTracePointContext,
};
use recorder_ebpf::{
    CACHE_ENTRIES, CGROUP_EVENTS_BYTES, CacheEntry, CgroupEvent, Config, CpuCache,
    OUT_OF_RANGE_COLUMN, OVERFLOW_SLOT, SKIP_SLOT, STAT_CACHE_MISS, STAT_COUNT, STAT_MAP_ERROR,
    STAT_SLOT_ALLOCATED, STAT_SLOT_EXHAUSTED, STAT_SLOT_RACE, SYSCALL_COLUMNS, SlotCounts,
    cache_index, cache_index_alt, counter_index,
};

// The sizes of the capacity maps are placeholders: the agent sets them at load time.
#[map]
static COUNTS: Array<SlotCounts> = Array::with_max_entries(2, BPF_F_MMAPABLE);
#[map]
static ACTIVE: Array<u64> = Array::with_max_entries(2, BPF_F_MMAPABLE);
#[map]
static CGROUP_SLOTS: HashMap<u64, u32> = HashMap::with_max_entries(1, 0);
#[map]
static FREE_SLOTS: Queue<u32> = Queue::with_max_entries(1, 0);
#[map]
static GENERATION: Array<u64> = Array::with_max_entries(1, 0);
#[map]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);
#[map]
static CACHE: PerCpuArray<CpuCache> = PerCpuArray::with_max_entries(1, 0);
#[map]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_COUNT, 0);

/// A failure the program counts instead of logging (no aya-log on the hot path).
struct Stat(u32);

#[inline(always)]
fn count_stat(index: u32) {
    if let Some(counter) = STATS.get_ptr_mut(index) {
        // SAFETY: the pointer comes from a successful per-CPU array lookup, and this program
        // cannot be preempted on this CPU, so nothing else writes the value concurrently.
        unsafe { *counter += 1 };
    }
}

#[inline(always)]
fn generation() -> u64 {
    match GENERATION.get_ptr(0) {
        // SAFETY: a valid map value; volatile because other CPUs bump it.
        Some(generation) => unsafe { ptr::read_volatile(generation) },
        None => 0,
    }
}

#[inline(always)]
fn bump_generation() {
    if let Some(generation) = GENERATION.get_ptr_mut(0) {
        // SAFETY: a valid, 8-byte aligned map value. The atomic add keeps concurrent bumps from
        // cancelling out; the result is unused, so it compiles to a plain `lock xadd`.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(generation, 1) };
    }
}

/// `sys_enter(struct pt_regs *regs, long id)`.
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn sys_enter(ctx: RawTracePointContext) -> i32 {
    if let Err(Stat(index)) = try_sys_enter(&ctx) {
        count_stat(index);
    }
    0
}

#[inline(always)]
fn try_sys_enter(ctx: &RawTracePointContext) -> Result<(), Stat> {
    let nr: u64 = ctx.arg(1);
    // A negative id (bad syscall) is a huge u64 and lands in the out-of-range column too.
    let column = if nr < u64::from(OUT_OF_RANGE_COLUMN) {
        nr as usize
    } else {
        OUT_OF_RANGE_COLUMN as usize
    };
    // `struct pt_regs *regs`, on the current task's kernel stack: a task key without a helper call.
    let task: u64 = ctx.arg(0);
    let generation = generation();
    let cache = CACHE.get_ptr_mut(0).ok_or(Stat(STAT_MAP_ERROR))?;
    // The masks are no-ops for the indexes but prove the bounds to the verifier. The second
    // place is only computed when the first does not hold the task.
    let first = cache_index(task) & (CACHE_ENTRIES - 1);
    // SAFETY: per-CPU map value; this program owns this CPU's copy while it runs, and both
    // indexes are in bounds.
    let counter = unsafe {
        let a: *mut CacheEntry = ptr::addr_of_mut!((*cache).entries[first]);
        if (*a).task == task && (*a).generation == generation {
            (*a).counter
        } else {
            let second = cache_index_alt(task) & (CACHE_ENTRIES - 1);
            let b: *mut CacheEntry = ptr::addr_of_mut!((*cache).entries[second]);
            if (*b).task == task && (*b).generation == generation {
                (*b).counter
            } else {
                let counter = find_counter()?;
                // Take the first place unless another live task holds it and the second is
                // free (stale): a pair colliding in one place then settles into both.
                let victim = if (*a).generation == generation && (*b).generation != generation {
                    b
                } else {
                    a
                };
                *victim = CacheEntry {
                    task,
                    generation,
                    counter,
                    _pad: 0,
                };
                counter
            }
        }
    };
    if counter == SKIP_SLOT {
        return Ok(());
    }
    let counts = COUNTS.get_ptr_mut(counter).ok_or(Stat(STAT_MAP_ERROR))?;
    // SAFETY: a map value only this CPU writes (the index includes the CPU, and the program
    // cannot be preempted or migrated while it runs); the mask keeps the index in bounds for
    // the verifier (column is already < SYSCALL_COLUMNS).
    unsafe { (*counts).calls[column & (SYSCALL_COLUMNS - 1)] += 1 };
    Ok(())
}

/// The slow path: which counter block (slot and CPU) counts the current task's syscalls.
#[inline(always)]
fn find_counter() -> Result<u32, Stat> {
    count_stat(STAT_CACHE_MISS);
    let config = CONFIG.get(0).ok_or(Stat(STAT_MAP_ERROR))?;
    if config.skip_tgid != 0 && is_skipped(config) {
        return Ok(SKIP_SLOT);
    }
    // SAFETY: helper without arguments; the program runs with migration disabled, so the CPU
    // stays the one whose cache entry this fills.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let slot = find_slot()?;
    if let Some(active) = ACTIVE.get_ptr_mut(slot) {
        // SAFETY: a valid map value. Always stored, never read first: on a weakly ordered CPU
        // a read could still see the mark the agent has just taken (before this miss saw the
        // new generation) and skip the store. A store cannot pass the generation load it
        // depends on, so the mark set here survives the take that made this miss happen.
        unsafe { ptr::write_volatile(active, 1) };
    }
    Ok(counter_index(slot, cpu, config.cpus))
}

/// Whether the current task is the one the agent asked not to count: same PID namespace and
/// same thread-group id in it. The helper fails (and zeroes `ns`) for a task of another
/// namespace, which is then counted.
#[inline(always)]
fn is_skipped(config: &Config) -> bool {
    let mut ns = bpf_pidns_info { pid: 0, tgid: 0 };
    // SAFETY: `ns` is a valid, writable `bpf_pidns_info` of the size passed.
    let rc = unsafe {
        bpf_get_ns_current_pid_tgid(
            config.skip_pidns_dev,
            config.skip_pidns_ino,
            &mut ns,
            core::mem::size_of::<bpf_pidns_info>() as u32,
        )
    };
    rc == 0 && ns.tgid == config.skip_tgid
}

/// Which slot counts the current task's cgroup; takes a free one for a new cgroup.
#[inline(always)]
fn find_slot() -> Result<u32, Stat> {
    // SAFETY: helper without arguments.
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: the value is copied out at once.
    if let Some(slot) = unsafe { CGROUP_SLOTS.get(&cgroup) } {
        return Ok(*slot);
    }
    let slot = match FREE_SLOTS.pop() {
        Ok(Some(slot)) => slot,
        Ok(None) => {
            count_stat(STAT_SLOT_EXHAUSTED);
            return Ok(OVERFLOW_SLOT);
        }
        Err(_) => return Err(Stat(STAT_MAP_ERROR)),
    };
    if CGROUP_SLOTS
        .insert(&cgroup, &slot, u64::from(BPF_NOEXIST))
        .is_ok()
    {
        count_stat(STAT_SLOT_ALLOCATED);
        return Ok(slot);
    }
    // Another CPU registered this cgroup first: give the slot back and use the winner's.
    count_stat(STAT_SLOT_RACE);
    if FREE_SLOTS.push(&slot, 0).is_err() {
        count_stat(STAT_MAP_ERROR);
    }
    // SAFETY: the value is copied out at once.
    match unsafe { CGROUP_SLOTS.get(&cgroup) } {
        Some(slot) => Ok(*slot),
        None => Err(Stat(STAT_MAP_ERROR)),
    }
}

/// The benchmark's floor: the cost of any program on `sys_enter`, doing nothing.
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn sys_enter_empty(_ctx: RawTracePointContext) -> i32 {
    0
}

/// `cgroup_attach_task(struct cgroup *dst, const char *path, struct task_struct *task, bool)`:
/// a task changed cgroup, so cached slots may be wrong.
#[raw_tracepoint(tracepoint = "cgroup_attach_task")]
pub fn cgroup_attach_task(_ctx: RawTracePointContext) -> i32 {
    bump_generation();
    0
}

/// `sched_process_exit(struct task_struct *p, ...)`: the task's kernel stack, whose `pt_regs`
/// address keys the cache, may soon belong to a new task in another cgroup.
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn sched_process_exit(_ctx: RawTracePointContext) -> i32 {
    bump_generation();
    0
}

#[map]
static CGROUP_EVENTS: RingBuf = RingBuf::with_byte_size(CGROUP_EVENTS_BYTES, 0);
#[map]
static CGROUP_PATHS: LruHashMap<u64, CgroupEvent> = LruHashMap::with_max_entries(1, 0);
#[map]
static MKDIR_SCRATCH: PerCpuArray<CgroupEvent> = PerCpuArray::with_max_entries(1, 0);

/// `cgroup_mkdir(struct cgroup *cgrp, const char *path)`: keeps a new cgroup v2's path by id
/// (for an agent that starts after the cgroup is gone) and reports every new cgroup's path to
/// the running agent. Off the syscall hot path; a full ring drops the event (the agent's tree
/// walk takes over), a full path map drops its oldest entry.
#[raw_tracepoint(tracepoint = "cgroup_mkdir")]
pub fn cgroup_mkdir(ctx: RawTracePointContext) -> i32 {
    let cgroup: *const u8 = ctx.arg(0);
    let path: *const u8 = ctx.arg(1);
    let Some(event) = MKDIR_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: `event` is this CPU's scratch value, which nothing else uses while the program
    // runs; the kernel string is read with the probe helper, which bounds it by the slice.
    let event = unsafe {
        match bpf_probe_read_kernel_str_bytes(path, &mut (*event).path) {
            Ok(bytes) => (*event).len = bytes.len() as u32,
            Err(_) => return 0,
        }
        (*event)._pad = 0;
        &*event
    };
    if let Some(id) = cgroup2_id(cgroup)
        && CGROUP_PATHS.insert(&id, event, 0).is_err()
    {
        count_stat(STAT_MAP_ERROR);
    }
    let _ = CGROUP_EVENTS.output(event, 0);
    0
}

/// The id of `cgroup` (`cgrp->kn->id`) if it is a cgroup v2 one (`cgrp->root->hierarchy_id`
/// is 0: hybrid hosts create the same path in every v1 hierarchy too, with ids of their own).
#[inline(always)]
fn cgroup2_id(cgroup: *const u8) -> Option<u64> {
    let layout = CONFIG.get(0)?.cgroup_layout;
    if layout.known == 0 {
        return None;
    }
    // SAFETY: probe reads of kernel memory at offsets the agent read from the kernel's BTF; a
    // bad address fails the read instead of faulting.
    unsafe {
        let root: *const u8 =
            bpf_probe_read_kernel(cgroup.wrapping_add(layout.cgroup_root as usize).cast()).ok()?;
        let hierarchy: i32 =
            bpf_probe_read_kernel(root.wrapping_add(layout.root_hierarchy_id as usize).cast())
                .ok()?;
        if hierarchy != 0 {
            return None;
        }
        let kn: *const u8 =
            bpf_probe_read_kernel(cgroup.wrapping_add(layout.cgroup_kn as usize).cast()).ok()?;
        bpf_probe_read_kernel(kn.wrapping_add(layout.kernfs_node_id as usize).cast()).ok()
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
