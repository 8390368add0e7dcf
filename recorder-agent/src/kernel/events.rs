//! Cgroup creation events: the paths the kernel reports at `cgroup_mkdir`, read from a ring
//! buffer, so a cgroup that lives shorter than a collection interval is still named.

use std::io;

use aya::{
    Ebpf,
    maps::{MapData, RingBuf},
};
use recorder_ebpf::{CGROUP_PATH_MAX, CgroupEvent, MAP_CGROUP_EVENTS};

use super::{BpfError, map_err, object::take};

impl CgroupEvents {
    /// The events ring of the loaded object (taken out of it).
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Self, BpfError> {
        let ring = RingBuf::try_from(take(ebpf, MAP_CGROUP_EVENTS)?)
            .map_err(map_err(MAP_CGROUP_EVENTS))?;
        Ok(Self { ring })
    }
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
            if let Some(path) = event_path(&item) {
                each(path);
            }
        }
    }
}

/// The path of a [`CgroupEvent`] given as its bytes, if it is UTF-8.
pub(super) fn event_path(event: &[u8]) -> Option<&str> {
    let len = u32::from_ne_bytes(event.get(..4)?.try_into().ok()?) as usize;
    let path = event.get(8..8 + len.min(CGROUP_PATH_MAX))?;
    let path = path.split(|&b| b == 0).next().unwrap_or_default();
    std::str::from_utf8(path).ok()
}
