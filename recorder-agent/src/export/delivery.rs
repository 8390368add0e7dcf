//! Delivery of learned profiles to the node's kubelet seccomp root (`run --seccomp-dir DIR`):
//! each profile becomes `DIR/syscall-recorder/<namespace>/<kind>/<workload>/<container>.json`
//! (OCI seccomp, `_` for an empty part, the kind lowercased), written atomically and only when
//! its syscall set changed. Owns the rule that keeps names from the cgroup tree or the API from
//! ever addressing a file outside `DIR`.
//!
//! In Kubernetes mode a workload container with a `SyscallProfile` object gets the cluster's
//! file: the merged (or frozen) set of every node, rendered the same way on every node of an
//! architecture, byte for byte, also where the workload never ran. Everything else, and
//! everything before the objects are listed, gets what this node learned.

use std::{
    collections::{HashMap, HashSet},
    fs,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::SystemTime,
};

use tracing::{debug, info, warn};

use crate::{
    attribution::kubernetes::counted_apart,
    export::Format,
    export::publish::{
        publishable,
        view::{ClusterProfile, ClusterView},
    },
    export::seccomp,
    profile::state::{self, StateError},
    profile::syscalls::Arch,
    profile::{Identity, Profile, SharedProfiles, WorkloadKind},
    report::Report,
};

/// Subdirectory of the seccomp root that the agent owns.
pub const SUBDIR: &str = "syscall-recorder";
/// Longest path component written (most filesystems allow 255 bytes; `.json` and the
/// temp-file prefix and suffix need room).
const MAX_PART: usize = 200;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The root could not be created.
    #[error("creating the seccomp dir {path}")]
    Root {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A profile's identity cannot be a path below the root.
    #[error("{identity}: {part} {value:?} is not a safe path component ({reason})")]
    UnsafeName {
        /// The identity (as `ns/kind/workload/container`).
        identity: String,
        /// Which part.
        part: &'static str,
        /// The part's value.
        value: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// Writing a profile failed.
    #[error("writing the profile of {identity}")]
    Write {
        /// The identity (as `ns/kind/workload/container`).
        identity: String,
        /// The cause.
        source: StateError,
    },
}

/// Checks one part: `_` stands for empty; anything else must be a DNS-1123-ish name
/// (ASCII letters, digits, `-`, `_`, `.`) that is not `.`/`..`-like and not hidden.
fn safe_part(
    identity: &Identity,
    part: &'static str,
    value: &str,
) -> Result<String, DeliveryError> {
    if value.is_empty() {
        return Ok("_".to_owned());
    }
    let refuse = |reason| DeliveryError::UnsafeName {
        identity: identity.to_string(),
        part,
        value: value.to_owned(),
        reason,
    };
    if value.contains('\0') {
        return Err(refuse("NUL"));
    }
    if value.contains('/') {
        return Err(refuse("contains /"));
    }
    if value.starts_with('.') {
        return Err(refuse("starts with a dot (., .. or a hidden file)"));
    }
    if value.len() > MAX_PART {
        return Err(refuse("too long"));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(refuse(
            "only ASCII letters, digits, '-', '_' and '.' are allowed",
        ));
    }
    Ok(value.to_owned())
}

/// The path of `identity`'s profile relative to the seccomp root (`syscall-recorder/...`),
/// which is also the pod's `localhostProfile`. Refuses any identity whose parts could name
/// something outside the root.
pub fn relative_path(identity: &Identity) -> Result<PathBuf, DeliveryError> {
    let namespace = safe_part(identity, "namespace", &identity.namespace)?;
    let kind = safe_part(
        identity,
        "workload kind",
        &identity.workload_kind.as_str().to_ascii_lowercase(),
    )?;
    let workload = safe_part(identity, "workload", &identity.workload)?;
    let container = safe_part(identity, "container", &identity.container)?;
    Ok([
        SUBDIR,
        &namespace,
        &kind,
        &workload,
        &format!("{container}.json"),
    ]
    .iter()
    .collect())
}

/// What was written last for one identity.
#[derive(Debug)]
struct Written {
    /// For a file from this node's profile: its `last_new_syscall` and number of names then.
    /// Unchanged means the set is unchanged (a profile only ever gains names), and checking
    /// costs nothing. `None` for a file from the cluster's profile: compared by fingerprint.
    learned: Option<(SystemTime, usize)>,
    /// Hash of the sorted names, for when the cheap check says "maybe".
    fingerprint: u64,
}

fn fingerprint(profile: &Profile) -> u64 {
    let names: Vec<&str> = profile.syscalls.keys().map(String::as_str).collect();
    seccomp::fnv1a64(&names)
}

/// What one delivery pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeliveryStats {
    /// Profiles written.
    pub written: usize,
    /// Identities refused (first time seen).
    pub rejected: usize,
    /// Writes that failed (retried next pass).
    pub failed: usize,
}

/// Writes profiles below `DIR/syscall-recorder/`, remembering what it wrote.
#[derive(Debug)]
pub struct Delivery {
    root: PathBuf,
    arch: Arch,
    written: HashMap<Identity, Written>,
    rejected: HashSet<Identity>,
    failing: HashSet<Identity>,
    counters: Arc<DeliveryCounters>,
    /// The cluster view's generation last delivered in full (`None`: deliver it next pass).
    cluster_generation: Option<u64>,
}

/// Totals since start, for metrics (shared with whoever exports them).
#[derive(Debug, Default)]
pub struct DeliveryCounters {
    /// Profile files written.
    pub written: AtomicU64,
    /// Identities refused because their names are unsafe as paths (each counted once).
    pub rejected: AtomicU64,
    /// Failed writes (each attempt).
    pub failed: AtomicU64,
}

impl Delivery {
    /// Delivery into the kubelet seccomp root `dir` (created if missing).
    pub fn new(dir: &Path, arch: Arch) -> Result<Self, DeliveryError> {
        let root = dir.join(SUBDIR);
        fs::create_dir_all(&root).map_err(|source| DeliveryError::Root {
            path: root.clone(),
            source,
        })?;
        Ok(Self {
            root: dir.to_owned(),
            arch,
            written: HashMap::new(),
            rejected: HashSet::new(),
            failing: HashSet::new(),
            counters: Arc::default(),
            cluster_generation: None,
        })
    }

    /// The totals, for metrics.
    pub fn counters(&self) -> Arc<DeliveryCounters> {
        Arc::clone(&self.counters)
    }

    /// Whether `profile` has to be (re)written: a container profile whose syscall set differs
    /// from what was written last.
    fn needs_write(&self, profile: &Profile) -> bool {
        let identity = &profile.identity;
        // Host cgroups are no container's profile: kubelet never asks for them. Nor does a pod
        // spec name a sandbox or a debugging session (ephemeral container) as a container
        // whose profile it enforces.
        let deliverable = !counted_apart(&identity.container)
            && match identity.workload_kind {
                WorkloadKind::Cgroup => false,
                WorkloadKind::Kubernetes(_)
                | WorkloadKind::Pod
                | WorkloadKind::Container
                | WorkloadKind::Command
                | WorkloadKind::Other(_) => true,
            };
        if !deliverable || self.rejected.contains(identity) {
            return false;
        }
        match self.written.get(identity) {
            None => true,
            Some(last) => {
                last.learned != Some((profile.last_new_syscall, profile.syscalls.len()))
                    && last.fingerprint != fingerprint(profile)
            }
        }
    }

    /// Writes every profile whose syscall set changed since it was last written: the
    /// cluster's profiles from `cluster` once it is synced, this node's own for every other
    /// identity. Profiles of kind `Cgroup` (host services, not containers) are not delivered:
    /// no pod can use them. The store is only read-locked to pick (and clone) the changed
    /// profiles, never during the file writes and their fsyncs.
    pub fn deliver(
        &mut self,
        store: &SharedProfiles,
        cluster: Option<&ClusterView>,
    ) -> DeliveryStats {
        let hold = cluster.is_some_and(ClusterView::holds_existing_files);
        let cluster = cluster.filter(|view| view.synced());
        let mut stats = DeliveryStats::default();
        if let Some(view) = cluster {
            self.deliver_cluster(view, &mut stats);
        }
        // The cluster's identities are looked up under one read of the view, not one per
        // profile.
        let pick = |owned: Option<&HashMap<Identity, ClusterProfile>>| -> Vec<Profile> {
            store
                .read()
                .values()
                .filter(|profile| {
                    !owned.is_some_and(|owned| owned.contains_key(&profile.identity))
                        && self.needs_write(profile)
                        && !(hold
                            && publishable(&profile.identity)
                            && self.file_exists(&profile.identity))
                })
                .cloned()
                .collect()
        };
        let changed = match cluster {
            Some(view) => view.with_profiles(|owned| pick(Some(owned))),
            None => pick(None),
        };
        for profile in &changed {
            let written = Written {
                learned: Some((profile.last_new_syscall, profile.syscalls.len())),
                fingerprint: fingerprint(profile),
            };
            let bytes = seccomp::render(Format::Oci, profile, self.arch);
            self.write_counted(&profile.identity, &bytes, written, &mut stats);
        }
        stats
    }

    /// Whether `identity`'s file is there (a previous run, or another node's merge).
    fn file_exists(&self, identity: &Identity) -> bool {
        relative_path(identity).is_ok_and(|path| self.root.join(path).exists())
    }

    /// Writes the cluster's profiles whose delivered set changed, when the view changed (or a
    /// write failed last time).
    fn deliver_cluster(&mut self, view: &ClusterView, stats: &mut DeliveryStats) {
        if self.cluster_generation == Some(view.generation()) {
            return;
        }
        let (generation, profiles) = view.snapshot();
        let failed_before = stats.failed;
        for (identity, profile) in profiles {
            // No node contributed (an object made by hand): no file rather than one that
            // denies everything.
            if self.rejected.contains(&identity) || profile.nodes == 0 {
                continue;
            }
            let names: Vec<&str> = profile.delivered.iter().map(String::as_str).collect();
            let fingerprint = seccomp::fnv1a64(&names);
            if self
                .written
                .get(&identity)
                .is_some_and(|last| last.fingerprint == fingerprint)
            {
                continue;
            }
            let written = Written {
                learned: None,
                fingerprint,
            };
            let bytes = render_names(&names, self.arch);
            self.write_counted(&identity, &bytes, written, stats);
        }
        self.cluster_generation = (stats.failed == failed_before).then_some(generation);
    }

    /// Writes one file and accounts for the outcome.
    fn write_counted(
        &mut self,
        identity: &Identity,
        bytes: &[u8],
        written: Written,
        stats: &mut DeliveryStats,
    ) {
        match self.write(identity, bytes, written) {
            Ok(true) => {
                stats.written += 1;
                self.counters.written.fetch_add(1, Ordering::Relaxed);
            }
            Ok(false) => {}
            Err(err @ DeliveryError::UnsafeName { .. }) => {
                warn!(error = %Report(&err), "not delivering a profile: its name cannot be a path below the seccomp dir");
                self.rejected.insert(identity.clone());
                self.counters.rejected.fetch_add(1, Ordering::Relaxed);
                stats.rejected += 1;
            }
            Err(err) => {
                // Logged once per identity until it works again; retried every pass.
                if self.failing.insert(identity.clone()) {
                    warn!(error = %Report(&err), "delivering a profile failed; retrying every collection");
                }
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                stats.failed += 1;
            }
        }
    }

    /// Writes one profile file unless it already holds exactly `bytes` (a restart); returns
    /// whether it wrote.
    fn write(
        &mut self,
        identity: &Identity,
        bytes: &[u8],
        written: Written,
    ) -> Result<bool, DeliveryError> {
        let path = self.root.join(relative_path(identity)?);
        let write_err = |source| DeliveryError::Write {
            identity: identity.to_string(),
            source,
        };
        let unchanged = fs::read(&path).is_ok_and(|existing| existing == bytes);
        if !unchanged {
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent).map_err(|source| {
                    write_err(StateError::Io {
                        action: "creating",
                        path: parent.to_owned(),
                        source,
                    })
                })?;
            }
            state::write_atomic(&path, bytes).map_err(write_err)?;
        }
        if self.failing.remove(identity) {
            info!(%identity, "delivering the profile works again");
        }
        debug!(%identity, path = %path.display(), unchanged, "delivered profile");
        self.written.insert(identity.clone(), written);
        Ok(!unchanged)
    }
}

/// The OCI profile of a delivered syscall set: the names with a number on `arch`, as
/// [`seccomp::oci_profile`] builds a learned profile's.
pub fn oci_of_names(names: &[&str], arch: Arch) -> seccomp::OciSeccomp {
    seccomp::oci_allow_list(
        names
            .iter()
            .copied()
            .filter(|name| arch.syscall_number(name).is_some()),
        arch,
    )
}

/// The OCI file of a syscall set, exactly as [`seccomp::render`] writes a profile with these
/// names (so the file does not change when a workload moves from local to cluster delivery).
pub fn render_names(names: &[&str], arch: Arch) -> Vec<u8> {
    let mut bytes = serde_json::to_vec_pretty(&oci_of_names(names, arch))
        .expect("an OCI profile always serialises to JSON");
    bytes.push(b'\n');
    bytes
}

#[cfg(test)]
mod tests {
    use std::{os::unix::fs::MetadataExt as _, time::Duration};

    use super::*;
    use crate::export::publish::Mode;

    fn store_with(identity: &Identity, nrs: &[usize], at: u64) -> SharedProfiles {
        let store = SharedProfiles::new();
        add(&store, identity, nrs, at);
        store
    }

    fn add(store: &SharedProfiles, identity: &Identity, nrs: &[usize], at: u64) {
        let mut deltas = vec![0u64; 512];
        for &nr in nrs {
            deltas[nr] = 1;
        }
        store.update(|store| {
            store.add_counts(
                identity,
                Arch::X86_64,
                &deltas,
                SystemTime::UNIX_EPOCH + Duration::from_secs(at),
            )
        });
    }

    #[test]
    fn paths_and_refusals() {
        assert_eq!(
            relative_path(&Identity::new("", "Pod", "8a1f-uid", "abc123")).expect("ok"),
            PathBuf::from("syscall-recorder/_/pod/8a1f-uid/abc123.json")
        );
        assert_eq!(
            relative_path(&Identity::new("team-a", "Deployment", "web", "")).expect("ok"),
            PathBuf::from("syscall-recorder/team-a/deployment/web/_.json")
        );
        for (identity, why) in [
            (Identity::new("..", "Pod", "w", "c"), "dot"),
            (Identity::new("ns", "Pod", "..", "c"), "dot"),
            (Identity::new("ns", "Pod", "w", ".hidden"), "dot"),
            (Identity::new("ns", "Pod", "a/../../etc", "c"), "/"),
            (Identity::new("ns", "Pod", "w", "c\0"), "NUL"),
            (Identity::new("ns", "Pod", "w", "sp ace"), "ASCII"),
            (Identity::new("ns", "Pod", "wé", "c"), "ASCII"),
            (Identity::new("ns", "Pod", &"x".repeat(300), "c"), "long"),
        ] {
            let err = relative_path(&identity).expect_err(why);
            assert!(err.to_string().contains(why), "{err}");
        }
    }

    #[test]
    fn writes_only_when_the_set_changes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let identity = Identity::new("", "Pod", "uid", "cid");
        let store = store_with(&identity, &[0, 1], 10);
        let mut delivery = Delivery::new(dir.path(), Arch::X86_64).expect("new");
        assert_eq!(delivery.deliver(&store, None).written, 1);
        let path = dir.path().join("syscall-recorder/_/pod/uid/cid.json");
        let first: seccomp::OciSeccomp =
            serde_json::from_slice(&fs::read(&path).expect("written")).expect("oci");
        assert_eq!(first.syscalls[0].names, ["read", "write"]);
        let inode = fs::metadata(&path).expect("meta").ino();
        // Same names again (more calls): nothing written.
        add(&store, &identity, &[0, 1], 20);
        assert_eq!(delivery.deliver(&store, None), DeliveryStats::default());
        assert_eq!(fs::metadata(&path).expect("meta").ino(), inode);
        // A new name: rewritten (a rename, so a new inode), no temp file left behind.
        add(&store, &identity, &[83], 30);
        assert_eq!(delivery.deliver(&store, None).written, 1);
        assert_ne!(fs::metadata(&path).expect("meta").ino(), inode);
        let names: Vec<_> = fs::read_dir(path.parent().expect("parent"))
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["cid.json"]);
        // A restarted agent finds the same content and does not rewrite it.
        let mut restarted = Delivery::new(dir.path(), Arch::X86_64).expect("new");
        assert_eq!(restarted.deliver(&store, None).written, 0);
    }

    fn cluster_profile(names: &[&str], frozen: bool) -> ClusterProfile {
        ClusterProfile {
            mode: if frozen { Mode::Frozen } else { Mode::Learning },
            delivered: names.iter().map(|n| (*n).to_owned()).collect(),
            nodes: 2,
            frozen: frozen.then(|| names.iter().map(|n| (*n).to_owned()).collect()),
            first_node: Some("node-a".to_owned()),
        }
    }

    #[test]
    fn the_cluster_profile_wins_and_renders_like_a_local_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let web = Identity::new("shop", "Deployment", "web", "app");
        let elsewhere = Identity::new("shop", "Deployment", "api", "app");
        // This node learned read+write for web; the cluster knows more, and knows api,
        // which never ran here.
        let store = store_with(&web, &[0, 1], 10);
        let view = ClusterView::default();
        let mut delivery = Delivery::new(dir.path(), Arch::X86_64).expect("new");
        // Not listed yet: the node's own profile.
        assert_eq!(delivery.deliver(&store, Some(&view)).written, 1);
        let web_path = dir
            .path()
            .join("syscall-recorder/shop/deployment/web/app.json");
        let own = fs::read(&web_path).expect("own");
        // Restarted, not listed yet: an existing file (perhaps the cluster's, wider) is kept.
        add(&store, &web, &[101], 12);
        let mut restarted = Delivery::new(dir.path(), Arch::X86_64).expect("new");
        let unlisted = ClusterView::default();
        assert_eq!(restarted.deliver(&store, Some(&unlisted)).written, 0);
        assert_eq!(fs::read(&web_path).expect("kept"), own);
        let store = store_with(&web, &[0, 1], 10);
        view.replace_all(HashMap::from([
            (
                web.clone(),
                cluster_profile(&["read", "write", "uname"], false),
            ),
            (
                elsewhere.clone(),
                cluster_profile(&["read", "write"], false),
            ),
        ]));
        assert_eq!(delivery.deliver(&store, Some(&view)).written, 2);
        let merged = fs::read(&web_path).expect("merged");
        assert_ne!(merged, own);
        // Byte for byte what a node that learned these names itself writes.
        let mut local = Profile::new(web.clone(), SystemTime::UNIX_EPOCH);
        for name in ["uname", "read", "write"] {
            local.syscalls.insert(name.to_owned(), 1);
        }
        assert_eq!(merged, seccomp::render(Format::Oci, &local, Arch::X86_64));
        let api = fs::read(
            dir.path()
                .join("syscall-recorder/shop/deployment/api/app.json"),
        )
        .expect("a workload that never ran here");
        assert_eq!(api, own, "same set, same bytes");
        // New local syscalls do not touch the cluster's file; an unchanged view writes nothing.
        add(&store, &web, &[101], 20);
        assert_eq!(
            delivery.deliver(&store, Some(&view)),
            DeliveryStats::default()
        );
        assert_eq!(fs::read(&web_path).expect("file"), merged);
        // Frozen at fewer names: the file follows the frozen set.
        view.upsert(web.clone(), cluster_profile(&["read", "write"], true));
        assert_eq!(delivery.deliver(&store, Some(&view)).written, 1);
        assert_eq!(fs::read(&web_path).expect("file"), own);
    }

    #[test]
    fn unsafe_and_host_cgroups_are_not_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store_with(&Identity::new("", "Pod", "..", "c"), &[0], 1);
        add(
            &store,
            &Identity::new("", "Cgroup", "system.slice/cron.service", ""),
            &[0],
            1,
        );
        // Counted apart, never enforced: a pod's sandbox and a debugging session.
        add(
            &store,
            &Identity::new("shop", "Deployment", "web", "(sandbox)"),
            &[0],
            1,
        );
        add(
            &store,
            &Identity::new("shop", "Deployment", "web", "ephemeral:debugger"),
            &[0],
            1,
        );
        let mut delivery = Delivery::new(dir.path(), Arch::X86_64).expect("new");
        let counters = delivery.counters();
        assert_eq!(delivery.deliver(&store, None).rejected, 1);
        // Counted once, not once per pass.
        assert_eq!(delivery.deliver(&store, None).rejected, 0);
        assert_eq!(counters.rejected.load(Ordering::Relaxed), 1);
        assert_eq!(counters.written.load(Ordering::Relaxed), 0);
        let entries: Vec<_> = fs::read_dir(dir.path().join(SUBDIR))
            .expect("dir")
            .collect();
        assert!(entries.is_empty(), "{entries:?}");
        assert!(!dir.path().join("c.json").exists());
    }
}
