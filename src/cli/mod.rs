//! The command-line views that are not the controller: what `driftwatch check`, `diagnose`
//! and `inventory` print. Kept in the library so their output is tested.

pub mod check;
pub mod list;
pub mod policy;
pub mod table;
