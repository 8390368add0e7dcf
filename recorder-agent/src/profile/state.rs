//! Persistence of learned profiles in `--state-dir`: a versioned JSON file written atomically
//! (temp file, fsync, rename, fsync of the directory). A file that cannot be read back — corrupt,
//! or written by a newer agent — is moved aside, never overwritten.

use std::{
    collections::BTreeMap,
    fs::{self, File},
    io::{self, Write as _},
    path::{Path, PathBuf},
    time::SystemTime,
};

use serde::{Deserialize, Serialize};

use crate::profile::{Identity, Profile, syscalls::Arch};

/// Version this agent writes and reads.
pub const STATE_VERSION: u32 = 1;
/// File name inside the state dir.
pub const STATE_FILE: &str = "profiles.json";

/// The kernel counters as far as the saved profiles include them. Saved with the profiles, it
/// lets an agent that finds its pinned counters after a restart (even after `kill -9`) add
/// exactly what was counted since the save: nothing lost, nothing twice.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelSnapshot {
    /// Kernel id of the counters map the totals were read from.
    pub counts_map_id: u32,
    /// Per slot: its cgroup, the identity it was attributed to, and its totals.
    pub slots: Vec<SavedSlot>,
    /// Totals of the overflow slot.
    #[serde(default)]
    pub overflow: BTreeMap<u16, u64>,
}

/// One slot of a [`KernelSnapshot`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedSlot {
    /// Slot index.
    pub slot: u32,
    /// Cgroup id holding it.
    pub cgroup: u64,
    /// What calls of the cgroup it counts (`recorder_ebpf::KIND_*` bits; 0: its own).
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub kind: u32,
    /// The exec session it counts, if any.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub session: u64,
    /// Identity its counts went to.
    pub identity: Option<Identity>,
    /// Non-zero totals by syscall number.
    pub totals: BTreeMap<u16, u64>,
}

fn is_zero_u32(value: &u32) -> bool {
    *value == 0
}

fn is_zero_u64(value: &u64) -> bool {
    *value == 0
}

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// I/O on a state path.
    #[error("{action} {path}")]
    Io {
        /// What was done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Serialising the state failed.
    #[error("encoding state")]
    Encode(#[from] serde_json::Error),
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StateError {
    let path = path.to_owned();
    move |source| StateError::Io {
        action,
        path,
        source,
    }
}

/// The file's content.
#[derive(Debug, Serialize, Deserialize)]
pub struct StateFile {
    /// Format version.
    pub version: u32,
    /// When it was written.
    #[serde(with = "crate::profile::rfc3339")]
    pub saved_at: SystemTime,
    /// Architecture of the node whose syscalls these are.
    pub arch: Arch,
    /// The profiles.
    pub profiles: Vec<Profile>,
    /// How far the profiles include the (pinned) kernel counters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<KernelSnapshot>,
}

#[derive(Deserialize)]
struct VersionOnly {
    version: u32,
}

/// What loading found.
#[derive(Debug)]
pub enum Loaded {
    /// No state yet.
    Empty,
    /// The saved profiles, and how far they include the kernel counters.
    Profiles(Vec<Profile>, Option<KernelSnapshot>),
    /// The file was unreadable and was moved to `aside`; the agent starts empty.
    MovedAside {
        /// Why.
        reason: ParseError,
        /// Where the old file is now.
        aside: PathBuf,
    },
}

/// Why a state file cannot be used by this agent.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// Written by a newer agent.
    #[error(
        "written by a newer agent (format version {version}, this agent reads {STATE_VERSION})"
    )]
    Newer {
        /// The file's format version.
        version: u32,
    },
    /// Not a state file.
    #[error("corrupt")]
    Corrupt(#[source] serde_json::Error),
}

/// Parses a state file's bytes; the error says why this agent cannot use them.
pub fn parse(bytes: &[u8]) -> Result<StateFile, ParseError> {
    match serde_json::from_slice::<VersionOnly>(bytes) {
        Ok(VersionOnly { version }) if version > STATE_VERSION => {
            Err(ParseError::Newer { version })
        }
        Ok(_) => serde_json::from_slice::<StateFile>(bytes).map_err(ParseError::Corrupt),
        Err(err) => Err(ParseError::Corrupt(err)),
    }
}

/// The state directory.
#[derive(Clone, Debug)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    /// A state dir at `dir` (created on first save).
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    /// The state file path.
    pub fn file(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    /// Reads the saved profiles; a file this agent cannot read is moved aside.
    pub fn load(&self) -> Result<Loaded, StateError> {
        let path = self.file();
        let text = match fs::read(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Loaded::Empty),
            Err(err) => return Err(io_err("reading", &path)(err)),
        };
        let reason = match parse(&text) {
            Ok(state) => return Ok(Loaded::Profiles(state.profiles, state.kernel)),
            Err(reason) => reason,
        };
        let stamp = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let aside = self.dir.join(format!("{STATE_FILE}.unreadable-{stamp}"));
        fs::rename(&path, &aside).map_err(io_err("moving aside", &path))?;
        Ok(Loaded::MovedAside { reason, aside })
    }

    /// Writes the profiles atomically.
    pub fn save(
        &self,
        arch: Arch,
        profiles: Vec<Profile>,
        kernel: Option<KernelSnapshot>,
    ) -> Result<(), StateError> {
        fs::create_dir_all(&self.dir).map_err(io_err("creating", &self.dir))?;
        let state = StateFile {
            version: STATE_VERSION,
            saved_at: SystemTime::now(),
            arch,
            profiles,
            kernel,
        };
        let bytes = serde_json::to_vec(&state)?;
        write_atomic(&self.file(), &bytes)
    }
}

/// Writes `bytes` to `path` so that readers see the old or the new content, never a mix:
/// a temp file in the same directory, fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = File::create(&tmp).map_err(io_err("creating", &tmp))?;
        file.write_all(bytes).map_err(io_err("writing", &tmp))?;
        file.sync_all().map_err(io_err("syncing", &tmp))?;
        fs::rename(&tmp, path).map_err(io_err("renaming to", path))?;
        if let Ok(dir) = File::open(dir) {
            // Best effort: some filesystems refuse fsync on directories.
            let _ = dir.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_missing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = StateDir::new(dir.path().join("nested"));
        assert!(matches!(state.load().expect("load"), Loaded::Empty));
        let mut profile =
            Profile::new(Identity::new("", "Cgroup", "x", ""), SystemTime::UNIX_EPOCH);
        profile.syscalls.insert("read".into(), 3);
        let kernel = KernelSnapshot {
            counts_map_id: 7,
            slots: Vec::new(),
            overflow: [(3u16, 9u64)].into_iter().collect(),
        };
        state
            .save(Arch::X86_64, vec![profile.clone()], Some(kernel.clone()))
            .expect("save");
        match state.load().expect("load") {
            Loaded::Profiles(profiles, saved) => {
                assert_eq!(profiles, [profile]);
                assert_eq!(saved, Some(kernel));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn corrupt_and_future_files_are_moved_aside() {
        for content in [
            &b"{not json"[..],
            br#"{"version": 99, "whatever": true}"#,
            br#"{"version":1}"#,
        ] {
            let dir = tempfile::tempdir().expect("tempdir");
            let state = StateDir::new(dir.path().to_owned());
            fs::write(state.file(), content).expect("write");
            match state.load().expect("load") {
                Loaded::MovedAside { aside, reason } => {
                    assert_eq!(fs::read(&aside).expect("kept"), content, "{reason}");
                    assert!(!state.file().exists());
                }
                other => panic!("{other:?}"),
            }
        }
    }
}
