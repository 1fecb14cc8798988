//! The controller's key of Secret digests: random bytes kept in a Secret in its own namespace,
//! made on first start and read by every later start and every replica, so a cluster's reports
//! show equal digests for equal values. The bytes are never logged.

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, PostParams};

use crate::drift::DigestKey;

pub const SECRET_NAME: &str = "driftwatch-digest-key";
const DATA_KEY: &str = "key";

/// Reads the key, making it first when there is none.
pub async fn load(client: &Client, namespace: &str) -> anyhow::Result<DigestKey> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let what = || format!("the Secret {namespace}/{SECRET_NAME} (the key of Secret digests)");
    for _ in 0..3 {
        if let Some(s) = api.get_opt(SECRET_NAME).await.map_err(|e| anyhow::anyhow!("cannot read {}: {e}", what()))? {
            let bytes = s.data.as_ref().and_then(|d| d.get(DATA_KEY)).map(|b| b.0.clone()).unwrap_or_default();
            anyhow::ensure!(bytes.len() >= 16, "{} has no usable `{DATA_KEY}` (at least 16 bytes); delete it to have a new key made", what());
            return Ok(DigestKey::from_bytes(&bytes));
        }
        let secret: Secret = serde_json::from_value(serde_json::json!({
            "metadata": {"name": SECRET_NAME, "labels": {"app.kubernetes.io/managed-by": "driftwatch"}},
            "type": "Opaque",
        }))
        .expect("a Secret");
        let secret = Secret {
            data: Some([(DATA_KEY.to_string(), ByteString(DigestKey::random_bytes()))].into()),
            ..secret
        };
        match api.create(&PostParams { field_manager: Some(super::writer::FIELD_MANAGER.into()), ..Default::default() }, &secret).await {
            Ok(_) => {
                tracing::info!(namespace, secret = SECRET_NAME, "made the key of Secret digests");
                continue; // read back what was stored
            }
            // Another replica made it first: read theirs.
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(kube::Error::Api(s)) if s.code == 404 => anyhow::bail!(
                "cannot create {}: the controller's namespace {namespace} does not exist (create it, or set POD_NAMESPACE to the namespace the controller runs in)",
                what()
            ),
            Err(e) => anyhow::bail!("cannot create {}: {e}", what()),
        }
    }
    anyhow::bail!("{} keeps changing; cannot settle on a key", what())
}
