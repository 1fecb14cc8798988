//! Fuzzes the release decoder and the manifest splitter. The first byte picks the layer:
//! even → the bytes are a record payload (Helm's base64 text) and a decoded manifest is
//! split too; odd → the rest is manifest text. Seeds: `fuzz/seed` (real helm v3/v4 records).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    if selector % 2 == 0 {
        if let Ok(rel) = driftwatch::helm::decode_release(rest) {
            let _ = driftwatch::helm::split_manifest(&rel.manifest);
        }
    } else {
        let _ = driftwatch::helm::split_manifest(&String::from_utf8_lossy(rest));
    }
});
