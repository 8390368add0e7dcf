//! The client commands: `profiles`, `export`, `diff` and `merge`, talking to an agent's HTTP
//! API (or to Prometheus) and reading profile files.

pub mod cluster;
pub mod http;
mod output;
pub mod promql;

use std::process::ExitCode;

use anyhow::{Context as _, bail};
use serde::Deserialize;
use serde_json::Value;

use self::output::{aligned, emit, or_underscore, pretty};
use crate::{
    client::http::{HttpError, Server},
    config::{
        DEFAULT_SERVER, DiffArgs, ExportArgs, ListOutput, MergeArgs, ModeArgs, ProfilesArgs,
        TokenArgs,
    },
    export::publish::Mode,
    export::seccomp::{OciSeccomp, SpoSeccompProfile},
    export::{
        Format,
        compare::{self, Policy},
    },
    profile::{Identity, Profile},
    serve::api::PROFILES_PATH,
};

/// Exit code of a usage error (as clap's) and of `diff` when it cannot compare.
const EXIT_USAGE: u8 = 2;

/// Parses `NAMESPACE/KIND/WORKLOAD/CONTAINER` (`_` for an empty part). The workload may contain
/// `/` (cgroup paths): the first two parts and the last are fixed, the rest is the workload.
/// Percent-escapes are decoded, so `%2F` names the root cgroup `/` (`_/Cgroup/%2F/_`) and
/// `%5F` a literal `_`.
pub fn parse_selector(selector: &str) -> Result<Identity, String> {
    Identity::from_url_path(selector).map_err(|why| {
        format!(
            "malformed selector {selector:?}: {why}; expected NAMESPACE/KIND/WORKLOAD/CONTAINER (use _ for an empty part)"
        )
    })
}

/// The agent at `url` with the token of `--token`, `RECORDER_TOKEN` or `--token-file`.
fn agent_server(url: &str, auth: &TokenArgs) -> anyhow::Result<Server> {
    let token = match (&auth.token, &auth.token_file) {
        (Some(token), _) => Some(token.trim().to_owned()),
        (None, Some(file)) => Some(
            std::fs::read_to_string(file)
                .with_context(|| format!("reading the token file {}", file.display()))?
                .trim()
                .to_owned(),
        ),
        (None, None) => None,
    };
    if token.as_deref().is_some_and(str::is_empty) {
        bail!("the bearer token is empty (--token, RECORDER_TOKEN or --token-file)");
    }
    Ok(Server::parse(url)?.with_token(token))
}

/// GETs `path` and returns the body of a 200; a 401/403 says what credentials are missing, a
/// 404 names the missing thing, other errors carry the agent's message.
fn get_ok(server: &Server, path: &str, what: &str) -> anyhow::Result<Vec<u8>> {
    let (status, body) = server.get(path).map_err(|err| {
        let unreachable = matches!(err, HttpError::Unreachable { .. });
        let err = anyhow::Error::new(err);
        if unreachable {
            err.context(format!(
                "cannot reach the agent at {} (is `recorder-agent run` listening there? set --server or RECORDER_SERVER)",
                server.url()
            ))
        } else {
            err
        }
    })?;
    if status == 200 {
        return Ok(body);
    }
    let message = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|value| value["error"].as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_owned());
    match status {
        401 if !server.has_token() => bail!(
            "the agent at {} requires a Kubernetes bearer token: pass --token or --token-file",
            server.url()
        ),
        401 => bail!(
            "the agent at {} does not accept the bearer token: {message}",
            server.url()
        ),
        403 => bail!("{message} (the agent at {})", server.url()),
        _ => {}
    }
    if status == 404 {
        bail!(
            "{what} not found on {} ({message}); `recorder-agent profiles` lists what it has",
            server.url()
        );
    }
    bail!("{} answered {status}: {message}", server.url());
}

/// One row of the API's list.
#[derive(Debug, Deserialize)]
struct ListedProfile {
    #[serde(flatten)]
    profile: Profile,
    #[serde(default)]
    stable: bool,
}

/// The `profiles` table: one line per profile, columns aligned.
fn table(rows: &[ListedProfile]) -> String {
    let mut lines = vec![
        [
            "NAMESPACE",
            "KIND",
            "WORKLOAD",
            "CONTAINER",
            "SYSCALLS",
            "CALLS",
            "LAST NEW SYSCALL",
            "STABLE",
        ]
        .map(str::to_owned),
    ];
    for row in rows {
        let profile = &row.profile;
        let identity = &profile.identity;
        lines.push([
            or_underscore(&identity.namespace).to_owned(),
            or_underscore(identity.workload_kind.as_str()).to_owned(),
            or_underscore(&identity.workload).to_owned(),
            or_underscore(&identity.container).to_owned(),
            profile.syscalls.len().to_string(),
            profile.total_calls().to_string(),
            humantime::format_rfc3339_seconds(profile.last_new_syscall).to_string(),
            if row.stable { "yes" } else { "no" }.to_owned(),
        ]);
    }
    aligned(&lines)
}

/// The agent to ask: `--server`, else the default URL; `None` when the cluster is asked.
fn agent_url(server: Option<&str>, cluster: &crate::config::ClusterArgs) -> Option<String> {
    match server {
        Some(url) => Some(url.to_owned()),
        None if cluster::wanted(cluster) => None,
        None => Some(DEFAULT_SERVER.to_owned()),
    }
}

/// `recorder-agent profiles`.
pub fn profiles(args: ProfilesArgs) -> anyhow::Result<ExitCode> {
    let Some(url) = agent_url(args.server.as_deref(), &args.cluster) else {
        return cluster::profiles(&args.cluster, args.namespace.as_deref(), args.output);
    };
    let server = agent_server(&url, &args.auth)?;
    let body = get_ok(&server, PROFILES_PATH, "the profiles endpoint")?;
    let value: Value = serde_json::from_slice(&body)
        .with_context(|| format!("{} answered with something that is not JSON", server.url()))?;
    match args.output {
        ListOutput::Json => emit(None, &pretty(&value)?)?,
        ListOutput::Table => {
            let rows: Vec<ListedProfile> = serde_json::from_value(value).with_context(|| {
                format!("{} answered with an unexpected profile list", server.url())
            })?;
            emit(None, table(&rows).as_bytes())?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `recorder-agent export`.
pub fn export(args: ExportArgs) -> anyhow::Result<ExitCode> {
    if args.prometheus.is_some() {
        return crate::client::promql::export(args);
    }
    let identity = match parse_selector(&args.selector) {
        Ok(identity) => identity,
        Err(message) => {
            eprintln!("recorder-agent: error: {message}");
            return Ok(ExitCode::from(EXIT_USAGE));
        }
    };
    let Some(url) = agent_url(args.server.as_deref(), &args.cluster) else {
        let (bytes, syscalls) = cluster::export(&args.cluster, &identity, args.format)?;
        emit(args.output.as_deref(), &bytes)?;
        if let Some(output) = &args.output {
            eprintln!(
                "recorder-agent: wrote {} ({}, {syscalls} syscalls) of {identity} from the cluster",
                output.display(),
                args.format
            );
        }
        return Ok(ExitCode::SUCCESS);
    };
    let server = agent_server(&url, &args.auth)?;
    let format = args.format;
    let path = format!("{PROFILES_PATH}/{}?format={format}", identity.url_path());
    let body = get_ok(&server, &path, &format!("profile {identity}"))?;
    let invalid = || format!("{} answered with an invalid {format} profile", server.url());
    // Parsed into the typed shape so that what is written is checked, and pretty-printed in
    // the field order of the format.
    let (bytes, syscalls) = match args.format {
        Format::Oci => {
            let oci: OciSeccomp = serde_json::from_slice(&body).with_context(invalid)?;
            (pretty(&oci)?, oci.allowed_names().len())
        }
        Format::Spo => {
            let spo: SpoSeccompProfile = serde_json::from_slice(&body).with_context(invalid)?;
            (pretty(&spo)?, spo.spec.to_oci().allowed_names().len())
        }
        Format::Json => {
            let value: Value = serde_json::from_slice(&body).with_context(invalid)?;
            let count = value["syscalls"]
                .as_object()
                .map_or(0, serde_json::Map::len);
            (pretty(&value)?, count)
        }
    };
    emit(args.output.as_deref(), &bytes)?;
    if let Some(output) = &args.output {
        eprintln!(
            "recorder-agent: wrote {} ({format}, {syscalls} syscalls) of {identity}",
            output.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn describe(policy: &Policy) -> String {
    // A recorder profile JSON is read as an allow-list, so it is named for what it is here.
    let format = match policy.format {
        Format::Json => "recorder profile",
        other => other.describe(),
    };
    format!(
        "{} ({format}, {} syscalls allowed)",
        policy.path.display(),
        policy.allowed().len()
    )
}

/// The text `diff` prints.
fn diff_report(old: &Policy, new: &Policy, diff: &compare::Diff) -> String {
    let mut out = format!("--- {}\n+++ {}\n", describe(old), describe(new));
    for name in &diff.added {
        out.push_str(&format!("+ {name}\n"));
    }
    for name in &diff.removed {
        out.push_str(&format!("- {name}\n"));
    }
    for arch in &diff.added_architectures {
        out.push_str(&format!("+ architecture {arch}\n"));
    }
    for arch in &diff.removed_architectures {
        out.push_str(&format!("- architecture {arch}\n"));
    }
    if diff.needs_more() {
        out.push_str(&format!(
            "NEW needs more than OLD allows: {} syscall(s), {} architecture(s) added\n",
            diff.added.len(),
            diff.added_architectures.len()
        ));
    } else {
        out.push_str(&format!(
            "NEW allows nothing OLD does not ({} syscall(s) removed)\n",
            diff.removed.len()
        ));
    }
    out
}

/// `recorder-agent diff`: exit 0 when NEW allows nothing OLD does not, 1 when it needs more,
/// 2 when the files cannot be compared (reported here, since `main` maps errors to 1).
pub fn diff(args: DiffArgs) -> anyhow::Result<ExitCode> {
    let read = |path: &std::path::Path| -> anyhow::Result<Policy> {
        // A selector names the cluster's current profile: not an existing file, and its kind
        // is a Kubernetes kind (capitalised), so a mistyped `out/a/b/c.json` stays a file.
        if !path.exists()
            && let Some(identity) = path.to_str().and_then(|text| parse_selector(text).ok())
            && identity
                .workload_kind
                .as_str()
                .starts_with(|c: char| c.is_ascii_uppercase())
            && !identity.namespace.is_empty()
        {
            return cluster::policy(&args.cluster, &identity);
        }
        Ok(compare::read_policy(path)?)
    };
    let result = (|| -> anyhow::Result<(Policy, Policy, compare::Diff)> {
        let old = read(&args.old)?;
        let new = read(&args.new)?;
        let diff = compare::diff(&old, &new)?;
        Ok((old, new, diff))
    })();
    match result {
        Ok((old, new, diff)) => {
            emit(None, diff_report(&old, &new, &diff).as_bytes())?;
            Ok(ExitCode::from(u8::from(diff.needs_more())))
        }
        Err(err) => {
            eprintln!("recorder-agent: error: {err:#}");
            Ok(ExitCode::from(EXIT_USAGE))
        }
    }
}

/// `recorder-agent freeze` (`mode` Frozen) and `unfreeze` (Learning).
pub fn set_mode(args: ModeArgs, mode: Mode) -> anyhow::Result<ExitCode> {
    let identity = match parse_selector(&args.selector) {
        Ok(identity) => identity,
        Err(message) => {
            eprintln!("recorder-agent: error: {message}");
            return Ok(ExitCode::from(EXIT_USAGE));
        }
    };
    cluster::set_mode(&args.cluster, &identity, mode, args.wait)
}

/// `recorder-agent merge`.
pub fn merge(args: MergeArgs) -> anyhow::Result<ExitCode> {
    let policies = args
        .files
        .iter()
        .map(|path| compare::read_policy(path))
        .collect::<Result<Vec<_>, _>>()?;
    let merged = compare::merge(&policies)?;
    emit(args.output.as_deref(), &pretty(&merged)?)?;
    if let Some(output) = &args.output {
        eprintln!(
            "recorder-agent: merged {} profiles into {} ({} syscalls allowed, {} architectures)",
            policies.len(),
            output.display(),
            merged.allowed_names().len(),
            merged.architectures.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;

    #[test]
    fn selectors() {
        assert_eq!(
            parse_selector("_/Pod/uid/cid"),
            Ok(Identity::new("", "Pod", "uid", "cid"))
        );
        assert_eq!(
            parse_selector("_/Cgroup/system.slice/cron.service/_"),
            Ok(Identity::new("", "Cgroup", "system.slice/cron.service", ""))
        );
        assert_eq!(
            parse_selector("ns/Deployment/web/nginx")
                .expect("ok")
                .url_path(),
            "ns/Deployment/web/nginx"
        );
        assert_eq!(
            parse_selector("_/Cgroup/a b/_").expect("ok").url_path(),
            "_/Cgroup/a%20b/_"
        );
        assert_eq!(
            parse_selector("_/Cgroup/%2F/_"),
            Ok(Identity::new("", "Cgroup", "/", ""))
        );
        assert_eq!(
            parse_selector("_/Pod/%5F/c"),
            Ok(Identity::new("", "Pod", "_", "c"))
        );
        for bad in [
            "",
            "a/b/c",
            "a//c/d",
            "a/b/c/",
            "/a/b/c",
            "a/b/%ff/d",
            "a/b/%00/d",
        ] {
            let err = parse_selector(bad).expect_err(bad);
            assert!(err.contains("selector"), "{err}");
        }
    }

    #[test]
    fn unreachable_agent_is_explained() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        let server = Server::parse(&format!("http://127.0.0.1:{port}")).expect("url");
        let err = get_ok(&server, "/healthz", "health").expect_err("nothing listens");
        let text = format!("{err:#}");
        assert!(
            text.starts_with(&format!(
                "cannot reach the agent at http://127.0.0.1:{port} "
            )),
            "{text}"
        );
        assert!(text.contains("--server") && !text.contains('\n'), "{text}");
    }

    /// A server that answers one request with `status` and an agent error body.
    fn answering(status: &'static str, error: &'static str) -> String {
        use std::io::{Read as _, Write as _};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            let Ok((mut stream, _)) = listener.accept() else {
                return;
            };
            let mut head = Vec::new();
            let mut byte = [0u8];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).is_ok_and(|n| n == 1) {
                head.push(byte[0]);
            }
            let body = format!("{{\"error\":\"{error}\"}}");
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        });
        format!("http://{addr}")
    }

    #[test]
    fn missing_or_refused_credentials_are_explained() {
        let no_token = TokenArgs {
            token: None,
            token_file: None,
        };
        let url = answering("401 Unauthorized", "no bearer token");
        let server = agent_server(&url, &no_token).expect("server");
        let err = get_ok(&server, PROFILES_PATH, "profiles").expect_err("401");
        assert_eq!(
            err.to_string(),
            format!(
                "the agent at {url} requires a Kubernetes bearer token: pass --token or --token-file"
            )
        );

        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("token");
        std::fs::write(&file, "tok\n").expect("write");
        let from_file = TokenArgs {
            token: None,
            token_file: Some(file),
        };
        let url = answering(
            "403 Forbidden",
            "forbidden: user \\\"sa\\\" cannot get /api/v1/profiles",
        );
        let server = agent_server(&url, &from_file).expect("server");
        assert!(server.has_token());
        let err = get_ok(&server, PROFILES_PATH, "profiles").expect_err("403");
        assert_eq!(
            err.to_string(),
            format!("forbidden: user \"sa\" cannot get /api/v1/profiles (the agent at {url})")
        );

        let url = answering("401 Unauthorized", "the bearer token is not valid: expired");
        let token = TokenArgs {
            token: Some("old".to_owned()),
            token_file: None,
        };
        let server = agent_server(&url, &token).expect("server");
        let err = get_ok(&server, PROFILES_PATH, "profiles").expect_err("401");
        assert_eq!(
            err.to_string(),
            format!(
                "the agent at {url} does not accept the bearer token: the bearer token is not valid: expired"
            )
        );
        let empty = TokenArgs {
            token: Some(" ".to_owned()),
            token_file: None,
        };
        assert!(agent_server(&url, &empty).is_err());
    }

    #[test]
    fn table_is_aligned_and_marks_empty_parts() {
        let mut profile = Profile::new(
            Identity::new("", "Pod", "uid", "cid"),
            SystemTime::UNIX_EPOCH,
        );
        profile.syscalls.insert("read".into(), 5);
        profile.syscalls.insert("write".into(), 2);
        let text = table(&[ListedProfile {
            profile,
            stable: true,
        }]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("NAMESPACE  KIND  WORKLOAD  CONTAINER  SYSCALLS  CALLS"));
        assert!(
            lines[1].starts_with("_          Pod   uid       cid        2         7"),
            "{text}"
        );
        assert!(lines[1].ends_with("1970-01-01T00:00:00Z  yes"), "{text}");
    }

    #[test]
    fn diff_report_lists_changes_and_verdict() {
        let policy = |names: &[&str]| Policy {
            path: std::path::PathBuf::from(format!("{}.json", names.join("-"))),
            format: Format::Oci,
            oci: crate::export::seccomp::oci_allow_list(
                names.iter().copied(),
                crate::profile::syscalls::Arch::X86_64,
            ),
        };
        let (old, new) = (policy(&["read", "write"]), policy(&["read", "mkdir"]));
        let diff = compare::diff(&old, &new).expect("diff");
        let report = diff_report(&old, &new, &diff);
        assert_eq!(
            report,
            "--- read-write.json (OCI seccomp, 2 syscalls allowed)\n\
             +++ read-mkdir.json (OCI seccomp, 2 syscalls allowed)\n\
             + mkdir\n\
             - write\n\
             NEW needs more than OLD allows: 1 syscall(s), 0 architecture(s) added\n"
        );
        let same = compare::diff(&old, &old).expect("diff");
        assert!(
            diff_report(&old, &old, &same)
                .ends_with("NEW allows nothing OLD does not (0 syscall(s) removed)\n")
        );
    }
}
