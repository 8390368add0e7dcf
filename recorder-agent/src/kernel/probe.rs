//! The benchmark's floor: the empty `sys_enter` program alone.

use aya::{Ebpf, EbpfLoader};
use recorder_ebpf::PROG_SYS_ENTER_EMPTY;

use super::{
    BpfError,
    object::{PROGRAM, load_raw_tracepoint, program_err},
    preflight::{check_privileges, load_hint},
    stats::{AttachedPrograms, ProgramStats},
};

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
        AttachedPrograms(vec![(PROG_SYS_ENTER_EMPTY, self.program_id)])
            .stats()
            .pop()
    }
}
