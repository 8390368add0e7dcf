//! Export: a profile in the formats users feed to runtimes and operators ([`seccomp`]: OCI
//! seccomp JSON, SPO `SeccompProfile`), reading such files back to compare and merge them
//! ([`compare`]), and writing profiles to the kubelet's seccomp dir ([`delivery`]).

pub mod compare;
pub mod delivery;
pub mod publish;
pub mod seccomp;

use std::{fmt, str::FromStr};

/// The one format type of every place that writes or reads a profile: the CLI's `--format`,
/// the API's `?format=`, delivery, and the format a file was read in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Format {
    /// OCI runtime-spec seccomp profile (what runc, containerd, CRI-O and kubelet read).
    Oci,
    /// security-profiles-operator SeccompProfile (v1beta1).
    Spo,
    /// The recorder's profile JSON (counts, first/last seen).
    Json,
}

impl Format {
    /// Every format, in the order help texts list them.
    pub const ALL: [Self; 3] = [Self::Oci, Self::Spo, Self::Json];

    /// The name on the command line and in `?format=`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Oci => "oci",
            Self::Spo => "spo",
            Self::Json => "json",
        }
    }

    /// What people call it, for messages.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Oci => "OCI seccomp",
            Self::Spo => "SeccompProfile",
            Self::Json => "profile JSON",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A format name that is none of [`Format::ALL`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown format {0:?} (json, oci, spo)")]
pub struct UnknownFormat(pub String);

impl FromStr for Format {
    type Err = UnknownFormat;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|format| format.as_str() == name)
            .ok_or_else(|| UnknownFormat(name.to_owned()))
    }
}
