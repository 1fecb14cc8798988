//! Decoding one large release record: a manifest of ~2,000 objects, ~800 KiB gzipped (near
//! Helm's 1 MiB Secret limit once base64'd), with the chart templates and files a real record
//! carries. Prints time per decode (median and p90 of repeated runs) and the peak memory the
//! decode allocates beyond its input, against the decoded manifest's size.
//!
//!   cargo bench --bench decode_record

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use driftwatch::helm::release::encode_release_json;
use driftwatch::helm::{decode_release, split_manifest};

struct Counting;
static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            let now = CURRENT.fetch_add(l.size(), Ordering::Relaxed) + l.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) };
        CURRENT.fetch_sub(l.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// A deterministic pseudo-random hex string (checksums, certificates: the part of real
/// manifests that does not compress).
fn noise(seed: &mut u64, len: usize) -> String {
    let mut s = String::with_capacity(len);
    while s.len() < len {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        s.push_str(&format!("{:016x}", *seed));
    }
    s.truncate(len);
    s
}

fn large_record(objects: usize) -> (Vec<u8>, usize) {
    let mut seed = 0x9e3779b97f4a7c15u64;
    let mut manifest = String::new();
    for i in 0..objects {
        let app = format!("svc-{i:04}");
        match i % 4 {
            0 => manifest.push_str(&format!(
                "---\n# Source: big/templates/deployment.yaml\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {app}\n  labels:\n    app.kubernetes.io/name: {app}\n    app.kubernetes.io/instance: big\nspec:\n  replicas: 2\n  selector:\n    matchLabels:\n      app.kubernetes.io/name: {app}\n  template:\n    metadata:\n      labels:\n        app.kubernetes.io/name: {app}\n      annotations:\n        checksum/config: {}\n    spec:\n      containers:\n        - name: main\n          image: registry.example.com/{app}:1.{i}.0\n          ports:\n            - containerPort: 8080\n          env:\n            - name: LOG_LEVEL\n              value: info\n          resources:\n            limits:\n              memory: 512Mi\n",
                noise(&mut seed, 64)
            )),
            1 => manifest.push_str(&format!(
                "---\n# Source: big/templates/service.yaml\napiVersion: v1\nkind: Service\nmetadata:\n  name: {app}\nspec:\n  selector:\n    app.kubernetes.io/name: {app}\n  ports:\n    - port: 80\n      targetPort: 8080\n"
            )),
            2 => manifest.push_str(&format!(
                "---\n# Source: big/templates/configmap.yaml\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {app}\ndata:\n  settings.json: '{{\"id\": {i}, \"token\": \"{}\"}}'\n  ca.crt: |\n    {}\n",
                noise(&mut seed, 200),
                noise(&mut seed, 2300)
            )),
            _ => manifest.push_str(&format!(
                "---\n# Source: big/templates/sa.yaml\napiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: {app}\n  annotations:\n    example.com/role: arn:aws:iam::{}:role/{app}\n",
                noise(&mut seed, 12)
            )),
        }
    }
    let templates: Vec<serde_json::Value> = (0..40)
        .map(|i| serde_json::json!({"name": format!("templates/t{i}.yaml"), "data": noise(&mut seed, 2000)}))
        .collect();
    let release = serde_json::json!({
        "name": "big", "namespace": "bench", "version": 7,
        "info": {"first_deployed": "2026-01-01T00:00:00Z", "last_deployed": "2026-11-01T00:00:00.123456789Z",
                 "deleted": "", "description": "Upgrade complete", "status": "deployed", "notes": "big notes"},
        "chart": {"metadata": {"name": "big", "version": "3.2.1", "appVersion": "9.9"},
                  "templates": templates, "values": {"replicas": 2}, "schema": null,
                  "files": [{"name": "README.md", "data": noise(&mut seed, 5000)}]},
        "config": {"image": {"tag": "1.0"}},
        "manifest": manifest,
        "hooks": [],
    });
    let json = serde_json::to_vec(&release).unwrap();
    (encode_release_json(&json), manifest.len())
}

fn main() {
    let (payload, manifest_len) = large_record(2000);
    let gz_len = payload.len() * 3 / 4;
    // Warm up, and check the record is what we meant.
    let rel = decode_release(&payload).unwrap();
    assert_eq!(split_manifest(&rel.manifest).objects.len(), 2000);
    drop(rel);

    let runs = 30;
    let mut times = Vec::with_capacity(runs);
    let mut peak_extra = 0usize;
    for _ in 0..runs {
        let before = CURRENT.load(Ordering::Relaxed);
        PEAK.store(before, Ordering::Relaxed);
        let t = Instant::now();
        let rel = decode_release(&payload).unwrap();
        times.push(t.elapsed());
        peak_extra = peak_extra.max(PEAK.load(Ordering::Relaxed) - before);
        std::hint::black_box(&rel);
    }
    times.sort();
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;

    let before = CURRENT.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let t = Instant::now();
    let rel = decode_release(&payload).unwrap();
    let split = split_manifest(&rel.manifest);
    let split_time = t.elapsed();
    let split_peak = PEAK.load(Ordering::Relaxed) - before;
    std::hint::black_box(&split);

    println!("decode_record: {} objects, record {:.0} KiB gzipped ({:.0} KiB base64), manifest {:.0} KiB", 2000, gz_len as f64 / 1024.0, payload.len() as f64 / 1024.0, manifest_len as f64 / 1024.0);
    println!("  decode: median {:.1} ms, p90 {:.1} ms over {runs} runs", ms(times[runs / 2]), ms(times[runs * 9 / 10]));
    println!("  decode peak extra memory: {:.0} KiB = {:.2}x the manifest", peak_extra as f64 / 1024.0, peak_extra as f64 / manifest_len as f64);
    println!("  decode + split into objects: {:.1} ms, peak extra {:.0} KiB = {:.2}x the manifest", ms(split_time), split_peak as f64 / 1024.0, split_peak as f64 / manifest_len as f64);
}
