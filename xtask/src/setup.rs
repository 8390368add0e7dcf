//! `cargo xtask setup`: prerequisites of building and testing, installed when missing.
//!
//! Versions are the verified ones (see README "Toolchain notes"): the host toolchain of
//! rust-toolchain.toml with its components, the nightly pinned in `nightly-toolchain` with
//! `rust-src` for `-Z build-std=core`, and bpf-linker 0.13.0 built against Debian's LLVM 22 (the
//! LLVM major of that nightly).

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
    (
        "gcc-multilib",
        "the least-privilege tests build a real i386 binary",
    ),
];
/// PyPI packages the tests use: (package, command it provides).
const PIP_PACKAGES: &[(&str, &str)] = &[("kubernetes-validate", "kubernetes-validate")];
const BPF_LINKER_VERSION: &str = "0.13.0";
/// The nightly that builds the kernel program (recorder-agent/build.rs reads the same file) and
/// the fuzz targets.
pub const NIGHTLY: &str = include_str!("../../nightly-toolchain").trim_ascii();
/// The host toolchain file; rustup installs a missing toolchain from it, but not the missing
/// components of one that is installed.
const HOST_TOOLCHAIN_FILE: &str = include_str!("../../rust-toolchain.toml");
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// Runs `command` without its stderr; its stdout when it succeeds.
pub(crate) fn quiet(command: &mut Command) -> Option<String> {
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
        // clippy and rustfmt: the lints of `cargo xtask test`.
        host_toolchain()?;
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

/// Whether rustup has `toolchain` (a channel or version, without the host triple).
fn has_toolchain(toolchain: &str) -> bool {
    quiet(Command::new("rustup").args(["toolchain", "list"])).is_some_and(|list| {
        list.lines().any(|line| {
            let name = line.split_whitespace().next().unwrap_or_default();
            name == toolchain || name.starts_with(&format!("{toolchain}-"))
        })
    })
}

/// The components of `wanted` that `toolchain` lacks.
fn missing_components<'a>(toolchain: &str, wanted: &[&'a str]) -> Vec<&'a str> {
    let installed = quiet(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        toolchain,
    ]))
    .unwrap_or_default();
    wanted
        .iter()
        .filter(|component| {
            !installed.lines().any(|line| {
                let line = line.trim();
                line == **component || line.starts_with(&format!("{component}-"))
            })
        })
        .copied()
        .collect()
}

/// Installs `toolchain` with `components`, or adds the components it lacks.
fn toolchain(toolchain: &str, components: &[&str], why: &str) -> anyhow::Result<()> {
    if !has_toolchain(toolchain) {
        eprintln!("setup: installing the {toolchain} toolchain ({why})");
        let mut install = Command::new("rustup");
        install.args(["toolchain", "install", toolchain, "--profile", "minimal"]);
        for component in components {
            install.args(["--component", component]);
        }
        return run_cmd(&mut install).with_context(|| {
            format!(
                "installing {toolchain}; run: rustup toolchain install {toolchain} --profile minimal --component {}",
                components.join(" --component ")
            )
        });
    }
    let missing = missing_components(toolchain, components);
    if missing.is_empty() {
        eprintln!("setup: {toolchain} with {} present", components.join(", "));
        return Ok(());
    }
    eprintln!(
        "setup: adding {} to {toolchain} ({why})",
        missing.join(", ")
    );
    run_cmd(
        Command::new("rustup")
            .args(["component", "add", "--toolchain", toolchain])
            .args(&missing),
    )
    .with_context(|| {
        format!(
            "adding components; run: rustup component add --toolchain {toolchain} {}",
            missing.join(" ")
        )
    })
}

fn nightly_rust_src() -> anyhow::Result<()> {
    toolchain(
        NIGHTLY,
        &["rust-src"],
        "eBPF builds use -Z build-std; its LLVM matches bpf-linker's",
    )
}

/// The `channel` and `components` of rust-toolchain.toml (a file of this repository, so a
/// line-based reading is enough).
fn host_toolchain_pin() -> anyhow::Result<(&'static str, Vec<&'static str>)> {
    let value = |key: &str| {
        HOST_TOOLCHAIN_FILE.lines().find_map(|line| {
            let (name, value) = line.split_once('=')?;
            (name.trim() == key).then(|| value.trim())
        })
    };
    let quoted = |value: &'static str| value.split('"').skip(1).step_by(2);
    let channel = value("channel")
        .and_then(|value| quoted(value).next())
        .context("rust-toolchain.toml has no channel")?;
    let components = value("components")
        .map(|v| quoted(v).collect())
        .unwrap_or_default();
    Ok((channel, components))
}

fn host_toolchain() -> anyhow::Result<()> {
    let (channel, components) = host_toolchain_pin()?;
    toolchain(
        channel,
        &components,
        "the workspace toolchain and its lints",
    )
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
