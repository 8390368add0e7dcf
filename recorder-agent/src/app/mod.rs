//! The composition root: the commands that load the kernel side and wire the pipeline
//! together — [`run`] (the node agent), [`record`] (one command in a fresh cgroup) and
//! [`bench`](mod@bench) and [`bench_publish`] (the benchmark's agent side).

pub mod bench;
pub mod bench_publish;
mod cgroup_events;
mod collection_loop;
mod publish_loop;
pub mod record;
pub mod run;
