//! Property tests: thousands of random mutations of real release records (written by real
//! helm v3 and v4, see tests/fixtures) at every layer — base64 text, gzip bytes, JSON text,
//! manifest text — never make the decoder or the manifest splitter panic, and the errors
//! they return never quote record contents.

use base64::Engine as _;
use proptest::prelude::*;
use std::io::Read as _;

use super::manifest::split_manifest;
use super::release::{decode_release, encode_release_json};

const HELM3: &[u8] = include_bytes!("../../tests/fixtures/helm3-shop-v2.release");
const HELM4: &[u8] = include_bytes!("../../tests/fixtures/helm4-blog-v1.release");

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes).read_to_end(&mut out).unwrap();
    out
}

fn json_of(record: &[u8]) -> Vec<u8> {
    gunzip(&b64().decode(record).unwrap())
}

/// One edit: at a position (as a fraction of the length), overwrite, insert, delete, or cut.
#[derive(Clone, Debug)]
enum Edit {
    Set(prop::sample::Index, u8),
    Insert(prop::sample::Index, u8),
    Delete(prop::sample::Index),
    Truncate(prop::sample::Index),
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let edit = prop_oneof![
        4 => (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Edit::Set(i, b)),
        2 => (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Edit::Insert(i, b)),
        2 => any::<prop::sample::Index>().prop_map(Edit::Delete),
        1 => any::<prop::sample::Index>().prop_map(Edit::Truncate),
    ];
    prop::collection::vec(edit, 1..6)
}

fn apply(mut bytes: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        if bytes.is_empty() {
            break;
        }
        match e {
            Edit::Set(i, b) => {
                let i = i.index(bytes.len());
                bytes[i] = *b;
            }
            Edit::Insert(i, b) => {
                let i = i.index(bytes.len());
                bytes.insert(i, *b);
            }
            Edit::Delete(i) => {
                let i = i.index(bytes.len());
                bytes.remove(i);
            }
            Edit::Truncate(i) => {
                let i = i.index(bytes.len());
                bytes.truncate(i);
            }
        }
    }
    bytes
}

/// Neither the decoder nor the splitter may panic; an error never quotes the test Secret's
/// password (which is in the fixtures' values and manifest).
fn check(payload: &[u8]) {
    match decode_release(payload) {
        Ok(rel) => {
            let split = split_manifest(&rel.manifest);
            for e in &split.errors {
                assert!(!e.to_string().contains("not-a-real-password"), "{e}");
            }
        }
        Err(e) => assert!(!e.to_string().contains("not-a-real-password"), "{e}"),
    }
}

fn fixture() -> impl Strategy<Value = &'static [u8]> {
    prop_oneof![Just(HELM3), Just(HELM4)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2500, ..ProptestConfig::default() })]

    #[test]
    fn base64_text_mutations(record in fixture(), edits in edits()) {
        check(&apply(record.to_vec(), &edits));
    }

    #[test]
    fn gzip_byte_mutations(record in fixture(), edits in edits()) {
        let gz = apply(b64().decode(record).unwrap(), &edits);
        check(b64().encode(gz).as_bytes());
    }

    #[test]
    fn json_text_mutations(record in fixture(), edits in edits()) {
        let json = apply(json_of(record), &edits);
        check(&encode_release_json(&json));
        check(b64().encode(&json).as_bytes()); // the plain-JSON form Helm also accepts
    }

    #[test]
    fn manifest_text_mutations(record in fixture(), edits in edits()) {
        let rel = decode_release(record).unwrap();
        let manifest = apply(rel.manifest.into_bytes(), &edits);
        let split = split_manifest(&String::from_utf8_lossy(&manifest));
        for e in &split.errors {
            prop_assert!(!e.to_string().contains("not-a-real-password"), "{}", e);
        }
    }

    #[test]
    fn arbitrary_manifests(text in "(---\n|# Source: x\n|[a-z]{1,8}: |[-:{}\\[\\],&*!|> \n\"']|[0-9]{1,3}){0,60}") {
        let _ = split_manifest(&text);
    }
}

#[test]
fn the_fixtures_are_real_helm_records() {
    let h3 = decode_release(HELM3).unwrap();
    assert_eq!(h3.apply_method, super::ApplyMethod::Csa);
    let h4 = decode_release(HELM4).unwrap();
    assert_eq!(h4.apply_method, super::ApplyMethod::Ssa);
    for rel in [h3, h4] {
        let split = split_manifest(&rel.manifest);
        assert!(split.errors.is_empty(), "{:?}", split.errors);
        assert!(split.objects.len() >= 12, "{}", split.objects.len());
    }
}
