//! Every version the test cluster is built from, in one place.
//!
//! Kubernetes 1.34: this host's hybrid cgroup layout is cgroup v1 to the kubelet, and 1.34 is the
//! newest minor that runs on v1 without an opt-out (1.35+ refuses unless `failCgroupV1: false`,
//! KEP-5573); it is also the closest served minor to the image's kubectl 1.32 and to the API
//! version the agent compiles against (k8s-openapi `v1_33`). The Go module proxy serves
//! `k8s.io/kubernetes` v1.34.0-v1.34.4; the staging modules are pinned to the matching v0.34.4.

/// `k8s.io/kubernetes`: kube-apiserver, kube-controller-manager, kube-scheduler, kubelet,
/// kube-proxy and kubectl.
pub const KUBERNETES: &str = "v1.34.4";
/// The `k8s.io/<staging>` modules that `k8s.io/kubernetes` replaces by local paths.
pub const KUBERNETES_STAGING: &str = "v0.34.4";
/// etcd: the 3.6 line is what Kubernetes 1.34 is tested with.
pub const ETCD: &str = "v3.6.16";
/// containerd 2.2 (Debian's 1.6.20 is older than what Kubernetes 1.29+ supports).
pub const CONTAINERD: &str = "v2.2.9";
/// CNI plugins: bridge, host-local, loopback.
pub const CNI_PLUGINS: &str = "v1.10.0";
/// Prometheus 3 (module tags v0.3xx): Debian's 2.42 is built without Kubernetes service
/// discovery, which the cluster tests use; built with only that discovery mechanism.
pub const PROMETHEUS: &str = "v0.316.0";
/// security-profiles-operator, whose SeccompProfile CRD the cluster tests install to check
/// `run --publish-spo` (1.0 serves v1 and v1beta1; only the CRD is used, nothing is built).
pub const SPO_MODULE: &str = "sigs.k8s.io/security-profiles-operator";
/// Its version.
pub const SPO: &str = "v1.0.0";
/// The CRD inside the module.
pub const SPO_CRD: &str = "deploy/base-crds/crds/seccompprofile.yaml";
/// The sandbox image, built here (a few lines of Go) and containerd's `sandbox` pinned image.
pub const PAUSE_IMAGE: &str = "localhost/syscall-recorder/pause:3.10";
/// The workload image for tests: Debian's busybox-static (the apt package's version).
pub const BUSYBOX_IMAGE: &str = "localhost/syscall-recorder/busybox:test";

/// A Go build: a module of our own that requires `module` at `version` and builds each
/// `(package, binary)` into `target/cluster/bin/<subdir>/<binary>`.
#[derive(Debug)]
pub struct GoBuild {
    pub name: &'static str,
    pub module: &'static str,
    pub version: &'static str,
    pub packages: &'static [(&'static str, &'static str)],
    /// Build tags.
    pub tags: &'static str,
    /// Below `target/cluster/bin` ("" or "cni").
    pub subdir: &'static str,
}

pub const GO_BUILDS: &[GoBuild] = &[
    GoBuild {
        name: "kubernetes",
        module: "k8s.io/kubernetes",
        version: KUBERNETES,
        packages: &[
            ("k8s.io/kubernetes/cmd/kube-apiserver", "kube-apiserver"),
            (
                "k8s.io/kubernetes/cmd/kube-controller-manager",
                "kube-controller-manager",
            ),
            ("k8s.io/kubernetes/cmd/kube-scheduler", "kube-scheduler"),
            ("k8s.io/kubernetes/cmd/kubelet", "kubelet"),
            ("k8s.io/kubernetes/cmd/kube-proxy", "kube-proxy"),
            ("k8s.io/kubernetes/cmd/kubectl", "kubectl"),
        ],
        tags: "",
        subdir: "",
    },
    GoBuild {
        name: "etcd",
        module: "go.etcd.io/etcd/server/v3",
        version: ETCD,
        packages: &[("go.etcd.io/etcd/server/v3", "etcd")],
        tags: "",
        subdir: "",
    },
    GoBuild {
        name: "containerd",
        module: "github.com/containerd/containerd/v2",
        version: CONTAINERD,
        packages: &[
            (
                "github.com/containerd/containerd/v2/cmd/containerd",
                "containerd",
            ),
            (
                "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2",
                "containerd-shim-runc-v2",
            ),
            ("github.com/containerd/containerd/v2/cmd/ctr", "ctr"),
        ],
        tags: "no_btrfs no_devmapper no_zfs",
        subdir: "",
    },
    GoBuild {
        name: "cni-plugins",
        module: "github.com/containernetworking/plugins",
        version: CNI_PLUGINS,
        packages: &[
            (
                "github.com/containernetworking/plugins/plugins/main/bridge",
                "bridge",
            ),
            (
                "github.com/containernetworking/plugins/plugins/main/loopback",
                "loopback",
            ),
            (
                "github.com/containernetworking/plugins/plugins/ipam/host-local",
                "host-local",
            ),
        ],
        tags: "",
        subdir: "cni",
    },
    GoBuild {
        name: "prometheus",
        module: "github.com/prometheus/prometheus",
        version: PROMETHEUS,
        packages: &[(
            "github.com/prometheus/prometheus/cmd/prometheus",
            "prometheus",
        )],
        tags: "remove_all_sd enable_kubernetes_sd",
        subdir: "",
    },
];
