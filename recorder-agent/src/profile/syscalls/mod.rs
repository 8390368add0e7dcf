//! Syscall names per architecture, and the seccomp architecture names that go with them.
//! Owns the only mapping from kernel syscall numbers to names in the agent.
//!
//! A node architecture has two syscall tables: its own and its 32-bit compat ABI's (i386 on
//! x86_64, AArch32 on aarch64), whose numbers mean other calls. Both share one number space
//! here: native calls are `0..`[`COMPAT_BASE`], compat call `nr` is `COMPAT_BASE + nr`. Compat
//! names are qualified with the ABI (`x86:getuid32`, `arm:read`), so every set, count, state
//! file, metric label, bitmap and diff keeps them apart from native calls without a field of
//! their own; only a seccomp profile, which lists the ABI in `architectures`, drops the prefix.

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

    /// The name of call `nr` of the shared number space (a compat call's qualified, see the
    /// module docs), or `None` when this architecture has no syscall with that number (the
    /// caller counts it as unknown; a name is never invented).
    pub fn syscall_name(self, nr: usize) -> Option<&'static str> {
        let (table, nr) = match nr.checked_sub(COMPAT_BASE) {
            None => (self.table(), nr),
            Some(compat) => (self.compat_table(), compat),
        };
        table.get(nr).copied().filter(|name| !name.is_empty())
    }

    /// The number of a syscall name, the inverse of [`Self::syscall_name`].
    pub fn syscall_number(self, name: &str) -> Option<usize> {
        if name.is_empty() {
            return None;
        }
        match name.split_once(':') {
            None => self.table().iter().position(|candidate| *candidate == name),
            Some((abi, _)) if abi == self.compat_abi() => self
                .compat_table()
                .iter()
                .position(|candidate| *candidate == name)
                .map(|nr| COMPAT_BASE + nr),
            Some(_) => None,
        }
    }

    /// Names by number; `""` where a number has no syscall.
    fn table(self) -> &'static [&'static str] {
        match self {
            Self::X86_64 => &tables::X86_64,
            Self::Aarch64 => &tables::AARCH64,
        }
    }

    /// The compat ABI's qualified names by number.
    fn compat_table(self) -> &'static [&'static str] {
        match self {
            Self::X86_64 => &tables::I386,
            Self::Aarch64 => &tables::ARM,
        }
    }

    /// The qualifier of this architecture's compat ABI (`x86`, `arm`).
    pub fn compat_abi(self) -> &'static str {
        match self {
            Self::X86_64 => "x86",
            Self::Aarch64 => "arm",
        }
    }

    /// The `SCMP_ARCH_*` names a seccomp profile for this architecture lists: the native one,
    /// and the compat ABI's only when `compat` calls were seen, so a 64-bit-only workload's
    /// filter refuses every 32-bit entry. x32 (x86_64's third ABI) is never listed: its calls
    /// are counted as unknown, and a filter without it refuses them.
    pub fn seccomp_architectures(self, compat: bool) -> &'static [&'static str] {
        match (self, compat) {
            (Self::X86_64, false) => &["SCMP_ARCH_X86_64"],
            (Self::X86_64, true) => &["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
            (Self::Aarch64, false) => &["SCMP_ARCH_AARCH64"],
            (Self::Aarch64, true) => &["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
        }
    }
}

/// What a Go program's runtime may call at any moment, whatever the program does: scheduler
/// and timers (`futex`, `nanosleep`, `sched_yield`), signal-based preemption (`tgkill`, and
/// `rt_sigreturn` on return from the handler), new threads, memory for the heap and the
/// garbage collector, the network poller. runc's init is a Go program that runs for a moment
/// under the container's filter (after the filter is applied and before the container's
/// program starts), so every container's profile allows these when runc's set-up was seen on
/// the node; without `rt_sigreturn`, a preemption signal that lands in that moment kills the
/// container at start (SIGSEGV). Which of them one start makes is chance, so learning alone
/// would take many starts to find them all.
pub const GO_RUNTIME_CALLS: [&str; 25] = [
    "clone",
    "close",
    "epoll_ctl",
    "epoll_pwait",
    "exit",
    "exit_group",
    "fcntl",
    "futex",
    "getpid",
    "getrandom",
    "gettid",
    "madvise",
    "mmap",
    "mprotect",
    "munmap",
    "nanosleep",
    "read",
    "rt_sigaction",
    "rt_sigprocmask",
    "rt_sigreturn",
    "sched_getaffinity",
    "sched_yield",
    "sigaltstack",
    "tgkill",
    "write",
];

/// Where compat calls start in the shared number space (the kernel's counter columns).
pub const COMPAT_BASE: usize = recorder_ebpf::SYSCALL_COLUMNS;
/// Size of the shared number space.
pub const NUMBERS: usize = 2 * COMPAT_BASE;

/// The `SCMP_ARCH_*` name of a compat call's ABI (`x86:getuid32` → `SCMP_ARCH_X86`), `None`
/// for a native name.
pub fn compat_seccomp_arch(name: &str) -> Option<&'static str> {
    match name.split_once(':')?.0 {
        "x86" => Some("SCMP_ARCH_X86"),
        "arm" => Some("SCMP_ARCH_ARM"),
        _ => None,
    }
}

/// A name as a seccomp filter knows it: without the compat qualifier, and whether it had one.
pub fn unqualified(name: &str) -> (&str, bool) {
    match name.split_once(':') {
        Some((_, bare)) => (bare, true),
        None => (name, false),
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
            for nr in 0..NUMBERS {
                if let Some(name) = arch.syscall_name(nr) {
                    assert!(seen.insert(name), "{arch}: {name} twice");
                    let (bare, compat) = unqualified(name);
                    assert_eq!(compat, nr >= COMPAT_BASE, "{arch}: {name}");
                    assert!(
                        bare.bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                        "{arch}: odd name {name}"
                    );
                    assert_eq!(arch.syscall_number(name), Some(nr), "{arch}: {name}");
                }
            }
            assert!(seen.len() > 700, "{arch}: tables too small");
        }
        // The out-of-range column never has a name.
        assert_eq!(
            Arch::X86_64.syscall_name(recorder_ebpf::OUT_OF_RANGE_COLUMN as usize),
            None
        );
    }

    #[test]
    fn compat_calls_have_their_own_qualified_names() {
        // The misnamings of the issue: ia32 numbers read from the x86_64 table.
        for (nr, native, compat) in [
            (199, "fremovexattr", "x86:getuid32"),
            (3, "close", "x86:read"),
            (5, "fstat", "x86:open"),
            (102, "getuid", "x86:socketcall"),
        ] {
            assert_eq!(Arch::X86_64.syscall_name(nr), Some(native));
            assert_eq!(Arch::X86_64.syscall_name(COMPAT_BASE + nr), Some(compat));
            assert_eq!(Arch::X86_64.syscall_number(compat), Some(COMPAT_BASE + nr));
        }
        assert_eq!(
            Arch::Aarch64.syscall_name(COMPAT_BASE + 3),
            Some("arm:read")
        );
        assert_eq!(
            Arch::Aarch64.syscall_number("arm:getuid32"),
            Some(COMPAT_BASE + 199)
        );
        // Another architecture's compat names have no number here.
        assert_eq!(Arch::X86_64.syscall_number("arm:read"), None);
        assert_eq!(Arch::Aarch64.syscall_number("x86:read"), None);
        assert_eq!(Arch::X86_64.syscall_name(NUMBERS), None);
        assert_eq!(unqualified("x86:getuid32"), ("getuid32", true));
        assert_eq!(unqualified("read"), ("read", false));
    }

    #[test]
    fn architectures_with_sub_architectures() {
        assert_eq!(
            Arch::X86_64.seccomp_architectures(false),
            ["SCMP_ARCH_X86_64"]
        );
        assert_eq!(
            Arch::X86_64.seccomp_architectures(true),
            ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"]
        );
        assert_eq!(
            Arch::Aarch64.seccomp_architectures(true),
            ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
        );
        assert_eq!(Arch::from_name("arm64"), Some(Arch::Aarch64));
        assert_eq!(Arch::from_name("riscv64"), None);
    }
}
