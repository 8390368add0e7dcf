//! The kernel program: counts every syscall per (cgroup v2, kind of call, syscall number) in
//! per-CPU blocks, and follows which processes are a runtime's set-up or an exec session. The
//! ABI and the design are described in `lib.rs`.
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
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_current_task,
        bpf_get_current_task_btf, bpf_get_ns_current_pid_tgid, bpf_get_smp_processor_id,
        bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes, bpf_probe_read_user_buf,
    },
    macros::{map, raw_tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, Queue, RingBuf},
    programs::RawTracePointContext,
};
use recorder_ebpf::{
    CACHE_ENTRIES, CGROUP_EVENTS_BYTES, CacheEntry, CgroupEvent, Config, CpuCache, EXEC_ARGV_MAX,
    EXEC_COMMANDS_ENTRIES, ExecCommand, KIND_COMPAT, KIND_EXEC, OUT_OF_RANGE_COLUMN, OVERFLOW_SLOT,
    PHASE_LATE, PHASE_SESSION, PHASE_SETUP, RUNTIME_BASE_SLOT, RUNTIME_SLOT, SKIP_SLOT,
    STAT_CACHE_MISS, STAT_COUNT, STAT_MAP_ERROR, STAT_SLOT_ALLOCATED, STAT_SLOT_EXHAUSTED,
    STAT_SLOT_RACE, SYSCALL_COLUMNS, SlotCounts, SlotKey, TASK_STATES_ENTRIES, TaskState,
    cache_index, cache_index_alt, counter_index,
};

/// Per-architecture constants: the compat flag, where the first syscall argument is in
/// `pt_regs`, and the numbers of the calls the set-up boundary watches.
#[cfg(bpf_target_arch = "x86_64")]
mod arch {
    pub const COMPAT_FLAG_OFFSET: usize = recorder_ebpf::COMPAT_FLAG_OFFSET_X86_64 as usize;
    pub const COMPAT_FLAG_MASK: u32 = recorder_ebpf::COMPAT_FLAG_MASK_X86_64;
    /// `pt_regs.di`.
    pub const ARG0_OFFSET: usize = 14 * 8;
    pub const NR_PRCTL: u64 = 157;
    pub const NR_SECCOMP: u64 = 317;
    pub const NR_EXECVE: u64 = 59;
}
#[cfg(bpf_target_arch = "aarch64")]
mod arch {
    pub const COMPAT_FLAG_OFFSET: usize = recorder_ebpf::COMPAT_FLAG_OFFSET_AARCH64 as usize;
    pub const COMPAT_FLAG_MASK: u32 = recorder_ebpf::COMPAT_FLAG_MASK_AARCH64;
    /// `pt_regs.orig_x0` (`regs[31]`, `sp`, `pc`, `pstate` come first).
    pub const ARG0_OFFSET: usize = 34 * 8;
    pub const NR_PRCTL: u64 = 167;
    pub const NR_SECCOMP: u64 = 277;
    pub const NR_EXECVE: u64 = 221;
}

/// `PR_GET_PDEATHSIG`: runc's init asks it once its mounts, root and hostname are set up.
const PR_GET_PDEATHSIG: u64 = 2;

// The sizes of the capacity maps are placeholders: the agent sets them at load time.
#[map]
static COUNTS: Array<SlotCounts> = Array::with_max_entries(2, BPF_F_MMAPABLE);
#[map]
static ACTIVE: Array<u64> = Array::with_max_entries(2, BPF_F_MMAPABLE);
#[map]
static CGROUP_SLOTS: HashMap<SlotKey, u32> = HashMap::with_max_entries(1, 0);
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
#[map]
static TASK_STATES: LruHashMap<u32, TaskState> =
    LruHashMap::with_max_entries(TASK_STATES_ENTRIES, 0);
#[map]
static EXEC_COMMANDS: LruHashMap<u64, ExecCommand> =
    LruHashMap::with_max_entries(EXEC_COMMANDS_ENTRIES, 0);
#[map]
static EXEC_SCRATCH: PerCpuArray<ExecCommand> = PerCpuArray::with_max_entries(1, 0);

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

/// Whether the current call entered through the compat (32-bit) ABI.
#[inline(always)]
fn in_compat_syscall() -> bool {
    // SAFETY: the helper returns the current task as a trusted BTF pointer; the load reads
    // the `u32` at an offset inside its `thread_info`, which the verifier checks against the
    // kernel's BTF (and the agent checked before loading).
    unsafe {
        let task = bpf_get_current_task_btf().cast::<u8>();
        let flags = ptr::read(task.add(arch::COMPAT_FLAG_OFFSET).cast::<u32>());
        flags & arch::COMPAT_FLAG_MASK != 0
    }
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
    let regs: u64 = ctx.arg(0);
    let compat = in_compat_syscall();
    if !compat && (nr == arch::NR_PRCTL || nr == arch::NR_SECCOMP || nr == arch::NR_EXECVE) {
        match set_up_call(nr, regs) {
            SetUpCall::Runtime => return count_in(RUNTIME_SLOT, column),
            SetUpCall::Own => return count_own(column),
            SetUpCall::Other => {}
        }
    }
    // Compat calls of a task have a cache entry (and a slot) of their own.
    let task = regs | u64::from(compat);
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
                let counter = find_counter(compat)?;
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

/// Counts a call in this CPU's block of `slot` (not cached: rare calls only).
#[inline(always)]
fn count_in(slot: u32, column: usize) -> Result<(), Stat> {
    let config = CONFIG.get(0).ok_or(Stat(STAT_MAP_ERROR))?;
    // SAFETY: helper without arguments.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let counts = COUNTS
        .get_ptr_mut(counter_index(slot, cpu, config.cpus))
        .ok_or(Stat(STAT_MAP_ERROR))?;
    // SAFETY: as in `try_sys_enter`: this CPU's block, the index masked in bounds.
    unsafe { (*counts).calls[column & (SYSCALL_COLUMNS - 1)] += 1 };
    Ok(())
}

/// Counts a call in the current cgroup's own (native) slot, whatever the task's phase.
#[inline(always)]
fn count_own(column: usize) -> Result<(), Stat> {
    let mut key = SlotKey::default();
    let slot = find_slot(&mut key)?;
    count_in(slot, column)
}

/// Where a watched call of the current task counts.
enum SetUpCall {
    /// In [`RUNTIME_SLOT`].
    Runtime,
    /// In its cgroup's own slot.
    Own,
    /// As any call of the task.
    Other,
}

/// A `prctl`, `seccomp` or `execve` call of the current task: runc's set-up marker moves a task
/// in set-up to [`PHASE_LATE`]; a `seccomp` call before the program runs (the runtime
/// installing or probing filters) is the runtime's; the `execve` that starts a program from
/// set-up (a runtime without runc's marker, a process moved into the cgroup, an exec session)
/// is the cgroup's own, as that program's first call.
#[inline(always)]
fn set_up_call(nr: u64, regs: u64) -> SetUpCall {
    if CONFIG.get(0).is_none_or(|config| config.cut_runtime == 0) {
        return SetUpCall::Other;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let Some(state) = TASK_STATES.get_ptr_mut(&tgid) else {
        return SetUpCall::Other;
    };
    // SAFETY: a map value; the phase is only moved forward, so a concurrent update by another
    // thread of the process writes the same value.
    unsafe {
        if nr == arch::NR_SECCOMP {
            return match (*state).phase {
                PHASE_SETUP | PHASE_LATE => SetUpCall::Runtime,
                _ => SetUpCall::Other,
            };
        }
        if (*state).phase != PHASE_SETUP {
            return SetUpCall::Other;
        }
        // An exec session's too: its key is its argv, known only once the exec is done, and
        // every container allows `execve` (runc's own exec of its program).
        if nr == arch::NR_EXECVE {
            return SetUpCall::Own;
        }
        if (*state).exec != 0 {
            return SetUpCall::Other;
        }
        let arg0: u64 =
            bpf_probe_read_kernel((regs as usize + arch::ARG0_OFFSET) as *const u64).unwrap_or(0);
        if arg0 == PR_GET_PDEATHSIG {
            (*state).phase = PHASE_LATE;
            // Cached counters of the process's threads point at the runtime slot.
            bump_generation();
        }
    }
    SetUpCall::Other
}

/// The slow path: which counter block (slot and CPU) counts the current task's syscalls.
#[inline(always)]
fn find_counter(compat: bool) -> Result<u32, Stat> {
    count_stat(STAT_CACHE_MISS);
    let config = CONFIG.get(0).ok_or(Stat(STAT_MAP_ERROR))?;
    if config.skip_tgid != 0 && is_skipped(config) {
        return Ok(SKIP_SLOT);
    }
    // SAFETY: helper without arguments; the program runs with migration disabled, so the CPU
    // stays the one whose cache entry this fills.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let mut key = SlotKey {
        cgroup: 0,
        session: 0,
        kind: if compat { KIND_COMPAT } else { 0 },
        _pad: 0,
    };
    // SAFETY: the value is copied out at once.
    if let Some(state) = unsafe { TASK_STATES.get(&tgid) } {
        match state.phase {
            PHASE_SETUP if config.cut_runtime != 0 => {
                return Ok(counter_index(RUNTIME_SLOT, cpu, config.cpus));
            }
            PHASE_LATE if config.cut_runtime != 0 && !compat => {
                return Ok(counter_index(RUNTIME_BASE_SLOT, cpu, config.cpus));
            }
            PHASE_SESSION => {
                key.kind |= KIND_EXEC;
                key.session = state.session;
            }
            _ => {}
        }
    }
    let slot = find_slot(&mut key)?;
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

/// Which slot counts `key` in the current task's cgroup; takes a free one for a new key.
#[inline(always)]
fn find_slot(key: &mut SlotKey) -> Result<u32, Stat> {
    // SAFETY: helper without arguments.
    key.cgroup = unsafe { bpf_get_current_cgroup_id() };
    let key = &*key;
    // SAFETY: the value is copied out at once.
    if let Some(slot) = unsafe { CGROUP_SLOTS.get(key) } {
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
        .insert(key, &slot, u64::from(BPF_NOEXIST))
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
    match unsafe { CGROUP_SLOTS.get(key) } {
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
/// a task changed cgroup, so cached slots may be wrong. A process moved into a cgroup v2 is
/// in set-up (see `lib.rs`); an exec when the cgroup already counted calls of its own.
#[raw_tracepoint(tracepoint = "cgroup_attach_task")]
pub fn cgroup_attach_task(ctx: RawTracePointContext) -> i32 {
    let dst: *const u8 = ctx.arg(0);
    let task: *const u8 = ctx.arg(2);
    if let Some(cgroup) = cgroup2_id(dst)
        && let Some((tgid, mm)) = task_ids(task)
    {
        let own = |kind| {
            let key = SlotKey {
                cgroup,
                session: 0,
                kind,
                _pad: 0,
            };
            // SAFETY: only the presence is read.
            unsafe { CGROUP_SLOTS.get(&key) }.is_some()
        };
        let state = TaskState {
            phase: PHASE_SETUP,
            exec: u32::from(own(0) || own(KIND_COMPAT)),
            session: 0,
            mm,
        };
        if TASK_STATES.insert(&tgid, &state, 0).is_err() {
            count_stat(STAT_MAP_ERROR);
        }
    }
    bump_generation();
    0
}

/// The tgid and the `mm` of `task`, if the agent found where they are.
#[inline(always)]
fn task_ids(task: *const u8) -> Option<(u32, u64)> {
    let layout = CONFIG.get(0)?.task_layout;
    if layout.known == 0 {
        return None;
    }
    // SAFETY: probe reads at offsets from the kernel's BTF; a bad address fails the read.
    unsafe {
        let tgid: i32 =
            bpf_probe_read_kernel(task.wrapping_add(layout.task_tgid as usize).cast()).ok()?;
        let mm: u64 =
            bpf_probe_read_kernel(task.wrapping_add(layout.task_mm as usize).cast()).ok()?;
        Some((tgid as u32, mm))
    }
}

/// `sched_process_exit(struct task_struct *p, ...)`: the task's kernel stack, whose `pt_regs`
/// address keys the cache, may soon belong to a new task in another cgroup. The process's
/// phase goes with its leader.
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn sched_process_exit(_ctx: RawTracePointContext) -> i32 {
    bump_generation();
    let id = bpf_get_current_pid_tgid();
    if id >> 32 == id & 0xffff_ffff {
        let _ = TASK_STATES.remove(&((id >> 32) as u32));
    }
    0
}

/// `sched_process_fork(struct task_struct *parent, struct task_struct *child)`: a new process
/// (not a thread) inherits its parent's phase and session.
#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn sched_process_fork(ctx: RawTracePointContext) -> i32 {
    let parent = (bpf_get_current_pid_tgid() >> 32) as u32;
    let child: *const u8 = ctx.arg(1);
    // SAFETY: the value is copied out at once.
    let Some(mut state) = (unsafe { TASK_STATES.get(&parent) }).copied() else {
        // A stale entry of an earlier process with this tgid (its leader left before it was
        // moved) must not give the new process a phase.
        if let Some((tgid, _)) = task_ids(child)
            && tgid != parent
        {
            let _ = TASK_STATES.remove(&tgid);
        }
        return 0;
    };
    // The `mm` of an exec under way belongs to the moved process only: the child's `mm` is
    // its own, and a freed `mm` may come back at the same address for a later exec.
    state.mm = 0;
    if let Some((tgid, _)) = task_ids(child)
        && tgid != parent
        && TASK_STATES.insert(&tgid, &state, 0).is_err()
    {
        count_stat(STAT_MAP_ERROR);
    }
    0
}

/// `sched_process_exec(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)`: the
/// current process runs a new program. For a process in set-up that is the container's
/// program (its phase ends) or an exec session's (keyed by its argv).
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn sched_process_exec(ctx: RawTracePointContext) -> i32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let Some(state) = TASK_STATES.get_ptr_mut(&tgid) else {
        return 0;
    };
    // SAFETY: the current task as a plain pointer, only probe-read.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    // SAFETY: a map value of the current process, whose threads are gone after an exec.
    unsafe {
        // The exec that was under way when the process entered the cgroup (the runtime moved
        // it before its own exec had finished) is the runtime's, not the container's program:
        // its new `mm` was already in place then.
        if (*state).mm != 0 && task_ids(task).is_some_and(|(_, mm)| mm == (*state).mm) {
            (*state).mm = 0;
            return 0;
        }
        (*state).mm = 0;
        // An exec of an open file (`fexecve`, which the kernel names `/dev/fd/N`) in set-up is
        // a runtime running a sealed copy of itself (runc 1.1's cloned binary): containers'
        // programs are executed by path.
        if (*state).phase != PHASE_SESSION && exec_of_open_file(ctx.arg(2)) {
            return 0;
        }
        match ((*state).phase, (*state).exec) {
            (PHASE_SESSION, _) => return 0,
            (_, 0) => {
                let _ = TASK_STATES.remove(&tgid);
            }
            _ => {
                (*state).session = exec_session().unwrap_or(1);
                (*state).phase = PHASE_SESSION;
            }
        }
    }
    bump_generation();
    0
}

/// Whether the program being executed was named `/dev/fd/N` (`bprm->filename`).
#[inline(always)]
fn exec_of_open_file(bprm: *const u8) -> bool {
    let Some(layout) = CONFIG.get(0).map(|config| config.task_layout) else {
        return false;
    };
    // SAFETY: probe reads at an offset from the kernel's BTF; a bad address fails the read.
    unsafe {
        let Ok(filename) = bpf_probe_read_kernel::<*const u8>(
            bprm.wrapping_add(layout.binprm_filename as usize).cast(),
        ) else {
            return false;
        };
        matches!(
            bpf_probe_read_kernel::<[u8; 8]>(filename.cast()),
            Ok(prefix) if prefix == *b"/dev/fd/"
        )
    }
}

/// Reads the current program's argv, keeps it in [`EXEC_COMMANDS`] and returns its hash.
#[inline(always)]
fn exec_session() -> Option<u64> {
    let layout = CONFIG.get(0)?.task_layout;
    let command = EXEC_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: probe reads at offsets from the kernel's BTF (a bad address fails the read);
    // `command` is this CPU's scratch value, which nothing else uses while the program runs.
    unsafe {
        let task = bpf_get_current_task() as *const u8;
        let mm: *const u8 =
            bpf_probe_read_kernel(task.wrapping_add(layout.task_mm as usize).cast()).ok()?;
        let start: u64 =
            bpf_probe_read_kernel(mm.wrapping_add(layout.mm_arg_start as usize).cast()).ok()?;
        let end: u64 =
            bpf_probe_read_kernel(mm.wrapping_add(layout.mm_arg_end as usize).cast()).ok()?;
        let len = end.saturating_sub(start).min(EXEC_ARGV_MAX as u64) as usize;
        let argv = &mut (*command).argv;
        if len == 0 || len > EXEC_ARGV_MAX {
            return None;
        }
        bpf_probe_read_user_buf(start as *const u8, &mut argv[..len]).ok()?;
        (*command).len = len as u32;
        (*command)._pad = 0;
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for i in 0..EXEC_ARGV_MAX {
            if i >= len {
                break;
            }
            hash ^= u64::from(argv[i]);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        let session = if hash == 0 { 1 } else { hash };
        if EXEC_COMMANDS.insert(&session, &*command, 0).is_err() {
            count_stat(STAT_MAP_ERROR);
        }
        Some(session)
    }
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
