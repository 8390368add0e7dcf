//! OCI image archives written without a container engine: one gzip layer, a config, a manifest
//! and an index, in the tar layout `ctr images import` reads. Deterministic (mtime 0, uid 0):
//! the same inputs give the same digest, so a second import of an unchanged image does nothing.
//! Used by the test cluster (pause, busybox) and `cargo xtask image` (the agent).

use std::{fs, io::Write as _, path::Path, process::Command};

use anyhow::{Context as _, bail};
use flate2::{Compression, GzBuilder};
use serde_json::json;
use sha2::{Digest as _, Sha256};

/// A file of an image layer (every entry is owned by root, mtime 0).
#[derive(Debug)]
pub enum Entry {
    Dir(String, u32),
    File(String, Vec<u8>, u32),
    Symlink(String, String),
}

fn sha256(data: &[u8]) -> String {
    let digest = Sha256::digest(data);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

fn layer_tar(entries: &[Entry]) -> anyhow::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut header = tar::Header::new_ustar();
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        match entry {
            Entry::Dir(path, mode) => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(*mode);
                header.set_size(0);
                builder.append_data(&mut header, path, std::io::empty())?;
            }
            Entry::File(path, data, mode) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(*mode);
                header.set_size(data.len() as u64);
                builder.append_data(&mut header, path, data.as_slice())?;
            }
            Entry::Symlink(path, target) => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                header.set_size(0);
                builder.append_link(&mut header, path, target)?;
            }
        }
    }
    Ok(builder.into_inner()?)
}

/// The runtime part of an image config (what a Dockerfile's ENTRYPOINT, CMD, USER and EXPOSE
/// set).
#[derive(Debug, Default)]
pub struct Config<'a> {
    pub entrypoint: &'a [&'a str],
    pub cmd: &'a [&'a str],
    /// `USER` (`uid:gid`); empty: not set (root).
    pub user: &'a str,
    /// `EXPOSE`: `9477/tcp`.
    pub exposed_ports: &'a [&'a str],
    /// What built it (the image history's `created_by`).
    pub created_by: &'a str,
}

/// Writes `archive` (an OCI image layout in a tar) for image `reference` with `entries` as its
/// only layer; returns the manifest digest.
pub fn write_archive(
    archive: &Path,
    reference: &str,
    entries: &[Entry],
    image: &Config<'_>,
) -> anyhow::Result<String> {
    let layer = layer_tar(entries)?;
    let diff_id = sha256(&layer);
    let mut gz = GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), Compression::default());
    gz.write_all(&layer)?;
    let layer_gz = gz.finish()?;
    let mut runtime = json!({
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        "Entrypoint": image.entrypoint,
        "Cmd": image.cmd,
        "WorkingDir": "/",
    });
    if !image.user.is_empty() {
        runtime["User"] = json!(image.user);
    }
    if !image.exposed_ports.is_empty() {
        let ports: serde_json::Map<String, serde_json::Value> = image
            .exposed_ports
            .iter()
            .map(|port| ((*port).to_owned(), json!({})))
            .collect();
        runtime["ExposedPorts"] = serde_json::Value::Object(ports);
    }
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": runtime,
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
        "history": [{ "created_by": image.created_by }],
    }))?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": sha256(&config),
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": sha256(&layer_gz),
            "size": layer_gz.len(),
        }],
    }))?;
    let manifest_digest = sha256(&manifest);
    let tag = reference.rsplit_once(':').map_or("latest", |(_, tag)| tag);
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest.len(),
            "platform": { "architecture": "amd64", "os": "linux" },
            "annotations": {
                "io.containerd.image.name": reference,
                "org.opencontainers.image.ref.name": tag,
            },
        }],
    }))?;

    let mut out = tar::Builder::new(Vec::new());
    let mut add = |path: String, data: &[u8]| -> anyhow::Result<()> {
        let mut header = tar::Header::new_ustar();
        header.set_mtime(0);
        header.set_mode(0o644);
        header.set_size(data.len() as u64);
        header.set_entry_type(tar::EntryType::Regular);
        out.append_data(&mut header, path, data)?;
        Ok(())
    };
    add("oci-layout".into(), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    for blob in [&layer_gz, &config, &manifest] {
        let digest = sha256(blob);
        let hex = digest.trim_start_matches("sha256:");
        add(format!("blobs/sha256/{hex}"), blob)?;
    }
    add("index.json".into(), &index)?;
    let bytes = out.into_inner()?;
    if let Some(parent) = archive.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::write(archive, bytes).with_context(|| format!("writing {}", archive.display()))?;
    Ok(manifest_digest)
}

/// The pause image: the static pause binary as /pause.
pub fn pause_entries(binary: &Path) -> anyhow::Result<Vec<Entry>> {
    let data = fs::read(binary).with_context(|| format!("reading {}", binary.display()))?;
    Ok(vec![Entry::File("pause".into(), data, 0o755)])
}

/// The busybox workload image: Debian's busybox-static as /bin/busybox, one symlink per
/// applet in /bin, /tmp, and a root + nobody passwd.
pub fn busybox_entries(busybox: &Path) -> anyhow::Result<Vec<Entry>> {
    let data = fs::read(busybox).with_context(|| format!("reading {}", busybox.display()))?;
    let output = Command::new(busybox)
        .arg("--list")
        .output()
        .with_context(|| format!("running {} --list", busybox.display()))?;
    if !output.status.success() {
        bail!("{} --list failed", busybox.display());
    }
    let mut entries = vec![
        Entry::Dir("bin".into(), 0o755),
        Entry::Dir("etc".into(), 0o755),
        Entry::Dir("tmp".into(), 0o1777),
        Entry::Dir("var".into(), 0o755),
        Entry::Dir("var/www".into(), 0o755),
        Entry::File("bin/busybox".into(), data, 0o755),
        Entry::File(
            "etc/passwd".into(),
            b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
                .to_vec(),
            0o644,
        ),
        Entry::File(
            "etc/group".into(),
            b"root:x:0:\nnogroup:x:65534:\n".to_vec(),
            0o644,
        ),
    ];
    let applets = String::from_utf8_lossy(&output.stdout).into_owned();
    for applet in applets.lines().map(str::trim) {
        if applet.is_empty() || applet == "busybox" || applet.contains('/') {
            continue;
        }
        entries.push(Entry::Symlink(format!("bin/{applet}"), "busybox".into()));
    }
    Ok(entries)
}
