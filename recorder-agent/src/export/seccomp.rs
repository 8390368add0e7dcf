//! Seccomp profile formats: building an OCI runtime-spec `linux.seccomp` allow-list from a
//! learned syscall set, reading one back, the security-profiles-operator `SeccompProfile`
//! resource, and [`render`], the one function that turns a profile into any export format
//! (used by the API, the CLI and the kubelet-dir delivery).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::{
    export::Format,
    profile::{
        Profile,
        syscalls::{Arch, unqualified},
    },
};

/// `SCMP_ACT_ERRNO` with EPERM, what a call outside the profile gets.
pub const DEFAULT_ACTION: &str = "SCMP_ACT_ERRNO";
/// EPERM.
pub const DEFAULT_ERRNO_RET: u32 = 1;
/// ENOSYS: glibc falls back from clone3 to clone only on ENOSYS, never on EPERM.
const ENOSYS: u32 = 38;

/// OCI runtime-spec `linux.seccomp`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OciSeccomp {
    /// Action for calls no rule matches.
    pub default_action: String,
    /// errno for `SCMP_ACT_ERRNO` as default action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_errno_ret: Option<u32>,
    /// `SCMP_ARCH_*` names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub architectures: Vec<String>,
    /// `SECCOMP_FILTER_FLAG_*` names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<String>,
    /// Seccomp notify socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener_path: Option<String>,
    /// Opaque data for the listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener_metadata: Option<String>,
    /// Rules.
    #[serde(default)]
    pub syscalls: Vec<OciSyscallRule>,
}

/// One rule of an OCI seccomp profile.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OciSyscallRule {
    /// Syscall names (at least one).
    pub names: Vec<String>,
    /// `SCMP_ACT_*`.
    pub action: String,
    /// errno for `SCMP_ACT_ERRNO`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno_ret: Option<u32>,
    /// Argument filters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<OciSyscallArg>,
}

impl OciSyscallRule {
    /// `SCMP_ACT_ALLOW` for `names`, unconditionally.
    pub fn allow(names: Vec<String>) -> Self {
        Self {
            names,
            action: "SCMP_ACT_ALLOW".to_owned(),
            errno_ret: None,
            args: Vec::new(),
        }
    }

    /// Whether the rule allows its names whatever the arguments.
    pub fn is_unconditional_allow(&self) -> bool {
        self.action == "SCMP_ACT_ALLOW" && self.args.is_empty()
    }
}

/// An argument filter of a rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OciSyscallArg {
    /// Argument index.
    pub index: u32,
    /// Value compared.
    pub value: u64,
    /// Second value (masked equality).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub value_two: u64,
    /// `SCMP_CMP_*`.
    pub op: String,
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

/// The allow-list profile for a syscall set: default `SCMP_ACT_ERRNO` (EPERM), the node's
/// architecture (and its compat ABI only when the set has compat calls), one `SCMP_ACT_ALLOW`
/// rule with the sorted names. Compat names lose their qualifier: an OCI rule cannot name an
/// ABI, so the rule's names apply to every listed architecture (libseccomp resolves each name
/// in each ABI's own table). When `clone3` was never called it gets ENOSYS instead of EPERM,
/// so a libc that tries clone3 first falls back to clone instead of failing thread creation.
pub fn oci_allow_list<'a>(names: impl IntoIterator<Item = &'a str>, arch: Arch) -> OciSeccomp {
    let mut compat = false;
    let names: BTreeSet<&str> = names
        .into_iter()
        .map(|name| {
            let (bare, qualified) = unqualified(name);
            compat |= qualified;
            bare
        })
        .collect();
    let mut rules = Vec::new();
    if !names.is_empty() {
        rules.push(OciSyscallRule::allow(
            names.iter().map(|name| (*name).to_owned()).collect(),
        ));
    }
    if !names.contains("clone3") {
        rules.push(OciSyscallRule {
            names: vec!["clone3".to_owned()],
            action: "SCMP_ACT_ERRNO".to_owned(),
            errno_ret: Some(ENOSYS),
            args: Vec::new(),
        });
    }
    OciSeccomp {
        default_action: DEFAULT_ACTION.to_owned(),
        default_errno_ret: Some(DEFAULT_ERRNO_RET),
        architectures: arch
            .seccomp_architectures(compat)
            .iter()
            .map(|name| (*name).to_owned())
            .collect(),
        flags: Vec::new(),
        listener_path: None,
        listener_metadata: None,
        syscalls: rules,
    }
}

impl OciSeccomp {
    /// The names of this profile's `SCMP_ACT_ALLOW` rules (argument filters not looked at:
    /// a name allowed for some arguments counts as allowed).
    pub fn allowed_names(&self) -> BTreeSet<&str> {
        self.syscalls
            .iter()
            .filter(|rule| rule.action == "SCMP_ACT_ALLOW")
            .flat_map(|rule| rule.names.iter().map(String::as_str))
            .collect()
    }
}

/// API group/version of the SPO resource: v1beta1 is the version every SPO release since 0.4
/// serves (v1 is only stored since 1.0, and converted on read).
pub const SPO_API_VERSION: &str = "security-profiles-operator.x-k8s.io/v1beta1";
/// Kind of the SPO resource.
pub const SPO_KIND: &str = "SeccompProfile";
/// Label and annotation prefix of the identity on exported resources.
pub const ANNOTATION_PREFIX: &str = "syscall-recorder.io/";

/// A security-profiles-operator `SeccompProfile` (the served v1beta1 shape).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SpoSeccompProfile {
    /// [`SPO_API_VERSION`].
    pub api_version: String,
    /// [`SPO_KIND`].
    pub kind: String,
    /// Name, labels and annotations.
    pub metadata: SpoMetadata,
    /// The profile.
    pub spec: SpoSpec,
}

/// Object metadata of an exported resource.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpoMetadata {
    /// DNS-1123 subdomain name, unique per identity (see [`spo_name`]).
    pub name: String,
    /// Namespace (set when read back; SeccompProfile is cluster-scoped, the export leaves it out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Selectable labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The full identity and when the profile was learned.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// `spec` of a `SeccompProfile`: the OCI fields SPO accepts, without `defaultErrnoRet`
/// (the v1beta1 schema has no such field; SPO's default errno is EPERM anyway).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SpoSpec {
    /// Action for calls no rule matches.
    pub default_action: String,
    /// `SCMP_ARCH_*` names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub architectures: Vec<String>,
    /// `SECCOMP_FILTER_FLAG_*` names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<String>,
    /// Rules.
    #[serde(default)]
    pub syscalls: Vec<OciSyscallRule>,
}

impl SpoSpec {
    /// The same policy as an OCI profile (EPERM as default errno, as SPO does).
    pub fn to_oci(&self) -> OciSeccomp {
        OciSeccomp {
            default_action: self.default_action.clone(),
            default_errno_ret: None,
            architectures: self.architectures.clone(),
            flags: self.flags.clone(),
            listener_path: None,
            listener_metadata: None,
            syscalls: self.syscalls.clone(),
        }
    }
}

/// 64-bit FNV-1a: a stable hash (the same on every node and release) for short name suffixes.
pub fn fnv1a64(parts: &[&str]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        // A separator byte that cannot occur in a part keeps ("ab","c") apart from ("a","bc").
        for byte in part.bytes().chain([0u8]) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

/// The cluster-wide resource name of an identity: the lowercased parts with every run of other
/// characters turned into `-`, truncated, then `-` and 10 hex digits of a hash of the exact
/// identity. Valid as a DNS-1123 label (so also as a subdomain and a file name), at most 63
/// characters, and distinct for distinct identities even when sanitising maps them together
/// (`a_b` and `a.b`, or long names sharing a prefix).
pub fn spo_name(profile: &Profile) -> String {
    let identity = &profile.identity;
    let parts = [
        identity.namespace.as_str(),
        identity.workload_kind.as_str(),
        identity.workload.as_str(),
        identity.container.as_str(),
    ];
    let mut base = String::new();
    for part in parts.iter().filter(|part| !part.is_empty()) {
        if !base.is_empty() {
            base.push('-');
        }
        for ch in part.chars() {
            let ch = ch.to_ascii_lowercase();
            if ch.is_ascii_lowercase() || ch.is_ascii_digit() {
                base.push(ch);
            } else if !base.ends_with('-') {
                base.push('-');
            }
        }
    }
    const HASH_LEN: usize = 10;
    // 63 = name, '-', hash.
    base.truncate(63 - 1 - HASH_LEN);
    let base = base.trim_matches('-');
    let base = if base.is_empty() { "profile" } else { base };
    let hash = fnv1a64(&parts);
    format!(
        "{base}-{:0width$x}",
        hash >> (64 - 4 * HASH_LEN),
        width = HASH_LEN
    )
}

/// Whether `value` is a valid Kubernetes label value (at most 63 characters, alphanumerics
/// with `-`, `_`, `.` inside).
fn is_label_value(value: &str) -> bool {
    value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && value
            .bytes()
            .next()
            .is_none_or(|b| b.is_ascii_alphanumeric())
        && value
            .bytes()
            .last()
            .is_none_or(|b| b.is_ascii_alphanumeric())
}

/// The names of a profile that have a syscall number on `arch`: a name learned elsewhere (a
/// restored or hand-edited state) never reaches a seccomp filter, which would refuse it.
fn allowed_on(profile: &Profile, arch: Arch) -> impl Iterator<Item = &str> {
    profile
        .syscalls
        .keys()
        .map(String::as_str)
        .filter(move |name| arch.syscall_number(name).is_some())
}

/// The SPO resource of a profile learned on an `arch` node.
pub fn spo_profile(profile: &Profile, arch: Arch) -> SpoSeccompProfile {
    let oci = oci_profile(profile, arch);
    let identity = &profile.identity;
    let mut labels = BTreeMap::new();
    labels.insert(
        "app.kubernetes.io/managed-by".to_owned(),
        "syscall-recorder".to_owned(),
    );
    for (key, value) in [
        ("namespace", identity.namespace.as_str()),
        ("workload-kind", identity.workload_kind.as_str()),
        ("workload", &identity.workload),
        ("container", &identity.container),
    ] {
        if !value.is_empty() && is_label_value(value) {
            labels.insert(format!("{ANNOTATION_PREFIX}{key}"), value.to_owned());
        }
    }
    let mut annotations = BTreeMap::new();
    for (key, value) in [
        ("namespace", identity.namespace.clone()),
        ("workload-kind", identity.workload_kind.to_string()),
        ("workload", identity.workload.clone()),
        ("container", identity.container.clone()),
        ("architecture", arch.to_string()),
        (
            "first-seen",
            humantime::format_rfc3339_seconds(profile.first_seen).to_string(),
        ),
        (
            "last-new-syscall",
            humantime::format_rfc3339_seconds(profile.last_new_syscall).to_string(),
        ),
    ] {
        annotations.insert(format!("{ANNOTATION_PREFIX}{key}"), value);
    }
    SpoSeccompProfile {
        api_version: SPO_API_VERSION.to_owned(),
        kind: SPO_KIND.to_owned(),
        metadata: SpoMetadata {
            name: spo_name(profile),
            namespace: None,
            labels,
            annotations,
        },
        spec: SpoSpec {
            default_action: oci.default_action,
            architectures: oci.architectures,
            flags: Vec::new(),
            syscalls: oci.syscalls,
        },
    }
}

/// The OCI allow-list of a profile learned on an `arch` node.
pub fn oci_profile(profile: &Profile, arch: Arch) -> OciSeccomp {
    oci_allow_list(allowed_on(profile, arch), arch)
}

/// A profile in an export format, as pretty JSON with a final newline (SPO too: `kubectl
/// apply -f` reads JSON, and it keeps the agent free of a YAML dependency).
pub fn render(format: Format, profile: &Profile, arch: Arch) -> Vec<u8> {
    let result = match format {
        Format::Oci => serde_json::to_vec_pretty(&oci_profile(profile, arch)),
        Format::Spo => serde_json::to_vec_pretty(&spo_profile(profile, arch)),
        Format::Json => serde_json::to_vec_pretty(profile),
    };
    let mut bytes =
        result.expect("string-keyed maps and infallible serialisers cannot fail to serialise");
    bytes.push(b'\n');
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_x86_64() {
        let profile = oci_allow_list(["write", "read", "execve", "read"], Arch::X86_64);
        let json = serde_json::to_string_pretty(&profile).expect("json");
        let golden = r#"{
  "defaultAction": "SCMP_ACT_ERRNO",
  "defaultErrnoRet": 1,
  "architectures": [
    "SCMP_ARCH_X86_64"
  ],
  "syscalls": [
    {
      "names": [
        "execve",
        "read",
        "write"
      ],
      "action": "SCMP_ACT_ALLOW"
    },
    {
      "names": [
        "clone3"
      ],
      "action": "SCMP_ACT_ERRNO",
      "errnoRet": 38
    }
  ]
}"#;
        assert_eq!(json, golden);
        let back: OciSeccomp = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, profile);
        assert_eq!(
            back.allowed_names().into_iter().collect::<Vec<_>>(),
            ["execve", "read", "write"]
        );
    }

    #[test]
    fn clone3_recorded_and_aarch64() {
        let profile = oci_allow_list(["clone3", "read"], Arch::Aarch64);
        assert_eq!(profile.architectures, ["SCMP_ARCH_AARCH64"]);
        assert_eq!(profile.syscalls.len(), 1);
        assert_eq!(profile.syscalls[0].names, ["clone3", "read"]);
    }

    #[test]
    fn compat_names_add_their_architecture_and_lose_their_qualifier() {
        let profile = oci_allow_list(["read", "x86:getuid32", "x86:read"], Arch::X86_64);
        assert_eq!(profile.architectures, ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"]);
        assert_eq!(profile.syscalls[0].names, ["getuid32", "read"]);
    }

    #[test]
    fn reads_full_oci_shape() {
        let text = r#"{"defaultAction":"SCMP_ACT_ERRNO","architectures":["SCMP_ARCH_X86_64"],
            "flags":["SECCOMP_FILTER_FLAG_LOG"],"listenerPath":"/run/x.sock",
            "syscalls":[{"names":["personality"],"action":"SCMP_ACT_ALLOW",
            "args":[{"index":0,"value":8,"valueTwo":0,"op":"SCMP_CMP_EQ"}]}]}"#;
        let profile: OciSeccomp = serde_json::from_str(text).expect("parse");
        assert_eq!(profile.flags, ["SECCOMP_FILTER_FLAG_LOG"]);
        assert_eq!(profile.syscalls[0].args[0].op, "SCMP_CMP_EQ");
        assert_eq!(profile.default_errno_ret, None);
    }

    fn profile(namespace: &str, kind: &str, workload: &str, container: &str) -> Profile {
        let mut profile = Profile::new(
            crate::profile::Identity::new(namespace, kind, workload, container),
            std::time::SystemTime::UNIX_EPOCH,
        );
        for name in ["read", "write", "not_a_syscall", "123"] {
            profile.syscalls.insert(name.to_owned(), 1);
        }
        profile
    }

    fn is_dns1123_label(name: &str) -> bool {
        !name.is_empty()
            && name.len() <= 63
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !name.starts_with('-')
            && !name.ends_with('-')
    }

    #[test]
    fn spo_names_are_valid_and_unique() {
        let long = "w".repeat(300);
        let identities = [
            ("team-a", "Deployment", "web", "nginx"),
            ("team-a", "Deployment", "web", "Nginx"),
            (
                "",
                "Pod",
                "8a1f0c4e-1b2c-4d3e-9f00-123456789abc",
                &"ab".repeat(32),
            ),
            ("", "Cgroup", "system.slice/cron.service", ""),
            ("", "Cgroup", "system.slice/cron_service", ""),
            ("", "Cgroup", "/", ""),
            ("", "", "", ""),
            ("ns", "Deployment", &long, "a"),
            ("ns", "Deployment", &long, "b"),
            ("ns", "Deployment", "wé--ird..", "-"),
        ];
        let mut names = BTreeSet::new();
        for (ns, kind, workload, container) in identities {
            let name = spo_name(&profile(ns, kind, workload, container));
            assert!(is_dns1123_label(&name), "{name}");
            assert!(names.insert(name.clone()), "duplicate {name}");
            // Stable across calls (and releases: FNV-1a is fixed).
            assert_eq!(name, spo_name(&profile(ns, kind, workload, container)));
        }
        assert!(
            spo_name(&profile("team-a", "Deployment", "web", "nginx"))
                .starts_with("team-a-deployment-web-nginx-")
        );
    }

    #[test]
    fn spo_shape_and_render() {
        let profile = profile("team-a", "Deployment", "web", "nginx");
        let json: serde_json::Value =
            serde_json::from_slice(&render(Format::Spo, &profile, Arch::X86_64)).expect("spo json");
        assert_eq!(json["apiVersion"], SPO_API_VERSION);
        assert_eq!(json["kind"], "SeccompProfile");
        assert!(
            json["metadata"].get("namespace").is_none(),
            "cluster-scoped"
        );
        assert_eq!(
            json["metadata"]["labels"]["syscall-recorder.io/workload"],
            "web"
        );
        assert_eq!(
            json["metadata"]["annotations"]["syscall-recorder.io/container"],
            "nginx"
        );
        let spec = &json["spec"];
        assert_eq!(spec["defaultAction"], "SCMP_ACT_ERRNO");
        assert!(
            spec.get("defaultErrnoRet").is_none(),
            "not in the v1beta1 schema"
        );
        assert_eq!(spec["architectures"][0], "SCMP_ARCH_X86_64");
        // Names without a number on the node never reach a filter.
        assert_eq!(
            spec["syscalls"][0]["names"],
            serde_json::json!(["read", "write"])
        );
        let oci: OciSeccomp =
            serde_json::from_slice(&render(Format::Oci, &profile, Arch::X86_64)).expect("oci");
        assert_eq!(
            oci.allowed_names().into_iter().collect::<Vec<_>>(),
            ["read", "write"]
        );
        assert_eq!(oci.default_errno_ret, Some(1));
        let back: Profile =
            serde_json::from_slice(&render(Format::Json, &profile, Arch::X86_64)).expect("json");
        assert_eq!(back, profile);
        assert!(render(Format::Oci, &profile, Arch::X86_64).ends_with(b"}\n"));
    }
}
