//! `cargo xtask image`: the agent's OCI image without a container engine, in the layout
//! deploy/Dockerfile describes: the release binary as /usr/local/bin/recorder-agent plus what it
//! needs at run time from this host (glibc's loader and the libraries `ldd` lists: what
//! distroless/cc provides), all owned by root; USER 0:0, EXPOSE 9477, ENTRYPOINT
//! recorder-agent, CMD run. Written to `target/dist/recorder-agent-image.tar` and, when the
//! test cluster is up, imported into its containerd as [`AGENT_IMAGE`].

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{cluster, oci, workspace_root};

/// The reference deploy/overlays/dev uses.
pub const AGENT_IMAGE: &str = "localhost/syscall-recorder/recorder-agent:dev";
/// Where the binary goes (deploy/Dockerfile's COPY destination and ENTRYPOINT).
const AGENT_PATH: &str = "usr/local/bin/recorder-agent";

/// The archive's path.
pub fn archive_path() -> PathBuf {
    workspace_root()
        .join("target")
        .join("dist")
        .join("recorder-agent-image.tar")
}

/// Builds the release agent, writes the archive and imports it when the cluster runs.
pub fn run() -> anyhow::Result<()> {
    crate::setup::run(crate::setup::Scope::Build)?;
    let binary = crate::build(true)?;
    let archive = archive_path();
    let entries = agent_entries(&binary)?;
    let digest = oci::write_archive(
        &archive,
        AGENT_IMAGE,
        &entries,
        &oci::Config {
            entrypoint: &["/usr/local/bin/recorder-agent"],
            cmd: &["run"],
            user: "0:0",
            exposed_ports: &["9477/tcp"],
            created_by: "cargo xtask image",
        },
    )?;
    let size = fs::metadata(&archive)?.len();
    eprintln!(
        "xtask: {} ({AGENT_IMAGE}, {digest}, {:.1} MiB)",
        archive.display(),
        size as f64 / (1024.0 * 1024.0)
    );
    if cluster::containerd_answers() {
        cluster::import_image(&archive, AGENT_IMAGE)?;
    } else {
        eprintln!(
            "xtask: the test cluster is not up: import later with `ctr -n k8s.io images import {}`",
            archive.display()
        );
    }
    Ok(())
}

/// The layer: the agent, the dynamic loader and every library `ldd` lists (regular files at
/// the paths the loader looks them up by), the directories above them, /etc/passwd and
/// /etc/group for root and nonroot (as distroless has), and /tmp.
fn agent_entries(binary: &Path) -> anyhow::Result<Vec<oci::Entry>> {
    let mut files: Vec<(String, PathBuf, u32)> =
        vec![(AGENT_PATH.to_owned(), binary.to_path_buf(), 0o755)];
    for library in ldd(binary)? {
        let inside = library
            .to_str()
            .context("library path not UTF-8")?
            .trim_start_matches('/')
            .to_owned();
        files.push((inside, library, 0o755));
    }
    let mut dirs = BTreeSet::new();
    for (inside, _, _) in &files {
        let mut path = Path::new(inside);
        while let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            dirs.insert(parent.to_string_lossy().into_owned());
            path = parent;
        }
    }
    dirs.insert("etc".into());
    let mut entries: Vec<oci::Entry> = dirs
        .into_iter()
        .map(|dir| oci::Entry::Dir(dir, 0o755))
        .collect();
    entries.push(oci::Entry::Dir("tmp".into(), 0o1777));
    entries.push(oci::Entry::File(
        "etc/passwd".into(),
        b"root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n"
            .to_vec(),
        0o644,
    ));
    entries.push(oci::Entry::File(
        "etc/group".into(),
        b"root:x:0:\nnonroot:x:65532:\n".to_vec(),
        0o644,
    ));
    for (inside, source, mode) in files {
        // Follow symlinks (libc.so.6 -> libc-2.36.so, merged /usr): the image holds the file.
        let data = fs::read(&source).with_context(|| format!("reading {}", source.display()))?;
        entries.push(oci::Entry::File(inside, data, mode));
    }
    Ok(entries)
}

/// The absolute paths of the shared objects `ldd` lists for `binary` (the loader included,
/// the vDSO left out).
fn ldd(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let output = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd (libc-bin)")?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "ldd {} failed: {}{}",
            binary.display(),
            text,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let mut libraries = Vec::new();
    for line in text.lines().map(str::trim) {
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` or `/lib64/ld-linux-x86-64.so.2 (0x...)`.
        let path = match line.split_once("=>") {
            Some((_, right)) => right.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        match path {
            Some(path) if path.starts_with('/') => libraries.push(PathBuf::from(path)),
            Some("not") => bail!("ldd {}: {line}", binary.display()),
            _ => {}
        }
        if line.contains("not found") {
            bail!("ldd {}: {line}", binary.display());
        }
    }
    if !libraries
        .iter()
        .any(|l| l.to_string_lossy().contains("ld-linux"))
    {
        bail!("ldd {} lists no dynamic loader: {text}", binary.display());
    }
    Ok(libraries)
}
