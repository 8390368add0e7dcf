//! The `SyscallProfile` custom resource (group `syscall-recorder.io`, version `v1alpha1`): one
//! object per workload container in the workload's namespace, holding what every node
//! contributed and the merge of it. This module owns the object's shape and the pure rules
//! every writer follows; [`publisher`] writes this node's contributions through the API.
//!
//! Each node's contribution is compact: its syscall set is a bitmap over its architecture's
//! syscall numbers (base64, about 80 characters on x86_64), so 1,000 nodes stay far below
//! etcd's 1.5 MiB object limit. A contribution changes only when its syscall set or its
//! stability changes: call totals and times are as of that change, so a workload that runs the
//! same calls causes no writes (live counts are in `/metrics`).

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, SystemTime},
};

pub mod publisher;
pub mod spo;
pub mod view;
pub mod watch;

use base64::{Engine as _, engine::general_purpose::STANDARD};
use serde::{Deserialize, Serialize};

use crate::{
    attribution::kubernetes::counted_apart,
    profile::{Identity, Profile, WorkloadKind, syscalls::Arch},
};

/// API group of the custom resource.
pub const GROUP: &str = "syscall-recorder.io";
/// API version of the custom resource.
pub const VERSION: &str = "v1alpha1";
/// Kind of the custom resource.
pub const KIND: &str = "SyscallProfile";
/// Plural (the resource name in URLs and RBAC).
pub const PLURAL: &str = "syscallprofiles";
/// Longest object name the API accepts (a DNS-1123 subdomain).
const MAX_NAME: usize = 253;

/// What cannot be published.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PublishError {
    /// The identity is not a Kubernetes workload container that a pod spec can enforce.
    #[error("{identity}: only Kubernetes workload containers are published")]
    NotPublishable {
        /// The identity.
        identity: String,
    },
    /// The object name derived from the identity is not a valid DNS-1123 subdomain.
    #[error(
        "{identity}: object name {name:?} is not a DNS-1123 subdomain of at most 253 characters"
    )]
    BadName {
        /// The identity.
        identity: String,
        /// The derived name.
        name: String,
    },
    /// A contribution's bitmap does not decode.
    #[error("node {node}: syscall bitmap does not decode ({reason})")]
    BadBitmap {
        /// The node whose entry is bad.
        node: String,
        /// Why.
        reason: String,
    },
}

/// `spec`: which workload container, and whether the delivered file follows learning.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyscallProfileSpec {
    /// The workload.
    pub workload: WorkloadRef,
    /// The container name.
    pub container: String,
    /// `Learning` (default) or `Frozen`.
    #[serde(default)]
    pub mode: Mode,
}

/// A workload by kind and name (in the object's namespace).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadRef {
    /// `Deployment`, `StatefulSet`, `DaemonSet`, `CronJob`, `Job`, `Pod`, ...
    pub kind: String,
    /// Its name.
    pub name: String,
}

/// Whether the delivered file follows the merged set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    /// The file follows the merged syscall set.
    #[default]
    Learning,
    /// The file stays as frozen; syscalls outside it are drift.
    Frozen,
}

/// `status`: the merge of every node's contribution, and the contributions.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyscallProfileStatus {
    /// The merged syscall names per architecture.
    #[serde(default)]
    pub architectures: Vec<ArchSyscalls>,
    /// Distinct syscall names over all architectures (a printer column).
    #[serde(default)]
    pub syscall_count: u32,
    /// Nodes that contributed (a printer column).
    #[serde(default)]
    pub node_count: u32,
    /// Calls over all nodes, as of each node's last change.
    #[serde(default)]
    pub calls: u64,
    /// Earliest first call on any node (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_seen: Option<String>,
    /// Latest call on any node as of its last change (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<String>,
    /// When any node last saw a syscall new to it (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_new_syscall: Option<String>,
    /// Every contributing node's profile is stable.
    #[serde(default)]
    pub stable: bool,
    /// One entry per node, sorted by node name.
    #[serde(default)]
    pub nodes: Vec<NodeContribution>,
    /// The set delivered while `spec.mode` is `Frozen`: the merged set when an agent first saw
    /// the object frozen (absent while learning).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frozen: Option<FrozenSet>,
    /// Merged syscalls outside the frozen set, per architecture (empty while learning).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drift: Vec<ArchSyscalls>,
    /// `Frozen` and `Drift` conditions, as Kubernetes conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<StatusCondition>,
}

/// The frozen syscall set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
// Every field defaults: an entry another tool wrote without some must not stop the watch (one
// undecodable object fails the whole list).
#[serde(rename_all = "camelCase", default)]
pub struct FrozenSet {
    /// When it was frozen (RFC 3339).
    pub at: String,
    /// Distinct names over all architectures.
    #[serde(default)]
    pub syscall_count: u32,
    /// Sorted names per architecture.
    #[serde(default)]
    pub architectures: Vec<ArchSyscalls>,
}

/// A Kubernetes-style status condition.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
// Every field defaults: an entry another tool wrote without some must not stop the watch (one
// undecodable object fails the whole list).
#[serde(rename_all = "camelCase", default)]
pub struct StatusCondition {
    /// `Frozen` or `Drift`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True` or `False`.
    pub status: String,
    /// CamelCase reason.
    pub reason: String,
    /// For people.
    #[serde(default)]
    pub message: String,
    /// When `status` last changed (RFC 3339).
    pub last_transition_time: String,
}

/// The merged names of one architecture.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ArchSyscalls {
    /// `x86_64` or `aarch64`.
    pub arch: String,
    /// Sorted syscall names.
    pub syscalls: Vec<String>,
}

/// What one node saw of the workload container.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
// Every field defaults: an entry another tool wrote without some must not stop the watch (one
// undecodable object fails the whole list).
#[serde(rename_all = "camelCase", default)]
pub struct NodeContribution {
    /// The node name.
    pub node: String,
    /// The node's architecture (`x86_64`, `aarch64`).
    pub arch: String,
    /// Base64 of a bitmap over the architecture's syscall numbers (bit `n % 8` of byte
    /// `n / 8` set when syscall `n` was called).
    pub syscalls: String,
    /// Calls counted on this node.
    pub calls: u64,
    /// First call on this node (RFC 3339).
    pub first_seen: String,
    /// Last call on this node as of this entry (RFC 3339).
    pub last_seen: String,
    /// When this node last saw a syscall new to it (RFC 3339).
    pub last_new_syscall: String,
    /// Whether this node's profile is stable.
    pub stable: bool,
}

fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

/// Whether `identity` is published: a Kubernetes workload's container that a pod spec can
/// enforce (not a sandbox or a debugging session, not a host cgroup or a bare container).
pub fn publishable(identity: &Identity) -> bool {
    matches!(identity.workload_kind, WorkloadKind::Kubernetes(_))
        && !identity.namespace.is_empty()
        && !identity.container.is_empty()
        && !counted_apart(&identity.container)
}

/// The object name of a workload container: `<kind>.<workload>.<container>`, lowercase. Kind
/// and names are DNS labels or subdomains already, so the name is unique per identity.
pub fn object_name(identity: &Identity) -> Result<String, PublishError> {
    if !publishable(identity) {
        return Err(PublishError::NotPublishable {
            identity: identity.to_string(),
        });
    }
    let name = format!(
        "{}.{}.{}",
        identity.workload_kind.as_str().to_ascii_lowercase(),
        identity.workload,
        identity.container
    );
    let valid = name.len() <= MAX_NAME
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if valid {
        Ok(name)
    } else {
        Err(PublishError::BadName {
            identity: identity.to_string(),
            name,
        })
    }
}

/// The spec a new object of `identity` gets (mode `Learning`).
pub fn spec_of(identity: &Identity) -> SyscallProfileSpec {
    SyscallProfileSpec {
        workload: WorkloadRef {
            kind: identity.workload_kind.as_str().to_owned(),
            name: identity.workload.clone(),
        },
        container: identity.container.clone(),
        mode: Mode::Learning,
    }
}

/// Encodes syscall names of `arch` as the contribution bitmap; names the table does not have
/// are left out (a profile only holds names of its node's table).
pub fn encode_syscalls<'a>(arch: Arch, names: impl IntoIterator<Item = &'a str>) -> String {
    let mut bits: Vec<u8> = Vec::new();
    for nr in names
        .into_iter()
        .filter_map(|name| arch.syscall_number(name))
    {
        if bits.len() <= nr / 8 {
            bits.resize(nr / 8 + 1, 0);
        }
        bits[nr / 8] |= 1 << (nr % 8);
    }
    STANDARD.encode(bits)
}

/// Decodes a contribution bitmap to names; a set bit without a name is an error (the entry
/// was written by an agent with another table, or damaged).
pub fn decode_syscalls(
    node: &str,
    arch: Arch,
    bitmap: &str,
) -> Result<BTreeSet<&'static str>, PublishError> {
    let bad = |reason: String| PublishError::BadBitmap {
        node: node.to_owned(),
        reason,
    };
    let bits = STANDARD
        .decode(bitmap)
        .map_err(|err| bad(err.to_string()))?;
    let mut names = BTreeSet::new();
    for (byte_index, byte) in bits.iter().enumerate() {
        for bit in 0..8 {
            if byte & (1 << bit) != 0 {
                let nr = byte_index * 8 + bit;
                names.insert(
                    arch.syscall_name(nr)
                        .ok_or_else(|| bad(format!("no {arch} syscall {nr}")))?,
                );
            }
        }
    }
    Ok(names)
}

/// Decodes what can be decoded of a contribution bitmap: the names this table has, and why
/// something was left out (not base64, or set bits without a name here).
pub fn decode_known_syscalls(arch: Arch, bitmap: &str) -> (BTreeSet<&'static str>, Option<String>) {
    let Ok(bits) = STANDARD.decode(bitmap) else {
        return (BTreeSet::new(), Some("not base64".to_owned()));
    };
    let mut names = BTreeSet::new();
    let mut unknown = Vec::new();
    for (byte_index, byte) in bits.iter().enumerate() {
        for bit in 0..8 {
            if byte & (1 << bit) != 0 {
                let nr = byte_index * 8 + bit;
                match arch.syscall_name(nr) {
                    Some(name) => {
                        names.insert(name);
                    }
                    None => unknown.push(nr.to_string()),
                }
            }
        }
    }
    let reason = (!unknown.is_empty()).then(|| {
        format!(
            "no {arch} syscall numbered {} in this agent's table",
            unknown.join(", ")
        )
    });
    (names, reason)
}

/// This node's contribution from its profile.
pub fn contribution(
    profile: &Profile,
    node: &str,
    arch: Arch,
    now: SystemTime,
    stable_after: Duration,
) -> NodeContribution {
    NodeContribution {
        node: node.to_owned(),
        arch: arch.to_string(),
        syscalls: encode_syscalls(arch, profile.syscalls.keys().map(String::as_str)),
        calls: profile.total_calls(),
        first_seen: rfc3339(profile.first_seen),
        last_seen: rfc3339(profile.last_seen),
        last_new_syscall: rfc3339(profile.last_new_syscall),
        stable: profile.is_stable(now, stable_after),
    }
}

/// Whether `new` has to be written over `old`: its syscall set or stability changed (or it is
/// not there). Totals and times alone never cause a write.
pub fn needs_write(old: Option<&NodeContribution>, new: &NodeContribution) -> bool {
    old.is_none_or(|old| {
        old.syscalls != new.syscalls || old.stable != new.stable || old.arch != new.arch
    })
}

/// Puts `contribution` in `status` (replacing the node's entry) and recomputes the merge from
/// every entry. Entries that do not decode are kept as they are and left out of the merge;
/// their errors are returned so the caller can say so once.
pub fn merge_into(
    status: &mut SyscallProfileStatus,
    contribution: NodeContribution,
    now: SystemTime,
) -> Vec<PublishError> {
    match status
        .nodes
        .binary_search_by(|entry| entry.node.as_str().cmp(&contribution.node))
    {
        Ok(at) => status.nodes[at] = contribution,
        Err(at) => status.nodes.insert(at, contribution),
    }
    recompute(status, now)
}

/// Brings `status` in line with `mode`: freezing takes the merged set as it is now (once a node
/// contributed), learning drops the frozen set. Returns whether anything changed (then the status must be written).
pub fn apply_mode(mode: Mode, status: &mut SyscallProfileStatus, now: SystemTime) -> bool {
    let before = status.clone();
    match mode {
        // Nothing learned yet (an object applied by hand or from a backup): nothing to freeze;
        // the first contribution is frozen instead of an empty set that would deny everything.
        Mode::Frozen if status.frozen.is_none() && !status.nodes.is_empty() => {
            recompute(status, now);
            status.frozen = Some(FrozenSet {
                at: rfc3339(now),
                syscall_count: status.syscall_count,
                architectures: status.architectures.clone(),
            });
        }
        Mode::Learning if status.frozen.is_some() => status.frozen = None,
        Mode::Frozen | Mode::Learning => {}
    }
    recompute(status, now);
    *status != before
}

/// Recomputes the merged fields of `status` from its node entries, and the drift from the
/// frozen set.
pub fn recompute(status: &mut SyscallProfileStatus, now: SystemTime) -> Vec<PublishError> {
    let mut errors = Vec::new();
    let mut merged: BTreeMap<String, BTreeSet<&'static str>> = BTreeMap::new();
    for entry in &status.nodes {
        let Some(arch) = Arch::from_name(&entry.arch) else {
            errors.push(PublishError::BadBitmap {
                node: entry.node.clone(),
                reason: format!("unknown architecture {:?}", entry.arch),
            });
            continue;
        };
        // Bits this agent's table has no name for (a newer agent's table) are left out, the
        // rest of the entry still counts: agents of two versions must not make the merge flap.
        let (names, unknown) = decode_known_syscalls(arch, &entry.syscalls);
        merged.entry(arch.to_string()).or_default().extend(names);
        if let Some(reason) = unknown {
            errors.push(PublishError::BadBitmap {
                node: entry.node.clone(),
                reason,
            });
        }
    }
    let distinct: BTreeSet<&str> = merged.values().flatten().copied().collect();
    status.syscall_count = u32::try_from(distinct.len()).unwrap_or(u32::MAX);
    status.architectures = merged
        .into_iter()
        .map(|(arch, names)| ArchSyscalls {
            arch,
            syscalls: names.into_iter().map(str::to_owned).collect(),
        })
        .collect();
    status.node_count = u32::try_from(status.nodes.len()).unwrap_or(u32::MAX);
    status.calls = status
        .nodes
        .iter()
        .fold(0u64, |sum, entry| sum.saturating_add(entry.calls));
    // RFC 3339 UTC timestamps of one format compare as strings.
    status.first_seen = status.nodes.iter().map(|e| e.first_seen.clone()).min();
    status.last_seen = status.nodes.iter().map(|e| e.last_seen.clone()).max();
    status.last_new_syscall = status
        .nodes
        .iter()
        .map(|e| e.last_new_syscall.clone())
        .max();
    status.stable = !status.nodes.is_empty() && status.nodes.iter().all(|e| e.stable);
    status.drift = match &status.frozen {
        Some(frozen) => drift(&status.architectures, &frozen.architectures),
        None => Vec::new(),
    };
    let (frozen, drift_condition) = match &status.frozen {
        Some(frozen) => {
            let outside: BTreeSet<&str> = status
                .drift
                .iter()
                .flat_map(|arch| arch.syscalls.iter().map(String::as_str))
                .collect();
            let frozen_condition = (
                "True",
                "Frozen",
                format!(
                    "the delivered profile stays at the {} syscalls frozen at {}",
                    frozen.syscall_count, frozen.at
                ),
            );
            let drift_condition = if outside.is_empty() {
                (
                    "False",
                    "NoDrift",
                    "no syscall outside the frozen set".to_owned(),
                )
            } else {
                (
                    "True",
                    "SyscallsOutsideFrozenSet",
                    format!(
                        "{} syscall(s) outside the frozen set: {}",
                        outside.len(),
                        outside.into_iter().collect::<Vec<_>>().join(", ")
                    ),
                )
            };
            (frozen_condition, drift_condition)
        }
        None => (
            (
                "False",
                "Learning",
                "the delivered profile follows the merged set".to_owned(),
            ),
            ("False", "Learning", "learning: nothing is drift".to_owned()),
        ),
    };
    set_condition(&mut status.conditions, "Frozen", frozen, now);
    set_condition(&mut status.conditions, "Drift", drift_condition, now);
    errors
}

/// `merged` minus `frozen`, per architecture (architectures without drift left out).
fn drift(merged: &[ArchSyscalls], frozen: &[ArchSyscalls]) -> Vec<ArchSyscalls> {
    merged
        .iter()
        .filter_map(|arch| {
            let allowed: BTreeSet<&str> = frozen
                .iter()
                .filter(|f| f.arch == arch.arch)
                .flat_map(|f| f.syscalls.iter().map(String::as_str))
                .collect();
            let outside: Vec<String> = arch
                .syscalls
                .iter()
                .filter(|name| !allowed.contains(name.as_str()))
                .cloned()
                .collect();
            (!outside.is_empty()).then(|| ArchSyscalls {
                arch: arch.arch.clone(),
                syscalls: outside,
            })
        })
        .collect()
}

/// Sets condition `type_`, keeping its transition time unless its status changes.
fn set_condition(
    conditions: &mut Vec<StatusCondition>,
    type_: &str,
    (status, reason, message): (&str, &str, String),
    now: SystemTime,
) {
    let next = |last_transition_time| StatusCondition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message,
        last_transition_time,
    };
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(condition) => {
            let time = if condition.status == status {
                condition.last_transition_time.clone()
            } else {
                rfc3339(now)
            };
            *condition = next(time);
        }
        None => conditions.push(next(rfc3339(now))),
    }
}

/// The names a node of `arch` delivers for this object: the frozen set while frozen, else the
/// merged set; the node's own architecture's names, or, for a workload never seen on this
/// architecture, every name that has a number on it.
pub fn delivered_names(status: &SyscallProfileStatus, arch: Arch) -> BTreeSet<&str> {
    let sets = match &status.frozen {
        Some(frozen) => &frozen.architectures,
        None => &status.architectures,
    };
    let name = arch.to_string();
    match sets.iter().find(|set| set.arch == name) {
        Some(set) => set.syscalls.iter().map(String::as_str).collect(),
        None => sets
            .iter()
            .flat_map(|set| set.syscalls.iter().map(String::as_str))
            .filter(|syscall| arch.syscall_number(syscall).is_some())
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fixed instant `seconds` after a round base (also for the publisher's tests).
    pub(super) fn at(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + seconds)
    }

    fn profile(names: &[(&str, u64)], first: u64, last: u64) -> Profile {
        let mut profile =
            Profile::new(Identity::new("shop", "Deployment", "web", "app"), at(first));
        for (name, calls) in names {
            profile.syscalls.insert((*name).to_owned(), *calls);
        }
        profile.last_seen = at(last);
        profile.last_new_syscall = at(last);
        profile
    }

    #[test]
    fn names_are_dns_subdomains_and_only_workload_containers_are_published() {
        let id = |ns: &str, kind: &str, w: &str, c: &str| Identity::new(ns, kind, w, c);
        assert_eq!(
            object_name(&id("shop", "Deployment", "web", "app")),
            Ok("deployment.web.app".to_owned())
        );
        assert_eq!(
            object_name(&id("shop", "StatefulSet", "db-0x", "init-db")),
            Ok("statefulset.db-0x.init-db".to_owned())
        );
        for bad in [
            id("shop", "Deployment", "web", "(sandbox)"),
            id("shop", "Deployment", "web", "ephemeral:dbg"),
            id("", "Cgroup", "system.slice/cron.service", ""),
            id("", "Pod", "8a1f0c4e-1b2c-4d3e-9f00-123456789abc", "abc"),
        ] {
            assert!(
                matches!(object_name(&bad), Err(PublishError::NotPublishable { .. })),
                "{bad}"
            );
        }
        // A name the API would refuse (a hostile or odd name from elsewhere) is an error.
        assert!(matches!(
            object_name(&id("shop", "Deployment", "Web_App", "app")),
            Err(PublishError::BadName { .. })
        ));
        let long = "a".repeat(250);
        assert!(matches!(
            object_name(&id("shop", "Deployment", &long, "app")),
            Err(PublishError::BadName { .. })
        ));
    }

    #[test]
    fn bitmaps_round_trip_and_refuse_unknown_numbers() {
        let names = ["read", "write", "openat", "exit_group", "uname"];
        let bitmap = encode_syscalls(Arch::X86_64, names);
        let back = decode_syscalls("n1", Arch::X86_64, &bitmap).expect("decode");
        assert_eq!(back, names.into_iter().collect());
        // The same names on aarch64 have other numbers, so another bitmap.
        assert_ne!(encode_syscalls(Arch::Aarch64, names), bitmap);
        assert!(decode_syscalls("n1", Arch::X86_64, "not base64!").is_err());
        // Bit 511 is past the x86_64 table.
        let mut bits = vec![0u8; 64];
        bits[63] = 0x80;
        assert!(decode_syscalls("n1", Arch::X86_64, &STANDARD.encode(bits)).is_err());
    }

    #[test]
    fn merge_keeps_one_entry_per_node_and_unions_the_sets() {
        let stable_after = Duration::from_secs(600);
        let mut status = SyscallProfileStatus::default();
        let a = contribution(
            &profile(&[("read", 5), ("uname", 2)], 0, 10),
            "node-a",
            Arch::X86_64,
            at(20),
            stable_after,
        );
        let b = contribution(
            &profile(&[("read", 1), ("openat", 3)], 5, 30),
            "node-b",
            Arch::X86_64,
            at(40),
            stable_after,
        );
        let arm = contribution(
            &profile(&[("read", 1), ("mmap", 1)], 2, 8),
            "node-c",
            Arch::Aarch64,
            at(40),
            stable_after,
        );
        assert!(merge_into(&mut status, b.clone(), at(0)).is_empty());
        assert!(merge_into(&mut status, a.clone(), at(0)).is_empty());
        assert!(merge_into(&mut status, arm, at(0)).is_empty());
        assert_eq!(
            status
                .nodes
                .iter()
                .map(|e| e.node.as_str())
                .collect::<Vec<_>>(),
            ["node-a", "node-b", "node-c"]
        );
        assert_eq!(status.architectures.len(), 2);
        assert_eq!(status.architectures[1].arch, "x86_64");
        assert_eq!(
            status.architectures[1].syscalls,
            ["openat", "read", "uname"]
        );
        assert_eq!(status.syscall_count, 4, "mmap, openat, read, uname");
        assert_eq!(status.node_count, 3);
        assert_eq!(status.calls, 7 + 4 + 2);
        assert_eq!(status.first_seen.as_deref(), Some(rfc3339(at(0)).as_str()));
        assert_eq!(status.last_seen.as_deref(), Some(rfc3339(at(30)).as_str()));
        assert!(!status.stable);

        // A node's new entry replaces its old one; nothing of the others changes.
        let a2 = contribution(
            &profile(&[("read", 9), ("uname", 2), ("futex", 1)], 0, 50),
            "node-a",
            Arch::X86_64,
            at(60),
            stable_after,
        );
        assert!(needs_write(Some(&a), &a2));
        merge_into(&mut status, a2, at(0));
        assert_eq!(status.node_count, 3);
        assert_eq!(
            status.architectures[1].syscalls,
            ["futex", "openat", "read", "uname"]
        );
        assert_eq!(status.calls, 12 + 4 + 2);
        // A damaged entry stays, is left out of the merge, and is reported.
        status.nodes[1].syscalls = "%%%".into();
        let errors = recompute(&mut status, at(0));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(status.node_count, 3);
        assert_eq!(status.architectures[1].syscalls, ["futex", "read", "uname"]);
        // An entry with a number this table lacks (a newer agent) keeps its known names.
        let mut bits = STANDARD
            .decode(encode_syscalls(Arch::X86_64, ["ptrace"]))
            .expect("b64");
        bits.resize(1000 / 8 + 1, 0);
        bits[1000 / 8] |= 1 << (1000 % 8);
        status.nodes[1].syscalls = STANDARD.encode(bits);
        let errors = recompute(&mut status, at(0));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].to_string().contains("1000"), "{}", errors[0]);
        assert!(
            status.architectures[1]
                .syscalls
                .contains(&"ptrace".to_owned())
        );
    }

    fn entry(node: &str, names: &[&str]) -> NodeContribution {
        NodeContribution {
            node: node.to_owned(),
            arch: "x86_64".to_owned(),
            syscalls: encode_syscalls(Arch::X86_64, names.iter().copied()),
            ..NodeContribution::default()
        }
    }

    fn condition<'a>(status: &'a SyscallProfileStatus, type_: &str) -> &'a StatusCondition {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
            .expect("condition")
    }

    #[test]
    fn freezing_keeps_the_delivered_set_and_shows_drift_until_unfrozen() {
        let mut status = SyscallProfileStatus::default();
        merge_into(&mut status, entry("node-a", &["read", "write"]), at(0));
        assert_eq!(
            delivered_names(&status, Arch::X86_64),
            BTreeSet::from(["read", "write"])
        );
        assert_eq!(condition(&status, "Frozen").status, "False");
        // Frozen: the set as it is now.
        assert!(apply_mode(Mode::Frozen, &mut status, at(10)));
        assert!(
            !apply_mode(Mode::Frozen, &mut status, at(11)),
            "taken in once"
        );
        let frozen = status.frozen.clone().expect("frozen");
        assert_eq!(frozen.syscall_count, 2);
        assert_eq!(condition(&status, "Frozen").status, "True");
        assert_eq!(condition(&status, "Drift").status, "False");
        // A new syscall on another node: merged, but not delivered; it is drift.
        merge_into(&mut status, entry("node-b", &["read", "ptrace"]), at(20));
        assert_eq!(status.syscall_count, 3);
        assert_eq!(
            delivered_names(&status, Arch::X86_64),
            BTreeSet::from(["read", "write"])
        );
        assert_eq!(
            status.drift,
            [ArchSyscalls {
                arch: "x86_64".into(),
                syscalls: vec!["ptrace".into()]
            }]
        );
        let drift = condition(&status, "Drift").clone();
        assert_eq!(
            (drift.status.as_str(), drift.reason.as_str()),
            ("True", "SyscallsOutsideFrozenSet")
        );
        assert!(drift.message.contains("ptrace"), "{}", drift.message);
        assert_eq!(drift.last_transition_time, rfc3339(at(20)));
        // Rewritten by a later contribution: the transition time stays.
        merge_into(&mut status, entry("node-b", &["read", "ptrace"]), at(30));
        assert_eq!(
            condition(&status, "Drift").last_transition_time,
            rfc3339(at(20))
        );
        // Unfrozen: the merged set is delivered, no drift.
        assert!(apply_mode(Mode::Learning, &mut status, at(40)));
        assert_eq!(status.frozen, None);
        assert!(status.drift.is_empty());
        assert_eq!(
            delivered_names(&status, Arch::X86_64),
            BTreeSet::from(["ptrace", "read", "write"])
        );
        assert_eq!(condition(&status, "Drift").status, "False");
    }

    #[test]
    fn an_object_frozen_before_any_contribution_freezes_the_first_one() {
        let mut status = SyscallProfileStatus::default();
        assert!(apply_mode(Mode::Frozen, &mut status, at(0)));
        assert_eq!(status.frozen, None, "nothing to freeze yet");
        merge_into(&mut status, entry("node-a", &["read"]), at(5));
        assert!(apply_mode(Mode::Frozen, &mut status, at(6)));
        assert_eq!(status.frozen.map(|f| f.syscall_count), Some(1));
    }

    #[test]
    fn a_node_of_another_architecture_delivers_the_names_it_has() {
        let mut status = SyscallProfileStatus::default();
        // `open` has no aarch64 number; `openat` has.
        merge_into(&mut status, entry("node-a", &["open", "openat"]), at(0));
        assert_eq!(
            delivered_names(&status, Arch::Aarch64),
            BTreeSet::from(["openat"])
        );
    }

    #[test]
    fn only_a_new_set_or_stability_is_written() {
        let stable_after = Duration::from_secs(600);
        let old = contribution(
            &profile(&[("read", 5)], 0, 10),
            "n",
            Arch::X86_64,
            at(20),
            stable_after,
        );
        let busier = contribution(
            &profile(&[("read", 500)], 0, 100),
            "n",
            Arch::X86_64,
            at(110),
            stable_after,
        );
        assert!(!needs_write(Some(&old), &busier), "counts and times alone");
        let stable = contribution(
            &profile(&[("read", 500)], 0, 100),
            "n",
            Arch::X86_64,
            at(10_000),
            stable_after,
        );
        assert!(needs_write(Some(&busier), &stable), "became stable");
        assert!(needs_write(None, &old));
    }

    #[test]
    fn a_thousand_nodes_stay_far_below_the_object_limit() {
        // Every x86_64 syscall on every node: the largest bitmap there is.
        let all: Vec<(&str, u64)> = (0..512)
            .filter_map(|nr| Arch::X86_64.syscall_name(nr))
            .map(|name| (name, u64::MAX / 4096))
            .collect();
        let full = profile(&all, 0, 10);
        let mut status = SyscallProfileStatus::default();
        for node in 0..1_000 {
            let entry = contribution(
                &full,
                &format!(
                    "ip-10-0-{}-{}.eu-west-1.compute.internal",
                    node / 250,
                    node % 250
                ),
                Arch::X86_64,
                at(20),
                Duration::from_secs(600),
            );
            status.nodes.push(entry);
        }
        assert!(recompute(&mut status, at(0)).is_empty());
        let object = serde_json::json!({
            "apiVersion": format!("{GROUP}/{VERSION}"),
            "kind": KIND,
            "metadata": {"name": "deployment.web.app", "namespace": "shop"},
            "spec": spec_of(&full.identity),
            "status": status,
        });
        let size = serde_json::to_vec(&object).expect("json").len();
        eprintln!("1,000 nodes with every syscall: {size} bytes");
        assert!(size < 512 * 1024, "{size} bytes");
    }
}
