//! Cgroups: where cgroup v2 is mounted, what a cgroup path says about the container in it (a
//! pure parser), and which path a cgroup id has (a resolver that walks the cgroup2 tree).
//!
//! A cgroup2 id is the inode number of its directory; a recreated directory gets a new id.

use std::{
    collections::HashMap,
    fs, io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// mountinfo could not be read.
    #[error("reading {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// No cgroup2 mount: a pure cgroup v1 host.
    #[error(
        "no cgroup v2 hierarchy is mounted (pure cgroup v1 host?): the recorder attributes \
         syscalls by cgroup v2 id; boot with systemd.unified_cgroup_hierarchy=1 (or mount cgroup2, \
         e.g. `mount -t cgroup2 none /sys/fs/cgroup/unified`) and retry"
    )]
    NoCgroup2,
    /// The given root is not a cgroup2 directory.
    #[error(
        "{path} is not a cgroup v2 directory (use the cgroup2 mount point, see /proc/self/mountinfo)"
    )]
    NotCgroup2 {
        /// The path given.
        path: PathBuf,
    },
}

/// `CGROUP2_SUPER_MAGIC` from linux/magic.h.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// Finds the cgroup2 mount point in a mountinfo text (`/proc/self/mountinfo` format). The
/// first cgroup2 mount wins; mount points with escaped characters (`\040`) are decoded.
pub fn cgroup2_mount_from_mountinfo(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // Fields: id parent major:minor root mount-point options [optional...] - fstype source super
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        if fstype != "cgroup2" {
            return None;
        }
        let mount_point = left.split_whitespace().nth(4)?;
        Some(PathBuf::from(unescape_mountinfo(mount_point)))
    })
}

fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..=i + 3]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let value =
                (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(value);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup2 directory to resolve ids against, from `--cgroup-root` or mountinfo. A given
/// root may be the cgroup2 mount itself or, as when a DaemonSet mounts a hybrid host's
/// `/sys/fs/cgroup`, a directory whose `unified` child is the cgroup2 mount.
pub fn cgroup2_root(given: Option<&Path>) -> Result<PathBuf, CgroupError> {
    let Some(given) = given else {
        let root = find_cgroup2_mount()?;
        check_cgroup2_dir(&root)?;
        return Ok(root);
    };
    match check_cgroup2_dir(given) {
        Ok(()) => Ok(given.to_owned()),
        Err(err) => {
            let unified = given.join("unified");
            if check_cgroup2_dir(&unified).is_ok() {
                Ok(unified)
            } else {
                Err(err)
            }
        }
    }
}

/// Whether the cgroup2 hierarchy at `root` has no child cgroup at all: on a cgroup v1 host
/// (with cgroup2 mounted but unused) every task sits in the v2 root and cannot be told apart.
pub fn has_no_child_cgroups(root: &Path) -> bool {
    fs::read_dir(root).is_ok_and(|entries| {
        !entries
            .flatten()
            .any(|entry| entry.file_type().is_ok_and(|t| t.is_dir()))
    })
}

/// The cgroup2 mount of this process's mount namespace.
pub fn find_cgroup2_mount() -> Result<PathBuf, CgroupError> {
    let path = PathBuf::from("/proc/self/mountinfo");
    let text = fs::read_to_string(&path).map_err(|source| CgroupError::Read { path, source })?;
    cgroup2_mount_from_mountinfo(&text).ok_or(CgroupError::NoCgroup2)
}

/// Checks that `path` is a cgroup2 directory (statfs magic), so a wrong `--cgroup-root` is
/// caught at start-up instead of silently resolving nothing.
pub fn check_cgroup2_dir(path: &Path) -> Result<(), CgroupError> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| {
        CgroupError::NotCgroup2 {
            path: path.to_owned(),
        }
    })?;
    // SAFETY: statfs is plain data; the buffer is zeroed and the path is NUL-terminated.
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers for the duration of the call.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &mut buf) };
    #[expect(
        clippy::useless_conversion,
        reason = "f_type is i64 on x86_64 but not everywhere"
    )]
    if rc != 0 || i64::from(buf.f_type) != CGROUP2_SUPER_MAGIC {
        return Err(CgroupError::NotCgroup2 {
            path: path.to_owned(),
        });
    }
    Ok(())
}

/// The container runtime a cgroup path names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    /// containerd (`cri-containerd-<id>.scope`, or a bare id under a kubelet pod).
    Containerd,
    /// CRI-O (`crio-<id>`).
    Crio,
    /// Docker or cri-dockerd (`docker-<id>.scope`, `/docker/<id>`).
    Docker,
    /// Podman (`libpod-<id>`).
    Podman,
    /// A bare 64-hex id: runc, or a runtime that does not prefix ids.
    Unknown,
}

/// What a cgroup path is, as far as the path alone can tell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CgroupKind {
    /// A container of a kubelet pod. `container_id` is empty for the pod-level cgroup itself.
    PodContainer {
        /// The pod UID with dashes (static pods: the 32-hex config hash).
        pod_uid: String,
        /// 64 lowercase hex digits, or empty.
        container_id: String,
        /// The runtime the path names.
        runtime: Runtime,
    },
    /// A container outside Kubernetes (docker, podman, runc, ...).
    Container {
        /// 64 lowercase hex digits.
        container_id: String,
        /// The runtime the path names.
        runtime: Runtime,
    },
    /// A runtime helper, not a workload: conmon scopes.
    RuntimeHelper,
    /// Anything else (system services, user sessions, the root).
    Other,
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn is_pod_uid(s: &str) -> bool {
    // A UUID (8-4-4-4-12 hex) or, for static pods, a 32-hex config hash.
    let hex = |part: &str| part.bytes().all(|b| b.is_ascii_hexdigit());
    if s.len() == 32 {
        return hex(s);
    }
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && parts.iter().map(|p| p.len()).eq([8, 4, 4, 4, 12])
        && parts.iter().all(|p| hex(p))
}

/// The pod UID a path segment names, for both cgroup drivers:
/// `pod<uid>` (cgroupfs) and `kubepods[-<qos>]-pod<uid_>.slice` (systemd, `-` escaped to `_`).
fn pod_uid_of_segment(segment: &str) -> Option<String> {
    if let Some(uid) = segment.strip_prefix("pod")
        && is_pod_uid(uid)
    {
        return Some(uid.to_ascii_lowercase());
    }
    let slice = segment.strip_suffix(".slice")?;
    let (prefix, escaped) = slice.rsplit_once("-pod")?;
    if !prefix.split('-').any(|part| part == "kubepods") {
        return None;
    }
    let uid = escaped.replace('_', "-");
    is_pod_uid(&uid).then(|| uid.to_ascii_lowercase())
}

/// The container a path segment names, if any: `(id, runtime, is_helper)`.
fn container_of_segment(segment: &str) -> Option<(String, Runtime, bool)> {
    let base = segment.strip_suffix(".scope").unwrap_or(segment);
    for (prefix, runtime, helper) in [
        ("cri-containerd-", Runtime::Containerd, false),
        ("crio-conmon-", Runtime::Crio, true),
        ("crio-", Runtime::Crio, false),
        ("docker-", Runtime::Docker, false),
        ("libpod-conmon-", Runtime::Podman, true),
        ("libpod-", Runtime::Podman, false),
    ] {
        if let Some(id) = base.strip_prefix(prefix)
            && is_hex64(id)
        {
            return Some((id.to_owned(), runtime, helper));
        }
    }
    is_hex64(segment).then(|| (segment.to_owned(), Runtime::Unknown, false))
}

/// Classifies a cgroup path (relative to the hierarchy root, with or without a leading `/`).
///
/// Covers the layouts of kubelet with containerd, CRI-O and cri-dockerd under the systemd and
/// cgroupfs drivers (all QoS classes, static pods), kind-style nesting, the cgroup v1 systemd
/// `slice:runtime:id` form, crun's `container` sub-cgroup, docker and podman (rootful and
/// rootless). Never panics; anything unrecognised is [`CgroupKind::Other`].
pub fn classify(path: &str) -> CgroupKind {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();

    // Kubernetes first: a kind node runs inside a docker scope, and the pod inside it wins.
    let mut seen_kubepods = false;
    for (i, segment) in segments.iter().enumerate() {
        // cgroup v1 + systemd: `kubepods-burstable-pod<uid_>.slice:cri-containerd:<id>`.
        if let Some((slice, rest)) = segment.split_once(':')
            && let Some(pod_uid) = pod_uid_of_segment(slice)
        {
            let (runtime_name, id) = rest.split_once(':').unwrap_or(("", rest));
            if !is_hex64(id) {
                return CgroupKind::Other;
            }
            let runtime = match runtime_name {
                "cri-containerd" => Runtime::Containerd,
                "crio" => Runtime::Crio,
                "docker" => Runtime::Docker,
                _ => Runtime::Unknown,
            };
            return CgroupKind::PodContainer {
                pod_uid,
                container_id: id.to_owned(),
                runtime,
            };
        }
        if segment.contains("kubepods") && !segment.contains("-pod") {
            seen_kubepods = true;
            continue;
        }
        let Some(pod_uid) = pod_uid_of_segment(segment) else {
            continue;
        };
        // A cgroupfs `pod<uid>` needs a kubepods ancestor; a systemd pod slice names itself.
        if segment.starts_with("pod") && !seen_kubepods {
            continue;
        }
        return match segments
            .get(i + 1)
            .and_then(|next| container_of_segment(next))
        {
            Some((_, _, true)) => CgroupKind::RuntimeHelper,
            Some((container_id, runtime, false)) => CgroupKind::PodContainer {
                pod_uid,
                container_id,
                runtime: if runtime == Runtime::Unknown {
                    // A bare id under a kubelet pod is containerd's (or cri-dockerd's) cgroupfs layout.
                    Runtime::Containerd
                } else {
                    runtime
                },
            },
            None if segments.len() == i + 1 => CgroupKind::PodContainer {
                pod_uid,
                container_id: String::new(),
                runtime: Runtime::Unknown,
            },
            // Something else under the pod (not a container cgroup we know): keep it apart.
            None => CgroupKind::Other,
        };
    }

    // Not Kubernetes: the innermost container segment names the container; crun's
    // `container` child and deeper sub-cgroups belong to it.
    let mut found = None;
    for segment in &segments {
        if let Some(hit) = container_of_segment(segment) {
            found = Some(hit);
        }
    }
    match found {
        Some((_, _, true)) => CgroupKind::RuntimeHelper,
        Some((container_id, runtime, false)) => CgroupKind::Container {
            container_id,
            runtime,
        },
        None => CgroupKind::Other,
    }
}

/// Resolves cgroup ids to paths relative to the cgroup2 root by walking the tree. Lookups of
/// ids seen before are map hits; an unknown id triggers at most one rescan per call of
/// [`Resolver::begin_round`], so a burst of unknown ids costs one walk.
#[derive(Debug)]
pub struct Resolver {
    root: PathBuf,
    paths: HashMap<u64, String>,
    rescanned: bool,
}

impl Resolver {
    /// A resolver for the cgroup2 hierarchy mounted at `root`.
    pub fn new(root: PathBuf) -> Self {
        Self {
            root,
            paths: HashMap::new(),
            rescanned: false,
        }
    }

    /// Allows one more rescan (call once per collection).
    pub fn begin_round(&mut self) {
        self.rescanned = false;
    }

    /// Records a path learned elsewhere (e.g. a cgroup the agent created).
    pub fn insert(&mut self, id: u64, path: String) {
        self.paths.insert(id, path);
    }

    /// The path of cgroup `id` (`""` for the root), if it exists or was seen before.
    pub fn resolve(&mut self, id: u64) -> Option<&str> {
        if !self.paths.contains_key(&id) && !self.rescanned {
            self.rescan();
        }
        self.paths.get(&id).map(String::as_str)
    }

    /// Whether the directory of a known id is gone (the cgroup was removed).
    pub fn is_removed(&self, id: u64) -> bool {
        match self.paths.get(&id) {
            Some(path) => match fs::metadata(self.root.join(path)) {
                Ok(meta) => meta.ino() != id,
                Err(_) => true,
            },
            None => true,
        }
    }

    /// Forgets an id (after its cgroup was removed and its counts folded).
    pub fn forget(&mut self, id: u64) {
        self.paths.remove(&id);
    }

    fn rescan(&mut self) {
        self.rescanned = true;
        let mut stack = vec![(self.root.clone(), String::new())];
        while let Some((dir, rel)) = stack.pop() {
            let Ok(meta) = fs::metadata(&dir) else {
                continue;
            };
            self.paths.insert(meta.ino(), rel.clone());
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                // Cgroup directories are never symlinks; skip files without a stat.
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    let child_rel = if rel.is_empty() {
                        name
                    } else {
                        format!("{rel}/{name}")
                    };
                    stack.push((entry.path(), child_rel));
                }
            }
        }
    }
}

/// The cgroup2 id (inode) of a directory.
pub fn cgroup_id(path: &Path) -> io::Result<u64> {
    fs::metadata(path).map(|meta| meta.ino())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const UID: &str = "8a1f0c4e-1b2c-4d3e-9f00-123456789abc";
    const UID_: &str = "8a1f0c4e_1b2c_4d3e_9f00_123456789abc";

    fn pod(runtime: Runtime) -> CgroupKind {
        CgroupKind::PodContainer {
            pod_uid: UID.into(),
            container_id: ID.into(),
            runtime,
        }
    }

    #[test]
    fn mountinfo_hybrid_and_unified() {
        let hybrid = "\
25 30 0:22 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
27 25 0:24 / /sys/fs/cgroup/systemd rw shared:11 - cgroup cgroup rw,xattr,name=systemd
";
        assert_eq!(
            cgroup2_mount_from_mountinfo(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified = "35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n";
        assert_eq!(
            cgroup2_mount_from_mountinfo(unified),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        let v1_only = "27 25 0:24 / /sys/fs/cgroup/memory rw shared:11 - cgroup cgroup rw,memory\n";
        assert_eq!(cgroup2_mount_from_mountinfo(v1_only), None);
        let escaped = "40 1 0:40 / /mnt/cg\\040two rw - cgroup2 none rw\n";
        assert_eq!(
            cgroup2_mount_from_mountinfo(escaped),
            Some(PathBuf::from("/mnt/cg two"))
        );
        assert_eq!(cgroup2_mount_from_mountinfo("garbage\n\n - \n1 2 3"), None);
    }

    #[test]
    fn kubelet_paths() {
        let cases = [
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope"
                ),
                pod(Runtime::Containerd),
            ),
            (
                format!("/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope"),
                pod(Runtime::Containerd),
            ),
            (
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/crio-{ID}.scope"
                ),
                pod(Runtime::Crio),
            ),
            (
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/docker-{ID}.scope"
                ),
                pod(Runtime::Docker),
            ),
            (
                format!("/kubepods/burstable/pod{UID}/{ID}"),
                pod(Runtime::Containerd),
            ),
            (format!("/kubepods/pod{UID}/{ID}"), pod(Runtime::Containerd)),
            (
                format!("kubepods/besteffort/pod{UID}/{ID}"),
                pod(Runtime::Containerd),
            ),
            (
                format!("/kubepods/besteffort/pod{UID}/crio-{ID}"),
                pod(Runtime::Crio),
            ),
            (
                format!(
                    "/system.slice/containerd.service/kubepods-burstable-pod{UID_}.slice:cri-containerd:{ID}"
                ),
                pod(Runtime::Containerd),
            ),
            (
                format!(
                    "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{ID}.scope"
                ),
                pod(Runtime::Containerd),
            ),
            (
                format!(
                    "/system.slice/docker-{}.scope/kubelet/kubepods/burstable/pod{UID}/{ID}",
                    "f".repeat(64)
                ),
                pod(Runtime::Containerd),
            ),
            (
                format!("/kubepods/burstable/pod{UID}/{ID}/container"),
                pod(Runtime::Containerd),
            ),
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-{ID}.scope/container"
                ),
                pod(Runtime::Crio),
            ),
        ];
        for (path, want) in cases {
            assert_eq!(classify(&path), want, "{path}");
        }
    }

    #[test]
    fn static_pods_pod_level_and_helpers() {
        let hash = "0f1e2d3c4b5a69788796a5b4c3d2e1f0";
        assert_eq!(
            classify(&format!("/kubepods/burstable/pod{hash}/{ID}")),
            CgroupKind::PodContainer {
                pod_uid: hash.into(),
                container_id: ID.into(),
                runtime: Runtime::Containerd
            }
        );
        assert_eq!(
            classify(&format!("/kubepods/burstable/pod{UID}")),
            CgroupKind::PodContainer {
                pod_uid: UID.into(),
                container_id: String::new(),
                runtime: Runtime::Unknown
            }
        );
        assert_eq!(
            classify(&format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/crio-conmon-{ID}.scope"
            )),
            CgroupKind::RuntimeHelper
        );
        assert_eq!(
            classify(&format!("/machine.slice/libpod-conmon-{ID}.scope")),
            CgroupKind::RuntimeHelper
        );
    }

    #[test]
    fn other_runtimes() {
        let container = |runtime| CgroupKind::Container {
            container_id: ID.into(),
            runtime,
        };
        for (path, want) in [
            (
                format!("/system.slice/docker-{ID}.scope"),
                container(Runtime::Docker),
            ),
            (format!("/docker/{ID}"), container(Runtime::Unknown)),
            (
                format!("/machine.slice/libpod-{ID}.scope"),
                container(Runtime::Podman),
            ),
            (
                format!("/machine.slice/libpod-{ID}.scope/container"),
                container(Runtime::Podman),
            ),
            (
                format!(
                    "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope/container"
                ),
                container(Runtime::Podman),
            ),
            (
                format!("/libpod_parent/libpod-{ID}"),
                container(Runtime::Podman),
            ),
            (
                format!("/system.slice/cri-containerd-{ID}.scope"),
                container(Runtime::Containerd),
            ),
            (format!("/mycontainers/{ID}"), container(Runtime::Unknown)),
        ] {
            assert_eq!(classify(&path), want, "{path}");
        }
    }

    #[test]
    fn other_and_malformed() {
        for path in [
            "",
            "/",
            "/system.slice/cron.service",
            "/user.slice/user-0.slice/session-1.scope",
            "/kubepods",
            "/kubepods/burstable",
            "/kubepods.slice/kubepods-burstable.slice",
            // Bad UIDs / ids.
            "/kubepods/burstable/podnot-a-uid/abc",
            "/kubepods/burstable/pod8a1f0c4e-1b2c-4d3e-9f00-12345678/x",
            &format!("/kubepods/burstable/pod{UID}/something-else"),
            &format!("/docker/{}", &ID[..63]),
            &format!("/docker/{}", ID.to_uppercase()),
            &format!("/docker-{ID}X.scope"),
            // pod<uid> without a kubepods ancestor is not a kubelet path.
            &format!("/random/pod{UID}"),
            &format!(
                "/system.slice/containerd.service/kubepods-burstable-pod{UID_}.slice:cri-containerd:nothex"
            ),
            "::::",
            "/a:b:c/d",
            "\u{0}/\u{ffff}/pod",
            "/kubepods-pod.slice",
            "/kubepods-pod_.slice/x",
        ] {
            let kind = classify(path);
            assert!(matches!(kind, CgroupKind::Other), "{path:?} → {kind:?}");
        }
    }

    #[test]
    fn resolver_walks_a_tree() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().to_owned();
        fs::create_dir_all(root.join("a/b")).expect("mkdir");
        let id_b = cgroup_id(&root.join("a/b")).expect("stat");
        let id_root = cgroup_id(&root).expect("stat");
        let mut resolver = Resolver::new(root.clone());
        resolver.begin_round();
        assert_eq!(resolver.resolve(id_b), Some("a/b"));
        assert_eq!(resolver.resolve(id_root), Some(""));
        assert!(!resolver.is_removed(id_b));
        fs::create_dir(root.join("c")).expect("mkdir");
        let id_c = cgroup_id(&root.join("c")).expect("stat");
        // One rescan per round: c is found only in the next round.
        assert_eq!(resolver.resolve(u64::MAX), None);
        assert_eq!(resolver.resolve(id_c), None);
        resolver.begin_round();
        assert_eq!(resolver.resolve(id_c), Some("c"));
        fs::remove_dir(root.join("a/b")).expect("rmdir");
        assert!(resolver.is_removed(id_b));
        resolver.forget(id_b);
        assert!(resolver.is_removed(id_b));
    }
}
