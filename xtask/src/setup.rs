//! `cargo xtask setup`: prerequisites of building and testing, installed when missing.
//!
//! Versions are the verified ones (see README "Toolchain"): bpf-linker 0.13.0 built against
//! Debian's LLVM 22 (the LLVM major of rustc's nightly), the `nightly` toolchain with
//! `rust-src` for `-Z build-std=core`.

use std::{
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use crate::run_cmd;

/// Debian packages: what each is for. The first ones are all a build needs.
const BUILD_PACKAGES: usize = 2;
const APT_PACKAGES: &[(&str, &str)] = &[
    ("llvm-22-dev", "bpf-linker links against libLLVM 22"),
    ("gcc", "linking, and the benchmark's syscall loop"),
    ("runc", "end-to-end tests run real containers"),
    (
        "busybox-static",
        "container root filesystems and test workloads",
    ),
    (
        "prometheus",
        "metrics tests scrape the agent with a real Prometheus",
    ),
];
/// PyPI packages the tests use: (package, command it provides).
const PIP_PACKAGES: &[(&str, &str)] = &[("kubernetes-validate", "kubernetes-validate")];
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

fn quiet(command: &mut Command) -> Option<String> {
    let output = command.stderr(Stdio::null()).output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

fn is_root() -> bool {
    quiet(Command::new("id").arg("-u")).is_some_and(|uid| uid.trim() == "0")
}

fn dpkg_installed(package: &str) -> bool {
    quiet(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_some_and(|status| status.contains("install ok installed"))
}

/// What to install.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Building the agent only (container image builds).
    Build,
    /// Building and testing.
    All,
}

/// Installs what is missing; a no-op (a few fast checks) when everything is present.
pub fn run(scope: Scope) -> anyhow::Result<()> {
    apt(scope)?;
    nightly_rust_src()?;
    bpf_linker()?;
    if scope == Scope::All {
        pip()?;
        cargo_fuzz()?;
    }
    Ok(())
}

/// bpftrace, the benchmark's peer: installed when possible, skipped (with a note) otherwise.
pub fn bpftrace() {
    if dpkg_installed("bpftrace") {
        eprintln!("setup: bpftrace present");
        return;
    }
    if !is_root() || !Path::new("/usr/bin/apt-get").exists() {
        eprintln!(
            "setup: bpftrace missing (apt-get install bpftrace); the benchmark skips the peer"
        );
        return;
    }
    let _ = run_cmd(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends", "bpftrace"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    );
}

fn cargo_fuzz() -> anyhow::Result<()> {
    if quiet(Command::new("cargo").args(["fuzz", "--version"])).is_some() {
        eprintln!("setup: cargo-fuzz present");
        return Ok(());
    }
    eprintln!("setup: installing cargo-fuzz (the parsers' fuzz targets)");
    run_cmd(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))
        .context("installing cargo-fuzz; run: cargo install cargo-fuzz --locked")
}

fn pip() -> anyhow::Result<()> {
    for (package, command) in PIP_PACKAGES {
        if quiet(Command::new(command).arg("--version")).is_some() {
            eprintln!("setup: {package} present");
            continue;
        }
        let python = if quiet(Command::new("python3").args(["-m", "pip", "--version"])).is_some() {
            "python3"
        } else {
            bail!(
                "cannot install {package}: no pip for python3; run: apt-get install python3-pip && python3 -m pip install {package}"
            );
        };
        // Debian's own python3 refuses system-wide pip installs (PEP 668) unless told.
        let mut install = Command::new(python);
        install.args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            package,
        ]);
        if Path::new("/usr/lib/python3.11/EXTERNALLY-MANAGED").exists() {
            install.arg("--break-system-packages");
        }
        run_cmd(&mut install).with_context(|| {
            format!("installing {package}; run: python3 -m pip install {package}")
        })?;
    }
    Ok(())
}

fn apt(scope: Scope) -> anyhow::Result<()> {
    let wanted = match scope {
        Scope::Build => &APT_PACKAGES[..BUILD_PACKAGES],
        Scope::All => APT_PACKAGES,
    };
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|(package, _)| !dpkg_installed(package))
        .map(|(package, _)| *package)
        .collect();
    if missing.is_empty() {
        eprintln!(
            "setup: apt packages present ({})",
            APT_PACKAGES
                .iter()
                .map(|p| p.0)
                .collect::<Vec<_>>()
                .join(", ")
        );
        return Ok(());
    }
    for (package, why) in APT_PACKAGES.iter().filter(|(p, _)| missing.contains(p)) {
        eprintln!("setup: missing {package}: {why}");
    }
    let install = format!(
        "apt-get update && apt-get install -y --no-install-recommends {}",
        missing.join(" ")
    );
    if !Path::new("/usr/bin/apt-get").exists() || !is_root() {
        bail!(
            "cannot install packages here (needs root on Debian/Ubuntu); run:\n  sudo sh -c '{install}'"
        );
    }
    run_cmd(Command::new("apt-get").args(["update", "-q"]))?;
    run_cmd(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn nightly_rust_src() -> anyhow::Result<()> {
    let has_nightly = quiet(Command::new("rustup").args(["toolchain", "list"]))
        .is_some_and(|list| list.lines().any(|line| line.starts_with("nightly")));
    if !has_nightly {
        eprintln!("setup: installing the nightly toolchain (eBPF builds use -Z build-std)");
        run_cmd(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]))
        .context(
            "installing nightly; run: rustup toolchain install nightly --component rust-src",
        )?;
        return Ok(());
    }
    let installed = quiet(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]))
    .unwrap_or_default();
    if installed
        .lines()
        .any(|line| line.trim().starts_with("rust-src"))
    {
        eprintln!("setup: nightly rust-src present");
        return Ok(());
    }
    run_cmd(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
        .context("adding rust-src; run: rustup component add rust-src --toolchain nightly")
}

fn bpf_linker() -> anyhow::Result<()> {
    let version = quiet(Command::new("bpf-linker").arg("--version")).unwrap_or_default();
    if version.contains(BPF_LINKER_VERSION) {
        eprintln!("setup: bpf-linker {BPF_LINKER_VERSION} present");
        return Ok(());
    }
    eprintln!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about a minute){}",
        if version.is_empty() {
            String::new()
        } else {
            format!("; found {}", version.trim())
        }
    );
    let path = format!(
        "{LLVM_PREFIX}/bin:{}",
        std::env::var("PATH").unwrap_or_default()
    );
    run_cmd(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--force",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("PATH", path)
            .env("LLVM_PREFIX", LLVM_PREFIX),
    )
    .context(format!(
        "building bpf-linker; run: PATH={LLVM_PREFIX}/bin:$PATH LLVM_PREFIX={LLVM_PREFIX} cargo install bpf-linker \
         --version {BPF_LINKER_VERSION} --no-default-features --features llvm-22"
    ))
}
