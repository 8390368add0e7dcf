//! Attribution: which workload a cgroup's syscalls belong to. [`cgroup`] parses cgroup paths
//! and resolves cgroup ids to paths; standalone, a path alone names a pod container, another
//! runtime's container or a plain cgroup; [`kubernetes`] names the Deployment, StatefulSet,
//! Job, ... through the API.

pub mod cgroup;
pub mod kubernetes;

use crate::profile::{Identity, WorkloadKind};
use cgroup::CgroupKind;

impl Identity {
    /// The identity the standalone rule gives a cgroup path (relative to the cgroup2 root):
    /// a kubelet pod container → `Pod`, another runtime's container → `Container`, anything
    /// else → `Cgroup` with the path (`/` for the root).
    pub fn from_cgroup_path(path: &str) -> Self {
        Self::from_cgroup_kind(cgroup::classify(path), path)
    }

    /// Like [`from_cgroup_path`](Self::from_cgroup_path) for a path already classified.
    pub fn from_cgroup_kind(kind: CgroupKind, path: &str) -> Self {
        match kind {
            CgroupKind::PodContainer {
                pod_uid,
                container_id,
                ..
            } => Self::with_kind("", WorkloadKind::Pod, &pod_uid, &container_id),
            CgroupKind::Container { container_id, .. } => {
                Self::with_kind("", WorkloadKind::Container, &container_id, "")
            }
            CgroupKind::RuntimeHelper | CgroupKind::Other => {
                let trimmed = path.trim_matches('/');
                Self::with_kind(
                    "",
                    WorkloadKind::Cgroup,
                    if trimmed.is_empty() { "/" } else { trimmed },
                    "",
                )
            }
        }
    }

    /// The identity of an exec session into this identity's container: `exec:<container>`.
    /// Only a container has exec sessions: a process that joins a plain cgroup (a service
    /// manager starting one more process, a shell moving itself) is that cgroup's.
    pub fn exec_session(mut self) -> Self {
        if matches!(
            self.workload_kind,
            WorkloadKind::Kubernetes(_) | WorkloadKind::Pod | WorkloadKind::Container
        ) {
            self.container = format!("{}{}", kubernetes::EXEC_PREFIX, self.container);
        }
        self
    }

    /// The standalone rule for a cgroup (its path if resolved): what identifies a cgroup when
    /// no Kubernetes attribution runs.
    pub fn standalone(path: Option<&str>) -> Self {
        path.map_or_else(Self::unresolved, Self::from_cgroup_path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_rule() {
        let id = "ab".repeat(32);
        let uid = "8a1f0c4e-1b2c-4d3e-9f00-123456789abc";
        assert_eq!(
            Identity::from_cgroup_path(&format!("/kubepods/besteffort/pod{uid}/{id}")),
            Identity::new("", "Pod", uid, &id)
        );
        assert_eq!(
            Identity::from_cgroup_path(&format!("system.slice/docker-{id}.scope")),
            Identity::new("", "Container", &id, "")
        );
        assert_eq!(
            Identity::from_cgroup_path("system.slice/cron.service"),
            Identity::new("", "Cgroup", "system.slice/cron.service", "")
        );
        assert_eq!(
            Identity::from_cgroup_path("/"),
            Identity::new("", "Cgroup", "/", "")
        );
        assert_eq!(
            Identity::from_cgroup_path(""),
            Identity::new("", "Cgroup", "/", "")
        );
    }
}
