//! The kernel side as seen from user space: loading and attaching the programs, reading the
//! per-cgroup counters, giving slots back, kernel statistics, and the preflight checks that
//! name what the host lacks. The only module that touches aya.

use std::{
    fs, io,
    os::fd::{AsFd as _, AsRawFd as _},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, MapError, MapInfo, PerCpuArray, Queue, RingBuf},
    programs::{
        ProgramError, RawTracePoint,
        links::{FdLink, PinnedLink},
        loaded_programs,
    },
};
use recorder_ebpf::{
    ABI_VERSION, ALL_MAPS, CAPACITY_MAPS, CGROUP_PATH_MAX, CgroupEvent, Config, FIRST_CGROUP_SLOT,
    MAP_ACTIVE, MAP_CGROUP_EVENTS, MAP_CGROUP_SLOTS, MAP_CONFIG, MAP_COUNTS, MAP_FREE_SLOTS,
    MAP_GENERATION, MAP_STATS, PROG_CGROUP_ATTACH, PROG_CGROUP_MKDIR, PROG_SYS_ENTER,
    PROG_SYS_ENTER_EMPTY, PROG_TASK_EXIT, STAT_CACHE_MISS, STAT_COUNT, STAT_MAP_ERROR,
    STAT_SLOT_ALLOCATED, STAT_SLOT_EXHAUSTED, STAT_SLOT_RACE, SYSCALL_COLUMNS, SlotCounts,
    counter_index,
};

/// The kernel program, built by build.rs (empty when built with `RECORDER_SKIP_EBPF=1`).
static PROGRAM: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/recorder-ebpf"));

/// Errors of this module, each naming what is missing or what failed.
#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    /// The agent was built without the kernel program.
    #[error(
        "this agent was built with RECORDER_SKIP_EBPF=1 and has no eBPF program; rebuild \
         without it (`cargo xtask setup` installs what the build needs)"
    )]
    NoProgram,
    /// Missing privileges.
    #[error("missing privilege: {0}")]
    Privilege(String),
    /// Loading the object or creating the maps failed.
    #[error("loading the eBPF program failed: {source}{hint}")]
    Load {
        /// The cause.
        #[source]
        source: Box<aya::EbpfError>,
        /// What is probably missing.
        hint: String,
    },
    /// A program failed verification or attach.
    #[error("{action} program {program}: {source}{hint}")]
    Program {
        /// `loading` or `attaching`.
        action: &'static str,
        /// Program name.
        program: &'static str,
        /// The cause.
        #[source]
        source: Box<ProgramError>,
        /// What is probably missing.
        hint: String,
    },
    /// A map is missing from the object (an ABI mismatch).
    #[error("map {0} missing from the eBPF object")]
    MissingMap(&'static str),
    /// A map operation failed.
    #[error("map {map}: {source}")]
    Map {
        /// Map name.
        map: &'static str,
        /// The cause.
        #[source]
        source: Box<MapError>,
    },
    /// The number of CPUs could not be read.
    #[error("reading the possible CPUs: {0}")]
    Cpus(io::Error),
    /// The counters for this capacity would not fit in one kernel array.
    #[error(
        "--max-cgroups {capacity} needs more counters than one kernel array holds on {cpus} \
         CPUs; use --max-cgroups {max} or less"
    )]
    Capacity {
        /// The capacity asked for.
        capacity: u32,
        /// Possible CPUs.
        cpus: u32,
        /// The largest capacity that fits.
        max: u32,
    },
    /// A slot beyond the counters map (a corrupt slot table).
    #[error("slot {slot} is outside the counters map ({slots} slots)")]
    SlotOutOfRange {
        /// The slot asked for.
        slot: u32,
        /// Slots in the map.
        slots: u32,
    },
    /// Managing the pinned maps and links failed.
    #[error("pinning in {path}: {reason}")]
    Pin {
        /// The pin directory.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

fn pin_err(path: &Path, reason: impl std::fmt::Display) -> BpfError {
    BpfError::Pin {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

/// `BPF_FS_MAGIC` from linux/magic.h.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Whether `path` is on a bpf filesystem.
pub fn is_bpffs(path: &Path) -> bool {
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: zeroed plain data, NUL-terminated path, valid for the call.
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &mut buf) };
    #[expect(
        clippy::useless_conversion,
        reason = "f_type is i64 on x86_64 but not everywhere"
    )]
    let magic = i64::from(buf.f_type);
    rc == 0 && magic == BPF_FS_MAGIC
}

/// The directory under `bpffs` that holds this agent's pins.
pub fn pin_root(bpffs: &Path) -> PathBuf {
    bpffs.join("syscall-recorder")
}

/// Removes every pin of the recorder under `bpffs` (the programs detach once no agent holds
/// them). Returns how many pins were removed.
pub fn unpin_all(bpffs: &Path) -> Result<usize, BpfError> {
    let root = pin_root(bpffs);
    let mut removed = 0;
    let Ok(sets) = fs::read_dir(&root) else {
        return Ok(0);
    };
    for set in sets.flatten() {
        removed += remove_pin_set(&set.path())?;
    }
    fs::remove_dir(&root).map_err(|err| pin_err(&root, err))?;
    Ok(removed)
}

fn remove_pin_set(dir: &Path) -> Result<usize, BpfError> {
    let mut removed = 0;
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            fs::remove_file(entry.path()).map_err(|err| pin_err(&entry.path(), err))?;
            removed += 1;
        }
    }
    match fs::remove_dir(dir) {
        Ok(()) => Ok(removed),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(removed),
        Err(err) => Err(pin_err(dir, err)),
    }
}

/// An exclusive lock on a pin set: two agents sharing the same counters would each fold and
/// recycle the other's slots.
#[derive(Debug)]
struct PinLock {
    _file: fs::File,
}

impl PinLock {
    fn take(dir: &Path) -> Result<Self, BpfError> {
        let file = fs::File::open(dir).map_err(|err| pin_err(dir, err))?;
        // SAFETY: flock on an fd we own.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            return Err(pin_err(
                dir,
                format!(
                    "another agent holds these pinned counters ({}); stop it or use another --bpffs",
                    io::Error::last_os_error()
                ),
            ));
        }
        Ok(Self { _file: file })
    }
}

/// How the kernel side relates to the previous agent run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Continuity {
    /// The counters were pinned by a previous agent and are reused: they hold every syscall
    /// counted since, also while no agent ran.
    pub reused_maps: bool,
    /// The previous programs were identical and stay attached (no gap at all).
    pub reused_programs: bool,
    /// Kernel id of the counters map: saved baselines apply only to the same map.
    pub counts_map_id: u32,
}

fn map_err(map: &'static str) -> impl FnOnce(MapError) -> BpfError {
    move |source| BpfError::Map {
        map,
        source: Box::new(source),
    }
}

/// Linux capability numbers (linux/capability.h).
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

fn effective_caps() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let hex = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// Checks the privileges loading needs: CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN, which older
/// kernels require). Returns one line naming what is missing.
pub fn check_privileges() -> Result<(), BpfError> {
    let Some(caps) = effective_caps() else {
        return Ok(()); // Cannot tell; let the load report it.
    };
    let has = |cap: u32| caps & (1u64 << cap) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return Ok(());
    }
    let mut missing = Vec::new();
    if !has(CAP_BPF) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_PERFMON) {
        missing.push("CAP_PERFMON");
    }
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    Err(BpfError::Privilege(format!(
        "{} (running as uid {uid}); run as root, or grant CAP_BPF and CAP_PERFMON \
         (CAP_SYS_ADMIN on kernels before 5.8)",
        missing.join(" and ")
    )))
}

/// Whether the kernel exposes its BTF. The program itself needs no kernel BTF (raw
/// tracepoints, helpers only), so its absence is only named when a load fails.
pub fn kernel_has_btf() -> bool {
    Path::new("/sys/kernel/btf/vmlinux").exists()
}

fn load_hint() -> String {
    let mut hints = Vec::new();
    if !kernel_has_btf() {
        hints.push(
            "the kernel has no BTF (/sys/kernel/btf/vmlinux is missing; CONFIG_DEBUG_INFO_BTF=y)",
        );
    }
    if check_privileges().is_err() {
        hints.push("missing CAP_BPF/CAP_PERFMON");
    }
    if hints.is_empty() {
        String::new()
    } else {
        format!(" (probably: {})", hints.join("; "))
    }
}

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

/// How to load the recorder.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Number of cgroups that can be counted at once.
    pub capacity: u32,
    /// Thread group whose syscalls are not counted (the agent's own pid), or 0.
    pub skip_tgid: u32,
    /// A bpf filesystem to pin maps and links in, so counting survives agent restarts.
    pub bpffs: Option<PathBuf>,
}

/// Counter totals of one slot, summed over CPUs.
pub type Totals = Box<[u64; SYSCALL_COLUMNS]>;

/// A loaded and attached recorder.
pub struct Recorder {
    // Keeps the programs and their links alive.
    _ebpf: Ebpf,
    counts: Counters,
    slots: HashMap<MapData, u64, u32>,
    free: Queue<MapData, u32>,
    generation: Array<MapData, u64>,
    config: Array<MapData, Config>,
    stats: PerCpuArray<MapData, u64>,
    capacity: u32,
    continuity: Continuity,
    _pin_lock: Option<PinLock>,
    /// Kernel ids of the attached programs: the loaded ones, or those a previous agent left
    /// attached (their run statistics are what counts).
    attached: Vec<(&'static str, u32)>,
    cgroup_events: Option<CgroupEvents>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("capacity", &self.capacity)
            .field("cpus", &self.counts.cpus)
            .finish_non_exhaustive()
    }
}

impl Recorder {
    /// Loads the programs, sizes the maps for `capacity` cgroups, fills the free-slot queue
    /// and attaches: counting starts when this returns.
    pub fn load_and_attach(options: LoadOptions) -> Result<Self, BpfError> {
        if PROGRAM.is_empty() {
            return Err(BpfError::NoProgram);
        }
        check_privileges()?;
        raise_memlock_limit();
        let capacity = options.capacity.max(1);
        let cpus = cpu_stride()?;
        let counter_blocks = counter_blocks(capacity, cpus)?;
        let pin = match &options.bpffs {
            Some(bpffs) => prepare_pin_set(bpffs, capacity, counter_blocks)?,
            None => None,
        };
        let mut loader = EbpfLoader::new();
        for map in CAPACITY_MAPS {
            let entries = match map {
                MAP_COUNTS => counter_blocks,
                MAP_ACTIVE => capacity + 1,
                _ => capacity,
            };
            loader.map_max_entries(map, entries);
        }
        if let Some(pin) = &pin {
            for map in ALL_MAPS {
                loader.map_pin_path(map, pin.dir.join(map));
            }
        }
        let mut ebpf = loader.load(PROGRAM).map_err(|source| BpfError::Load {
            source: Box::new(source),
            hint: load_hint(),
        })?;
        if let Some(pin) = &pin
            && let Some((name, _)) = ebpf.maps().find(|(name, _)| !ALL_MAPS.contains(name))
        {
            return Err(pin_err(
                &pin.dir,
                format!("map {name} is missing from ALL_MAPS"),
            ));
        }

        let counts_map = take(&mut ebpf, MAP_COUNTS)?;
        let counts_map_id = match &counts_map {
            aya::maps::Map::Array(data) => data.info().map(|info| info.id()).unwrap_or(0),
            _ => 0,
        };
        let counts = Counters::map(
            Array::try_from(counts_map).map_err(map_err(MAP_COUNTS))?,
            Array::try_from(take(&mut ebpf, MAP_ACTIVE)?).map_err(map_err(MAP_ACTIVE))?,
            cpus,
            capacity + 1,
        )?;
        let slots = HashMap::try_from(take(&mut ebpf, MAP_CGROUP_SLOTS)?)
            .map_err(map_err(MAP_CGROUP_SLOTS))?;
        let mut free =
            Queue::try_from(take(&mut ebpf, MAP_FREE_SLOTS)?).map_err(map_err(MAP_FREE_SLOTS))?;
        let generation: Array<MapData, u64> =
            Array::try_from(take(&mut ebpf, MAP_GENERATION)?).map_err(map_err(MAP_GENERATION))?;
        let config: Array<MapData, Config> =
            Array::try_from(take(&mut ebpf, MAP_CONFIG)?).map_err(map_err(MAP_CONFIG))?;
        let stats =
            PerCpuArray::try_from(take(&mut ebpf, MAP_STATS)?).map_err(map_err(MAP_STATS))?;

        let reused_maps = pin.as_ref().is_some_and(|pin| pin.reuse);
        if !reused_maps {
            for slot in FIRST_CGROUP_SLOT..=capacity {
                free.push(slot, 0).map_err(map_err(MAP_FREE_SLOTS))?;
            }
        }
        let mut recorder_maps = (counts, slots, free, generation, config, stats);
        {
            let (_, _, _, generation, config, _) = &mut recorder_maps;
            // The previous agent's pid may now belong to anything: the new one is skipped instead.
            config
                .set(
                    0,
                    Config {
                        skip_tgid: options.skip_tgid,
                        cpus,
                    },
                    0,
                )
                .map_err(map_err(MAP_CONFIG))?;
            let current = generation.get(&0, 0).map_err(map_err(MAP_GENERATION))?;
            generation
                .set(0, current.wrapping_add(1 << 32), 0)
                .map_err(map_err(MAP_GENERATION))?;
        }

        // Cache invalidation first, so the counter never runs without it.
        let mut reused_programs = true;
        let mut attached = Vec::new();
        for (name, tracepoint) in [
            (PROG_CGROUP_ATTACH, "cgroup_attach_task"),
            (PROG_TASK_EXIT, "sched_process_exit"),
            (PROG_SYS_ENTER, "sys_enter"),
        ] {
            let program = load_raw_tracepoint(&mut ebpf, name)?;
            let link_path = pin.as_ref().map(|pin| pin.dir.join(format!("link_{name}")));
            if let Some(link_path) = &link_path
                && reused_maps
                && let Ok(old) = PinnedLink::from_pin(link_path)
            {
                let old = FdLink::from(old);
                let new_tag = program.info().map(|info| info.tag()).ok();
                let old_tag = old.info().ok().and_then(|link| {
                    loaded_programs()
                        .flatten()
                        .find(|info| info.id() == link.program_id())
                        .map(|info| info.tag())
                });
                if new_tag.is_some() && new_tag == old_tag {
                    // The same program stays attached (the pin holds it): no syscall is missed.
                    if let Ok(link) = old.info() {
                        attached.push((name, link.program_id()));
                    }
                    continue;
                }
                // An upgrade: the old program goes first, so no syscall is counted twice (the
                // few calls between detach and attach are missed instead).
                fs::remove_file(link_path).map_err(|err| pin_err(link_path, err))?;
                drop(old);
            }
            reused_programs = false;
            if let Ok(info) = program.info() {
                attached.push((name, info.id()));
            }
            let link_id =
                program
                    .attach(tracepoint)
                    .map_err(program_err("attaching", name, load_hint()))?;
            if let Some(link_path) = &link_path {
                let link = program
                    .take_link(link_id)
                    .map_err(|source| BpfError::Program {
                        action: "pinning",
                        program: name,
                        source: Box::new(source),
                        hint: String::new(),
                    })?;
                let link = FdLink::from(link);
                link.pin(link_path).map_err(|err| pin_err(link_path, err))?;
            }
        }
        // Optional: without it short-lived cgroups are learned only by the tree walk.
        let cgroup_events = match attach_cgroup_mkdir(&mut ebpf) {
            Ok(events) => Some(events),
            Err(err) => {
                tracing::warn!(error = %err, "cgroup creation events unavailable; cgroups that live shorter than an interval may stay unresolved");
                None
            }
        };
        let (counts, slots, free, generation, config, stats) = recorder_maps;
        Ok(Self {
            _ebpf: ebpf,
            cgroup_events,
            counts,
            slots,
            free,
            generation,
            config,
            stats,
            capacity,
            continuity: Continuity {
                reused_maps,
                reused_programs: reused_maps && reused_programs,
                counts_map_id,
            },
            _pin_lock: pin.map(|pin| pin.lock),
            attached,
        })
    }

    /// How this load relates to the previous agent run.
    pub fn continuity(&self) -> Continuity {
        self.continuity
    }

    /// The stream of created cgroups' paths (once; `None` if the program could not attach).
    pub fn take_cgroup_events(&mut self) -> Option<CgroupEvents> {
        self.cgroup_events.take()
    }

    /// Number of cgroups that can be counted at once.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// The (cgroup id, slot) pairs the kernel has handed out.
    pub fn slots(&self) -> Result<Vec<(u64, u32)>, BpfError> {
        self.slots
            .iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(map_err(MAP_CGROUP_SLOTS))
    }

    /// The counters of `slot`, summed over CPUs.
    pub fn read_slot(&self, slot: u32) -> Result<Totals, BpfError> {
        let mut totals: Totals = Box::new([0; SYSCALL_COLUMNS]);
        self.read_slot_into(slot, &mut totals)?;
        Ok(totals)
    }

    /// Like [`read_slot`](Self::read_slot), into `totals`: the collection's inner loop, plain
    /// memory reads of the mapped counters (no syscall, no copy).
    pub fn read_slot_into(
        &self,
        slot: u32,
        totals: &mut [u64; SYSCALL_COLUMNS],
    ) -> Result<(), BpfError> {
        self.counts.read_slot_into(slot, totals)
    }

    /// Whether a task counting in `slot` missed the cache since the last call (which clears
    /// the mark). After [`invalidate_caches`](Self::invalidate_caches), every task that keeps
    /// counting misses once more and marks its slot again, so a slot that is not marked has not
    /// counted since, except for the few calls already in flight at the invalidation.
    pub fn take_active(&self, slot: u32) -> Result<bool, BpfError> {
        self.counts.take_active(slot)
    }

    /// Invalidates every CPU's cached slots.
    pub fn invalidate_caches(&mut self) -> Result<(), BpfError> {
        // The marks taken before must be cleared before any CPU can see the new generation.
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        self.bump_generation()
    }

    /// Registers `cgroup` from user space (before it runs anything), so it has a slot even if
    /// the kernel would find the queue empty later. Returns its slot.
    pub fn reserve(&mut self, cgroup: u64) -> Result<u32, BpfError> {
        if let Ok(slot) = self.slots.get(&cgroup, 0) {
            return Ok(slot);
        }
        let slot = self.free.pop(0).map_err(map_err(MAP_FREE_SLOTS))?;
        self.slots
            .insert(cgroup, slot, 0)
            .map_err(map_err(MAP_CGROUP_SLOTS))?;
        Ok(slot)
    }

    /// Gives the slot of a removed cgroup back: unregisters it, invalidates the caches, reads
    /// its final counters, zeroes them and returns the slot to the free queue. Returns the final
    /// totals, which the caller folds like any other read.
    pub fn release(&mut self, cgroup: u64, slot: u32) -> Result<Totals, BpfError> {
        self.slots
            .remove(&cgroup)
            .map_err(map_err(MAP_CGROUP_SLOTS))?;
        self.bump_generation()?;
        let totals = self.read_slot(slot)?;
        self.counts.zero_slot(slot)?;
        self.free.push(slot, 0).map_err(map_err(MAP_FREE_SLOTS))?;
        Ok(totals)
    }

    /// Invalidates every CPU's cached slot.
    fn bump_generation(&mut self) -> Result<(), BpfError> {
        // Not atomic with the kernel's bumps, but any change of value invalidates the caches,
        // and a lost kernel bump only matters for a value the kernel then changes again.
        let current = self
            .generation
            .get(&0, 0)
            .map_err(map_err(MAP_GENERATION))?;
        self.generation
            .set(0, current.wrapping_add(1 << 32), 0)
            .map_err(map_err(MAP_GENERATION))
    }

    /// Changes the thread group that is not counted.
    pub fn set_skip_tgid(&mut self, tgid: u32) -> Result<(), BpfError> {
        self.config
            .set(
                0,
                Config {
                    skip_tgid: tgid,
                    cpus: self.counts.cpus,
                },
                0,
            )
            .map_err(map_err(MAP_CONFIG))?;
        self.bump_generation()
    }

    /// Run count and run time of each attached program (see [`ProgramStats`]).
    pub fn program_stats(&self) -> Result<Vec<ProgramStats>, BpfError> {
        let loaded: std::collections::HashMap<u32, (u64, std::time::Duration)> = loaded_programs()
            .flatten()
            .map(|info| (info.id(), (info.run_count(), info.run_time())))
            .collect();
        Ok(self
            .attached
            .iter()
            .filter_map(|(name, id)| {
                loaded.get(id).map(|(run_count, run_time)| ProgramStats {
                    program: name,
                    run_count: *run_count,
                    run_time: *run_time,
                })
            })
            .collect())
    }

    /// How many slots the kernel has handed out since loading: when it has not changed, neither
    /// has the slot table (user space changes it only through [`Self::reserve`] and
    /// [`Self::release`]).
    pub fn slots_allocated(&self) -> Result<u64, BpfError> {
        let values = self
            .stats
            .get(&STAT_SLOT_ALLOCATED, 0)
            .map_err(map_err(MAP_STATS))?;
        Ok(values.iter().fold(0u64, |sum, v| sum.wrapping_add(*v)))
    }

    /// The kernel-side counters.
    pub fn stats(&self) -> Result<KernelStats, BpfError> {
        let read = |index: u32| -> Result<u64, BpfError> {
            let values = self.stats.get(&index, 0).map_err(map_err(MAP_STATS))?;
            Ok(values.iter().fold(0u64, |sum, v| sum.wrapping_add(*v)))
        };
        debug_assert_eq!(STAT_COUNT, 5);
        Ok(KernelStats {
            cache_misses: read(STAT_CACHE_MISS)?,
            slots_allocated: read(STAT_SLOT_ALLOCATED)?,
            slot_exhausted: read(STAT_SLOT_EXHAUSTED)?,
            map_errors: read(STAT_MAP_ERROR)?,
            slot_races: read(STAT_SLOT_RACE)?,
        })
    }
}

/// The per-CPU stride of the counters: the highest possible CPU id plus one (what
/// `bpf_get_smp_processor_id` can return), from `/sys/devices/system/cpu/possible`.
fn cpu_stride() -> Result<u32, BpfError> {
    const POSSIBLE: &str = "/sys/devices/system/cpu/possible";
    let text = fs::read_to_string(POSSIBLE).map_err(BpfError::Cpus)?;
    parse_cpu_stride(&text).ok_or_else(|| {
        BpfError::Cpus(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{POSSIBLE}: cannot parse {:?}", text.trim()),
        ))
    })
}

/// `0-3` → 4, `0,2-5` → 6; `None` for anything else.
fn parse_cpu_stride(text: &str) -> Option<u32> {
    let mut highest = None;
    for range in text.trim().split(',') {
        let last = range.rsplit('-').next()?;
        let first = range.split('-').next()?;
        let (first, last) = (first.parse::<u32>().ok()?, last.parse::<u32>().ok()?);
        if first > last || range.split('-').count() > 2 {
            return None;
        }
        highest = Some(highest.map_or(last, |h: u32| h.max(last)));
    }
    highest?.checked_add(1)
}

/// Elements of the counters map for `capacity` cgroups plus the overflow slot on `cpus` CPUs.
/// A kernel array holds at most 4 GiB, so huge nodes need a smaller `--max-cgroups`.
fn counter_blocks(capacity: u32, cpus: u32) -> Result<u32, BpfError> {
    let block = std::mem::size_of::<SlotCounts>() as u64;
    let blocks = (u64::from(capacity) + 1) * u64::from(cpus);
    // The kernel refuses arrays whose size does not fit in 32 bits (minus a page).
    let limit = (u64::from(u32::MAX) - 65_536) / block;
    if blocks > limit {
        return Err(BpfError::Capacity {
            capacity,
            cpus,
            max: u32::try_from((limit / u64::from(cpus)).saturating_sub(1)).unwrap_or(u32::MAX),
        });
    }
    Ok(blocks as u32)
}

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
struct Counters {
    // Declared before the maps: unmapped before the maps' fds close.
    counts: Mapping,
    active: Mapping,
    /// Keep the maps alive.
    _maps: (Array<MapData, SlotCounts>, Array<MapData, u64>),
    /// Elements per slot: the CPU stride.
    cpus: u32,
    /// Slots in the maps (capacity + 1).
    slots: u32,
}

impl Counters {
    fn map(
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

    fn read_slot_into(
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
    fn zero_slot(&self, slot: u32) -> Result<(), BpfError> {
        let (first, len) = self.slot_range(slot)?;
        for i in 0..len {
            // SAFETY: in the mapping (see slot_range).
            unsafe { first.add(i).write_volatile(0) };
        }
        Ok(())
    }

    /// Whether `slot` was marked active, clearing the mark.
    fn take_active(&self, slot: u32) -> Result<bool, BpfError> {
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

/// A pin set ready for loading.
struct PinSet {
    dir: PathBuf,
    reuse: bool,
    lock: PinLock,
}

/// Picks the pin set for this ABI and capacity under `bpffs`: reused when a compatible one
/// exists, created otherwise. Sets of another ABI or capacity cannot be read by this agent and
/// are removed. Returns `None` (with a warning) when `bpffs` is not a bpf filesystem.
fn prepare_pin_set(
    bpffs: &Path,
    capacity: u32,
    counter_blocks: u32,
) -> Result<Option<PinSet>, BpfError> {
    if !is_bpffs(bpffs) {
        tracing::warn!(
            bpffs = %bpffs.display(),
            "not a bpf filesystem (mount -t bpf bpf /sys/fs/bpf): counters will not survive an agent restart"
        );
        return Ok(None);
    }
    let root = pin_root(bpffs);
    fs::create_dir_all(&root).map_err(|err| pin_err(&root, err))?;
    let name = format!("abi{ABI_VERSION}-slots{capacity}");
    let dir = root.join(&name);
    let root_lock = PinLock::take(&root)?;
    if let Ok(entries) = fs::read_dir(&root) {
        for entry in entries.flatten() {
            if entry.file_name() != name.as_str() {
                let removed = remove_pin_set(&entry.path())?;
                tracing::warn!(
                    set = %entry.path().display(),
                    pins = removed,
                    "removed pinned counters of another ABI or capacity (not readable by this agent)"
                );
            }
        }
    }
    fs::create_dir_all(&dir).map_err(|err| pin_err(&dir, err))?;
    let lock = PinLock::take(&dir)?;
    drop(root_lock);
    let reuse = pin_set_is_complete(&dir, counter_blocks);
    if !reuse {
        let removed = remove_pin_set(&dir)?;
        if removed > 0 {
            tracing::warn!(set = %dir.display(), pins = removed, "incomplete pin set removed");
        }
        fs::create_dir_all(&dir).map_err(|err| pin_err(&dir, err))?;
    }
    Ok(Some(PinSet { dir, reuse, lock }))
}

fn pin_set_is_complete(dir: &Path, counter_blocks: u32) -> bool {
    let maps_ok = ALL_MAPS
        .iter()
        .all(|map| MapInfo::from_pin(dir.join(map)).is_ok());
    let counts_ok = MapInfo::from_pin(dir.join(MAP_COUNTS)).is_ok_and(|info| {
        info.max_entries() == counter_blocks
            && info.value_size() as usize == std::mem::size_of::<SlotCounts>()
    });
    let links_ok = [PROG_CGROUP_ATTACH, PROG_TASK_EXIT, PROG_SYS_ENTER]
        .iter()
        .all(|name| dir.join(format!("link_{name}")).exists());
    maps_ok && counts_ok && links_ok
}

fn attach_cgroup_mkdir(ebpf: &mut Ebpf) -> Result<CgroupEvents, BpfError> {
    let ring =
        RingBuf::try_from(take(ebpf, MAP_CGROUP_EVENTS)?).map_err(map_err(MAP_CGROUP_EVENTS))?;
    load_raw_tracepoint(ebpf, PROG_CGROUP_MKDIR)?
        .attach("cgroup_mkdir")
        .map_err(program_err("attaching", PROG_CGROUP_MKDIR, load_hint()))?;
    Ok(CgroupEvents { ring })
}

/// Paths of created cgroups, as the kernel reports them (one per hierarchy on hybrid hosts).
pub struct CgroupEvents {
    ring: RingBuf<MapData>,
}

impl std::fmt::Debug for CgroupEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CgroupEvents").finish_non_exhaustive()
    }
}

impl CgroupEvents {
    /// Waits up to `timeout` for events (a blocking poll on the ring's fd).
    pub fn wait(&self, timeout: std::time::Duration) -> io::Result<()> {
        use std::os::fd::AsRawFd as _;
        let mut fd = libc::pollfd {
            fd: self.ring.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let millis = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd for the duration of the call.
        let rc = unsafe { libc::poll(&mut fd, 1, millis) };
        if rc < 0 {
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
        Ok(())
    }

    /// Hands every pending path to `each` (paths that are not UTF-8 are skipped: no runtime
    /// creates them, and the tree walk still finds them).
    pub fn drain(&mut self, mut each: impl FnMut(&str)) {
        while let Some(item) = self.ring.next() {
            if item.len() < std::mem::size_of::<CgroupEvent>() {
                continue;
            }
            let len = u32::from_ne_bytes([item[0], item[1], item[2], item[3]]) as usize;
            let path = &item[8..8 + len.min(CGROUP_PATH_MAX)];
            let path = path.split(|&b| b == 0).next().unwrap_or_default();
            if let Ok(path) = std::str::from_utf8(path) {
                each(path);
            }
        }
    }
}

/// The benchmark floor: only the empty `sys_enter` program, attached until dropped.
pub struct EmptyProbe {
    _ebpf: Ebpf,
    /// Kernel id of the attached program.
    program_id: u32,
}

impl std::fmt::Debug for EmptyProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmptyProbe").finish_non_exhaustive()
    }
}

impl EmptyProbe {
    /// Loads the object and attaches only [`PROG_SYS_ENTER_EMPTY`].
    pub fn attach() -> Result<Self, BpfError> {
        if PROGRAM.is_empty() {
            return Err(BpfError::NoProgram);
        }
        check_privileges()?;
        let mut ebpf = EbpfLoader::new()
            .load(PROGRAM)
            .map_err(|source| BpfError::Load {
                source: Box::new(source),
                hint: load_hint(),
            })?;
        let program = load_raw_tracepoint(&mut ebpf, PROG_SYS_ENTER_EMPTY)?;
        program.attach("sys_enter").map_err(program_err(
            "attaching",
            PROG_SYS_ENTER_EMPTY,
            load_hint(),
        ))?;
        let program_id = program.info().map(|info| info.id()).unwrap_or(0);
        Ok(Self {
            _ebpf: ebpf,
            program_id,
        })
    }

    /// Run count and run time of the empty program (see [`ProgramStats`]).
    pub fn program_stats(&self) -> Option<ProgramStats> {
        loaded_programs()
            .flatten()
            .find(|info| info.id() == self.program_id)
            .map(|info| ProgramStats {
                program: PROG_SYS_ENTER_EMPTY,
                run_count: info.run_count(),
                run_time: info.run_time(),
            })
    }
}

fn program_err(
    action: &'static str,
    program: &'static str,
    hint: String,
) -> impl FnOnce(ProgramError) -> BpfError {
    move |source| BpfError::Program {
        action,
        program,
        source: Box::new(source),
        hint,
    }
}

/// Finds raw tracepoint program `name` in the object and loads it (verification happens here).
fn load_raw_tracepoint<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut RawTracePoint, BpfError> {
    let program: &mut RawTracePoint = ebpf
        .program_mut(name)
        .ok_or(BpfError::MissingMap(name))?
        .try_into()
        .map_err(program_err("loading", name, String::new()))?;
    program
        .load()
        .map_err(program_err("loading", name, load_hint()))?;
    Ok(program)
}

fn take(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, BpfError> {
    ebpf.take_map(name).ok_or(BpfError::MissingMap(name))
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; newer ones ignore it.
fn raise_memlock_limit() {
    let limit = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain data passed by pointer for the duration of the call.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) };
    if rc != 0 {
        tracing::debug!(error = %io::Error::last_os_error(), "could not raise RLIMIT_MEMLOCK");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_stride_is_the_highest_possible_cpu_plus_one() {
        assert_eq!(parse_cpu_stride("0-3\n"), Some(4));
        assert_eq!(parse_cpu_stride("0"), Some(1));
        assert_eq!(parse_cpu_stride("0,2-5"), Some(6));
        assert_eq!(parse_cpu_stride("0-1,8"), Some(9));
        for bad in ["", "x", "3-1", "0-1-2", "0,", "-1"] {
            assert_eq!(parse_cpu_stride(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn counter_blocks_fit_one_kernel_array() {
        assert_eq!(counter_blocks(1024, 2).ok(), Some(2050));
        let Err(BpfError::Capacity { max, .. }) = counter_blocks(100_000, 512) else {
            panic!("100,000 cgroups on 512 CPUs do not fit in 4 GiB");
        };
        assert!(counter_blocks(max, 512).is_ok());
        assert!(counter_blocks(max + 1, 512).is_err());
    }
}
