//! Who a profile belongs to: the four-part [`Identity`] and its typed [`WorkloadKind`], which
//! carries whether attribution named a Kubernetes workload. Both serialise as plain strings,
//! as state files, the HTTP API, metric labels and URL paths have always shown them.

use std::{cmp::Ordering, fmt, hash};

use serde::{Deserialize, Serialize};

/// What a profile's workload is, and so whether attribution succeeded.
///
/// Serialised as its kind string (`Deployment`, `Pod`, `Cgroup`, ...). `Pod` means two things
/// on the wire, told apart by the namespace: a pod attributed through the Kubernetes API has
/// one, a kubelet pod container known only from its cgroup path has none. Equality, order and
/// hash follow the string, so identities compare exactly as they did when the kind was one.
#[derive(Clone, Debug)]
pub enum WorkloadKind {
    /// A Kubernetes object named through the API (`Deployment`, `StatefulSet`, `DaemonSet`,
    /// `Job`, `CronJob`, a bare `Pod`, or any other controller kind): attributed.
    Kubernetes(String),
    /// A kubelet pod container not attributed (yet): the workload is the pod UID and the
    /// container its container id.
    Pod,
    /// Another runtime's container: the workload is the container id.
    Container,
    /// Any other cgroup: the workload is its path.
    Cgroup,
    /// A command run by `recorder-agent record`.
    Command,
    /// Any other kind outside a namespace (not attributed to a Kubernetes object).
    Other(String),
}

impl WorkloadKind {
    /// The kind as an identity with `namespace` carries it: inside a namespace every kind is
    /// a Kubernetes object (only Kubernetes attribution sets a namespace).
    pub fn parse(kind: &str, namespace: &str) -> Self {
        if !namespace.is_empty() {
            return Self::Kubernetes(kind.to_owned());
        }
        match kind {
            "Pod" => Self::Pod,
            "Container" => Self::Container,
            "Cgroup" => Self::Cgroup,
            "Command" => Self::Command,
            other => Self::Other(other.to_owned()),
        }
    }

    /// The kind string.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Kubernetes(kind) | Self::Other(kind) => kind,
            Self::Pod => "Pod",
            Self::Container => "Container",
            Self::Cgroup => "Cgroup",
            Self::Command => "Command",
        }
    }

    /// Whether attribution named a Kubernetes workload (no pod UID or container id in the
    /// identity).
    pub fn is_attributed(&self) -> bool {
        matches!(self, Self::Kubernetes(_))
    }
}

impl fmt::Display for WorkloadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq for WorkloadKind {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for WorkloadKind {}

impl PartialEq<str> for WorkloadKind {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for WorkloadKind {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl hash::Hash for WorkloadKind {
    fn hash<H: hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl PartialOrd for WorkloadKind {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for WorkloadKind {
    fn cmp(&self, other: &Self) -> Ordering {
        self.as_str().cmp(other.as_str())
    }
}

/// Who a profile belongs to. Unknown parts are empty strings (and `_` in URL paths).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(from = "WireIdentity", into = "WireIdentity")]
pub struct Identity {
    /// Kubernetes namespace, empty outside Kubernetes.
    pub namespace: String,
    /// `Deployment`, `StatefulSet`, ..., `Pod`, `Container` or `Cgroup`.
    pub workload_kind: WorkloadKind,
    /// Workload name, pod UID, container id or cgroup path, by kind.
    pub workload: String,
    /// Container name (or container id for a bare pod cgroup), empty when not applicable.
    pub container: String,
}

/// An identity as state files and the API carry it: four strings.
#[derive(Serialize, Deserialize)]
struct WireIdentity {
    namespace: String,
    workload_kind: String,
    workload: String,
    container: String,
}

impl From<WireIdentity> for Identity {
    fn from(wire: WireIdentity) -> Self {
        Self {
            workload_kind: WorkloadKind::parse(&wire.workload_kind, &wire.namespace),
            namespace: wire.namespace,
            workload: wire.workload,
            container: wire.container,
        }
    }
}

impl From<Identity> for WireIdentity {
    fn from(identity: Identity) -> Self {
        Self {
            workload_kind: identity.workload_kind.as_str().to_owned(),
            namespace: identity.namespace,
            workload: identity.workload,
            container: identity.container,
        }
    }
}

/// Why a URL path or selector is not an identity.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// Fewer than the four parts.
    #[error("fewer than four parts ({segments} segment(s))")]
    TooFewParts {
        /// Segments found.
        segments: usize,
    },
    /// An empty segment (`a//b`).
    #[error("empty part (use _ for an empty part)")]
    EmptyPart,
    /// A segment whose escapes do not decode to UTF-8.
    #[error("segment {segment:?} is not valid UTF-8")]
    NotUtf8 {
        /// The segment as given.
        segment: String,
    },
    /// A NUL byte in a part.
    #[error("NUL in a part")]
    Nul,
}

impl Identity {
    /// Builds an identity from its four parts (the kind as [`WorkloadKind::parse`] reads it).
    pub fn new(namespace: &str, kind: &str, workload: &str, container: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            workload_kind: WorkloadKind::parse(kind, namespace),
            workload: workload.to_owned(),
            container: container.to_owned(),
        }
    }

    /// Builds an identity whose kind is already known.
    pub fn with_kind(namespace: &str, kind: WorkloadKind, workload: &str, container: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            workload_kind: kind,
            workload: workload.to_owned(),
            container: container.to_owned(),
        }
    }

    /// Where the counts of cgroups whose path could not be learned go (the cgroup was gone
    /// before the agent saw its directory).
    pub fn unresolved() -> Self {
        Self::with_kind("", WorkloadKind::Cgroup, "(unresolved)", "")
    }

    /// The four parts as URL path segments: `_` for an empty part, the rest percent-encoded.
    pub fn url_path(&self) -> String {
        const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
            .remove(b'-')
            .remove(b'.')
            .remove(b'_')
            .remove(b'~');
        [
            self.namespace.as_str(),
            self.workload_kind.as_str(),
            &self.workload,
            &self.container,
        ]
        .iter()
        .map(|part| {
            if part.is_empty() {
                "_".to_owned()
            } else if *part == "_" {
                // A literal underscore must not read back as an empty part.
                "%5F".to_owned()
            } else {
                percent_encoding::utf8_percent_encode(part, SEGMENT).to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("/")
    }

    /// The inverse of [`url_path`](Self::url_path): `NAMESPACE/KIND/WORKLOAD/CONTAINER`, `_`
    /// for an empty part, percent-escapes decoded; a workload may span several segments (an
    /// unescaped cgroup path). The error says what is wrong, for the caller to put in context.
    pub fn from_url_path(path: &str) -> Result<Self, IdentityError> {
        let segments: Vec<&str> = path.split('/').collect();
        if segments.len() < 4 {
            return Err(IdentityError::TooFewParts {
                segments: segments.len(),
            });
        }
        let decode = |segment: &str| -> Result<String, IdentityError> {
            if segment.is_empty() {
                return Err(IdentityError::EmptyPart);
            }
            // `_` (as sent, not `%5F`) is an empty part; `%5F` is a literal underscore.
            if segment == "_" {
                return Ok(String::new());
            }
            let text = percent_encoding::percent_decode_str(segment)
                .decode_utf8()
                .map_err(|_| IdentityError::NotUtf8 {
                    segment: segment.to_owned(),
                })?;
            if text.contains('\0') {
                return Err(IdentityError::Nul);
            }
            Ok(text.into_owned())
        };
        let last = segments.len() - 1;
        let workload = segments[2..last]
            .iter()
            .map(|segment| decode(segment))
            .collect::<Result<Vec<_>, _>>()?
            .join("/");
        let namespace = decode(segments[0])?;
        let kind = decode(segments[1])?;
        Ok(Self {
            workload_kind: WorkloadKind::parse(&kind, &namespace),
            namespace,
            workload,
            container: decode(segments[last])?,
        })
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let part = |s: &str| {
            if s.is_empty() {
                "_".to_owned()
            } else {
                s.to_owned()
            }
        };
        write!(
            f,
            "{}/{}/{}/{}",
            part(&self.namespace),
            part(self.workload_kind.as_str()),
            part(&self.workload),
            part(&self.container)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_paths() {
        let identity = Identity::new("", "Cgroup", "system.slice/cron.service", "");
        assert_eq!(
            identity.url_path(),
            "_/Cgroup/system.slice%2Fcron.service/_"
        );
        assert_eq!(identity.to_string(), "_/Cgroup/system.slice/cron.service/_");
        assert_eq!(
            Identity::new("ns", "Deployment", "web", "nginx").url_path(),
            "ns/Deployment/web/nginx"
        );
        assert_eq!(
            Identity::new("", "Cgroup", "_", "").url_path(),
            "_/Cgroup/%5F/_"
        );
    }

    #[test]
    fn kinds_carry_attribution_and_serialise_as_strings() {
        let attributed = Identity::new("shop", "Pod", "debug-shell", "sh");
        let pending = Identity::new("", "Pod", "8a1f-uid", "abc123");
        assert!(attributed.workload_kind.is_attributed());
        assert!(!pending.workload_kind.is_attributed());
        assert_eq!(attributed.workload_kind, "Pod");
        assert_eq!(pending.workload_kind, WorkloadKind::Pod);
        for identity in [attributed, pending, Identity::unresolved()] {
            let json = serde_json::to_value(&identity).expect("json");
            assert_eq!(json["workload_kind"], identity.workload_kind.as_str());
            let back: Identity = serde_json::from_value(json).expect("back");
            assert_eq!(back, identity);
            assert_eq!(
                back.workload_kind.is_attributed(),
                identity.workload_kind.is_attributed()
            );
        }
        assert_eq!(
            Identity::from_url_path("_/Container/abc/_")
                .expect("parses")
                .workload_kind,
            WorkloadKind::Container
        );
    }
}
