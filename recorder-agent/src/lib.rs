//! The syscall recorder's node agent: counts every syscall per container cgroup with an eBPF
//! program, aggregates them into per-workload profiles, and serves and exports them.
//!
//! The folders follow the pipeline, each depending only on those before it:
//! [`kernel`] (the only one touching aya) → [`collection`] (rounds over the kernel counters) →
//! [`attribution`] (cgroup → container → pod → workload) → [`profile`] (the model, names,
//! persistence) → [`export`] (formats, compare/merge, delivery to the kubelet) → [`serve`]
//! (HTTP API, metrics). [`client`] holds the commands that talk to an agent or Prometheus,
//! [`config`] the command line, and [`app`] the composition root (`run`, `record`, bench);
//! [`report`] prints an error with its causes once.

pub mod app;
pub mod attribution;
pub mod client;
pub mod collection;
pub mod config;
pub mod export;
pub mod kernel;
pub mod profile;
pub mod report;
pub mod serve;
