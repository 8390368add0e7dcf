//! Profiles read from files, compared and merged: what `diff` and `merge` do. Reads OCI
//! seccomp JSON, SPO `SeccompProfile` JSON and the recorder's profile JSON, and reduces each to
//! the policy that matters for a comparison (default action, architectures, allowed names).

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
};

use serde_json::Value;

use crate::{
    export::{
        Format,
        seccomp::{OciSeccomp, OciSyscallRule, SPO_KIND, SpoSeccompProfile},
    },
    profile::{
        Profile,
        syscalls::{compat_seccomp_arch, unqualified},
    },
};

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    /// The file could not be read.
    #[error("reading {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not one of the supported formats.
    #[error("{path}: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Profiles that cannot be combined or compared.
    #[error("{0}")]
    Incompatible(String),
}

/// A profile file reduced to its policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Where it came from.
    pub path: PathBuf,
    /// Its format.
    pub format: Format,
    /// The policy as OCI (for recorder JSON: an allow-list without architectures).
    pub oci: OciSeccomp,
}

/// Actions under which a call goes through.
fn permits(action: &str) -> bool {
    matches!(action, "SCMP_ACT_ALLOW" | "SCMP_ACT_LOG")
}

impl Policy {
    /// Names some rule lets through (a rule with argument filters counts: it allows the
    /// syscall for some arguments, which a gate must see).
    pub fn allowed(&self) -> BTreeSet<&str> {
        self.oci
            .syscalls
            .iter()
            .filter(|rule| permits(&rule.action))
            .flat_map(|rule| rule.names.iter().map(String::as_str))
            .collect()
    }

    /// Whether the default action denies (an allow-list), the only kind `diff` compares by names.
    pub fn is_allow_list(&self) -> bool {
        !permits(&self.oci.default_action)
    }
}

fn malformed(path: &Path, reason: impl Into<String>) -> CompareError {
    CompareError::Malformed {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// Reads a profile file in any supported format (detected from its fields).
pub fn read_policy(path: &Path) -> Result<Policy, CompareError> {
    let text = fs::read_to_string(path).map_err(|source| CompareError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_policy(path, &text)
}

/// Parses the text of a profile file; `path` only names it in errors.
pub fn parse_policy(path: &Path, text: &str) -> Result<Policy, CompareError> {
    let value: Value =
        serde_json::from_str(text).map_err(|err| malformed(path, format!("not JSON: {err}")))?;
    let Some(object) = value.as_object() else {
        return Err(malformed(path, "not a JSON object"));
    };
    let (format, oci) = if object.get("kind").and_then(Value::as_str) == Some(SPO_KIND) {
        let spo: SpoSeccompProfile = serde_json::from_value(value)
            .map_err(|err| malformed(path, format!("not a valid SeccompProfile: {err}")))?;
        (Format::Spo, spo.spec.to_oci())
    } else if object.contains_key("defaultAction") {
        let oci: OciSeccomp = serde_json::from_value(value)
            .map_err(|err| malformed(path, format!("not a valid OCI seccomp profile: {err}")))?;
        (Format::Oci, oci)
    } else if object.contains_key("workload_kind") {
        let profile: Profile = serde_json::from_value(value)
            .map_err(|err| malformed(path, format!("not a valid recorder profile: {err}")))?;
        // What the recorder saw, as an allow-list; it does not say which node it came from,
        // so only the compat ABIs its qualified names show are architectures.
        let mut names = BTreeSet::new();
        let mut architectures = BTreeSet::new();
        for name in profile.syscalls.keys() {
            let (bare, _) = unqualified(name);
            names.insert(bare.to_owned());
            if let Some(arch) = compat_seccomp_arch(name) {
                architectures.insert(arch.to_owned());
            }
        }
        let names: Vec<String> = names.into_iter().collect();
        let oci = OciSeccomp {
            default_action: crate::export::seccomp::DEFAULT_ACTION.to_owned(),
            default_errno_ret: Some(crate::export::seccomp::DEFAULT_ERRNO_RET),
            architectures: architectures.into_iter().collect(),
            flags: Vec::new(),
            listener_path: None,
            listener_metadata: None,
            syscalls: if names.is_empty() {
                Vec::new()
            } else {
                vec![OciSyscallRule::allow(names)]
            },
        };
        (Format::Json, oci)
    } else {
        return Err(malformed(
            path,
            "neither an OCI seccomp profile (defaultAction), a SeccompProfile (kind) nor a recorder profile (workload_kind)",
        ));
    };
    for rule in &oci.syscalls {
        if rule.names.is_empty() {
            return Err(malformed(path, "a syscall rule without names"));
        }
    }
    Ok(Policy {
        path: path.to_owned(),
        format,
        oci,
    })
}

/// What changed from one profile to another.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diff {
    /// Allowed by NEW, not by OLD.
    pub added: Vec<String>,
    /// Allowed by OLD, not by NEW.
    pub removed: Vec<String>,
    /// Architectures NEW lists and OLD does not (only when both list some).
    pub added_architectures: Vec<String>,
    /// Architectures OLD lists and NEW does not.
    pub removed_architectures: Vec<String>,
}

impl Diff {
    /// Whether NEW allows something OLD does not (a syscall or an architecture).
    pub fn needs_more(&self) -> bool {
        !self.added.is_empty() || !self.added_architectures.is_empty()
    }
}

/// Compares two allow-list policies.
pub fn diff(old: &Policy, new: &Policy) -> Result<Diff, CompareError> {
    for policy in [old, new] {
        if !policy.is_allow_list() {
            return Err(CompareError::Incompatible(format!(
                "{}: defaultAction {} lets unlisted calls through; diff compares allow-lists (a default that denies)",
                policy.path.display(),
                policy.oci.default_action
            )));
        }
    }
    let (old_names, new_names) = (old.allowed(), new.allowed());
    let owned = |names: Vec<&&str>| names.into_iter().map(|name| (*name).to_owned()).collect();
    let mut result = Diff {
        added: owned(new_names.difference(&old_names).collect()),
        removed: owned(old_names.difference(&new_names).collect()),
        ..Diff::default()
    };
    if !old.oci.architectures.is_empty() && !new.oci.architectures.is_empty() {
        let old_arch: BTreeSet<&String> = old.oci.architectures.iter().collect();
        let new_arch: BTreeSet<&String> = new.oci.architectures.iter().collect();
        result.added_architectures = new_arch
            .difference(&old_arch)
            .map(|arch| (*arch).clone())
            .collect();
        result.removed_architectures = old_arch
            .difference(&new_arch)
            .map(|arch| (*arch).clone())
            .collect();
    }
    Ok(result)
}

/// The union of OCI/SPO profiles: every architecture and flag of any input (first-seen order),
/// one allow rule with every name any input allows unconditionally, and the other rules of
/// the inputs (deduplicated) except those for names the union allows anyway. Inputs must
/// agree on `defaultAction`, `defaultErrnoRet` and the listener.
pub fn merge(policies: &[Policy]) -> Result<OciSeccomp, CompareError> {
    let Some(first) = policies.first() else {
        return Err(CompareError::Incompatible("nothing to merge".to_owned()));
    };
    for policy in policies {
        if policy.format == Format::Json {
            return Err(CompareError::Incompatible(format!(
                "{}: a recorder profile has no architectures; export it with --format oci to merge it",
                policy.path.display()
            )));
        }
        let (a, b) = (&first.oci, &policy.oci);
        if a.default_action != b.default_action {
            return Err(CompareError::Incompatible(format!(
                "refusing to merge different defaultActions: {} in {}, {} in {}",
                a.default_action,
                first.path.display(),
                b.default_action,
                policy.path.display()
            )));
        }
        // SPO has no defaultErrnoRet: its EPERM default equals an OCI defaultErrnoRet of 1.
        let errno = |p: &Policy| match (p.format, p.oci.default_errno_ret) {
            (Format::Spo, None) => Some(1),
            (_, errno) => errno,
        };
        if errno(first) != errno(policy) {
            return Err(CompareError::Incompatible(format!(
                "refusing to merge different defaultErrnoRet: {:?} in {}, {:?} in {}",
                errno(first),
                first.path.display(),
                errno(policy),
                policy.path.display()
            )));
        }
        if (&a.listener_path, &a.listener_metadata) != (&b.listener_path, &b.listener_metadata) {
            return Err(CompareError::Incompatible(format!(
                "refusing to merge different seccomp listeners ({} and {})",
                first.path.display(),
                policy.path.display()
            )));
        }
    }
    let mut unconditional = BTreeSet::new();
    for policy in policies {
        for rule in &policy.oci.syscalls {
            if rule.is_unconditional_allow() {
                unconditional.extend(rule.names.iter().cloned());
            }
        }
    }
    let mut merged = OciSeccomp {
        default_action: first.oci.default_action.clone(),
        default_errno_ret: policies
            .iter()
            .find_map(|policy| policy.oci.default_errno_ret),
        architectures: Vec::new(),
        flags: Vec::new(),
        listener_path: first.oci.listener_path.clone(),
        listener_metadata: first.oci.listener_metadata.clone(),
        syscalls: Vec::new(),
    };
    if !unconditional.is_empty() {
        merged.syscalls.push(OciSyscallRule::allow(
            unconditional.iter().cloned().collect(),
        ));
    }
    for policy in policies {
        for arch in &policy.oci.architectures {
            if !merged.architectures.contains(arch) {
                merged.architectures.push(arch.clone());
            }
        }
        for flag in &policy.oci.flags {
            if !merged.flags.contains(flag) {
                merged.flags.push(flag.clone());
            }
        }
        for rule in &policy.oci.syscalls {
            if rule.is_unconditional_allow() {
                continue;
            }
            let names: Vec<String> = rule
                .names
                .iter()
                .filter(|name| !unconditional.contains(*name))
                .cloned()
                .collect();
            if names.is_empty() {
                continue;
            }
            let rule = OciSyscallRule {
                names,
                ..rule.clone()
            };
            if !merged.syscalls.contains(&rule) {
                merged.syscalls.push(rule);
            }
        }
    }
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        export::seccomp::{oci_allow_list, spo_profile},
        profile::Identity,
        profile::syscalls::Arch,
    };

    fn oci(names: &[&str], arch: Arch) -> Policy {
        Policy {
            path: PathBuf::from(format!("{}.json", names.join("-"))),
            format: Format::Oci,
            oci: oci_allow_list(names.iter().copied(), arch),
        }
    }

    #[test]
    fn reads_every_format() {
        let path = Path::new("p.json");
        let from_oci = parse_policy(
            path,
            &serde_json::to_string(&oci_allow_list(["read", "write"], Arch::X86_64)).expect("json"),
        )
        .expect("oci");
        assert_eq!(from_oci.format, Format::Oci);
        assert_eq!(
            from_oci.allowed().into_iter().collect::<Vec<_>>(),
            ["read", "write"]
        );

        let mut profile = Profile::new(
            Identity::new("", "Pod", "uid", "cid"),
            std::time::SystemTime::UNIX_EPOCH,
        );
        profile.syscalls.insert("read".into(), 3);
        profile.syscalls.insert("mkdir".into(), 1);
        let from_json =
            parse_policy(path, &serde_json::to_string(&profile).expect("json")).expect("recorder");
        assert_eq!(from_json.format, Format::Json);
        assert_eq!(
            from_json.allowed().into_iter().collect::<Vec<_>>(),
            ["mkdir", "read"]
        );
        assert!(from_json.oci.architectures.is_empty());

        let empty = Profile::new(
            Identity::new("", "Pod", "uid", "idle"),
            std::time::SystemTime::UNIX_EPOCH,
        );
        let from_empty =
            parse_policy(path, &serde_json::to_string(&empty).expect("json")).expect("empty");
        assert!(from_empty.allowed().is_empty());

        let spo = spo_profile(&profile, Arch::X86_64);
        let from_spo =
            parse_policy(path, &serde_json::to_string(&spo).expect("json")).expect("spo");
        assert_eq!(from_spo.format, Format::Spo);
        assert_eq!(from_spo.allowed(), from_json.allowed());

        for bad in [
            "",
            "[]",
            "{}",
            "{\"defaultAction\": 3}",
            "{\"kind\":\"SeccompProfile\"}",
            r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":[],"action":"SCMP_ACT_ALLOW"}]}"#,
        ] {
            let err = parse_policy(path, bad).expect_err(bad);
            assert!(err.to_string().starts_with("p.json: "), "{err}");
        }
    }

    #[test]
    fn diff_gates_on_added_names_and_architectures() {
        let old = oci(&["read", "write"], Arch::X86_64);
        let same = diff(&old, &old).expect("diff");
        assert_eq!(same, Diff::default());
        assert!(!same.needs_more());
        let new = oci(&["read", "mkdir"], Arch::X86_64);
        let d = diff(&old, &new).expect("diff");
        assert_eq!(
            (d.added.as_slice(), d.removed.as_slice()),
            (&["mkdir".to_owned()][..], &["write".to_owned()][..])
        );
        assert!(d.needs_more());
        let fewer = oci(&["read"], Arch::X86_64);
        assert!(!diff(&old, &fewer).expect("diff").needs_more());
        let arm = oci(&["read", "write"], Arch::Aarch64);
        let d = diff(&old, &arm).expect("diff");
        assert!(d.needs_more() && d.added.is_empty(), "{d:?}");
        assert_eq!(d.added_architectures, ["SCMP_ARCH_AARCH64"]);
        let mut permissive = old.clone();
        permissive.oci.default_action = "SCMP_ACT_ALLOW".into();
        assert!(diff(&old, &permissive).is_err());
    }

    #[test]
    fn merge_is_a_union_and_refuses_mixed_defaults() {
        let a = oci(&["read", "write"], Arch::X86_64);
        let b = oci(&["clone3", "read", "mkdir"], Arch::Aarch64);
        let merged = merge(&[a.clone(), b.clone()]).expect("merge");
        assert_eq!(
            merged.syscalls.len(),
            1,
            "clone3 allowed by b: no ENOSYS rule left"
        );
        assert_eq!(
            merged.syscalls[0].names,
            ["clone3", "mkdir", "read", "write"]
        );
        assert_eq!(
            merged.architectures,
            ["SCMP_ARCH_X86_64", "SCMP_ARCH_AARCH64"]
        );
        assert_eq!(merged.default_errno_ret, Some(1));
        // Without clone3 anywhere, the ENOSYS rule survives once.
        let merged = merge(&[a.clone(), a.clone()]).expect("merge");
        assert_eq!(merged, a.oci);
        let mut kill = b.clone();
        kill.oci.default_action = "SCMP_ACT_KILL_PROCESS".into();
        let err = merge(&[a.clone(), kill]).expect_err("mixed");
        assert!(err.to_string().contains("defaultAction"), "{err}");
        let mut errno = b;
        errno.oci.default_errno_ret = Some(38);
        assert!(merge(&[a, errno]).is_err());
    }
}
