//! Prometheus metrics end to end: `promtool` lints a real /metrics body, a real Prometheus
//! server scrapes a running agent while a runc container works, `export --prometheus` gives
//! the agent's own syscall set, and every PromQL expression of the Grafana dashboard parses.

use std::{
    collections::BTreeSet,
    fs,
    io::Write as _,
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde_json::Value;
use tests::{
    Agent, Container, TestCgroup, agent_cli, allowed, count, free_port, get_json, http,
    kubepods_path, poll, privileged, random_uid, runc_lock,
};

/// A Prometheus server on loopback with a temporary config and TSDB, killed on drop.
#[derive(Debug)]
struct PrometheusServer {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl PrometheusServer {
    /// Starts Prometheus scraping `targets` every second and waits until it is ready.
    fn start(targets: &[SocketAddr]) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = dir.path().join("prometheus.yml");
        fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: syscall-recorder\n    static_configs:\n      - targets: [{}]\n",
                targets.join(", ")
            ),
        )?;
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
        let log = fs::File::create(dir.path().join("prometheus.log"))?;
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting prometheus (cargo xtask setup installs it)")?;
        let mut server = Self { child, addr, dir };
        poll("prometheus /-/ready", Duration::from_secs(20), || {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("prometheus exited early ({status}): {}", server.log());
            }
            matches!(http(addr, "GET", "/-/ready"), Ok((200, _))).then_some(())
        })
        .with_context(|| server.log())?;
        Ok(server)
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// An instant query: the whole API answer.
    fn query(&self, query: &str) -> anyhow::Result<Value> {
        let (_, body) = get_json(self.addr, &format!("/api/v1/query?query={}", encode(query)))?;
        Ok(body)
    }

    /// An instant query that must succeed: its result vector.
    fn vector(&self, query: &str) -> anyhow::Result<Vec<Value>> {
        let answer = self.query(query)?;
        anyhow::ensure!(answer["status"] == "success", "{query}: {answer}");
        Ok(answer["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Percent-encodes a query parameter.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// Lints an exposition with `promtool check metrics`; returns its complaints.
fn promtool_check(body: &str) -> anyhow::Result<(bool, String)> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running promtool (cargo xtask setup installs prometheus)")?;
    child
        .stdin
        .take()
        .context("promtool stdin")?
        .write_all(body.as_bytes())?;
    let output = child.wait_with_output()?;
    Ok((
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    ))
}

/// `recorder-agent export ARGS...`: (exit code, stdout, stderr).
fn export(args: &[&str]) -> (Option<i32>, String, String) {
    let output = agent_cli(&[&["export"], args].concat());
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn metrics_pass_promtool_and_name_the_workload() {
    if !privileged() {
        return;
    }
    let agent = Agent::start(&[]).expect("agent");
    let cgroup = TestCgroup::new("metrics-lint").expect("cgroup");
    cgroup.run("busybox", &["uname"]).expect("uname");
    agent
        .wait_profile("profile", |p| {
            p["workload"] == cgroup.rel.as_str() && count(p, "uname") >= 1
        })
        .expect("profile");
    let (status, body) = http(agent.addr, "GET", "/metrics").expect("GET /metrics");
    assert_eq!(status, 200, "{body}");
    let line = format!(
        "syscall_recorder_syscalls_total{{namespace=\"\",workload_kind=\"Cgroup\",workload=\"{}\",container=\"\",syscall=\"uname\"}} ",
        cgroup.rel
    );
    assert!(body.contains(&line), "{line} missing from:\n{body}");
    for family in [
        "syscall_recorder_profile_syscalls{",
        "syscall_recorder_profile_stable{",
        "syscall_recorder_cgroups_tracked ",
        "syscall_recorder_cgroups_unresolved ",
        "syscall_recorder_lost_calls_total ",
        "syscall_recorder_slot_exhausted_total ",
        "syscall_recorder_collection_duration_seconds_bucket{",
        "syscall_recorder_bpf_stats_enabled ",
        "syscall_recorder_build_info{",
        "process_cpu_seconds_total ",
        "process_resident_memory_bytes ",
    ] {
        assert!(body.contains(family), "{family} missing from:\n{body}");
    }
    let (clean, complaints) = promtool_check(&body).expect("promtool");
    assert!(
        clean && complaints.trim().is_empty(),
        "promtool: {complaints}\n{body}"
    );
    // Like every endpoint: GET only.
    let (status, _) = http(agent.addr, "POST", "/metrics").expect("POST");
    assert_eq!(status, 405);
}

#[test]
fn metrics_fold_beyond_max_series() {
    if !privileged() {
        return;
    }
    let agent = Agent::start(&["--max-series", "100"]).expect("agent");
    let cgroups: Vec<TestCgroup> = (0..4)
        .map(|i| TestCgroup::new(&format!("metrics-fold-{i}")).expect("cgroup"))
        .collect();
    for cgroup in &cgroups {
        cgroup.run("busybox", &["uname"]).expect("uname");
    }
    let body = poll("folded workloads", Duration::from_secs(20), || {
        let (_, body) = http(agent.addr, "GET", "/metrics").ok()?;
        let folded = sample(&body, "syscall_recorder_metrics_folded_workloads ")?;
        (folded >= 1.0 && body.contains("workload=\"(folded)\"")).then_some(body)
    })
    .expect("some workloads folded with --max-series 100");
    let series = body
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains("workload=\""))
        .filter(|l| !l.contains("workload=\"(folded)\""))
        .count();
    assert!(series <= 100, "{series} series over the limit:\n{body}");
    let (clean, complaints) = promtool_check(&body).expect("promtool");
    assert!(clean, "promtool: {complaints}");
}

#[test]
fn prometheus_scrapes_the_agent_and_export_matches_the_agent() {
    if !privileged() {
        return;
    }
    let _lock = runc_lock();
    let agent = Agent::start(&[]).expect("agent");
    let prometheus = PrometheusServer::start(&[agent.addr]).expect("prometheus");
    let uid = random_uid();
    let container_id = tests::random_hex64();
    let path = kubepods_path("besteffort", &uid, &container_id);
    let container =
        Container::run_to_end(&path, &["sh", "-c", "uname; mkdir /tmp/x; echo done"], None)
            .expect("container");
    assert!(
        container.stdout().contains("done"),
        "{}",
        container.stderr()
    );
    let selector = format!("_/Pod/{uid}/{container_id}");
    let agent_profile = agent
        .wait_profile("the container's profile", |p| {
            p["workload"] == uid.as_str() && count(p, "uname") >= 1
        })
        .expect("profile");
    let (status, agent_oci) = get_json(
        agent.addr,
        &format!("/api/v1/profiles/{selector}?format=oci"),
    )
    .expect("oci");
    assert_eq!(status, 200, "{agent_oci}");
    let want = allowed(&agent_oci);
    assert!(
        want.contains("uname") && want.contains("execve"),
        "{want:?}"
    );

    // Prometheus has every syscall of the workload (the container stopped: the set is final).
    let workload = format!(
        "syscall_recorder_syscalls_total{{workload_kind=\"Pod\",workload=\"{uid}\",container=\"{container_id}\"}}"
    );
    let started = Instant::now();
    let scraped = poll(
        "Prometheus to have the workload's series",
        Duration::from_secs(30),
        || {
            let result = prometheus.vector(&workload).ok()?;
            (result.len() == want.len()).then_some(result)
        },
    )
    .with_context(|| {
        format!(
            "query {workload}: {:?}\nprometheus log: {}",
            prometheus.query(&workload).ok(),
            prometheus.log()
        )
    })
    .expect("scraped");
    eprintln!(
        "first complete sample queryable after {:?}",
        started.elapsed()
    );
    let uname = scraped
        .iter()
        .find(|s| s["metric"]["syscall"] == "uname")
        .expect("uname series");
    assert_eq!(uname["metric"]["job"], "syscall-recorder");
    assert_eq!(
        uname["value"][1]
            .as_str()
            .and_then(|v| v.parse::<u64>().ok()),
        Some(count(&agent_profile, "uname"))
    );

    // export --prometheus: same syscall set as the agent's own export, and the same counts.
    let url = prometheus.url();
    let (code, stdout, stderr) = export(&[&selector, "--prometheus", &url, "--range", "1h"]);
    assert_eq!(code, Some(0), "{stderr}");
    let oci: Value = serde_json::from_str(&stdout).expect("OCI JSON");
    assert_eq!(allowed(&oci), want);
    assert_eq!(oci["architectures"], agent_oci["architectures"]);
    let out = tempfile::tempdir().expect("tempdir");
    let file = out.path().join("profile.json");
    let file_arg = file.display().to_string();
    let (code, _, stderr) = export(&[
        &selector,
        "--prometheus",
        &url,
        "--format",
        "json",
        "-o",
        &file_arg,
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    let json: Value =
        serde_json::from_str(&fs::read_to_string(&file).expect("written")).expect("profile JSON");
    assert_eq!(json["workload"], uid.as_str());
    assert_eq!(json["syscalls"], agent_profile["syscalls"]);
    // SPO from Prometheus: the agent's SeccompProfile, with the same name and rules.
    let (code, stdout, stderr) = export(&[&selector, "--prometheus", &url, "--format", "spo"]);
    assert_eq!(code, Some(0), "{stderr}");
    let spo: Value = serde_json::from_str(&stdout).expect("SPO JSON");
    let (status, agent_spo) = get_json(
        agent.addr,
        &format!("/api/v1/profiles/{selector}?format=spo"),
    )
    .expect("spo");
    assert_eq!(status, 200, "{agent_spo}");
    assert_eq!(spo["kind"], "SeccompProfile");
    assert_eq!(spo["metadata"]["name"], agent_spo["metadata"]["name"]);
    assert_eq!(spo["spec"]["syscalls"], agent_spo["spec"]["syscalls"]);
    assert_eq!(
        spo["spec"]["architectures"],
        agent_spo["spec"]["architectures"]
    );
    assert!(
        json["first_seen"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{json}"
    );

    // The dashboard's breakdown of this workload shows its syscalls.
    let dashboard = dashboard();
    let breakdown = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .find(|p| p["title"] == "Profile: syscalls and calls")
        .and_then(|p| p["targets"][0]["expr"].as_str())
        .expect("breakdown panel");
    let query = substitute_with(
        breakdown,
        &[
            ("workload", &uid),
            ("container", &container_id),
            ("workload_kind", "Pod"),
        ],
    );
    let rows = prometheus.vector(&query).expect("breakdown query");
    let shown: BTreeSet<String> = rows
        .iter()
        .filter_map(|r| r["metric"]["syscall"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(shown, want, "{query}");

    // Clear errors: no data, bad range, unreachable server, bad selector.
    let (code, _, stderr) = export(&["_/Pod/nope/nope", "--prometheus", &url]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("no data"), "{stderr}");
    let (code, _, stderr) = export(&[&selector, "--prometheus", &url, "--range", "30x"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--range"), "{stderr}");
    let dead = format!("http://127.0.0.1:{}", free_port());
    let (code, _, stderr) = export(&[&selector, "--prometheus", &dead]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("cannot reach Prometheus"), "{stderr}");
    let (code, _, stderr) = export(&["a/b", "--prometheus", &url]);
    assert_eq!(code, Some(2), "{stderr}");
    drop(container);
}

/// Every PromQL expression of a Grafana dashboard: panel targets and template-variable
/// queries (`label_values(SELECTOR, label)` gives SELECTOR).
fn dashboard_expressions(dashboard: &Value) -> Vec<String> {
    fn walk(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(expr)) = map.get("expr") {
                    out.push(expr.clone());
                }
                for (key, child) in map {
                    if key != "templating" {
                        walk(child, out);
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|item| walk(item, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(dashboard, &mut out);
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if variable["type"] != "query" {
            continue;
        }
        let query = variable["definition"].as_str().unwrap_or_default();
        let inner = query
            .strip_prefix("label_values(")
            .and_then(|rest| rest.rsplit_once(','))
            .map_or(query, |(selector, _)| selector);
        out.push(inner.to_owned());
    }
    out
}

/// Replaces Grafana variables: intervals by durations, the rest by a match-all regex.
fn substitute(expr: &str) -> String {
    substitute_with(expr, &[])
}

/// Like [`substitute`], with some variables set to a value (a regex, as Grafana sends it).
fn substitute_with(expr: &str, values: &[(&str, &str)]) -> String {
    let mut out = expr.to_owned();
    // Longest names first: `$workload` is a prefix of `$workload_kind`.
    let mut values = values.to_vec();
    values.sort_by_key(|(var, _)| std::cmp::Reverse(var.len()));
    for (var, value) in values {
        out = out.replace(&format!("${{{var}}}"), value);
        out = out.replace(&format!("${var}"), value);
    }
    for (var, value) in [
        ("$__rate_interval", "1m"),
        ("$__interval", "15s"),
        ("$__range", "1h"),
    ] {
        out = out.replace(var, value);
    }
    for var in [
        "job",
        "instance",
        "namespace",
        "workload_kind",
        "workload",
        "container",
    ] {
        out = out.replace(&format!("${{{var}}}"), ".*");
        out = out.replace(&format!("${var}"), ".*");
    }
    out
}

/// The Grafana dashboard of deploy/.
fn dashboard() -> Value {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/dashboards/syscall-recorder.json");
    serde_json::from_str(&fs::read_to_string(path).expect("dashboard")).expect("dashboard JSON")
}

#[test]
fn every_dashboard_expression_parses_in_prometheus() {
    let dashboard = dashboard();
    let expressions = dashboard_expressions(&dashboard);
    assert!(expressions.len() >= 20, "{expressions:?}");
    let titles: Vec<&str> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .filter_map(|p| p["title"].as_str())
        .collect();
    for wanted in [
        "Top workloads",
        "Syscall rate by syscall",
        "Unexpected",
        "Stable",
        "Agent CPU",
    ] {
        assert!(
            titles.iter().any(|t| t.contains(wanted)),
            "{wanted}: {titles:?}"
        );
    }
    // Parsing needs no data: no agent, no privileges.
    let prometheus = PrometheusServer::start(&[]).expect("prometheus");
    for expr in &expressions {
        let query = substitute(expr);
        assert!(!query.contains('$'), "unsubstituted variable in {query}");
        let answer = prometheus.query(&query).expect("query");
        assert_eq!(answer["status"], "success", "{query}: {answer}");
    }
}

/// The value of the exposition line that starts with `prefix` (labels included).
fn sample(body: &str, prefix: &str) -> Option<f64> {
    body.lines()
        .find_map(|line| line.strip_prefix(prefix))
        .and_then(|value| value.trim().parse().ok())
}

#[test]
fn drift_counts_syscalls_outside_the_stable_profile() {
    if !privileged() {
        return;
    }
    let agent = Agent::start(&["--stable-after", "1s"]).expect("agent");
    let cgroup = TestCgroup::new("metrics-drift").expect("cgroup");
    cgroup.run("busybox", &["uname"]).expect("uname");
    let labels = format!(
        "namespace=\"\",workload_kind=\"Cgroup\",workload=\"{}\",container=\"\"",
        cgroup.rel
    );
    let stable = format!("syscall_recorder_profile_stable{{{labels}}} ");
    poll(
        "the profile to become stable",
        Duration::from_secs(20),
        || {
            let (_, body) = http(agent.addr, "GET", "/metrics").ok()?;
            (sample(&body, &stable) == Some(1.0)).then_some(())
        },
    )
    .expect("stable");
    // `stable` is computed at scrape time, the baseline is frozen at the end of the next
    // collection: a new syscall before that would join the profile, not count as drift.
    let profile_path = cgroup.profile_path();
    poll("the baseline to be frozen", Duration::from_secs(20), || {
        let (_, profile) = get_json(agent.addr, &profile_path).ok()?;
        profile["baseline"]["syscalls"].is_array().then_some(())
    })
    .expect("baseline");
    // Same program, one new syscall (mkdir or mkdirat): drift.
    let dir = tempfile::tempdir().expect("tempdir");
    let target = dir.path().join("new").display().to_string();
    cgroup.run("busybox", &["mkdir", &target]).expect("mkdir");
    let body = poll("drift on /metrics", Duration::from_secs(20), || {
        let (_, body) = http(agent.addr, "GET", "/metrics").ok()?;
        body.contains(&format!(
            "syscall_recorder_unexpected_syscalls_total{{{labels},syscall=\"mkdir"
        ))
        .then_some(body)
    })
    .expect("drift");
    let drift: Vec<&str> = body
        .lines()
        .filter(|l| {
            l.starts_with(&format!(
                "syscall_recorder_unexpected_syscalls_total{{{labels}"
            ))
        })
        .collect();
    assert!(
        !drift
            .iter()
            .any(|l| l.contains("syscall=\"uname\"") || l.contains("syscall=\"execve\"")),
        "syscalls of the stable profile counted as drift: {drift:?}"
    );
    // The profile grew, so it is learning again; the baseline is kept (and in the API).
    let (_, profile) = get_json(agent.addr, &profile_path).expect("profile");
    let baseline: Vec<&str> = profile["baseline"]["syscalls"]
        .as_array()
        .expect("baseline in the API")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(baseline.contains(&"uname") && !baseline.iter().any(|s| s.starts_with("mkdir")));
    assert!(
        profile["unexpected_syscalls"]
            .as_object()
            .is_some_and(|m| m.keys().any(|k| k.starts_with("mkdir"))),
        "{profile}"
    );
}

/// Body size and scrape time with 100 workloads (figures for the docs; `--nocapture` shows
/// them). Asserts that every workload is exported and the exposition stays clean.
#[test]
fn metrics_with_100_workloads() {
    if !privileged() {
        return;
    }
    let agent = Agent::start(&[]).expect("agent");
    let cgroups: Vec<TestCgroup> = (0..100)
        .map(|i| TestCgroup::new(&format!("metrics-scale-{i:03}")).expect("cgroup"))
        .collect();
    for cgroup in &cgroups {
        cgroup
            .run(
                "busybox",
                &["sh", "-c", "uname; cat /proc/self/stat; ls / > /dev/null"],
            )
            .expect("workload");
    }
    let body = poll("100 workloads on /metrics", Duration::from_secs(30), || {
        let (_, body) = http(agent.addr, "GET", "/metrics").ok()?;
        cgroups
            .iter()
            .all(|c| {
                body.contains(&format!(
                    "workload=\"{}\",container=\"\",syscall=\"uname\"",
                    c.rel
                ))
            })
            .then_some(body)
    })
    .expect("all workloads exported");
    let mut times = Vec::new();
    let mut size = 0;
    for _ in 0..20 {
        let started = Instant::now();
        let (status, body) = http(agent.addr, "GET", "/metrics").expect("scrape");
        times.push(started.elapsed());
        assert_eq!(status, 200);
        size = body.len();
    }
    times.sort();
    let series = body
        .lines()
        .filter(|l| l.starts_with("syscall_recorder_syscalls_total{"))
        .count();
    eprintln!(
        "100 workloads: /metrics {size} bytes, {series} syscall series, scrape median {:?} (min {:?}, max {:?})",
        times[times.len() / 2],
        times[0],
        times[times.len() - 1]
    );
    let (clean, complaints) = promtool_check(&body).expect("promtool");
    assert!(clean, "promtool: {complaints}");
}

#[test]
fn max_series_below_100_is_a_usage_error() {
    let output = agent_cli(&["run", "--max-series", "10", "--listen", "127.0.0.1:0"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--max-series"));
}

/// A round reads only the slots that counted since the round before (the kernel marks them):
/// idle cgroups cost a collection nothing, and a cgroup that wakes up is read at once, not at
/// the next full sweep (every 60 rounds, 12 s at this interval).
#[test]
fn idle_cgroups_are_not_read_and_are_read_again_when_they_wake_up() {
    if !privileged() {
        return;
    }
    let agent = Agent::start(&[]).expect("agent");
    let cgroups: Vec<TestCgroup> = (0..20)
        .map(|i| TestCgroup::new(&format!("idle-{i}")).expect("cgroup"))
        .collect();
    for cgroup in &cgroups {
        cgroup.run("busybox", &["uname"]).expect("uname");
    }
    for cgroup in &cgroups {
        agent
            .wait_profile("first uname", |p| {
                p["workload"] == cgroup.rel.as_str() && count(p, "uname") == 1
            })
            .expect("profile");
    }
    // The 20 now hold slots without counting: a round that is not a sweep skips them (the
    // host's other cgroups may be read).
    let (tracked, read) = poll(
        "a round that skips the idle slots",
        Duration::from_secs(15),
        || {
            let (_, body) = http(agent.addr, "GET", "/metrics").ok()?;
            let tracked = sample(&body, "syscall_recorder_cgroups_tracked ")?;
            let read = sample(&body, "syscall_recorder_collection_slots_read ")?;
            (tracked >= 20.0 && read + 20.0 <= tracked).then_some((tracked, read))
        },
    )
    .expect("idle slots skipped");
    eprintln!("a round read {read} of {tracked} slots");
    // Each wake-up is folded within a few rounds: a 3 s deadline three times over cannot be
    // met by sweeps alone.
    for (round, cgroup) in cgroups.iter().step_by(7).enumerate() {
        cgroup.run("busybox", &["uname"]).expect("uname");
        let deadline = Duration::from_secs(3);
        let path = cgroup.profile_path();
        poll("the woken cgroup's count", deadline, || {
            let (_, profile) = get_json(agent.addr, &path).ok()?;
            (count(&profile, "uname") == 2).then_some(())
        })
        .unwrap_or_else(|err| panic!("wake-up {round} ({}): {err:#}", cgroup.rel));
    }
}

/// `kernel.bpf_stats_enabled` turned on, and restored on drop.
struct BpfStatsOn {
    previous: String,
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStatsOn {
    fn new() -> Self {
        let previous = fs::read_to_string(BPF_STATS).expect("reading bpf_stats_enabled");
        fs::write(BPF_STATS, "1").expect("turning bpf_stats_enabled on");
        Self { previous }
    }
}

impl Drop for BpfStatsOn {
    fn drop(&mut self) {
        let _ = fs::write(BPF_STATS, self.previous.trim());
    }
}

/// While the kernel keeps run statistics, the agent exports its programs' runs and time (a
/// freshly attached program as much as one a previous agent left attached).
#[test]
fn bpf_program_run_statistics_are_exported_while_the_kernel_keeps_them() {
    if !privileged() {
        return;
    }
    let _stats = BpfStatsOn::new();
    let agent = Agent::start(&[]).expect("agent");
    let cgroup = TestCgroup::new("bpf-stats").expect("cgroup");
    cgroup.run("busybox", &["uname"]).expect("uname");
    let (runs, seconds) = poll("sys_enter run statistics", Duration::from_secs(15), || {
        let (_, body) = http(agent.addr, "GET", "/metrics").ok()?;
        let enabled = sample(&body, "syscall_recorder_bpf_stats_enabled ")?;
        let runs = sample(
            &body,
            "syscall_recorder_bpf_program_runs_total{program=\"sys_enter\"} ",
        )?;
        let seconds = sample(
            &body,
            "syscall_recorder_bpf_program_run_seconds_total{program=\"sys_enter\"} ",
        )?;
        (enabled == 1.0 && runs > 0.0 && seconds > 0.0).then_some((runs, seconds))
    })
    .expect("run statistics");
    eprintln!(
        "sys_enter: {runs} runs, {:.1} ns each",
        seconds * 1e9 / runs
    );
}
