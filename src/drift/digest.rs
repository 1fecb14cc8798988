//! Secret values as reports show them: never the value, only a keyed digest (HMAC-SHA256) that
//! tells two values apart. Without the key nobody can test a guessed value against a report;
//! with one key (a cluster's controller, or one run of the CLI) equal values show equal digests.

use std::sync::OnceLock;

use ring::hmac;
use ring::rand::{SecureRandom as _, SystemRandom};
use serde_json::Value;

/// Bytes of a key made here.
pub const KEY_LEN: usize = 32;

/// A digest key. Its bytes are never printed (`Debug` says only that it is a key).
pub struct DigestKey {
    key: hmac::Key,
}

impl std::fmt::Debug for DigestKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DigestKey(…)")
    }
}

impl DigestKey {
    pub fn from_bytes(bytes: &[u8]) -> Self {
        DigestKey { key: hmac::Key::new(hmac::HMAC_SHA256, bytes) }
    }

    /// Fresh random key bytes, from the operating system's generator.
    pub fn random_bytes() -> Vec<u8> {
        let mut bytes = vec![0u8; KEY_LEN];
        SystemRandom::new().fill(&mut bytes).expect("the system's random generator works");
        bytes
    }

    /// This process's own random key: what a one-shot `driftwatch check` uses, so digests
    /// differ from one run to the next.
    pub fn per_run() -> &'static DigestKey {
        static KEY: OnceLock<DigestKey> = OnceLock::new();
        KEY.get_or_init(|| DigestKey::from_bytes(&Self::random_bytes()))
    }

    /// A value as reports show it: `(redacted, hmac:<first 12 hex>)`.
    pub fn redact(&self, v: &Value) -> Value {
        let text = match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let tag = hmac::sign(&self.key, text.as_bytes());
        let hex: String = tag.as_ref().iter().take(6).map(|b| format!("{b:02x}")).collect();
        Value::String(format!("(redacted, hmac:{hex})"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn equal_values_equal_digests_under_one_key_only() {
        let a = DigestKey::from_bytes(b"key-a");
        let b = DigestKey::from_bytes(b"key-b");
        assert_eq!(a.redact(&json!("hunter2")), a.redact(&json!("hunter2")));
        assert_ne!(a.redact(&json!("hunter2")), a.redact(&json!("hunter3")));
        assert_ne!(a.redact(&json!("hunter2")), b.redact(&json!("hunter2")), "another key, another digest");
        let shown = a.redact(&json!("x"));
        let s = shown.as_str().unwrap();
        assert!(s.starts_with("(redacted, hmac:") && s.len() == "(redacted, hmac:)".len() + 12, "{s}");
    }

    #[test]
    fn the_unkeyed_digest_is_not_what_is_shown() {
        use sha2::{Digest as _, Sha256};
        let plain: String = Sha256::digest(b"hunter2").iter().take(6).map(|b| format!("{b:02x}")).collect();
        let shown = DigestKey::per_run().redact(&json!("hunter2"));
        assert!(!shown.as_str().unwrap().contains(&plain));
    }

    #[test]
    fn random_keys_differ_and_are_not_printed() {
        assert_ne!(DigestKey::random_bytes(), DigestKey::random_bytes());
        assert_eq!(format!("{:?}", DigestKey::from_bytes(b"secret")), "DigestKey(…)");
    }
}
