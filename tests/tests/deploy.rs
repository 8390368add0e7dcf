//! The manifests in deploy/: every overlay renders with kustomize and validates strictly against
//! the Kubernetes API schemas, and the DaemonSet asks for exactly what the agent uses — flags and
//! env it accepts, mounts for the paths it writes, the API access it needs, two capabilities.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use clap::CommandFactory as _;
use recorder_agent::config::Cli;
use serde_json::Value;

const OVERLAYS: [&str; 4] = [
    "base",
    "overlays/prometheus-operator",
    "overlays/privileged",
    "overlays/spo",
];

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// `kubectl kustomize DIR`, as YAML text and as JSON objects.
fn render(overlay: &str) -> (String, Vec<Value>) {
    let output = Command::new("kubectl")
        .arg("kustomize")
        .arg(deploy_dir().join(overlay))
        .stdin(Stdio::null())
        .output()
        .expect("kubectl (on the image; it carries kustomize)");
    assert!(
        output.status.success(),
        "kustomize {overlay}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).expect("utf-8");
    let objects = serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| {
            let value: serde_yaml_ng::Value = serde::Deserialize::deserialize(doc).expect("YAML");
            serde_json::to_value(value).expect("as JSON")
        })
        .collect();
    (text, objects)
}

fn find<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} rendered"))
}

fn find_named<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} rendered"))
}

/// `(nonResourceURLs, verbs)` of each rule of a ClusterRole.
fn non_resource_rules(role: &Value) -> Vec<(Value, Value)> {
    role["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .map(|rule| {
            assert!(rule.get("resources").is_none(), "{rule}");
            (rule["nonResourceURLs"].clone(), rule["verbs"].clone())
        })
        .collect()
}

#[test]
fn every_overlay_renders_and_validates_strictly() {
    for overlay in OVERLAYS {
        let (text, objects) = render(overlay);
        assert!(objects.len() >= 6, "{overlay}: {} objects", objects.len());
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("rendered.yaml");
        std::fs::write(&file, &text).expect("write");
        let output = Command::new("kubernetes-validate")
            .args(["--strict", "--quiet"])
            .arg(&file)
            .stdin(Stdio::null())
            .output()
            .expect("kubernetes-validate (cargo xtask setup installs it from PyPI)");
        let report = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{overlay}: {report}");
        // Only the operator's CRD (PodMonitor) has no schema in the Kubernetes API.
        for line in report.lines().filter(|l| !l.trim().is_empty()) {
            assert!(line.contains("kind PodMonitor"), "{overlay}: {line}");
        }
    }
}

/// The names of the env vars `recorder-agent run` reads, and its long flags.
fn agent_run_interface() -> (BTreeSet<String>, BTreeSet<String>) {
    let cli = Cli::command();
    let run = cli.find_subcommand("run").expect("run subcommand");
    let envs = run
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect();
    let flags = run
        .get_arguments()
        .filter_map(|a| a.get_long())
        .map(str::to_owned)
        .collect();
    (envs, flags)
}

#[test]
fn the_daemonset_asks_for_what_the_agent_uses() {
    let (_, objects) = render("base");
    let ds = find(&objects, "DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let args: Vec<String> = container["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("string arg").to_owned())
        .collect();

    // The agent's own parser accepts the arguments.
    let argv = std::iter::once("recorder-agent".to_owned()).chain(args.iter().cloned());
    if let Err(err) = <Cli as clap::Parser>::try_parse_from(argv) {
        panic!("the agent rejects the DaemonSet's args {args:?}: {err}");
    }
    // Every env var is one the agent reads (or the log filter).
    let (envs, _) = agent_run_interface();
    let env_names: Vec<&str> = container["env"]
        .as_array()
        .expect("env")
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    for name in &env_names {
        assert!(
            envs.contains(*name) || *name == "RUST_LOG",
            "env {name} is not read by the agent (reads {envs:?})"
        );
    }
    assert!(
        env_names.contains(&"NODE_NAME"),
        "NODE_NAME from the downward API"
    );
    let node_name = container["env"]
        .as_array()
        .expect("env")
        .iter()
        .find(|e| e["name"] == "NODE_NAME")
        .expect("NODE_NAME");
    assert_eq!(
        node_name["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.nodeName"
    );

    // Every path the agent writes or reads sits on a mount, writable where it writes.
    let mounts = container["volumeMounts"].as_array().expect("mounts");
    let flag = |name: &str| {
        args.iter()
            .find_map(|a| a.strip_prefix(&format!("--{name}=")).map(str::to_owned))
            .unwrap_or_else(|| panic!("--{name} not passed"))
    };
    let mount_of = |path: &str| {
        mounts
            .iter()
            .find(|m| Path::new(path).starts_with(m["mountPath"].as_str().expect("mountPath")))
            .unwrap_or_else(|| panic!("{path} is on no volumeMount"))
    };
    for (name, writable) in [
        ("state-dir", true),
        ("seccomp-dir", true),
        ("cgroup-root", false),
    ] {
        let mount = mount_of(&flag(name));
        assert_eq!(
            mount["readOnly"].as_bool().unwrap_or(false),
            !writable,
            "--{name} mount: {mount}"
        );
    }
    // And no mount the agent does not use (least privilege).
    for mount in mounts {
        let path = mount["mountPath"].as_str().expect("mountPath");
        assert!(
            ["state-dir", "seccomp-dir", "bpffs", "cgroup-root"]
                .iter()
                .any(|f| Path::new(&flag(f)).starts_with(path)),
            "mount {path} is used by no flag"
        );
    }
    let volumes = pod["volumes"].as_array().expect("volumes");
    let host_path = |volume: &str| {
        volumes
            .iter()
            .find(|v| v["name"] == volume)
            .expect("volume")["hostPath"]["path"]
            .as_str()
            .expect("hostPath")
            .to_owned()
    };
    let mount_volume = |path: &str| mount_of(path)["name"].as_str().expect("name").to_owned();
    assert_eq!(
        host_path(&mount_volume(&flag("seccomp-dir"))),
        "/var/lib/kubelet/seccomp"
    );
    assert_eq!(
        host_path(&mount_volume(&flag("cgroup-root"))),
        "/sys/fs/cgroup"
    );

    // Least privilege: two capabilities, nothing else.
    let sc = &container["securityContext"];
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(
        sc["capabilities"]["add"],
        serde_json::json!(["BPF", "PERFMON"])
    );
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_ne!(sc["privileged"], true);
    assert_eq!(pod["priorityClassName"], "system-node-critical");
    assert_eq!(
        pod["tolerations"],
        serde_json::json!([{ "operator": "Exists" }])
    );

    // The init container mounts a bpffs at the host's --bpffs when there is none: the agent's
    // own (hidden) subcommand on the same image, its mount propagated to the host and on to
    // the agent. It alone is privileged: mounting needs CAP_SYS_ADMIN and Bidirectional
    // propagation is allowed to privileged containers only.
    let init = pod["initContainers"].as_array().expect("initContainers");
    assert_eq!(init.len(), 1, "{init:?}");
    let init = &init[0];
    assert_eq!(init["image"], container["image"]);
    let init_args: Vec<&str> = init["args"]
        .as_array()
        .expect("init args")
        .iter()
        .map(|a| a.as_str().expect("string arg"))
        .collect();
    let argv = std::iter::once("recorder-agent").chain(init_args.iter().copied());
    if let Err(err) = <Cli as clap::Parser>::try_parse_from(argv) {
        panic!("the agent rejects the init container's args {init_args:?}: {err}");
    }
    assert_eq!(init_args, ["mount-bpffs", flag("bpffs").as_str()]);
    assert_eq!(init["securityContext"]["privileged"], true);
    let init_mounts = init["volumeMounts"].as_array().expect("init mounts");
    assert_eq!(init_mounts.len(), 1, "{init_mounts:?}");
    assert_eq!(init_mounts[0]["mountPath"], flag("bpffs").as_str());
    assert_eq!(init_mounts[0]["mountPropagation"], "Bidirectional");
    let bpffs_mount = mount_of(&flag("bpffs"));
    assert_eq!(bpffs_mount["name"], init_mounts[0]["name"]);
    assert_eq!(bpffs_mount["mountPropagation"], "HostToContainer");
    assert_eq!(host_path(&mount_volume(&flag("bpffs"))), "/sys/fs/bpf");

    // Probes and scrape annotations point at the agent's endpoints on its port.
    let listen = flag("listen");
    let port: u16 = listen
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    assert_eq!(container["ports"][0]["containerPort"], port);
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    let annotations = &ds["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], port.to_string());
    assert!(container["resources"]["limits"]["memory"].is_string());

    // The Service selects the agent's pods.
    let service = find(&objects, "Service");
    let labels = &ds["spec"]["template"]["metadata"]["labels"];
    for (key, value) in service["spec"]["selector"].as_object().expect("selector") {
        assert_eq!(&labels[key], value, "service selector {key}");
    }
}

#[test]
fn the_cluster_role_grants_exactly_the_api_calls_the_agent_makes() {
    let (_, objects) = render("base");
    let role = find_named(&objects, "ClusterRole", "syscall-recorder");
    let mut granted = BTreeSet::new();
    for rule in role["rules"].as_array().expect("rules") {
        for group in rule["apiGroups"].as_array().expect("groups") {
            for resource in rule["resources"].as_array().expect("resources") {
                for verb in rule["verbs"].as_array().expect("verbs") {
                    granted.insert(format!(
                        "{}/{}:{}",
                        group.as_str().expect("group"),
                        resource.as_str().expect("resource"),
                        verb.as_str().expect("verb")
                    ));
                }
            }
        }
    }
    let needed: BTreeSet<String> = recorder_agent::config::KUBERNETES_API_ACCESS
        .iter()
        .flat_map(|(group, resource, verbs)| {
            verbs
                .iter()
                .map(move |verb| format!("{group}/{resource}:{verb}"))
        })
        .collect();
    assert_eq!(granted, needed);
    let binding = find_named(&objects, "ClusterRoleBinding", "syscall-recorder");
    assert_eq!(binding["roleRef"]["name"], "syscall-recorder");
    let account = find(&objects, "ServiceAccount");
    assert_eq!(binding["subjects"][0]["name"], account["metadata"]["name"]);
    assert_eq!(
        binding["subjects"][0]["namespace"],
        account["metadata"]["namespace"]
    );
    let ds = find(&objects, "DaemonSet");
    assert_eq!(
        ds["spec"]["template"]["spec"]["serviceAccountName"],
        account["metadata"]["name"]
    );
    // The agent reviews callers (it needs the reviews granted above) and says so explicitly.
    let args = &ds["spec"]["template"]["spec"]["containers"][0]["args"];
    assert!(
        args.as_array()
            .expect("args")
            .iter()
            .any(|a| a == "--http-auth=kubernetes"),
        "{args}"
    );
}

#[test]
fn reader_roles_grant_the_metrics_url_and_reading_syscall_profiles_only() {
    let (_, objects) = render("base");
    let metrics = find_named(&objects, "ClusterRole", "syscall-recorder-metrics-reader");
    assert_eq!(
        non_resource_rules(metrics),
        [(serde_json::json!(["/metrics"]), serde_json::json!(["get"]))]
    );
    // The profiles are reviewed as SyscallProfiles (`/api/*` as a URL is every
    // authenticated user's through system:discovery).
    let api = find_named(&objects, "ClusterRole", "syscall-recorder-api-reader");
    assert_eq!(
        api["rules"],
        serde_json::json!([{"apiGroups": ["syscall-recorder.io"], "resources": ["syscallprofiles"], "verbs": ["get", "list"]}])
    );
    let reviewed = recorder_agent::serve::auth::access_attributes(
        "get",
        &format!(
            "{}/shop/Deployment/web/app",
            recorder_agent::serve::api::PROFILES_PATH
        ),
    );
    let attributes = reviewed.resource_attributes.expect("resource attributes");
    assert_eq!(attributes.resource.as_deref(), Some("syscallprofiles"));
    assert_eq!(attributes.namespace.as_deref(), Some("shop"));
    // The probes are open.
    assert_eq!(
        recorder_agent::serve::auth::OPEN_PATHS,
        ["/healthz", "/readyz"]
    );
    // The base binds them to no one: who reads is the installer's choice.
    let bound: Vec<&Value> = objects
        .iter()
        .filter(|o| o["kind"] == "ClusterRoleBinding")
        .map(|o| &o["roleRef"]["name"])
        .collect();
    assert_eq!(bound, [&serde_json::json!("syscall-recorder")]);
}

#[test]
fn overlays_do_what_they_say() {
    let (_, objects) = render("overlays/privileged");
    let sc = &find(&objects, "DaemonSet")["spec"]["template"]["spec"]["containers"][0]["securityContext"];
    assert_eq!(sc["privileged"], true);

    // SPO publishing: the flag, and exactly the grant a server-side apply needs.
    let (_, objects) = render("overlays/spo");
    let args = &find(&objects, "DaemonSet")["spec"]["template"]["spec"]["containers"][0]["args"];
    assert!(
        args.as_array()
            .expect("args")
            .iter()
            .any(|arg| arg == "--publish-spo"),
        "{args}"
    );
    let spo_role = objects
        .iter()
        .find(|o| o["kind"] == "ClusterRole" && o["metadata"]["name"] == "syscall-recorder-spo")
        .expect("the SPO ClusterRole");
    assert_eq!(
        spo_role["rules"][0]["apiGroups"][0],
        "security-profiles-operator.x-k8s.io"
    );
    assert_eq!(
        spo_role["rules"][0]["verbs"],
        serde_json::json!(["get", "create", "patch"])
    );

    let (_, objects) = render("overlays/prometheus-operator");
    let monitor = find(&objects, "PodMonitor");
    let agent_namespace = &find(&objects, "DaemonSet")["metadata"]["namespace"];
    assert_eq!(
        monitor["spec"]["namespaceSelector"]["matchNames"],
        serde_json::json!([agent_namespace])
    );
    // Prometheus scrapes with its service account's token, which may get /metrics.
    let endpoint = &monitor["spec"]["podMetricsEndpoints"][0];
    assert_eq!(endpoint["authorization"]["type"], "Bearer");
    let credentials = &endpoint["authorization"]["credentials"];
    assert_eq!(credentials["key"], "token");
    let secret = find_named(
        &objects,
        "Secret",
        credentials["name"].as_str().expect("secret name"),
    );
    assert_eq!(secret["type"], "kubernetes.io/service-account-token");
    assert_eq!(
        secret["metadata"]["namespace"],
        monitor["metadata"]["namespace"]
    );
    let binding = find_named(
        &objects,
        "ClusterRoleBinding",
        "syscall-recorder-prometheus",
    );
    assert_eq!(binding["roleRef"]["kind"], "ClusterRole");
    assert_eq!(
        binding["roleRef"]["name"],
        "syscall-recorder-metrics-reader"
    );
    find_named(&objects, "ClusterRole", "syscall-recorder-metrics-reader");
    let subject = &binding["subjects"][0];
    assert_eq!(subject["kind"], "ServiceAccount");
    assert_eq!(
        subject["name"], secret["metadata"]["annotations"]["kubernetes.io/service-account.name"],
        "the token is the bound account's"
    );
    assert_eq!(subject["namespace"], secret["metadata"]["namespace"]);
    let ds = find(&objects, "DaemonSet");
    let labels = &ds["spec"]["template"]["metadata"]["labels"];
    for (key, value) in monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("matchLabels")
    {
        assert_eq!(&labels[key], value, "PodMonitor selector {key}");
    }
    let port = monitor["spec"]["podMetricsEndpoints"][0]["port"]
        .as_str()
        .expect("port name");
    let ports = ds["spec"]["template"]["spec"]["containers"][0]["ports"]
        .as_array()
        .expect("ports");
    assert!(
        ports.iter().any(|p| p["name"] == port),
        "PodMonitor port {port}"
    );
}
