//! Helm's release storage, read exactly as Helm writes it: record discovery from labels
//! (`records`), decoding of one record (`release`), and manifest splitting (`manifest`).
//! All of it is pure: bytes and metadata in, typed values out.

pub mod manifest;
pub mod release;
pub mod records;
pub mod unlock;

#[cfg(test)]
mod mutations;

pub use manifest::{DesiredObject, ManifestError, split_manifest};
pub use release::{ApplyMethod, DecodeError, Release, ReleaseStatus, decode_release};
pub use records::{Driver, RecordMeta, ReleaseHistory, group_releases};
