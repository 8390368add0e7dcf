//! Cluster-wide profiles from Prometheus: `recorder-agent export SELECTOR --prometheus URL
//! [--range 30d]` asks a Prometheus server that scrapes the agents for every syscall the
//! workload made on any node, in any replica, over the range, and renders it like the agent's
//! own export.
//!
//! The syscall set is `sum by (syscall) (max_over_time(syscall_recorder_syscalls_total{..}[range])) >= 0`
//! rather than `increase(..[range]) > 0`: `increase` only sees growth *between* samples, so a
//! syscall made only before the first scrape of its series (a short-lived container's) would
//! have an increase of 0 and be left out, and the profile would break the workload at start.
//! The agent's counters are cumulative per workload (and persisted), and a series exists only
//! for a syscall the profile allows: one the workload made, or one the container runtime needs
//! after its filter applies (a series at 0), so every series in the range is a syscall the
//! workload needs.

use std::{
    collections::BTreeMap,
    process::ExitCode,
    time::{Duration, SystemTime},
};

use anyhow::bail;
use serde::Deserialize;

use super::output::{emit, pretty};
use crate::{
    config::ExportArgs,
    export::Format,
    export::seccomp,
    profile::syscalls::{Arch, unqualified},
    profile::{Identity, Profile},
    serve::api::parse_identity_path,
    serve::metrics::names,
};

/// Errors talking to Prometheus.
#[derive(Debug, thiserror::Error)]
pub enum PromqlError {
    /// The URL is not usable.
    #[error("--prometheus {url:?}: {reason}")]
    Url {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The range is not a Prometheus duration.
    #[error(
        "--range {range:?}: expected a Prometheus duration such as 30d, 12h or 1h30m ({reason})"
    )]
    Range {
        /// The range given.
        range: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The server could not be reached or did not answer.
    #[error("cannot reach Prometheus at {url}")]
    Unreachable {
        /// The query URL.
        url: String,
        /// The cause.
        #[source]
        source: crate::client::http::HttpError,
    },
    /// The server answered with an error.
    #[error("Prometheus at {url} rejected the query ({status}): {message}\n  query: {query}")]
    Rejected {
        /// The server.
        url: String,
        /// HTTP status.
        status: u16,
        /// Its error message.
        message: String,
        /// The query.
        query: String,
    },
    /// The answer is not the Prometheus API's JSON.
    #[error("Prometheus at {url} gave an unexpected answer ({status}): {detail}")]
    Malformed {
        /// The server.
        url: String,
        /// HTTP status.
        status: u16,
        /// What was wrong.
        detail: String,
    },
}

/// A Prometheus HTTP API client (instant queries).
#[derive(Debug)]
pub struct Prometheus {
    server: crate::client::http::Server,
}

#[derive(Debug, Deserialize)]
struct ApiAnswer {
    status: String,
    #[serde(default)]
    data: Option<ApiData>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default, rename = "errorType")]
    error_type: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ApiData {
    #[serde(rename = "resultType")]
    result_type: String,
    result: serde_json::Value,
}

/// One sample of an instant vector.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

impl Prometheus {
    /// A client for the server at `url` (`http://host:port`, optionally with a path prefix).
    pub fn new(url: &str) -> Result<Self, PromqlError> {
        let base = url.trim().trim_end_matches('/').to_owned();
        let bad = |reason| PromqlError::Url {
            url: url.to_owned(),
            reason,
        };
        if base.starts_with("https://") {
            return Err(bad(
                "this build speaks plain HTTP only; reach Prometheus over http:// (e.g. kubectl port-forward)",
            ));
        }
        let server = crate::client::http::Server::parse(&base)
            .map_err(|_| bad("expected http://HOST:PORT"))?;
        Ok(Self { server })
    }

    /// Runs an instant query; returns its vector (a scalar becomes one label-less sample).
    pub fn query(&self, query: &str) -> Result<Vec<Sample>, PromqlError> {
        let path = format!(
            "/api/v1/query?query={}",
            percent_encoding::utf8_percent_encode(query, percent_encoding::NON_ALPHANUMERIC)
        );
        let (status, body) = self
            .server
            .get(&path)
            .map_err(|source| PromqlError::Unreachable {
                url: self.server.url().to_owned(),
                source,
            })?;
        let body = String::from_utf8_lossy(&body).into_owned();
        let malformed = |detail: String| PromqlError::Malformed {
            url: self.server.url().to_owned(),
            status,
            detail,
        };
        let answer: ApiAnswer = serde_json::from_str(&body).map_err(|err| {
            let head: String = body.chars().take(200).collect();
            malformed(format!("not the Prometheus API's JSON ({err}): {head:?}"))
        })?;
        if answer.status != "success" {
            return Err(PromqlError::Rejected {
                url: self.server.url().to_owned(),
                status,
                message: format!(
                    "{}: {}",
                    answer.error_type.unwrap_or_default(),
                    answer.error.unwrap_or_default()
                ),
                query: query.to_owned(),
            });
        }
        let data = answer
            .data
            .ok_or_else(|| malformed("no data in a success answer".to_owned()))?;
        parse_result(&data.result_type, &data.result).map_err(malformed)
    }
}

fn parse_value(pair: &serde_json::Value) -> Result<f64, String> {
    pair.get(1)
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| format!("sample value {pair} is not [time, \"value\"]"))?
        .parse::<f64>()
        .map_err(|err| format!("sample value {pair}: {err}"))
}

fn parse_result(kind: &str, result: &serde_json::Value) -> Result<Vec<Sample>, String> {
    match kind {
        "vector" => result
            .as_array()
            .ok_or("vector result is not an array")?
            .iter()
            .map(|item| {
                let labels = serde_json::from_value(item["metric"].clone())
                    .map_err(|err| format!("sample labels: {err}"))?;
                Ok(Sample {
                    labels,
                    value: parse_value(&item["value"])?,
                })
            })
            .collect(),
        "scalar" => Ok(vec![Sample {
            labels: BTreeMap::new(),
            value: parse_value(result)?,
        }]),
        other => Err(format!("result type {other:?}, expected vector")),
    }
}

/// Checks a Prometheus duration (`30d`, `12h`, `1h30m`, `90s`, `500ms`): units ms, s, m, h,
/// d, w, y, each at most once, largest first, total above zero.
pub fn check_range(range: &str) -> Result<(), PromqlError> {
    let bad = |reason| PromqlError::Range {
        range: range.to_owned(),
        reason,
    };
    const UNITS: [&str; 7] = ["y", "w", "d", "h", "m", "s", "ms"];
    if range.is_empty() {
        return Err(bad("empty"));
    }
    let mut rest = range;
    let mut last_unit: Option<usize> = None;
    let mut total_nonzero = false;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad("a number must come before each unit"));
        }
        let (number, after) = rest.split_at(digits);
        let number: u64 = number.parse().map_err(|_| bad("number too large"))?;
        total_nonzero |= number > 0;
        // "ms" before "m" so "5ms" is not read as minutes.
        let unit = ["ms", "y", "w", "d", "h", "m", "s"]
            .into_iter()
            .find(|unit| after.starts_with(unit))
            .ok_or_else(|| bad("unknown or missing unit (ms, s, m, h, d, w, y)"))?;
        let index = UNITS.iter().position(|u| *u == unit).unwrap_or(0);
        if last_unit.is_some_and(|last| index <= last) {
            return Err(bad("units must go from largest to smallest, each once"));
        }
        last_unit = Some(index);
        rest = &after[unit.len()..];
    }
    if !total_nonzero {
        return Err(bad("must be above zero"));
    }
    Ok(())
}

/// The label matchers of one workload (an empty part matches the absent label): its series'
/// labels, whose text-format escaping is also PromQL's.
pub fn selector(identity: &Identity) -> String {
    names::identity_labels(identity)
}

/// The queries an export sends.
#[derive(Debug)]
pub struct Queries {
    /// Syscalls (label `syscall`) with their calls summed over nodes and replicas.
    pub syscalls: String,
    /// Calls with unnamed numbers.
    pub unknown: String,
    /// Earliest first-seen time.
    pub first_seen: String,
    /// Latest last-seen time.
    pub last_seen: String,
    /// Latest new-syscall time.
    pub last_new_syscall: String,
    /// Architectures (label `arch`) of the nodes that ran the workload.
    pub arches: String,
}

impl Queries {
    /// The queries for `identity` over `range` (already checked).
    pub fn new(identity: &Identity, range: &str) -> Self {
        use names::{
            BUILD_INFO, PROFILE_FIRST_SEEN, PROFILE_LAST_NEW_SYSCALL, PROFILE_LAST_SEEN,
            PROFILE_SYSCALLS, SYSCALLS_TOTAL, UNKNOWN_SYSCALLS_TOTAL,
            label::{ARCH, SYSCALL},
        };
        let sel = selector(identity);
        Self {
            syscalls: format!(
                "sum by ({SYSCALL}) (max_over_time({SYSCALLS_TOTAL}{{{sel}}}[{range}])) >= 0"
            ),
            unknown: format!("sum(max_over_time({UNKNOWN_SYSCALLS_TOTAL}{{{sel}}}[{range}]))"),
            first_seen: format!("min(min_over_time({PROFILE_FIRST_SEEN}{{{sel}}}[{range}]))"),
            last_seen: format!("max(max_over_time({PROFILE_LAST_SEEN}{{{sel}}}[{range}]))"),
            last_new_syscall: format!(
                "max(max_over_time({PROFILE_LAST_NEW_SYSCALL}{{{sel}}}[{range}]))"
            ),
            arches: format!(
                "count by ({ARCH}) (max by (instance, job, {ARCH}) (max_over_time({BUILD_INFO}[{range}])) \
                 and on (instance, job) max by (instance, job) (max_over_time({PROFILE_SYSCALLS}{{{sel}}}[{range}])))"
            ),
        }
    }
}

fn time_of(samples: &[Sample]) -> Option<SystemTime> {
    let seconds = samples.first()?.value;
    (seconds.is_finite() && seconds > 0.0)
        .then(|| SystemTime::UNIX_EPOCH + Duration::from_secs_f64(seconds))
}

/// A workload's cluster-wide profile.
#[derive(Debug)]
pub struct ClusterProfile {
    /// The profile (counts summed over nodes and replicas).
    pub profile: Profile,
    /// Architectures of the nodes the workload ran on, x86_64 first (empty when Prometheus
    /// has no build info).
    pub arches: Vec<Arch>,
}

/// Builds `identity`'s profile from Prometheus over `range`. `Ok(None)` when there is no data.
pub fn cluster_profile(
    prometheus: &Prometheus,
    identity: &Identity,
    range: &str,
) -> Result<Option<ClusterProfile>, PromqlError> {
    let queries = Queries::new(identity, range);
    let samples = prometheus.query(&queries.syscalls)?;
    let mut syscalls = BTreeMap::new();
    for sample in samples {
        let Some(name) = sample.labels.get(names::label::SYSCALL) else {
            continue;
        };
        if sample.value.is_finite() && sample.value >= 0.0 {
            syscalls.insert(name.clone(), sample.value.round() as u64);
        }
    }
    if syscalls.is_empty() {
        return Ok(None);
    }
    let now = SystemTime::now();
    let mut profile = Profile::new(identity.clone(), now);
    profile.syscalls = syscalls;
    profile.unknown_syscalls = prometheus.query(&queries.unknown)?.first().map_or(0, |s| {
        if s.value.is_finite() {
            s.value.max(0.0).round() as u64
        } else {
            0
        }
    });
    profile.first_seen = time_of(&prometheus.query(&queries.first_seen)?).unwrap_or(now);
    profile.last_seen = time_of(&prometheus.query(&queries.last_seen)?).unwrap_or(now);
    profile.last_new_syscall =
        time_of(&prometheus.query(&queries.last_new_syscall)?).unwrap_or(profile.last_seen);
    let mut arches: Vec<Arch> = prometheus
        .query(&queries.arches)?
        .iter()
        .filter_map(|s| {
            s.labels
                .get(names::label::ARCH)
                .and_then(|a| Arch::from_name(a))
        })
        .collect();
    arches.sort();
    arches.dedup();
    Ok(Some(ClusterProfile { profile, arches }))
}

/// The OCI profile of a cluster profile: the syscall names, the architectures of every node
/// that ran the workload (the host's when Prometheus has no build info).
pub fn oci_profile(cluster: &ClusterProfile, host: Arch) -> seccomp::OciSeccomp {
    let primary = cluster.arches.first().copied().unwrap_or(host);
    let mut oci =
        seccomp::oci_allow_list(cluster.profile.syscalls.keys().map(String::as_str), primary);
    let compat = cluster
        .profile
        .syscalls
        .keys()
        .any(|name| unqualified(name).1);
    for other in cluster.arches.iter().skip(1) {
        for name in other.seccomp_architectures(compat) {
            if !oci.architectures.iter().any(|a| a == name) {
                oci.architectures.push((*name).to_owned());
            }
        }
    }
    oci
}

/// `recorder-agent export SELECTOR --prometheus URL [--range RANGE]`.
pub fn export(args: ExportArgs) -> anyhow::Result<ExitCode> {
    let url = args.prometheus.as_deref().unwrap_or_default();
    // Bad arguments are usage errors (exit 2), like clap's own.
    let identity = match parse_identity_path(&args.selector) {
        Ok(identity) => identity,
        Err(msg) => {
            eprintln!(
                "recorder-agent: error: selector {:?}: {msg} (NAMESPACE/KIND/WORKLOAD/CONTAINER, _ for an empty part)",
                args.selector
            );
            return Ok(ExitCode::from(2));
        }
    };
    if let Err(err) = check_range(&args.range) {
        eprintln!("recorder-agent: error: {err}");
        return Ok(ExitCode::from(2));
    }
    let prometheus = Prometheus::new(url)?;
    let Some(cluster) = cluster_profile(&prometheus, &identity, &args.range)? else {
        bail!(
            "no data: Prometheus at {url} has no {} for {identity} in the last {} \
             (is it scraping the agents? `recorder-agent profiles` lists the identities)",
            names::SYSCALLS_TOTAL,
            args.range
        );
    };
    let host = Arch::host().unwrap_or(Arch::X86_64);
    if cluster.arches.is_empty() {
        eprintln!(
            "recorder-agent: note: Prometheus has no {} for the nodes of {identity}; \
             assuming this host's architecture",
            names::BUILD_INFO
        );
    } else if cluster.arches.len() > 1 {
        eprintln!(
            "recorder-agent: note: {identity} ran on nodes of several architectures; the profile lists all of them"
        );
    }
    let bytes = match args.format {
        Format::Oci => pretty(&oci_profile(&cluster, host))?,
        Format::Json => pretty(&cluster.profile)?,
        Format::Spo => {
            // Same names and rules as the agent's SPO export, with the architectures of every
            // node the workload ran on.
            let mut spo = crate::export::seccomp::spo_profile(&cluster.profile, host);
            spo.spec.architectures = oci_profile(&cluster, host).architectures;
            pretty(&spo)?
        }
    };
    emit(args.output.as_deref(), &bytes)?;
    if let Some(path) = &args.output {
        eprintln!(
            "recorder-agent: {} syscalls of {identity} over {} from {url}; wrote {}",
            cluster.profile.syscalls.len(),
            args.range,
            path.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        for good in [
            "30d",
            "12h",
            "1h30m",
            "90s",
            "500ms",
            "1y2w3d4h5m6s7ms",
            "1m",
        ] {
            assert!(check_range(good).is_ok(), "{good}");
        }
        for bad in [
            "", "30", "d", "0d", "1m1h", "1h1h", "-1d", "1.5h", "30 d", "3x",
        ] {
            assert!(check_range(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn selectors_are_quoted() {
        let id = Identity::new("", "Cgroup", "a\"b\\c", "");
        assert_eq!(
            selector(&id),
            r#"namespace="",workload_kind="Cgroup",workload="a\"b\\c",container="""#
        );
        let q = Queries::new(&Identity::new("ns", "Deployment", "web", "app"), "30d");
        assert_eq!(
            q.syscalls,
            r#"sum by (syscall) (max_over_time(syscall_recorder_syscalls_total{namespace="ns",workload_kind="Deployment",workload="web",container="app"}[30d])) >= 0"#
        );
    }

    #[test]
    fn answers_are_parsed() {
        let vector: serde_json::Value = serde_json::from_str(
            r#"[{"metric":{"syscall":"read"},"value":[1700000000.1,"12"]},{"metric":{},"value":[1,"NaN"]}]"#,
        )
        .expect("json");
        let samples = parse_result("vector", &vector).expect("vector");
        assert_eq!(samples[0].labels["syscall"], "read");
        assert_eq!(samples[0].value, 12.0);
        assert!(samples[1].value.is_nan());
        assert!(parse_result("matrix", &vector).is_err());
        assert!(parse_result("vector", &serde_json::json!([{"metric":{},"value":[1]}])).is_err());
    }

    #[test]
    fn urls_are_checked() {
        assert!(Prometheus::new("https://prom:9090").is_err());
        assert!(Prometheus::new("prom:9090").is_err());
        assert!(Prometheus::new("http://").is_err());
        assert!(Prometheus::new("http://127.0.0.1:9090/").is_ok());
    }

    #[test]
    fn oci_lists_every_arch() {
        let mut profile =
            Profile::new(Identity::new("", "Cgroup", "x", ""), SystemTime::UNIX_EPOCH);
        profile.syscalls.insert("read".into(), 1);
        let cluster = ClusterProfile {
            profile,
            arches: vec![Arch::X86_64, Arch::Aarch64],
        };
        let oci = oci_profile(&cluster, Arch::X86_64);
        assert!(oci.architectures.contains(&"SCMP_ARCH_X86_64".to_owned()));
        assert!(oci.architectures.contains(&"SCMP_ARCH_AARCH64".to_owned()));
    }
}
