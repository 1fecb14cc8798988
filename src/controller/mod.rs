//! `driftwatch run`: watches, reconcile, status writes, Events, leader gating.
