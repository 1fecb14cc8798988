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
pub mod inventory;
pub mod memory;
pub mod metrics;
pub mod preview;
pub mod report;
