//! Syscall names per architecture, and the seccomp architecture names that go with them.
//! Owns the only mapping from kernel syscall numbers to names in the agent.

mod tables;

use std::fmt;

use serde::{Deserialize, Serialize};

/// An architecture whose syscall table the agent knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// x86_64 (its 32-bit ia32 and x32 sub-architectures share the seccomp filter).
    X86_64,
    /// aarch64 (with 32-bit arm as sub-architecture).
    Aarch64,
}

impl Arch {
    /// The architecture this binary runs on, if the agent supports it.
    pub fn host() -> Option<Self> {
        Self::from_name(std::env::consts::ARCH)
    }

    /// Parses `x86_64`/`amd64` or `aarch64`/`arm64`.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "x86_64" | "amd64" => Some(Self::X86_64),
            "aarch64" | "arm64" => Some(Self::Aarch64),
            _ => None,
        }
    }

    /// The name of syscall `nr`, or `None` when this architecture has no syscall with that
    /// number (the caller counts it as unknown; a name is never invented).
    pub fn syscall_name(self, nr: usize) -> Option<&'static str> {
        self.table()
            .get(nr)
            .copied()
            .filter(|name| !name.is_empty())
    }

    /// The number of a syscall name, the inverse of [`Self::syscall_name`].
    pub fn syscall_number(self, name: &str) -> Option<usize> {
        if name.is_empty() {
            return None;
        }
        self.table().iter().position(|candidate| *candidate == name)
    }

    /// Names by number; `""` where a number has no syscall.
    fn table(self) -> &'static [&'static str] {
        match self {
            Self::X86_64 => &tables::X86_64,
            Self::Aarch64 => &tables::AARCH64,
        }
    }

    /// The `SCMP_ARCH_*` names a seccomp profile for this architecture lists: the native one
    /// first, then the sub-architectures a node of this kind can run.
    pub fn seccomp_architectures(self) -> &'static [&'static str] {
        match self {
            Self::X86_64 => &["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            Self::Aarch64 => &["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::X86_64 => "x86_64",
            Self::Aarch64 => "aarch64",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn x86_64_known_numbers() {
        let arch = Arch::X86_64;
        for (nr, name) in [
            (0, "read"),
            (1, "write"),
            (2, "open"),
            (39, "getpid"),
            (59, "execve"),
            (63, "uname"),
            (83, "mkdir"),
            (110, "getppid"),
            (231, "exit_group"),
            (257, "openat"),
            (258, "mkdirat"),
            (435, "clone3"),
            (462, "mseal"),
            (469, "file_setattr"),
        ] {
            assert_eq!(arch.syscall_name(nr), Some(name), "x86_64 {nr}");
            assert_eq!(arch.syscall_number(name), Some(nr));
        }
    }

    #[test]
    fn aarch64_known_numbers() {
        let arch = Arch::Aarch64;
        for (nr, name) in [
            (0, "io_setup"),
            (34, "mkdirat"),
            (56, "openat"),
            (63, "read"),
            (64, "write"),
            (93, "exit"),
            (94, "exit_group"),
            (160, "uname"),
            (172, "getpid"),
            (173, "getppid"),
            (221, "execve"),
            (435, "clone3"),
        ] {
            assert_eq!(arch.syscall_name(nr), Some(name), "aarch64 {nr}");
        }
        // aarch64 has no legacy open/mkdir.
        assert_eq!(arch.syscall_number("open"), None);
        assert_eq!(arch.syscall_number("mkdir"), None);
    }

    #[test]
    fn gaps_and_out_of_range_have_no_name() {
        // 335..=423 are unassigned on aarch64 and 337..=423 on x86_64.
        assert_eq!(Arch::X86_64.syscall_name(400), None);
        assert_eq!(Arch::Aarch64.syscall_name(300), None);
        assert_eq!(Arch::X86_64.syscall_name(511), None);
        assert_eq!(Arch::X86_64.syscall_name(usize::MAX), None);
        assert_eq!(Arch::X86_64.syscall_number(""), None);
    }

    #[test]
    fn every_name_is_unique_and_plain() {
        for arch in [Arch::X86_64, Arch::Aarch64] {
            let mut seen = std::collections::HashSet::new();
            for nr in 0..recorder_ebpf::SYSCALL_COLUMNS {
                if let Some(name) = arch.syscall_name(nr) {
                    assert!(seen.insert(name), "{arch}: {name} twice");
                    assert!(
                        name.bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                        "{arch}: odd name {name}"
                    );
                }
            }
            assert!(seen.len() > 300, "{arch}: table too small");
        }
        // The out-of-range column never has a name.
        assert_eq!(
            Arch::X86_64.syscall_name(recorder_ebpf::OUT_OF_RANGE_COLUMN as usize),
            None
        );
    }

    #[test]
    fn architectures_with_sub_architectures() {
        assert_eq!(
            Arch::X86_64.seccomp_architectures(),
            ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
        );
        assert_eq!(
            Arch::Aarch64.seccomp_architectures(),
            ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
        );
        assert_eq!(Arch::from_name("arm64"), Some(Arch::Aarch64));
        assert_eq!(Arch::from_name("riscv64"), None);
    }
}
