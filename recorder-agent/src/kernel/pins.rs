//! Pin sets in the bpf filesystem: where the counters and links of a previous agent are found
//! (and locked, so two agents never share them), and how they are removed on uninstall.

use std::{
    fs, io,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
};

use aya::maps::MapInfo;
use recorder_ebpf::{
    ABI_VERSION, ALL_MAPS, MAP_COUNTS, PROG_CGROUP_ATTACH, PROG_SYS_ENTER, PROG_TASK_EXIT,
    SlotCounts,
};

use super::{BpfError, pin_err, pin_io};
use crate::report::Report;

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

/// Mounts a bpf filesystem at `path` (created if missing) unless one is there already.
/// Returns whether it mounted one. Needs CAP_SYS_ADMIN in the mount namespace's owner.
pub fn mount_bpffs(path: &Path) -> Result<bool, BpfError> {
    if is_bpffs(path) {
        return Ok(false);
    }
    fs::create_dir_all(path).map_err(pin_io("creating", path))?;
    let target = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| pin_err(path, "the path contains a NUL byte"))?;
    // SAFETY: NUL-terminated strings valid for the call; no data argument.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(BpfError::Mount {
            path: path.to_owned(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(true)
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
    fs::remove_dir(&root).map_err(pin_io("removing", &root))?;
    Ok(removed)
}

fn remove_pin_set(dir: &Path) -> Result<usize, BpfError> {
    let mut removed = 0;
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            fs::remove_file(entry.path()).map_err(pin_io("removing", &entry.path()))?;
            removed += 1;
        }
    }
    match fs::remove_dir(dir) {
        Ok(()) => Ok(removed),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(removed),
        Err(err) => Err(pin_io("removing", dir)(err)),
    }
}

/// An exclusive lock on a pin set: two agents sharing the same counters would each fold and
/// recycle the other's slots.
#[derive(Debug)]
pub(super) struct PinLock {
    _file: fs::File,
}

impl PinLock {
    fn take(dir: &Path) -> Result<Self, BpfError> {
        let file = fs::File::open(dir).map_err(pin_io("opening", dir))?;
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

/// A pin set ready for loading.
pub(super) struct PinSet {
    pub(super) dir: PathBuf,
    pub(super) reuse: bool,
    pub(super) lock: PinLock,
}

/// What pinning came to.
pub(super) enum Prepared {
    /// A pin set to load into.
    Pinned(PinSet),
    /// No bpf filesystem: the counters go with the agent. Why, in one line.
    Unpinned(String),
}

/// Picks the pin set for this ABI and capacity under `bpffs`: reused when a compatible one
/// exists, created otherwise. Sets of another ABI or capacity cannot be read by this agent and
/// are removed. When `bpffs` is not a bpf filesystem the agent mounts one there if it may, and
/// otherwise runs unpinned (with a warning and the reason).
pub(super) fn prepare_pin_set(
    bpffs: &Path,
    capacity: u32,
    counter_blocks: u32,
) -> Result<Prepared, BpfError> {
    match mount_bpffs(bpffs) {
        Ok(true) => {
            tracing::info!(bpffs = %bpffs.display(), "mounted a bpf filesystem for the pinned counters")
        }
        Ok(false) => {}
        Err(err) => {
            tracing::warn!(
                bpffs = %bpffs.display(),
                error = %Report(&err),
                "not a bpf filesystem and mounting one failed: counters will not survive an agent restart"
            );
            return Ok(Prepared::Unpinned(format!(
                "{} is not a bpf filesystem and mounting one failed: {}",
                bpffs.display(),
                Report(&err)
            )));
        }
    }
    let root = pin_root(bpffs);
    fs::create_dir_all(&root).map_err(pin_io("creating", &root))?;
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
    fs::create_dir_all(&dir).map_err(pin_io("creating", &dir))?;
    let lock = PinLock::take(&dir)?;
    drop(root_lock);
    let reuse = pin_set_is_complete(&dir, counter_blocks);
    if !reuse {
        let removed = remove_pin_set(&dir)?;
        if removed > 0 {
            tracing::warn!(set = %dir.display(), pins = removed, "incomplete pin set removed");
        }
        fs::create_dir_all(&dir).map_err(pin_io("creating", &dir))?;
    }
    Ok(Prepared::Pinned(PinSet { dir, reuse, lock }))
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
