//! Go builds of the upstream components, from the Go module proxy, cached.
//!
//! Each component is built from a small module of our own in `target/cluster/build/<name>`
//! that requires the upstream module (for Kubernetes: and replaces every `k8s.io/<staging>`
//! module by its published `v0.Y.Z`, which `go install k8s.io/kubernetes/...@v1.Y.Z` cannot do).
//! A stamp file next to the binaries records what they were built from: a second run with the
//! same versions builds nothing. Go's own caches (GOMODCACHE, GOCACHE) survive between runs.

use std::{fs, path::Path, process::Command, time::Instant};

use anyhow::{Context as _, bail};

use super::{
    Layout,
    versions::{self, GO_BUILDS, GoBuild, SPO, SPO_CRD, SPO_MODULE},
};
use crate::run_cmd;

/// The pause container: waits for a signal, reaps children, exits on SIGINT/SIGTERM.
const PAUSE_MAIN: &str = r#"// The sandbox ("pause") process of each pod, built by cargo xtask cluster.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	if os.Getpid() != 1 {
		os.Stderr.WriteString("warning: pause should be the first process\n")
	}
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range signals {
		if sig == syscall.SIGCHLD {
			for {
				var status syscall.WaitStatus
				pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
				if pid <= 0 || err != nil {
					break
				}
			}
			continue
		}
		os.Exit(0)
	}
}
"#;

/// Builds every component whose binaries are missing or stale.
pub fn all(layout: &Layout) -> anyhow::Result<()> {
    if Command::new(go_binary()).arg("version").output().is_err() {
        bail!(
            "no `go` on PATH or in /usr/local/go/bin: the cluster's components are built from the Go module proxy (Go 1.24+ needed)"
        );
    }
    for build in GO_BUILDS {
        component(layout, build)?;
    }
    spo_crd(layout)?;
    pause(layout)
}

/// security-profiles-operator's SeccompProfile CRD, from the module proxy, as
/// `target/cluster/spo/seccompprofile.yaml` (the tests of `run --publish-spo` install it).
fn spo_crd(layout: &Layout) -> anyhow::Result<()> {
    let dir = layout.root.join("spo");
    let target = dir.join("seccompprofile.yaml");
    let stamp = dir.join("version");
    if target.is_file() && fs::read_to_string(&stamp).is_ok_and(|v| v.trim() == SPO) {
        return Ok(());
    }
    fs::create_dir_all(&dir)?;
    let output = Command::new(go_binary())
        .args(["mod", "download", "-json", &format!("{SPO_MODULE}@{SPO}")])
        .current_dir(&dir)
        .env("GOFLAGS", "-mod=mod")
        .output()
        .context("running go mod download")?;
    let info: serde_json::Value = serde_json::from_slice(&output.stdout).with_context(|| {
        format!(
            "go mod download {SPO_MODULE}@{SPO}: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })?;
    if let Some(err) = info["Error"].as_str() {
        bail!("go mod download {SPO_MODULE}@{SPO}: {err}");
    }
    let module_dir = info["Dir"]
        .as_str()
        .context("go mod download gave no Dir")?;
    fs::copy(Path::new(module_dir).join(SPO_CRD), &target)
        .with_context(|| format!("copying {SPO_CRD} of {SPO_MODULE}@{SPO}"))?;
    fs::write(&stamp, SPO)?;
    eprintln!(
        "xtask: security-profiles-operator {SPO}'s SeccompProfile CRD in {}",
        target.display()
    );
    Ok(())
}

fn stamp_text(build: &GoBuild) -> String {
    let packages: Vec<&str> = build.packages.iter().map(|p| p.0).collect();
    format!(
        "{}@{} tags=[{}] {}\n",
        build.module,
        build.version,
        build.tags,
        packages.join(" ")
    )
}

fn component(layout: &Layout, build: &GoBuild) -> anyhow::Result<()> {
    let out_dir = if build.subdir.is_empty() {
        layout.bin.clone()
    } else {
        layout.bin.join(build.subdir)
    };
    let stamp = layout.bin.join(format!(".built-{}", build.name));
    let want = stamp_text(build);
    let complete = build
        .packages
        .iter()
        .all(|(_, binary)| out_dir.join(binary).is_file());
    if complete && fs::read_to_string(&stamp).is_ok_and(|have| have == want) {
        eprintln!("cluster: {} {} built (cached)", build.name, build.version);
        return Ok(());
    }
    eprintln!(
        "cluster: building {} {} from the Go module proxy (a cold build takes minutes)",
        build.name, build.version
    );
    let started = Instant::now();
    let dir = layout.build.join(build.name);
    fs::create_dir_all(&dir)?;
    fs::create_dir_all(&out_dir)?;
    let mut go_mod = format!(
        "module syscall-recorder/cluster-build/{}\n\ngo 1.24.0\n\nrequire {} {}\n",
        build.name, build.module, build.version
    );
    if build.module == "k8s.io/kubernetes" {
        go_mod.push_str(&kubernetes_replaces(&dir)?);
    }
    // A changed go.mod invalidates go.sum entries only by adding; keep go.sum across runs.
    fs::write(dir.join("go.mod"), go_mod)?;
    let ldflags = ldflags(build);
    let _ = fs::remove_file(&stamp);
    // One `go build` for all of a component's binaries: they share compiled packages and link
    // in parallel. With several packages `-o DIR/` names each binary after its package.
    let mut command = go(&dir);
    command.args(["build", "-trimpath", "-ldflags", &ldflags]);
    if !build.tags.is_empty() {
        command.args(["-tags", build.tags]);
    }
    match build.packages {
        [(package, binary)] => command.arg("-o").arg(out_dir.join(binary)).arg(package),
        packages => command
            .arg("-o")
            .arg(format!("{}/", out_dir.display()))
            .args(packages.iter().map(|p| p.0)),
    };
    run_cmd(&mut command).with_context(|| {
        format!(
            "building {}@{} (module dir {})",
            build.module,
            build.version,
            dir.display()
        )
    })?;
    fs::write(&stamp, want)?;
    eprintln!(
        "cluster: built {} {} in {:.0?}",
        build.name,
        build.version,
        started.elapsed()
    );
    Ok(())
}

/// `go` from PATH, else the official tarball's place (a CI shell may not have it on PATH).
fn go_binary() -> String {
    let on_path = Command::new("go")
        .arg("version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !on_path && Path::new("/usr/local/go/bin/go").is_file() {
        "/usr/local/go/bin/go".to_owned()
    } else {
        "go".to_owned()
    }
}

/// `nice -n 15 go ...` in `dir` (the machine is shared), static, resolving modules as needed.
fn go(dir: &Path) -> Command {
    let mut command = Command::new("nice");
    command
        .args(["-n", "15"])
        .arg(go_binary())
        .current_dir(dir)
        .env("CGO_ENABLED", "0")
        .env("GOFLAGS", "-mod=mod");
    command
}

fn ldflags(build: &GoBuild) -> String {
    let mut flags = vec!["-s".to_owned(), "-w".to_owned()];
    let version = build.version;
    match build.name {
        "kubernetes" => {
            let mut parts = version.trim_start_matches('v').split('.');
            let major = parts.next().unwrap_or("1");
            let minor = parts.next().unwrap_or("0");
            for package in [
                "k8s.io/component-base/version",
                "k8s.io/client-go/pkg/version",
            ] {
                flags.push(format!("-X {package}.gitVersion={version}"));
                flags.push(format!("-X {package}.gitMajor={major}"));
                flags.push(format!("-X {package}.gitMinor={minor}"));
                flags.push(format!("-X {package}.gitTreeState=clean"));
            }
        }
        "containerd" => {
            flags.push(format!(
                "-X github.com/containerd/containerd/v2/version.Version={version}"
            ));
        }
        "cni-plugins" => {
            flags.push(format!(
                "-X github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion={version}"
            ));
        }
        _ => {}
    }
    flags.join(" ")
}

/// The `replace` block mapping each `k8s.io/<staging>` module that `k8s.io/kubernetes`'s own
/// go.mod points at `./staging/...` to its published version.
fn kubernetes_replaces(dir: &Path) -> anyhow::Result<String> {
    let output = go(dir)
        .args(["mod", "download", "-json"])
        .arg(format!("k8s.io/kubernetes@{}", versions::KUBERNETES))
        .output()
        .context("go mod download k8s.io/kubernetes")?;
    if !output.status.success() {
        bail!(
            "go mod download k8s.io/kubernetes@{} failed: {}",
            versions::KUBERNETES,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let info: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let go_mod_path = info["GoMod"]
        .as_str()
        .context("go mod download gave no GoMod path")?;
    let upstream = fs::read_to_string(go_mod_path)?;
    let mut block = String::from("\nreplace (\n");
    let mut count = 0;
    for line in upstream.lines() {
        let mut words = line.split_whitespace();
        if let (Some(module), Some("=>"), Some(target)) = (words.next(), words.next(), words.next())
            && module.starts_with("k8s.io/")
            && target.starts_with("./staging/")
        {
            block.push_str(&format!(
                "\t{module} => {module} {}\n",
                versions::KUBERNETES_STAGING
            ));
            count += 1;
        }
    }
    if count == 0 {
        bail!("no staging replaces found in {go_mod_path}");
    }
    block.push_str(")\n");
    Ok(block)
}

/// The pause binary (static Go, a few lines).
fn pause(layout: &Layout) -> anyhow::Result<()> {
    let dir = layout.build.join("pause");
    let binary = layout.bin.join("pause");
    let source = dir.join("main.go");
    if binary.is_file() && fs::read_to_string(&source).is_ok_and(|s| s == PAUSE_MAIN) {
        eprintln!("cluster: pause built (cached)");
        return Ok(());
    }
    fs::create_dir_all(&dir)?;
    fs::write(
        dir.join("go.mod"),
        "module syscall-recorder/cluster-build/pause\n\ngo 1.24.0\n",
    )?;
    let _ = fs::remove_file(&binary);
    fs::write(&source, PAUSE_MAIN)?;
    run_cmd(
        go(&dir)
            .args(["build", "-trimpath", "-ldflags", "-s -w", "-o"])
            .arg(&binary)
            .arg("."),
    )
    .context("building the pause binary")
}
