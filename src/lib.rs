//! Driftwatch: tells whether each Helm release in a cluster is what Helm thinks is deployed,
//! which field differs, who changed it and when, and puts it back on request.
//!
//! The flow is `release record → decode → desired objects → resolve → fetch live → compare →
//! findings → report → heal`. Every step but fetch, report and heal is pure (no client) and
//! lives in `helm`, `drift`, `heal` (planning) and `diagnose`; `cluster` and `controller` talk
//! to the API server.

pub mod api;
pub mod check;
pub mod cli;
pub mod cluster;
pub mod controller;
pub mod diagnose;
pub mod drift;
pub mod heal;
pub mod helm;
pub mod http;
pub mod metrics;

/// Errors that leave the library. Each carries what it is about, so that the message alone
/// tells a person at 2 AM where to look.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0} is not built yet (see the open issues)")]
    NotImplemented(&'static str),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
