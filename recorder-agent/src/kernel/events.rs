//! Cgroup creation events: the paths the kernel reports at `cgroup_mkdir`, read from a ring
//! buffer, so a cgroup that lives shorter than a collection interval is still named.

use std::io;

use aya::{
    Ebpf,
    maps::{MapData, RingBuf},
};
use recorder_ebpf::{CGROUP_PATH_MAX, CgroupEvent, MAP_CGROUP_EVENTS, PROG_CGROUP_MKDIR};

use super::{
    BpfError, map_err,
    object::{load_raw_tracepoint, program_err, take},
    preflight::load_hint,
};

pub(super) fn attach_cgroup_mkdir(ebpf: &mut Ebpf) -> Result<CgroupEvents, BpfError> {
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
