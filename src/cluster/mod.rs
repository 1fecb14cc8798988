//! Everything that talks to the API server: Helm's release storage, discovery, live reads,
//! dry-run confirmation, apply.

pub mod resolve;
pub mod release_store;

pub use resolve::{ResolveError, ResolvedKind, Resolver};
pub use release_store::{ReleaseStore, StorageError};
