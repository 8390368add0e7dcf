//! The ABI shared by the kernel program (`src/main.rs`) and the agent: map names, map value
//! layouts and the meaning of every special slot and counter index.
//!
//! # Design
//!
//! Every syscall is counted in a block of [`SYSCALL_COLUMNS`] counters that belongs to the
//! task's cgroup (a "slot") and to the CPU it runs on: [`COUNTS`](MAP_COUNTS) is one flat,
//! memory-mappable array whose element `slot * cpus + cpu` ([`counter_index`]) is written only
//! by that CPU. A plain array lookup is a bounds check and an address computation (no load of a
//! per-CPU pointer on the hot path), and the agent reads every counter through a shared mapping
//! instead of copying each slot out with a syscall. Finding the slot is the expensive part (the
//! cgroup-id helper plus a hash lookup cost about 60 ns), so the program keeps a per-CPU
//! [`CpuCache`] of the tasks it saw last and the counter block of each: [`CACHE_ENTRIES`]
//! entries, two possible places per task, so tasks that take turns on a CPU (a pipeline, a
//! request handed between threads, containers sharing a core) keep hitting instead of evicting
//! each other. The task is identified by the `struct pt_regs *` that `sys_enter` receives: it
//! sits at the top of the task's own kernel stack, so it is unique per live task and costs no
//! helper call (every call/return pays for speculation mitigations). An entry is trusted only
//! while the global [`GENERATION`](MAP_GENERATION) is unchanged; the kernel bumps it whenever a
//! task changes cgroup (`cgroup_attach_task`) or exits (`sched_process_exit`, before its kernel
//! stack — and so its `pt_regs` address — can be reused by a new task), and the agent bumps it
//! when it recycles a slot or changes the configuration.
//!
//! Slots are handed out by the kernel itself from the [`FREE_SLOTS`](MAP_FREE_SLOTS) queue the
//! agent fills before attaching, so a cgroup is counted from its very first syscall without
//! user space noticing it first. When the queue is empty the syscalls go to
//! [`OVERFLOW_SLOT`], whose counts are the kernel-side loss.
//!
//! # What a slot counts
//!
//! A slot belongs to a [`SlotKey`]: a cgroup, and what kind of calls of it. Three things keep
//! a container's own calls apart from others made in its cgroup:
//! - **Compat calls** (a 32-bit binary, or `int $0x80`, on x86_64: the task's `TS_COMPAT`
//!   status during the call; `TIF_32BIT` on aarch64) have numbers of another table. They are
//!   counted in a slot of their own ([`KIND_COMPAT`]); the cache keys them by the `pt_regs`
//!   address with bit 0 set (the address is 8-byte aligned), so a task that makes both kinds
//!   hits for both. The check is one load from the current task on every call.
//! - **The runtime's set-up**: a process moved into a cgroup (`cgroup_attach_task`: runc's
//!   init, runc exec's init) and its children are in [`PHASE_SETUP`] until runc's init asks
//!   `prctl(PR_GET_PDEATHSIG)` (after its mounts, `pivot_root`, hostname and keyring, before
//!   it drops privileges or can apply a seccomp filter) or the process executes a program
//!   (not the runtime re-executing itself: an exec already under way when the process was
//!   moved, or of an open file, `/dev/fd/N`, as runc 1.1 runs its sealed copy).
//!   Their calls go to [`RUNTIME_SLOT`], shared by all cgroups. Between that marker and the
//!   program ([`PHASE_LATE`]) the calls go to [`RUNTIME_BASE_SLOT`], also shared: every
//!   container of the runtime needs them (a filter applied before `setuid`/`capset`, as runc
//!   does without `noNewPrivileges`, must allow them), and which of them the runtime's Go
//!   scheduler makes differs from start to start, so the agent adds the node's union of them
//!   to every container's profile. `seccomp` itself is the runtime's: it runs before any
//!   filter of the container applies.
//! - **Exec sessions**: a process moved into a cgroup that already counted calls of its own
//!   (runc exec, and so `kubectl exec` and exec probes) is an exec session once it executes
//!   its program ([`PHASE_SESSION`]); it and its children count in an [`KIND_EXEC`] slot keyed
//!   by a hash of the program's argv, whose text is kept in [`MAP_EXEC_COMMANDS`] for the agent
//!   to tell a probe (its command is in the pod spec) from an interactive session.
//!
//! Tasks without an entry in [`MAP_TASK_STATES`] (nearly all) are the container's own. The
//! state is looked up only on a cache miss, and on `prctl`/`seccomp` calls.
#![no_std]

/// Counter columns per slot. Column `nr` counts syscall number `nr`; numbers at or above
/// [`OUT_OF_RANGE_COLUMN`] (x32 numbers, the `-1` of a bad syscall, future syscalls) all land in
/// that last column. 512 is above every x86_64 and aarch64 syscall number of Linux 6.x.
pub const SYSCALL_COLUMNS: usize = 512;
/// Column for syscall numbers the table cannot hold.
pub const OUT_OF_RANGE_COLUMN: u32 = (SYSCALL_COLUMNS - 1) as u32;

/// Slot 0 collects syscalls of cgroups that could not get a slot (capacity exhausted).
pub const OVERFLOW_SLOT: u32 = 0;
/// Slot 1 collects the calls of every container runtime's set-up ([`PHASE_SETUP`]).
pub const RUNTIME_SLOT: u32 = 1;
/// Slot 2 collects the calls container runtimes make after their set-up marker and before the
/// container's program ([`PHASE_LATE`]): what a container's filter must let the runtime do.
pub const RUNTIME_BASE_SLOT: u32 = 2;
/// First slot that belongs to a cgroup.
pub const FIRST_CGROUP_SLOT: u32 = 3;

/// [`SlotKey::kind`] bit: compat (32-bit ABI) calls, numbered from the compat table.
pub const KIND_COMPAT: u32 = 1;
/// [`SlotKey::kind`] bit: calls of an exec session, [`SlotKey::session`] names it.
pub const KIND_EXEC: u32 = 2;

/// The key of [`MAP_CGROUP_SLOTS`]: whose calls a slot counts.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SlotKey {
    /// The cgroup v2 id.
    pub cgroup: u64,
    /// With [`KIND_EXEC`]: the session's command hash (a key of [`MAP_EXEC_COMMANDS`]); else 0.
    pub session: u64,
    /// [`KIND_COMPAT`] and [`KIND_EXEC`] bits; 0 for the container's own native calls.
    pub kind: u32,
    /// Explicit padding (0: the key is hashed bytewise).
    pub _pad: u32,
}

/// A task (thread group) between entering a cgroup and running the container's program.
pub const PHASE_SETUP: u32 = 1;
/// After runc's set-up marker, before the program: counted in [`RUNTIME_BASE_SLOT`].
pub const PHASE_LATE: u32 = 2;
/// An exec session's program and its children.
pub const PHASE_SESSION: u32 = 3;

/// The value of [`MAP_TASK_STATES`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskState {
    /// `PHASE_*`.
    pub phase: u32,
    /// 1 when the process entered a cgroup that already had calls of its own (an exec).
    pub exec: u32,
    /// With [`PHASE_SESSION`]: the session's command hash.
    pub session: u64,
    /// The process's `mm` when it entered the cgroup. A runtime may move its init while the
    /// init's own exec is still under way (Go's exec returns once the close-on-exec pipe
    /// closes, after the new `mm` is in place but before the exec is reported): an exec whose
    /// `mm` is this one is that exec, the runtime's, and does not end the set-up. Cleared at
    /// the process's first exec and in children (a freed `mm` can come back at the address).
    pub mm: u64,
}

/// `LRU_HASH<u32 host tgid, TaskState>`: the processes that are not (yet) a container's own.
/// A dropped entry makes its process count as its container's own (the wider profile).
pub const MAP_TASK_STATES: &str = "TASK_STATES";
/// `max_entries` of [`MAP_TASK_STATES`].
pub const TASK_STATES_ENTRIES: u32 = 16384;
/// `LRU_HASH<u64 session, ExecCommand>`: the argv of each exec session's program.
pub const MAP_EXEC_COMMANDS: &str = "EXEC_COMMANDS";
/// `max_entries` of [`MAP_EXEC_COMMANDS`].
pub const EXEC_COMMANDS_ENTRIES: u32 = 1024;
/// `PERCPU_ARRAY<ExecCommand>`, one entry: where an argv is read before it is hashed.
pub const MAP_EXEC_SCRATCH: &str = "EXEC_SCRATCH";
/// Longest argv kept (and hashed): longer command lines are cut.
pub const EXEC_ARGV_MAX: usize = 248;

/// An exec session's command line: the argv strings, each NUL-terminated, as the kernel keeps
/// them in the process (cut at [`EXEC_ARGV_MAX`] bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExecCommand {
    /// Bytes of `argv` in use.
    pub len: u32,
    /// Explicit padding.
    pub _pad: u32,
    /// The argv bytes.
    pub argv: [u8; EXEC_ARGV_MAX],
}

/// The session key of an argv: FNV-1a over its bytes (never 0, which means "no session").
#[inline(always)]
#[must_use]
pub const fn session_hash(argv: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < argv.len() {
        hash ^= argv[i] as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    if hash == 0 { 1 } else { hash }
}
/// Cache value for tasks that are not counted (the agent itself, see [`Config::skip_tgid`]).
pub const SKIP_SLOT: u32 = u32::MAX;

/// `ARRAY<SlotCounts>` with `BPF_F_MMAPABLE`, `max_entries = (capacity + 1) * cpus` (slot 0 is
/// [`OVERFLOW_SLOT`]; `cpus` is the number of possible CPUs): element [`counter_index`]`(slot,
/// cpu, cpus)` holds the counts of `slot` made on `cpu`.
pub const MAP_COUNTS: &str = "COUNTS";
/// `ARRAY<u64>` with `BPF_F_MMAPABLE`, `max_entries = capacity + 1`, indexed by slot (u64: array
/// elements are 8-byte aligned, so this is also what the mapping's stride is): a cache
/// miss of a task that counts in the slot sets it to 1. Each round the agent clears the marks,
/// bumps the generation (so every task that goes on counting misses once more and marks its
/// slot again) and reads only marked slots: a round costs what the cgroups that ran cost.
pub const MAP_ACTIVE: &str = "ACTIVE";
/// `HASH<SlotKey, u32 slot>`, `max_entries = capacity`.
pub const MAP_CGROUP_SLOTS: &str = "CGROUP_SLOTS";
/// `QUEUE<u32 slot>`, `max_entries = capacity`: the slots no cgroup holds.
pub const MAP_FREE_SLOTS: &str = "FREE_SLOTS";
/// `ARRAY<u64>`, one entry: the cache generation.
pub const MAP_GENERATION: &str = "GENERATION";
/// `ARRAY<Config>`, one entry.
pub const MAP_CONFIG: &str = "CONFIG";
/// `PERCPU_ARRAY<CpuCache>`, one entry (per CPU: [`CACHE_ENTRIES`] cached tasks).
pub const MAP_CACHE: &str = "CACHE";
/// `PERCPU_ARRAY<u64>`, [`STAT_COUNT`] entries indexed by the `STAT_*` constants.
pub const MAP_STATS: &str = "STATS";

/// Every map of the object. The agent pins them all (a program left attached across an agent
/// restart keeps writing the maps it was loaded with, so any map user space reads must be the
/// pinned one); it refuses to pin a set that misses a map of the object.
pub const ALL_MAPS: [&str; 14] = [
    MAP_COUNTS,
    MAP_ACTIVE,
    MAP_CGROUP_SLOTS,
    MAP_FREE_SLOTS,
    MAP_GENERATION,
    MAP_CONFIG,
    MAP_CACHE,
    MAP_STATS,
    MAP_CGROUP_EVENTS,
    MAP_CGROUP_PATHS,
    MAP_MKDIR_SCRATCH,
    MAP_TASK_STATES,
    MAP_EXEC_COMMANDS,
    MAP_EXEC_SCRATCH,
];

/// Bumped on any change of map layout or meaning: pinned maps of another ABI are not reused.
pub const ABI_VERSION: u32 = 9;

/// Maps whose `max_entries` the agent sets at load time from its capacity.
pub const CAPACITY_MAPS: [&str; 5] = [
    MAP_COUNTS,
    MAP_ACTIVE,
    MAP_CGROUP_SLOTS,
    MAP_FREE_SLOTS,
    MAP_CGROUP_PATHS,
];

/// `max_entries` of [`MAP_CGROUP_PATHS`] for a capacity: room for every counted cgroup and as
/// many more that are created without making a syscall (pod and QoS parents).
#[must_use]
pub const fn cgroup_paths_entries(capacity: u32) -> u32 {
    capacity.saturating_mul(2)
}

/// Program on the raw tracepoint `sys_enter`: the counter.
pub const PROG_SYS_ENTER: &str = "sys_enter";
/// Program on the raw tracepoint `cgroup_attach_task`: invalidates caches on migration.
pub const PROG_CGROUP_ATTACH: &str = "cgroup_attach_task";
/// Program on the raw tracepoint `sched_process_exit`: invalidates caches when a task exits.
pub const PROG_TASK_EXIT: &str = "sched_process_exit";
/// Program on the raw tracepoint `sched_process_fork`: children inherit their parent's phase.
pub const PROG_TASK_FORK: &str = "sched_process_fork";
/// Program on the raw tracepoint `sched_process_exec`: a program starts (ends set-up, starts
/// exec sessions).
pub const PROG_TASK_EXEC: &str = "sched_process_exec";
/// An empty program on `sys_enter`: the cost floor `cargo xtask bench` compares against. The
/// agent never loads it.
pub const PROG_SYS_ENTER_EMPTY: &str = "sys_enter_empty";

/// `RINGBUF` of [`CgroupEvent`]s: every cgroup directory created (any hierarchy), so the agent
/// learns a cgroup's path while it exists even if it is gone before the next collection.
pub const MAP_CGROUP_EVENTS: &str = "CGROUP_EVENTS";
/// Size of [`MAP_CGROUP_EVENTS`] in bytes (a power-of-two number of pages): room for 500
/// events between two drains.
pub const CGROUP_EVENTS_BYTES: u32 = 256 * 1024;
/// `LRU_HASH<u64 cgroup2 id, CgroupEvent>`, `max_entries = `[`cgroup_paths_entries`]`(capacity)`:
/// the path of every cgroup v2 directory created while the program was attached (also while no
/// agent ran: its link is pinned), so an agent that starts after a counted cgroup is gone can
/// still name it. Written only when [`Config::cgroup_layout`] is known; the agent removes the
/// entry when it gives the cgroup's slot back, and the LRU drops the oldest when it is full.
pub const MAP_CGROUP_PATHS: &str = "CGROUP_PATHS";
/// `PERCPU_ARRAY<CgroupEvent>`, one entry: where the `cgroup_mkdir` program builds a path (too
/// big for the BPF stack) before copying it to [`MAP_CGROUP_PATHS`] and the events ring.
pub const MAP_MKDIR_SCRATCH: &str = "MKDIR_SCRATCH";
/// Program on the raw tracepoint `cgroup_mkdir`: reports created cgroups' paths.
pub const PROG_CGROUP_MKDIR: &str = "cgroup_mkdir";
/// Longest cgroup path reported; longer paths are cut (and then fail to resolve, falling back
/// to the agent's tree walk).
pub const CGROUP_PATH_MAX: usize = 504;

/// One cgroup creation (also the value of [`MAP_CGROUP_PATHS`]): the path relative to its hierarchy's root, as the tracepoint gives it
/// (`/kubepods/...`), with the same path repeated once per hierarchy on cgroup v1/hybrid hosts.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CgroupEvent {
    /// Bytes of `path` in use (without the terminating NUL).
    pub len: u32,
    /// Explicit padding.
    pub _pad: u32,
    /// The path, NUL-terminated.
    pub path: [u8; CGROUP_PATH_MAX],
}

/// Slow-path runs (cache misses).
pub const STAT_CACHE_MISS: u32 = 0;
/// Slots the kernel took from the free queue for a new cgroup.
pub const STAT_SLOT_ALLOCATED: u32 = 1;
/// Cache misses of tasks whose cgroup found no free slot (their calls went to slot 0).
pub const STAT_SLOT_EXHAUSTED: u32 = 2;
/// Map operations that failed where they cannot fail by design (a bug or a kernel surprise).
pub const STAT_MAP_ERROR: u32 = 3;
/// Lost allocation races (two CPUs saw the same new cgroup at once); harmless.
pub const STAT_SLOT_RACE: u32 = 4;
/// Number of `STAT_*` entries.
pub const STAT_COUNT: u32 = 5;

/// Per-CPU counters of one slot: `calls[nr]` is the number of calls of syscall `nr`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SlotCounts {
    /// Calls per syscall number, see [`SYSCALL_COLUMNS`].
    pub calls: [u64; SYSCALL_COLUMNS],
}

/// Entries of each CPU's [`CpuCache`] (a power of two). 128 entries of 24 bytes: 3 KiB per CPU.
pub const CACHE_ENTRIES: usize = 128;

/// One cached task: its key, the generation it was filled in, its counter block.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CacheEntry {
    /// The cached task's `struct pt_regs *` (top of its kernel stack).
    pub task: u64,
    /// Value of the generation when the entry was filled.
    pub generation: u64,
    /// Index in [`COUNTS`](MAP_COUNTS) of the task's slot on this CPU ([`counter_index`]), or
    /// [`SKIP_SLOT`].
    pub counter: u32,
    /// Explicit padding: the struct is 24 bytes on every target.
    pub _pad: u32,
}

/// The per-CPU cache of the tasks seen last on this CPU. A task may live in one of two entries,
/// [`cache_index`] and [`cache_index_alt`]: with one place per task, two of eight tasks
/// taking turns on a CPU collide in a third of the cases and then miss on every switch; with
/// two places such a pair still finds room.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CpuCache {
    /// The entries; a task lives in `entries[cache_index(task)]` or `entries[cache_index_alt(task)]`.
    pub entries: [CacheEntry; CACHE_ENTRIES],
}

/// The first entry of [`CpuCache`] that may hold `task`: a multiplicative (Fibonacci) hash,
/// because the low bits of a kernel stack address are the same for every task and the stacks
/// of tasks created together are often evenly spaced.
#[inline(always)]
#[must_use]
pub const fn cache_index(task: u64) -> usize {
    (task.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - CACHE_ENTRIES.trailing_zeros())) as usize
}

/// The second entry that may hold `task`, from an independent multiplier.
#[inline(always)]
#[must_use]
pub const fn cache_index_alt(task: u64) -> usize {
    (task.wrapping_mul(0xC2B2_AE3D_27D4_EB4F) >> (64 - CACHE_ENTRIES.trailing_zeros())) as usize
}

/// Where the counts of `slot` made on `cpu` are in [`COUNTS`](MAP_COUNTS): the blocks of one
/// slot are adjacent, so the agent reads a slot as one contiguous run of memory.
#[inline(always)]
#[must_use]
pub const fn counter_index(slot: u32, cpu: u32, cpus: u32) -> u32 {
    slot.wrapping_mul(cpus).wrapping_add(cpu)
}

/// Agent-controlled settings.
///
/// The agent is not counted: it is named by its PID namespace and its thread-group id in that
/// namespace, because its own pid (`getpid`) is a number of its namespace (1 in a pod) while
/// the kernel's `bpf_get_current_pid_tgid` gives host pids. A cache miss compares them with
/// `bpf_get_ns_current_pid_tgid`, which fails for a task of any other namespace (counted).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Config {
    /// `st_dev` of the agent's `/proc/self/ns/pid`.
    pub skip_pidns_dev: u64,
    /// `st_ino` of the agent's `/proc/self/ns/pid`.
    pub skip_pidns_ino: u64,
    /// Thread-group id, in the namespace above, whose syscalls are not counted (the agent); 0
    /// for none.
    pub skip_tgid: u32,
    /// Possible CPUs: the stride of [`counter_index`]. The agent sets it before attaching.
    pub cpus: u32,
    /// Where the `cgroup_mkdir` program finds a new cgroup's id and hierarchy.
    pub cgroup_layout: CgroupLayout,
    /// Where the task programs find a process's tgid and argv.
    pub task_layout: TaskLayout,
    /// 1: the runtime's set-up is counted apart ([`RUNTIME_SLOT`]); 0: as the container's own.
    pub cut_runtime: u32,
    /// Explicit padding.
    pub _pad: u32,
}

/// Byte offsets the task programs read (from the kernel's BTF, like [`CgroupLayout`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskLayout {
    /// 1 when the offsets are known; with 0 no process gets a phase (all calls are their
    /// cgroup's own, as before phases existed).
    pub known: u32,
    /// `struct task_struct`, member `tgid` (`pid_t`).
    pub task_tgid: u32,
    /// `struct task_struct`, member `mm` (`struct mm_struct *`).
    pub task_mm: u32,
    /// `struct mm_struct`, member `arg_start` (`unsigned long`).
    pub mm_arg_start: u32,
    /// `struct mm_struct`, member `arg_end` (`unsigned long`).
    pub mm_arg_end: u32,
    /// `struct linux_binprm`, member `filename` (`const char *`).
    pub binprm_filename: u32,
}

/// Where the kernel program reads whether the current call is a compat one: a `u32` at this
/// offset of `struct task_struct` (x86_64: `thread_info.status`, `TS_COMPAT`; aarch64: the low
/// half of `thread_info.flags`, `TIF_32BIT`). `thread_info` is the first member of
/// `task_struct` on both; the agent checks the offset against the kernel's BTF.
pub const COMPAT_FLAG_OFFSET_X86_64: u32 = 16;
/// The bit of [`COMPAT_FLAG_OFFSET_X86_64`]'s word: `TS_COMPAT`.
pub const COMPAT_FLAG_MASK_X86_64: u32 = 0x0002;
/// aarch64: `thread_info.flags` is at 0.
pub const COMPAT_FLAG_OFFSET_AARCH64: u32 = 0;
/// aarch64: `TIF_32BIT` (bit 22).
pub const COMPAT_FLAG_MASK_AARCH64: u32 = 1 << 22;

/// Byte offsets of the kernel struct members the `cgroup_mkdir` program reads to learn a new
/// cgroup's id and whether it is a cgroup v2 one (`cgrp->kn->id`, `cgrp->root->hierarchy_id`,
/// 0 for v2). They vary with the kernel build, and the program has no CO-RE: the agent reads
/// them from the kernel's BTF before attaching.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupLayout {
    /// 1 when the offsets are known; with 0 the program writes no [`MAP_CGROUP_PATHS`] entry.
    pub known: u32,
    /// `struct cgroup`, member `kn` (`struct kernfs_node *`).
    pub cgroup_kn: u32,
    /// `struct cgroup`, member `root` (`struct cgroup_root *`).
    pub cgroup_root: u32,
    /// `struct kernfs_node`, member `id` (`u64`: the cgroup id, the directory's inode).
    pub kernfs_node_id: u32,
    /// `struct cgroup_root`, member `hierarchy_id` (`int`).
    pub root_hierarchy_id: u32,
    /// Explicit padding.
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<SlotCounts>() == 8 * SYSCALL_COLUMNS);
const _: () = assert!(core::mem::size_of::<CacheEntry>() == 24);
const _: () = assert!(core::mem::size_of::<CpuCache>() == 24 * CACHE_ENTRIES);
const _: () = assert!(CACHE_ENTRIES.is_power_of_two());
const _: () = assert!(core::mem::size_of::<Config>() == 80);
const _: () = assert!(core::mem::size_of::<SlotKey>() == 24);
const _: () = assert!(core::mem::size_of::<TaskState>() == 24);
const _: () = assert!(core::mem::size_of::<ExecCommand>() == 256);
const _: () = assert!(core::mem::size_of::<CgroupEvent>() == 512);
const _: () = assert!(SYSCALL_COLUMNS.is_power_of_two());

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain `#[repr(C)]` integer structs with explicit padding: every bit pattern is valid.
    unsafe impl aya::Pod for super::SlotCounts {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::CpuCache {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Config {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::CgroupEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SlotKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TaskState {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ExecCommand {}
}
