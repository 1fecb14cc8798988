//! Everything that talks to the API server: Helm's release storage, discovery, live reads,
//! dry-run confirmation, apply.

pub mod resolve;
pub mod storage;

pub use resolve::{ResolveError, ResolvedKind, Resolver};
pub use storage::{ReleaseStore, StorageError};
