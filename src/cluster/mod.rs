//! Everything that talks to the API server: Helm's release storage, discovery, live reads,
//! dry-run confirmation, apply.

pub mod storage;

pub use storage::{ReleaseStore, StorageError};
