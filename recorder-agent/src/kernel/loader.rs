//! The recorder's one loader: loads the object, sizes and pins the maps, attaches (or keeps)
//! the programs, and owns the maps the collection reads and writes through [`Recorder`].

use std::{fs, path::PathBuf};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, Queue},
    programs::{
        ProgramInfo,
        links::{FdLink, PinnedLink},
        loaded_programs,
    },
};
use recorder_ebpf::{
    ALL_MAPS, CAPACITY_MAPS, CgroupEvent, CgroupLayout, Config, ExecCommand, FIRST_CGROUP_SLOT,
    MAP_ACTIVE, MAP_CGROUP_PATHS, MAP_CGROUP_SLOTS, MAP_CONFIG, MAP_COUNTS, MAP_EXEC_COMMANDS,
    MAP_FREE_SLOTS, MAP_GENERATION, MAP_STATS, PROG_CGROUP_ATTACH, PROG_CGROUP_MKDIR,
    PROG_SYS_ENTER, PROG_TASK_EXEC, PROG_TASK_EXIT, PROG_TASK_FORK, STAT_CACHE_MISS, STAT_COUNT,
    STAT_MAP_ERROR, STAT_SLOT_ALLOCATED, STAT_SLOT_EXHAUSTED, STAT_SLOT_RACE, SYSCALL_COLUMNS,
    SlotKey, TaskLayout, cgroup_paths_entries,
};

use crate::report::Report;

use super::{
    BpfError, btf,
    events::{CgroupEvents, event_path},
    map_err,
    mapped::MappedCounters,
    object::{PROGRAM, load_raw_tracepoint, program_err, take},
    pin_err, pin_io,
    pins::{PinLock, PinSet, Prepared, prepare_pin_set},
    preflight::{check_privileges, counter_blocks, cpu_stride, load_hint, raise_memlock_limit},
    stats::{AttachedPrograms, KernelStats},
};

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

/// A process whose syscalls are not counted, named the way the kernel program can compare it
/// wherever the agent runs: its PID namespace and its thread-group id in that namespace (in a
/// pod the agent is pid 1 of its own namespace, which says nothing about host pids).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SkipTask {
    /// `st_dev` of the process's `/proc/<pid>/ns/pid`.
    pub pidns_dev: u64,
    /// `st_ino` of the process's `/proc/<pid>/ns/pid`.
    pub pidns_ino: u64,
    /// Its thread-group id in that namespace; 0 skips nothing.
    pub tgid: u32,
}

impl SkipTask {
    /// Skips nothing.
    pub const NONE: Self = Self {
        pidns_dev: 0,
        pidns_ino: 0,
        tgid: 0,
    };

    /// The calling process (the agent): `getpid` and the namespace it is a pid of.
    pub fn this_process() -> Result<Self, BpfError> {
        use std::os::unix::fs::MetadataExt as _;
        let path = "/proc/self/ns/pid";
        let meta = fs::metadata(path).map_err(BpfError::PidNamespace)?;
        Ok(Self {
            pidns_dev: meta.dev(),
            pidns_ino: meta.ino(),
            tgid: std::process::id(),
        })
    }

    /// `base` with this process skipped.
    fn config(self, base: Config) -> Config {
        Config {
            skip_pidns_dev: self.pidns_dev,
            skip_pidns_ino: self.pidns_ino,
            skip_tgid: self.tgid,
            ..base
        }
    }
}

/// How to load the recorder.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Number of cgroups that can be counted at once.
    pub capacity: u32,
    /// The process whose syscalls are not counted (the agent, [`SkipTask::this_process`]).
    pub skip: SkipTask,
    /// A bpf filesystem to pin maps and links in, so counting survives agent restarts.
    pub bpffs: Option<PathBuf>,
    /// Whether a container runtime's set-up is counted apart from the container's calls.
    pub cut_runtime: bool,
}

/// Counter totals of one slot, summed over CPUs.
pub type Totals = Box<[u64; SYSCALL_COLUMNS]>;

/// A loaded and attached recorder.
pub struct Recorder {
    // Keeps the programs and their links alive.
    _ebpf: Ebpf,
    counts: MappedCounters,
    slots: HashMap<MapData, SlotKey, u32>,
    exec_commands: HashMap<MapData, u64, ExecCommand>,
    free: Queue<MapData, u32>,
    generation: Array<MapData, u64>,
    config: Array<MapData, Config>,
    stats: PerCpuArray<MapData, u64>,
    /// Paths of cgroup v2 directories the kernel saw created (also while no agent ran).
    cgroup_paths: HashMap<MapData, u64, CgroupEvent>,
    /// The configuration but the skipped process.
    base_config: Config,
    capacity: u32,
    continuity: Continuity,
    /// Why the maps are not pinned, if they are not.
    unpinned: Option<String>,
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
        let (pin, unpinned) = match &options.bpffs {
            Some(bpffs) => match prepare_pin_set(bpffs, capacity, counter_blocks)? {
                Prepared::Pinned(pin) => (Some(pin), None),
                Prepared::Unpinned(reason) => (None, Some(reason)),
            },
            None => (None, Some("pinning is off (--no-pin)".to_owned())),
        };
        let mut loader = EbpfLoader::new();
        for map in CAPACITY_MAPS {
            let entries = match map {
                MAP_COUNTS => counter_blocks,
                MAP_ACTIVE => capacity + FIRST_CGROUP_SLOT,
                MAP_CGROUP_PATHS => cgroup_paths_entries(capacity),
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
        let counts = MappedCounters::map(
            Array::try_from(counts_map).map_err(map_err(MAP_COUNTS))?,
            Array::try_from(take(&mut ebpf, MAP_ACTIVE)?).map_err(map_err(MAP_ACTIVE))?,
            cpus,
            capacity + FIRST_CGROUP_SLOT,
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
        let cgroup_paths = HashMap::try_from(take(&mut ebpf, MAP_CGROUP_PATHS)?)
            .map_err(map_err(MAP_CGROUP_PATHS))?;
        let exec_commands = HashMap::try_from(take(&mut ebpf, MAP_EXEC_COMMANDS)?)
            .map_err(map_err(MAP_EXEC_COMMANDS))?;
        let layouts = btf::layouts();
        // Required: the counter reads the compat flag at a fixed place of the task.
        layouts.compat?;
        // Optional: without it every process counts as its cgroup's own (no set-up cut, no
        // exec sessions), as before phases existed.
        let task_layout = layouts.task.unwrap_or_else(|err| {
            tracing::warn!(error = %Report(&err), "process layout unknown; runtime set-up and exec sessions are counted as their containers' own");
            TaskLayout::default()
        });
        // Optional: without it, cgroups created and removed while no agent ran stay unnamed.
        let cgroup_layout = layouts.cgroup.unwrap_or_else(|err| {
            tracing::warn!(error = %Report(&err), "cgroup ids unknown at creation; cgroups removed while no agent runs may stay unresolved");
            CgroupLayout::default()
        });

        let reused_maps = pin.as_ref().is_some_and(|pin| pin.reuse);
        if !reused_maps {
            for slot in FIRST_CGROUP_SLOT..FIRST_CGROUP_SLOT + capacity {
                free.push(&slot, 0).map_err(map_err(MAP_FREE_SLOTS))?;
            }
        }
        let base_config = Config {
            cpus,
            cgroup_layout,
            task_layout,
            cut_runtime: u32::from(options.cut_runtime),
            ..Config::default()
        };
        let mut recorder_maps = (counts, slots, free, generation, config, stats);
        {
            let (_, _, _, generation, config, _) = &mut recorder_maps;
            // The previous agent's pid may now belong to anything: the new one is skipped instead.
            config
                .set(0, &options.skip.config(base_config), 0)
                .map_err(map_err(MAP_CONFIG))?;
            let current = generation.get(&0, 0).map_err(map_err(MAP_GENERATION))?;
            generation
                .set(0, &current.wrapping_add(1 << 32), 0)
                .map_err(map_err(MAP_GENERATION))?;
        }

        // Cache invalidation first, so the counter never runs without it.
        let mut reused_programs = true;
        let mut attached = Vec::new();
        for (name, tracepoint) in [
            (PROG_CGROUP_ATTACH, "cgroup_attach_task"),
            (PROG_TASK_EXIT, "sched_process_exit"),
            (PROG_TASK_FORK, "sched_process_fork"),
            (PROG_TASK_EXEC, "sched_process_exec"),
            (PROG_SYS_ENTER, "sys_enter"),
        ] {
            let (program_id, kept) =
                attach_or_keep(&mut ebpf, name, tracepoint, pin.as_ref(), reused_maps)?;
            reused_programs &= kept;
            attached.extend(program_id.map(|id| (name, id)));
        }
        // Optional: without it short-lived cgroups are learned only by the tree walk. Pinned
        // like the counter, so cgroups created while no agent runs keep their paths.
        let cgroup_events = CgroupEvents::take(&mut ebpf).and_then(|events| {
            attach_or_keep(
                &mut ebpf,
                PROG_CGROUP_MKDIR,
                "cgroup_mkdir",
                pin.as_ref(),
                reused_maps,
            )
            .map(|_| events)
        });
        let cgroup_events = match cgroup_events {
            Ok(events) => Some(events),
            Err(err) => {
                tracing::warn!(error = %Report(&err), "cgroup creation events unavailable; cgroups that live shorter than an interval may stay unresolved");
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
            cgroup_paths,
            exec_commands,
            base_config,
            capacity,
            continuity: Continuity {
                reused_maps,
                reused_programs: reused_maps && reused_programs,
                counts_map_id,
            },
            unpinned,
            _pin_lock: pin.map(|pin| pin.lock),
            attached,
        })
    }

    /// How this load relates to the previous agent run.
    pub fn continuity(&self) -> Continuity {
        self.continuity
    }

    /// Why the counters are not pinned (they go with this agent), or `None` when they are.
    pub fn unpinned_reason(&self) -> Option<&str> {
        self.unpinned.as_deref()
    }

    /// The stream of created cgroups' paths (once; `None` if the program could not attach).
    pub fn take_cgroup_events(&mut self) -> Option<CgroupEvents> {
        self.cgroup_events.take()
    }

    /// Number of cgroups that can be counted at once.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// The (key, slot) pairs the kernel has handed out.
    pub fn slots(&self) -> Result<Vec<(SlotKey, u32)>, BpfError> {
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
        let key = SlotKey {
            cgroup,
            ..SlotKey::default()
        };
        if let Ok(slot) = self.slots.get(&key, 0) {
            return Ok(slot);
        }
        let slot = self.free.pop(0).map_err(map_err(MAP_FREE_SLOTS))?;
        self.slots
            .insert(&key, &slot, 0)
            .map_err(map_err(MAP_CGROUP_SLOTS))?;
        Ok(slot)
    }

    /// The path the kernel saw `cgroup` created with (relative to the cgroup2 root, no leading
    /// `/`), if it was created while the `cgroup_mkdir` program was attached: the name of a
    /// cgroup that is gone before the agent could walk to it.
    pub fn cgroup_path(&self, cgroup: u64) -> Option<String> {
        let event = self.cgroup_paths.get(&cgroup, 0).ok()?;
        // SAFETY: `CgroupEvent` is plain `#[repr(C)]` data; its bytes are only read.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                std::ptr::from_ref(&event).cast::<u8>(),
                std::mem::size_of::<CgroupEvent>(),
            )
        };
        event_path(bytes).map(|path| path.trim_start_matches('/').to_owned())
    }

    /// The command line of exec session `session` (argv strings, NUL-separated), if the
    /// kernel still holds it.
    pub fn exec_command(&self, session: u64) -> Option<Vec<u8>> {
        let command = self.exec_commands.get(&session, 0).ok()?;
        let len = (command.len as usize).min(command.argv.len());
        Some(command.argv[..len].to_vec())
    }

    /// Gives the slot of a removed cgroup back: unregisters it, invalidates the caches, reads
    /// its final counters, zeroes them and returns the slot to the free queue. Returns the final
    /// totals, which the caller folds like any other read.
    pub fn release(&mut self, key: SlotKey, slot: u32) -> Result<Totals, BpfError> {
        let cgroup = key.cgroup;
        self.slots.remove(&key).map_err(map_err(MAP_CGROUP_SLOTS))?;
        self.bump_generation()?;
        let totals = self.read_slot(slot)?;
        self.counts.zero_slot(slot)?;
        self.free.push(&slot, 0).map_err(map_err(MAP_FREE_SLOTS))?;
        // Its name is no longer needed once its own calls' slot goes (the LRU would drop it
        // eventually anyway).
        if key.kind == 0 {
            let _ = self.cgroup_paths.remove(&cgroup);
        }
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
            .set(0, &current.wrapping_add(1 << 32), 0)
            .map_err(map_err(MAP_GENERATION))
    }

    /// Changes the process that is not counted.
    pub fn set_skip(&mut self, skip: SkipTask) -> Result<(), BpfError> {
        self.config
            .set(0, &skip.config(self.base_config), 0)
            .map_err(map_err(MAP_CONFIG))?;
        self.bump_generation()
    }

    /// The attached programs, whose run statistics can be read at any time (see
    /// [`AttachedPrograms::stats`]).
    pub fn attached_programs(&self) -> AttachedPrograms {
        AttachedPrograms(self.attached.clone())
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

/// Attaches program `name` to the raw tracepoint `tracepoint`, or keeps the identical program
/// a previous agent left attached (pinned). Returns the attached program's kernel id and
/// whether it was kept.
fn attach_or_keep(
    ebpf: &mut Ebpf,
    name: &'static str,
    tracepoint: &str,
    pin: Option<&PinSet>,
    reused_maps: bool,
) -> Result<(Option<u32>, bool), BpfError> {
    let program = load_raw_tracepoint(ebpf, name)?;
    let link_path = pin.map(|pin| pin.dir.join(format!("link_{name}")));
    // The attached program pinned beside its link: its tag is read from the pin, because
    // finding it by id (BPF_PROG_GET_NEXT_ID) takes CAP_SYS_ADMIN, which the DaemonSet's
    // agent (CAP_BPF, CAP_PERFMON) does not have.
    let prog_path = pin.map(|pin| pin.dir.join(format!("prog_{name}")));
    if let Some(link_path) = &link_path
        && let Ok(old) = PinnedLink::from_pin(link_path)
    {
        let old = FdLink::from(old);
        let new_tag = program.info().map(|info| info.tag()).ok();
        let old_tag = old.info().ok().and_then(|link| {
            prog_path
                .as_ref()
                .and_then(|path| ProgramInfo::from_pin(path).ok())
                .filter(|info| info.id() == link.program_id())
                .or_else(|| {
                    loaded_programs()
                        .flatten()
                        .find(|info| info.id() == link.program_id())
                })
                .map(|info| info.tag())
        });
        if reused_maps && new_tag.is_some() && new_tag == old_tag {
            // The same program stays attached (the pin holds it): no syscall is missed.
            return Ok((old.info().ok().map(|link| link.program_id()), true));
        }
        // An upgrade (or a program of maps that are gone): the old program goes first, so no
        // syscall is counted twice (the few calls between detach and attach are missed).
        fs::remove_file(link_path).map_err(pin_io("removing", link_path))?;
        drop(old);
    }
    if let Some(prog_path) = &prog_path
        && prog_path.exists()
    {
        fs::remove_file(prog_path).map_err(pin_io("removing", prog_path))?;
    }
    let program_id = program.info().ok().map(|info| info.id());
    let link_id =
        program
            .attach(tracepoint)
            .map_err(program_err("attaching", name, load_hint()))?;
    if let (Some(link_path), Some(prog_path)) = (&link_path, &prog_path) {
        program
            .pin(prog_path)
            .map_err(|err| pin_err(prog_path, err))?;
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
    Ok((program_id, false))
}
