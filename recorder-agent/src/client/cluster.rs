//! The client commands against the cluster: `SyscallProfile` objects read and written through
//! the Kubernetes API, with the kubeconfig found by kubectl's rules (`--kubeconfig`,
//! `KUBECONFIG`, `~/.kube/config`, in-cluster). What is exported is what every node delivers:
//! the frozen set while frozen, else the merge of all nodes.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context as _, bail};
use kube::{
    Api, Client, Config,
    api::{ListParams, Patch, PatchParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use serde_json::{Value, json};

use super::output::{aligned, emit, or_underscore, pretty};
use crate::{
    attribution::kubernetes::ApiReport,
    config::{ClusterArgs, ListOutput},
    export::{
        Format,
        compare::Policy,
        delivery::{oci_of_names, render_names},
        publish::{
            Mode, SyscallProfileStatus, decode_syscalls, delivered_names, object_name,
            publisher::SyscallProfile, spo::spo_of_names,
        },
    },
    profile::{Identity, Profile, syscalls::Arch},
};

/// Whether the cluster is where the client commands go: a kubeconfig flag, `KUBECONFIG`, a
/// `~/.kube/config`, or a pod's service account.
pub fn wanted(args: &ClusterArgs) -> bool {
    args.kubeconfig.is_some()
        || args.context.is_some()
        || std::env::var_os("KUBECONFIG").is_some_and(|value| !value.is_empty())
        || std::env::var_os("HOME")
            .is_some_and(|home| PathBuf::from(home).join(".kube/config").is_file())
        || std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the client's runtime")
}

async fn client(args: &ClusterArgs) -> anyhow::Result<Client> {
    let options = KubeConfigOptions {
        context: args.context.clone(),
        ..KubeConfigOptions::default()
    };
    let no_config = |err: &dyn std::fmt::Display| anyhow::anyhow!("no usable kubeconfig: {err}");
    let config = match &args.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .with_context(|| format!("reading the kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .map_err(|err| no_config(&err))?
        }
        None if args.context.is_some() => Config::from_kubeconfig(&options)
            .await
            .map_err(|err| no_config(&err))?,
        None => Config::infer().await.map_err(|err| no_config(&err))?,
    };
    Client::try_from(config).context("building the Kubernetes client")
}

fn api_error(what: &str, err: &kube::Error) -> anyhow::Error {
    anyhow::anyhow!("{what}: {}", ApiReport(err))
}

/// The object of `identity`, or an error naming what is missing.
async fn get(client: &Client, identity: &Identity) -> anyhow::Result<SyscallProfile> {
    let name = object_name(identity).map_err(|err| anyhow::anyhow!("{err}"))?;
    let api: Api<SyscallProfile> = Api::namespaced(client.clone(), &identity.namespace);
    match api.get_opt(&name).await {
        Ok(Some(object)) => Ok(object),
        Ok(None) => bail!(
            "no SyscallProfile {name} in namespace {} for {identity} (`recorder-agent profiles` lists them)",
            identity.namespace
        ),
        Err(err) => Err(api_error(
            &format!("reading SyscallProfile {}/{name}", identity.namespace),
            &err,
        )),
    }
}

/// The architecture an exported profile is for: the object's only one, else this machine's.
fn arch_of(status: &SyscallProfileStatus) -> Arch {
    match status.architectures.as_slice() {
        [only] => Arch::from_name(&only.arch),
        _ => None,
    }
    .or_else(Arch::host)
    .unwrap_or(Arch::X86_64)
}

fn drift_names(status: &SyscallProfileStatus) -> Vec<&str> {
    let mut names: Vec<&str> = status
        .drift
        .iter()
        .flat_map(|set| set.syscalls.iter().map(String::as_str))
        .collect();
    names.sort_unstable();
    names.dedup();
    names
}

fn identity_of(object: &SyscallProfile) -> Identity {
    Identity::new(
        object.metadata.namespace.as_deref().unwrap_or_default(),
        &object.spec.workload.kind,
        &object.spec.workload.name,
        &object.spec.container,
    )
}

/// The `profiles` table of the cluster's objects.
fn table(objects: &[SyscallProfile]) -> String {
    let mut lines = vec![
        [
            "NAMESPACE",
            "KIND",
            "WORKLOAD",
            "CONTAINER",
            "SYSCALLS",
            "NODES",
            "MODE",
            "DRIFT",
            "STABLE",
            "LAST NEW SYSCALL",
        ]
        .map(str::to_owned)
        .to_vec(),
    ];
    for object in objects {
        let identity = identity_of(object);
        let status = object.status.clone().unwrap_or_default();
        let drift = drift_names(&status);
        lines.push(vec![
            or_underscore(&identity.namespace).to_owned(),
            or_underscore(identity.workload_kind.as_str()).to_owned(),
            or_underscore(&identity.workload).to_owned(),
            or_underscore(&identity.container).to_owned(),
            status.syscall_count.to_string(),
            status.node_count.to_string(),
            format!("{:?}", object.spec.mode),
            if drift.is_empty() {
                "-".to_owned()
            } else {
                drift.join(",")
            },
            if status.stable { "yes" } else { "no" }.to_owned(),
            status
                .last_new_syscall
                .as_deref()
                .and_then(|time| time.split('.').next())
                .map_or_else(
                    || "-".to_owned(),
                    |time| format!("{}Z", time.trim_end_matches('Z')),
                ),
        ]);
    }
    aligned(&lines)
}

/// `recorder-agent profiles` against the cluster.
pub fn profiles(
    args: &ClusterArgs,
    namespace: Option<&str>,
    output: ListOutput,
) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let client = client(args).await?;
        let api: Api<SyscallProfile> = match namespace {
            Some(namespace) => Api::namespaced(client, namespace),
            None => Api::all(client),
        };
        let mut objects = api
            .list(&ListParams::default())
            .await
            .map_err(|err| api_error("listing SyscallProfiles", &err))?
            .items;
        objects.sort_by_key(|object| identity_of(object).to_string());
        match output {
            ListOutput::Json => emit(None, &pretty(&objects)?)?,
            ListOutput::Table => emit(None, table(&objects).as_bytes())?,
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// The recorder JSON of a cluster profile: the profile shape of one agent (names with a count
/// of 0: the API holds sets, not per-name counts) plus `mode`, `stable`, `calls`, the frozen
/// set, the drift as `unexpected_syscalls` and every node's entry.
fn profile_json(identity: &Identity, object: &SyscallProfile) -> anyhow::Result<Value> {
    let status = object.status.clone().unwrap_or_default();
    let parse_time = |time: &Option<String>| {
        time.as_deref()
            .and_then(|text| humantime::parse_rfc3339_weak(text).ok())
            .unwrap_or(std::time::SystemTime::UNIX_EPOCH)
    };
    let mut profile = Profile::new(identity.clone(), parse_time(&status.first_seen));
    profile.last_seen = parse_time(&status.last_seen);
    profile.last_new_syscall = parse_time(&status.last_new_syscall);
    for set in &status.architectures {
        for name in &set.syscalls {
            profile.syscalls.insert(name.clone(), 0);
        }
    }
    for name in drift_names(&status) {
        profile.unexpected_syscalls.insert(name.to_owned(), 0);
    }
    let mut value = serde_json::to_value(&profile)?;
    let nodes: Vec<Value> = status
        .nodes
        .iter()
        .map(|entry| {
            let names: Vec<&str> = Arch::from_name(&entry.arch)
                .and_then(|arch| decode_syscalls(&entry.node, arch, &entry.syscalls).ok())
                .map(|names| names.into_iter().collect())
                .unwrap_or_default();
            json!({
                "node": entry.node,
                "arch": entry.arch,
                "syscalls": names,
                "calls": entry.calls,
                "first_seen": entry.first_seen,
                "last_seen": entry.last_seen,
                "last_new_syscall": entry.last_new_syscall,
                "stable": entry.stable,
            })
        })
        .collect();
    let extra = json!({
        "mode": object.spec.mode,
        "stable": status.stable,
        "calls": status.calls,
        "frozen": status.frozen.as_ref().map(|frozen| json!({
            "at": frozen.at,
            "syscalls": frozen.architectures.iter().flat_map(|set| set.syscalls.iter()).collect::<std::collections::BTreeSet<_>>(),
        })),
        "nodes": nodes,
    });
    if let (Some(target), Value::Object(extra)) = (value.as_object_mut(), extra) {
        target.extend(extra);
    }
    Ok(value)
}

/// The object of `identity`, the architecture its export is for, and the names every node of
/// that architecture delivers.
async fn delivered(
    args: &ClusterArgs,
    identity: &Identity,
) -> anyhow::Result<(SyscallProfile, Arch, Vec<String>)> {
    let client = client(args).await?;
    let object = get(&client, identity).await?;
    let status = object.status.clone().unwrap_or_default();
    let arch = arch_of(&status);
    let names = delivered_names(&status, arch)
        .into_iter()
        .map(str::to_owned)
        .collect();
    Ok((object, arch, names))
}

/// `recorder-agent export` against the cluster: the bytes and the number of syscalls.
pub fn export(
    args: &ClusterArgs,
    identity: &Identity,
    format: Format,
) -> anyhow::Result<(Vec<u8>, usize)> {
    let (object, arch, names) = runtime()?.block_on(delivered(args, identity))?;
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    Ok(match format {
        // The bytes every node of `arch` has in its seccomp dir.
        Format::Oci => (render_names(&names, arch), names.len()),
        Format::Spo => (pretty(&spo_of_names(identity, &names, arch))?, names.len()),
        Format::Json => {
            let value = profile_json(identity, &object)?;
            let count = object.status.map_or(0, |status| status.syscall_count);
            (pretty(&value)?, count as usize)
        }
    })
}

/// The cluster's current profile of `identity` as a policy `diff` compares.
pub fn policy(args: &ClusterArgs, identity: &Identity) -> anyhow::Result<Policy> {
    let (_, arch, names) = runtime()?.block_on(delivered(args, identity))?;
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    Ok(Policy {
        path: PathBuf::from(format!("cluster:{identity}")),
        format: Format::Oci,
        oci: oci_of_names(&names, arch),
    })
}

/// `recorder-agent freeze` / `unfreeze`: sets `spec.mode`, then waits (up to `wait`) until an
/// agent took it in.
pub fn set_mode(
    args: &ClusterArgs,
    identity: &Identity,
    mode: Mode,
    wait: Duration,
) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let client = client(args).await?;
        let object = get(&client, identity).await?;
        let name = object.metadata.name.clone().unwrap_or_default();
        let api: Api<SyscallProfile> = Api::namespaced(client.clone(), &identity.namespace);
        if object.spec.mode != mode {
            api.patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": { "mode": mode } })),
            )
            .await
            .map_err(|err| api_error(&format!("setting the mode of SyscallProfile {}/{name}", identity.namespace), &err))?;
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let object = get(&client, identity).await?;
            let status = object.status.clone().unwrap_or_default();
            let done = match mode {
                Mode::Frozen => status.frozen.as_ref().map(|frozen| {
                    format!(
                        "{identity}: Frozen: every node's file stays at the {} syscalls frozen at {}",
                        frozen.syscall_count, frozen.at
                    )
                }),
                Mode::Learning => status.frozen.is_none().then(|| {
                    format!(
                        "{identity}: Learning: every node's file follows the merged set ({} syscalls)",
                        status.syscall_count
                    )
                }),
            };
            if let Some(message) = done {
                println!("{message}");
                return Ok(ExitCode::SUCCESS);
            }
            if tokio::time::Instant::now() >= deadline {
                if wait.is_zero() {
                    println!("{identity}: spec.mode set to {mode:?}");
                    return Ok(ExitCode::SUCCESS);
                }
                // The mode is set, but nothing enforces it yet: a script must not take it as done.
                eprintln!(
                    "recorder-agent: {identity}: spec.mode is {mode:?}, but no agent took it in within {} (are agents running with --publish?)",
                    humantime::format_duration(wait)
                );
                return Ok(ExitCode::FAILURE);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
}
