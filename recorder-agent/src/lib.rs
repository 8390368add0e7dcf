//! The syscall recorder's node agent: counts every syscall per container cgroup with an eBPF
//! program, aggregates them into per-workload profiles, and serves and exports them.
//!
//! Module owners: [`bpf`] (the only one touching aya), [`cgroup`] (path parser and id → path
//! resolver), [`syscalls`] (number → name), [`profile`] (pure aggregation), [`seccomp`] (export
//! formats), [`compare`] (reading, diffing and merging profile files), [`delivery`] (the kubelet
//! seccomp dir), [`collector`] (one collection round), [`api`] (HTTP), [`config`] (CLI),
//! [`state`] (persistence), [`k8s`] (Kubernetes attribution), [`agent`] (the `run` command), [`record`] (the `record` command),
//! [`cli`] (the client commands), [`http_client`] (their HTTP), [`bench`] (the benchmark's agent side), [`metrics`] (the Prometheus
//! exposition) and [`promql`] (cluster-wide export from Prometheus).

pub mod agent;
pub mod api;
pub mod bench;
pub mod bpf;
pub mod cgroup;
pub mod cli;
pub mod collector;
pub mod compare;
pub mod config;
pub mod delivery;
pub mod http_client;
pub mod k8s;
pub mod metrics;
pub mod profile;
pub mod promql;
pub mod record;
pub mod seccomp;
pub mod state;
pub mod syscalls;
