//! Preflight checks that name what the host lacks (privileges, BTF), and the sizes the maps
//! get on this host (CPU stride, counter blocks).

use std::{fs, io, path::Path};

use recorder_ebpf::{FIRST_CGROUP_SLOT, SlotCounts};

use super::BpfError;

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

pub(super) fn load_hint() -> String {
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

/// The per-CPU stride of the counters: the highest possible CPU id plus one (what
/// `bpf_get_smp_processor_id` can return), from `/sys/devices/system/cpu/possible`.
pub(super) fn cpu_stride() -> Result<u32, BpfError> {
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
pub(super) fn counter_blocks(capacity: u32, cpus: u32) -> Result<u32, BpfError> {
    let block = std::mem::size_of::<SlotCounts>() as u64;
    let blocks = (u64::from(capacity) + u64::from(FIRST_CGROUP_SLOT)) * u64::from(cpus);
    // The kernel refuses arrays whose size does not fit in 32 bits (minus a page).
    let limit = (u64::from(u32::MAX) - 65_536) / block;
    if blocks > limit {
        return Err(BpfError::Capacity {
            capacity,
            cpus,
            max: u32::try_from(
                (limit / u64::from(cpus)).saturating_sub(u64::from(FIRST_CGROUP_SLOT)),
            )
            .unwrap_or(u32::MAX),
        });
    }
    Ok(blocks as u32)
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; newer ones ignore it.
pub(super) fn raise_memlock_limit() {
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
        assert_eq!(counter_blocks(1024, 2).ok(), Some(2054));
        let Err(BpfError::Capacity { max, .. }) = counter_blocks(100_000, 512) else {
            panic!("100,000 cgroups on 512 CPUs do not fit in 4 GiB");
        };
        assert!(counter_blocks(max, 512).is_ok());
        assert!(counter_blocks(max + 1, 512).is_err());
    }
}
