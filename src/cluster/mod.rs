//! Everything that talks to the API server: Helm's release storage, discovery, live reads,
//! dry-run confirmation, a heal's reads and writes.

pub mod heal;
pub mod resolve;
pub mod release_store;

pub use resolve::{ResolveError, ResolvedKind, Resolver};
pub use release_store::{ReleaseStore, StorageError};
