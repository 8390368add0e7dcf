//! Kernel access: loading, attaching and pinning the programs, the mapped counters, kernel
//! statistics, cgroup creation events and the preflight checks that name what the host lacks.
//! The only module that touches aya; the ABI it shares with the kernel program is
//! `recorder_ebpf`.

mod btf;
mod events;
mod loader;
mod mapped;
mod object;
mod pins;
mod preflight;
mod probe;
mod stats;

use std::{
    io,
    path::{Path, PathBuf},
};

use aya::{maps::MapError, programs::ProgramError};

pub use events::CgroupEvents;
pub use loader::{Continuity, LoadOptions, Recorder, SkipTask, Totals};
pub use pins::{is_bpffs, mount_bpffs, pin_root, unpin_all};
pub use preflight::{check_privileges, kernel_has_btf};
pub use probe::EmptyProbe;
pub use stats::{AttachedPrograms, KernelStats, ProgramStats, bpf_stats_enabled};

/// Errors of kernel access, each naming what is missing or what failed.
#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    /// The agent was built without the kernel program.
    #[error(
        "this agent was built with RECORDER_SKIP_EBPF=1 and has no eBPF program; rebuild \
         without it (`cargo xtask setup` installs what the build needs)"
    )]
    NoProgram,
    /// The kernel's task layout is not the one the program was built for.
    #[error("kernel layout")]
    Layout(#[from] btf::BtfError),
    /// Missing privileges.
    #[error("missing privilege: {0}")]
    Privilege(String),
    /// Loading the object or creating the maps failed.
    #[error("loading the eBPF program failed{hint}")]
    Load {
        /// The cause.
        #[source]
        source: Box<aya::EbpfError>,
        /// What is probably missing.
        hint: String,
    },
    /// A program failed verification or attach.
    #[error("{action} program {program}{hint}")]
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
    /// A program is missing from the object, or is not of the expected type (an ABI mismatch).
    #[error("program {0} missing from the eBPF object")]
    MissingProgram(&'static str),
    /// A map operation failed.
    #[error("map {map}")]
    Map {
        /// Map name.
        map: &'static str,
        /// The cause.
        #[source]
        source: Box<MapError>,
    },
    /// The agent's PID namespace could not be read (it names the agent to the kernel program).
    #[error("reading the agent's PID namespace (/proc/self/ns/pid)")]
    PidNamespace(#[source] io::Error),
    /// The number of CPUs could not be read.
    #[error("reading the possible CPUs")]
    Cpus(#[source] io::Error),
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
        /// What went wrong (the pin set's own state, no underlying error).
        reason: String,
    },
    /// Mounting a bpf filesystem failed.
    #[error("mounting a bpf filesystem at {path}")]
    Mount {
        /// The mount point.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A file operation on the pins failed.
    #[error("{action} pin {path}")]
    PinIo {
        /// What was done.
        action: &'static str,
        /// The pin or pin directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// A file operation on `path` (a pin or pin directory) failed.
pub(crate) fn pin_io(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> BpfError {
    let path = path.to_owned();
    move |source| BpfError::PinIo {
        action,
        path,
        source,
    }
}

/// The pin set at `path` is not as expected (`reason` says how).
pub(crate) fn pin_err(path: &Path, reason: impl std::fmt::Display) -> BpfError {
    BpfError::Pin {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

pub(crate) fn map_err(map: &'static str) -> impl FnOnce(MapError) -> BpfError {
    move |source| BpfError::Map {
        map,
        source: Box::new(source),
    }
}
