//! Making equal-in-meaning values equal in spelling before comparison: quantities
//! (`1000m` = `1`, `1Gi` = `1073741824`), numbers (`1` = `1.0`), a Secret's `stringData`
//! (the API server stores it base64'd under `data`), and the parts of a manifest object
//! that are never desired state (status, server-owned metadata, nulls).

use base64::Engine as _;
use serde_json::{Map, Value};

/// A quantity's exact value in nano-units, or None when it is not a valid quantity (or too
/// large to hold exactly).
pub fn quantity_nanos(s: &str) -> Option<i128> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-')).unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    if number.is_empty() || number == "+" || number == "-" {
        return None;
    }
    let (negative, digits) = match number.as_bytes()[0] {
        b'-' => (true, &number[1..]),
        b'+' => (false, &number[1..]),
        _ => (false, number),
    };
    let (int_part, frac_part) = digits.split_once('.').unwrap_or((digits, ""));
    if int_part.is_empty() && frac_part.is_empty() || !(int_part.chars().chain(frac_part.chars())).all(|c| c.is_ascii_digit()) {
        return None;
    }
    let mantissa: i128 = format!("{int_part}{frac_part}").parse().ok().or(Some(0).filter(|_| int_part.is_empty() && frac_part.is_empty()))?;
    // value = mantissa * 10^-frac_len * multiplier; in nanos: * 10^9.
    let (pow2, pow10): (u32, i32) = match suffix {
        "" => (0, 0),
        "n" => (0, -9),
        "u" => (0, -6),
        "m" => (0, -3),
        "k" => (0, 3),
        "M" => (0, 6),
        "G" => (0, 9),
        "T" => (0, 12),
        "P" => (0, 15),
        "E" => (0, 18),
        "Ki" => (10, 0),
        "Mi" => (20, 0),
        "Gi" => (30, 0),
        "Ti" => (40, 0),
        "Pi" => (50, 0),
        "Ei" => (60, 0),
        e if e.starts_with(['e', 'E']) => (0, e[1..].parse().ok()?),
        _ => return None,
    };
    let exp10 = pow10 + 9 - frac_part.len() as i32;
    let mut v = mantissa.checked_mul(1i128.checked_shl(pow2)?)?;
    if exp10 >= 0 {
        v = v.checked_mul(10i128.checked_pow(exp10 as u32)?)?;
    } else {
        let d = 10i128.checked_pow((-exp10) as u32)?;
        if v % d != 0 {
            // Finer than a nano: Kubernetes rounds up to the nearest nano.
            v = v / d + 1;
        } else {
            v /= d;
        }
    }
    Some(if negative { -v } else { v })
}

/// Two JSON numbers equal in value (`1` and `1.0`).
pub fn numbers_equal(a: &serde_json::Number, b: &serde_json::Number) -> bool {
    if let (Some(x), Some(y)) = (a.as_i64(), b.as_i64()) {
        return x == y;
    }
    if let (Some(x), Some(y)) = (a.as_u64(), b.as_u64()) {
        return x == y;
    }
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

/// A value that Kubernetes' encoding drops when it is the field's zero value (`omitempty`):
/// absent live and zero desired is no drift.
pub fn is_zero(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.values().all(is_zero),
    }
}

/// Prepares a manifest object for comparison: drops `status`, nulls, and metadata the API
/// server owns; for a Secret, folds `stringData` into `data` (base64) as the server does.
pub fn desired_for_compare(object: &Value) -> Value {
    let mut v = object.clone();
    if let Value::Object(map) = &mut v {
        map.remove("status");
        if let Some(Value::Object(meta)) = map.get_mut("metadata") {
            meta.retain(|k, _| matches!(k.as_str(), "name" | "namespace" | "labels" | "annotations" | "finalizers" | "ownerReferences"));
            // The release namespace is resolved apart; compare the rest of the metadata.
            meta.remove("namespace");
        }
        let is_secret = map.get("kind").and_then(Value::as_str) == Some("Secret")
            && map.get("apiVersion").and_then(Value::as_str) == Some("v1");
        if is_secret {
            fold_string_data(map);
        }
    }
    drop_nulls(&mut v);
    v
}

fn fold_string_data(secret: &mut Map<String, Value>) {
    let Some(Value::Object(string_data)) = secret.remove("stringData") else { return };
    let data = secret.entry("data").or_insert_with(|| Value::Object(Map::new()));
    if !data.is_object() {
        *data = Value::Object(Map::new());
    }
    let data = data.as_object_mut().expect("made an object above");
    for (k, v) in string_data {
        let text = match v {
            Value::String(s) => s,
            Value::Null => continue,
            other => other.to_string(),
        };
        data.insert(k, Value::String(base64::engine::general_purpose::STANDARD.encode(text)));
    }
}

fn drop_nulls(v: &mut Value) {
    match v {
        Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(drop_nulls);
        }
        Value::Array(items) => items.iter_mut().for_each(drop_nulls),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn quantities() {
        let q = |s| quantity_nanos(s).unwrap_or_else(|| panic!("{s}"));
        assert_eq!(q("1000m"), q("1"));
        assert_eq!(q("1Gi"), q("1073741824"));
        assert_eq!(q("0.5Gi"), q("512Mi"));
        assert_eq!(q("1k"), q("1000"));
        assert_eq!(q("1e3"), q("1k"));
        assert_eq!(q("1E3"), q("1000"));
        assert_eq!(q("100m"), q("0.1"));
        assert_eq!(q(".5"), q("500m"));
        assert_eq!(q("+2"), q("2"));
        assert_eq!(q("-1"), -q("1"));
        assert_eq!(q("1n"), 1);
        assert_eq!(q("0.1n"), 1, "rounded up to a nano");
        assert_ne!(q("1Gi"), q("1G"));
        assert_ne!(q("512Mi"), q("1Gi"));
        for bad in ["", "abc", "1Qi", "Gi", "1.2.3", "--1", "1 Gi"] {
            assert_eq!(quantity_nanos(bad), None, "{bad}");
        }
        assert_eq!(quantity_nanos("99999999999999999999999999999Ei"), None);
    }

    #[test]
    fn numbers() {
        let n = |v: Value| match v {
            Value::Number(n) => n,
            _ => unreachable!(),
        };
        assert!(numbers_equal(&n(json!(1)), &n(json!(1.0))));
        assert!(!numbers_equal(&n(json!(1)), &n(json!(2))));
        assert!(numbers_equal(&n(json!(u64::MAX)), &n(json!(u64::MAX))));
    }

    #[test]
    fn zero_values() {
        for z in [json!(null), json!(false), json!(0), json!(""), json!([]), json!({}), json!({"a": {}})] {
            assert!(is_zero(&z), "{z}");
        }
        for nz in [json!(true), json!(1), json!("x"), json!([0]), json!({"a": 1})] {
            assert!(!is_zero(&nz), "{nz}");
        }
    }

    #[test]
    fn secret_string_data_folds_into_data() {
        let d = desired_for_compare(&json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "s", "namespace": "x", "creationTimestamp": null},
            "data": {"a": "YQ=="}, "stringData": {"b": "hello", "a": "override"}}));
        assert_eq!(d["data"]["b"], "aGVsbG8=");
        assert_eq!(d["data"]["a"], "b3ZlcnJpZGU=");
        assert!(d.get("stringData").is_none());
        assert_eq!(d["metadata"], json!({"name": "s"}));
    }

    #[test]
    fn status_and_nulls_are_dropped() {
        let d = desired_for_compare(&json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "d", "labels": {"a": "b"}, "uid": "x"},
            "spec": {"replicas": null, "template": {"metadata": {"creationTimestamp": null}}},
            "status": {"replicas": 3}}));
        assert_eq!(d, json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "d", "labels": {"a": "b"}}, "spec": {"template": {"metadata": {}}}}));
    }
}
