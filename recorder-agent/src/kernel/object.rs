//! The compiled kernel object and what is taken out of it by name: programs (loaded, that is
//! verified, here) and maps.

use aya::{
    Ebpf,
    programs::{ProgramError, RawTracePoint},
};

use super::{BpfError, preflight::load_hint};

/// The kernel program, built by build.rs (empty when built with `RECORDER_SKIP_EBPF=1`).
pub(super) static PROGRAM: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/recorder-ebpf"));

pub(super) fn program_err(
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
pub(super) fn load_raw_tracepoint<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut RawTracePoint, BpfError> {
    let program: &mut RawTracePoint = ebpf
        .program_mut(name)
        .ok_or(BpfError::MissingProgram(name))?
        .try_into()
        .map_err(|_| BpfError::MissingProgram(name))?;
    program
        .load()
        .map_err(program_err("loading", name, load_hint()))?;
    Ok(program)
}

pub(super) fn take(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, BpfError> {
    ebpf.take_map(name).ok_or(BpfError::MissingMap(name))
}
