//! Serving: the HTTP API ([`api`]: health, readiness, status, profiles) and the Prometheus
//! exposition ([`metrics`]), both reading the state the collection loop writes.

pub mod api;
pub mod metrics;
