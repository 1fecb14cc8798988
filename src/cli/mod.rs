//! The command-line views that are not the controller: what `driftwatch check` prints
//! (`check_output`), the release list of `check --list` (`list`, laid out by `columns`), and
//! which DriftPolicy covers a release (`policy`). Kept in the library so their output is tested.

pub mod check_output;
pub mod diagnose;
pub mod list;
pub mod policy;
pub mod preview;
pub mod columns;
