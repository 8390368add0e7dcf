//! Builds the kernel program with aya-build and leaves it in `OUT_DIR/recorder-ebpf`, where
//! `kernel/object.rs` embeds it. `RECORDER_SKIP_EBPF=1` writes an empty stub instead, so `cargo check`,
//! clippy and unit tests work on machines without nightly rust-src and bpf-linker; an agent
//! built that way refuses to load with a clear error.
use std::{env, fs, path::PathBuf};

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

/// The nightly that builds the kernel program, pinned in the repository's `nightly-toolchain`
/// file (shared with xtask and the Dockerfile). aya-build's default runs `rustup run nightly`,
/// which ignores rust-toolchain.toml and floats: its LLVM must be the major bpf-linker is built
/// against (LLVM 22), or linking fails.
const EBPF_TOOLCHAIN: &str = include_str!("../nightly-toolchain").trim_ascii();

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=RECORDER_SKIP_EBPF");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    if env::var("RECORDER_SKIP_EBPF").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true")) {
        fs::write(out_dir.join("recorder-ebpf"), []).context("writing the eBPF stub")?;
        return Ok(());
    }
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("no manifest dir")?);
    let ebpf_dir = manifest_dir
        .parent()
        .context("agent crate has no parent directory")?
        .join("recorder-ebpf");
    let root_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow!("non UTF-8 path {}", ebpf_dir.display()))?;
    aya_build::build_ebpf(
        [Package {
            name: "recorder-ebpf",
            root_dir,
            ..Default::default()
        }],
        Toolchain::Custom(EBPF_TOOLCHAIN),
    )
    .with_context(|| {
        format!(
            "building the eBPF program failed; run `cargo xtask setup` ({EBPF_TOOLCHAIN} with \
             rust-src, bpf-linker) or set RECORDER_SKIP_EBPF=1 for a build without it"
        )
    })
}
