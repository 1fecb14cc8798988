//! Everything that talks to the API server: Helm's release storage, discovery, live reads,
//! dry-run confirmation, a heal's reads and writes.

pub mod evidence;
pub mod heal;
pub mod inventory;
pub mod listing;
pub mod resolve;
pub mod release_store;

pub use resolve::{ResolveError, ResolvedKind, Resolver};
pub use release_store::{ReleaseStore, StorageError};

/// The client configuration of a kubeconfig context (None: the current one, or in a pod its
/// service account), as kubectl reads it.
pub async fn config_for(context: Option<&str>) -> anyhow::Result<kube::Config> {
    Ok(match context {
        Some(c) => kube::Config::from_kubeconfig(&kube::config::KubeConfigOptions { context: Some(c.to_string()), ..Default::default() }).await?,
        None => kube::Config::infer().await?,
    })
}

/// Whether a failed request may succeed if asked again: the API server did not answer (a
/// connection, TLS or timeout error), answered that it could not yet (5xx, 429 Too Many
/// Requests), or the object changed under the request (409 Conflict). Every other answer
/// (forbidden, not found, invalid) stays the same until someone changes something. The one
/// rule every read and write of the controller retries by.
pub fn is_transient(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => s.code >= 500 || s.code == 429 || s.code == 409,
        kube::Error::SerdeError(_) | kube::Error::BuildRequest(_) | kube::Error::InferConfig(_) | kube::Error::Discovery(_) => false,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::is_transient;

    fn status(code: u16) -> kube::Error {
        kube::Error::Api(kube::core::Status::failure("x", "y").with_code(code).boxed())
    }

    #[test]
    fn what_may_pass_if_asked_again() {
        for (code, transient) in [(500, true), (503, true), (504, true), (429, true), (409, true), (400, false), (403, false), (404, false), (410, false), (422, false)] {
            assert_eq!(is_transient(&status(code)), transient, "{code}");
        }
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert!(is_transient(&kube::Error::Service(Box::new(refused))));
        assert!(!is_transient(&kube::Error::SerdeError(serde_json::from_str::<u8>("x").unwrap_err())));
    }
}
