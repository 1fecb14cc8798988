//! `driftwatch unlock`: a release stuck `pending-*` made `failed`, written the way Helm's own
//! storage records a failed operation (`Release.SetStatus(StatusFailed, description)`): the
//! payload's `info.status` and `info.description` change, every other field is kept as it was
//! (unknown ones too), the record's `status` label follows and `modifiedAt` is the time of the
//! change. Helm then sees no operation in progress, and the next `helm upgrade` or `helm
//! rollback` runs. Pure: payload and labels in, payload and labels out.

use std::collections::BTreeMap;
use std::io::Read as _;

use base64::Engine as _;
use serde_json::Value;

use super::release::{DecodeError, decode_release, encode_release_json};

/// What an unlock changes in one record.
#[derive(Clone, Debug, PartialEq)]
pub struct Unlocked {
    /// The new `data.release` (Helm's base64 text).
    pub payload: Vec<u8>,
    pub labels: BTreeMap<String, String>,
    pub from: String,
    pub description: String,
}

#[derive(Debug, thiserror::Error)]
pub enum UnlockError {
    #[error("the record cannot be decoded: {0}")]
    Decode(#[from] DecodeError),
    #[error("revision {revision} is {status}, not pending-install, pending-upgrade or pending-rollback: nothing to unlock")]
    NotPending { revision: u32, status: String },
}

/// The record's JSON, as Helm wrote it (base64, gzip when the magic is there).
pub fn payload_json(payload: &[u8]) -> Result<Value, DecodeError> {
    // Decoded once by the checked decoder first: its errors say what is wrong.
    decode_release(payload)?;
    let raw = base64::engine::general_purpose::STANDARD.decode(payload.trim_ascii()).map_err(|e| DecodeError::Base64(e.to_string()))?;
    let json = if raw.starts_with(&[0x1f, 0x8b, 0x08]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw.as_slice()).read_to_end(&mut out).map_err(|e| DecodeError::Gzip(e.to_string()))?;
        out
    } else {
        raw
    };
    serde_json::from_slice(&json).map_err(|e| DecodeError::Json { line: e.line(), column: e.column(), detail: e.to_string() })
}

/// The description an unlocked revision carries.
pub fn description(from: &str, who: &str, at: jiff::Timestamp) -> String {
    format!("Unlocked by {who} with driftwatch unlock at {at}: was {from} (the helm process that held the lock had stopped)")
}

/// Marks a pending record failed.
pub fn unlock(payload: &[u8], labels: &BTreeMap<String, String>, who: &str, now: jiff::Timestamp) -> Result<Unlocked, UnlockError> {
    let mut json = payload_json(payload)?;
    let status = json.pointer("/info/status").and_then(Value::as_str).unwrap_or_default().to_string();
    let revision = json.get("version").and_then(Value::as_u64).unwrap_or_default() as u32;
    if !matches!(status.as_str(), "pending-install" | "pending-upgrade" | "pending-rollback") {
        return Err(UnlockError::NotPending { revision, status });
    }
    let description = description(&status, who, now);
    let info = json.get_mut("info").and_then(Value::as_object_mut).expect("a pending record has info");
    info.insert("status".into(), Value::String("failed".into()));
    info.insert("description".into(), Value::String(description.clone()));
    let bytes = serde_json::to_vec(&json).expect("a JSON value serialises");
    let mut labels = labels.clone();
    labels.insert("status".into(), "failed".into());
    labels.insert("modifiedAt".into(), now.as_second().to_string());
    Ok(Unlocked { payload: encode_release_json(&bytes), labels, from: status, description })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::helm::ReleaseStatus;

    const PENDING: &str = r#"{"name":"web","info":{"first_deployed":"2026-11-20T10:00:00Z","last_deployed":"2026-11-21T11:30:00Z",
      "description":"Preparing upgrade","status":"pending-upgrade"},"chart":{"metadata":{"name":"fullstack","version":"1.0.0"}},
      "config":{"password":"hunter2"},"manifest":"---\nkind: ConfigMap\n","version":3,"namespace":"shop","apply_method":"ssa","future":{"x":1}}"#;

    #[test]
    fn a_pending_record_becomes_failed_and_keeps_everything_else() {
        let labels: BTreeMap<String, String> = [("name", "web"), ("owner", "helm"), ("status", "pending-upgrade"), ("version", "3"), ("team", "core")].into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        let now = jiff::Timestamp::from_second(1_800_000_000).unwrap();
        let u = unlock(&encode_release_json(PENDING.as_bytes()), &labels, "alice", now).unwrap();
        assert_eq!(u.from, "pending-upgrade");
        let r = decode_release(&u.payload).unwrap();
        assert_eq!(r.info.status, ReleaseStatus::Failed);
        assert!(r.info.description.starts_with("Unlocked by alice with driftwatch unlock at 2027-01-15T08:00:00Z: was pending-upgrade"), "{}", r.info.description);
        assert_eq!((r.version, r.apply_method.to_string(), r.manifest.as_str()), (3, "ssa".into(), "---\nkind: ConfigMap\n"));
        let before = payload_json(&encode_release_json(PENDING.as_bytes())).unwrap();
        let after = payload_json(&u.payload).unwrap();
        for keep in ["/config", "/future", "/info/last_deployed", "/info/first_deployed", "/chart"] {
            assert_eq!(before.pointer(keep), after.pointer(keep), "{keep}");
        }
        assert_eq!(u.labels["status"], "failed");
        assert_eq!(u.labels["modifiedAt"], "1800000000");
        assert_eq!(u.labels["team"], "core");
    }

    #[test]
    fn only_a_pending_record_is_unlocked() {
        let deployed = PENDING.replace("pending-upgrade", "deployed");
        let e = unlock(&encode_release_json(deployed.as_bytes()), &BTreeMap::new(), "a", jiff::Timestamp::now()).unwrap_err();
        assert_eq!(e.to_string(), "revision 3 is deployed, not pending-install, pending-upgrade or pending-rollback: nothing to unlock");
        assert!(matches!(unlock(b"not base64 !!", &BTreeMap::new(), "a", jiff::Timestamp::now()), Err(UnlockError::Decode(_))));
    }
}
