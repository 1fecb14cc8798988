//! Faults between the controller and the API server (issue 12, bug 4): a TCP proxy of the
//! test's own is cut for five seconds during a cold scan and again while edits are made. Every
//! release gets its report and every edit its Drifted status and Event within seconds of the cut
//! ending — not at the next policy interval (set to an hour here, so it cannot hide a lost check).

mod common;

use std::time::{Duration, Instant};

use common::proxy::proxied_kubeconfig;
use common::{Helm, TestNamespace, apply_yaml, condition, kubectl, report, start_controller_via, wait_for};

const RELEASES: usize = 30;

fn checks_total(port: u16) -> f64 {
    let body = common::metrics_text(port).unwrap_or_default();
    body.lines().filter(|l| l.starts_with("driftwatch_checks_total{")).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

fn clean_and_ready(ns: &str, name: &str, drifted: &str) -> bool {
    report(ns, name).is_some_and(|r| {
        condition(&r, "Ready").is_some_and(|c| c["status"] == "True")
            && condition(&r, "Drifted").is_some_and(|c| c["status"] == drifted)
            && r["status"]["summary"]["errors"] == 0
    })
}

#[tokio::test]
async fn a_network_cut_loses_no_report_and_no_drift() {
    let client = common::client().await;
    let ns = TestNamespace::new(&client, "faults").await;
    let platform = TestNamespace::new(&client, "faults-pf").await;
    let n = ns.name.as_str();
    let names: Vec<String> = (0..RELEASES).map(|i| format!("r{i}")).collect();
    // Real releases, three helm processes at a time.
    for chunk in names.chunks(3) {
        let handles: Vec<_> = chunk
            .iter()
            .map(|r| {
                let (r, n, chart) = (r.clone(), n.to_string(), common::chart("many"));
                std::thread::spawn(move || Helm::V3.ok(&["install", &r, &chart, "-n", &n, "--set", "apps=1"]))
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    }
    common::apply_crds();
    apply_yaml(&format!("apiVersion: driftwatch.io/v1alpha1\nkind: DriftPolicy\nmetadata: {{name: p, namespace: {n}}}\nspec: {{interval: 1h}}\n"));

    let kubeconfig = format!("{}/kubeconfig-{n}", std::env::temp_dir().display());
    let proxy = proxied_kubeconfig(&kubeconfig);
    let log = format!("{}/controller-{n}.log", std::env::temp_dir().display());
    let ctl = start_controller_via(&platform.name, &platform.name, &[n], &log, Some(&kubeconfig));

    // 1. A five-second cut in the middle of the cold scan: as soon as the first report is
    // written, while the others are being checked. (Seen in the controller's log, read every
    // 5 ms: a kubectl poll once saw the scan of all 30 over before the cut.)
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("DriftReport written") {
        assert!(std::time::Instant::now() < deadline, "no report written in 60 s: {log}");
        std::thread::sleep(Duration::from_millis(5));
    }
    let ended = proxy.cut(Duration::from_secs(5));
    let reported_at_cut = kubectl(&["get", "driftreports", "-n", n, "--no-headers", "-o", "name"]).lines().count();
    wait_for("every release's report after the cut", 90, || names.iter().all(|r| clean_and_ready(n, r, "False")).then_some(()));
    let to_reports = ended.elapsed();
    assert!(reported_at_cut < RELEASES, "the cut came after the scan ({reported_at_cut} reports): it tested nothing");
    let checks_after_scan = checks_total(ctl.metrics_port);

    // 2. A five-second cut while six releases are edited (straight to the API server).
    let edited = &names[..6];
    let p = proxy.clone();
    let cutter = std::thread::spawn(move || p.cut(Duration::from_secs(5)));
    std::thread::sleep(Duration::from_millis(500));
    for r in edited {
        kubectl(&["patch", &format!("configmap/{r}-app-0"), "-n", n, "--type=merge", "-p", r#"{"data":{"index":"edited"}}"#]);
    }
    let ended = cutter.join().unwrap();
    let started = Instant::now();
    wait_for("every edit Drifted after the cut", 90, || edited.iter().all(|r| clean_and_ready(n, r, "True")).then_some(()));
    let to_drifted = ended.elapsed();
    wait_for("a DriftDetected Event per edited release", 30, || {
        let out = kubectl(&["get", "events", "-n", n, "--field-selector", "reason=DriftDetected", "-o", "jsonpath={range .items[*]}{.regarding.name}{.involvedObject.name} {end}"]);
        edited.iter().all(|r| out.split_whitespace().any(|w| w == r)).then_some(())
    });
    for r in &names[6..] {
        assert!(clean_and_ready(n, r, "False"), "{r} was not edited and stays in sync");
    }
    let checks = checks_total(ctl.metrics_port);
    println!(
        "fault figures: cut during the cold scan of {RELEASES} releases ({reported_at_cut} reported when it began) -> every report {:.1} s after the cut ended; \
         cut during 6 edits -> every Drifted status {:.1} s after the cut ended (waited {:.1} s); \
         checks: {checks_after_scan} for the cold scan and its recovery ({:.1} per release), {} more for the edits",
        to_reports.as_secs_f64(),
        to_drifted.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        checks_after_scan / RELEASES as f64,
        checks - checks_after_scan
    );
    drop(ctl);
}

/// The lease's first line of defence: a leader whose API server stops answering (a black hole,
/// not a reset) steps down on its own before its lease can pass to another replica, so there is
/// never a moment with two writers.
#[tokio::test]
async fn a_leader_cut_off_steps_down_before_another_takes_over() {
    let client = common::client().await;
    let ns = TestNamespace::new(&client, "lease-cut").await;
    let platform = TestNamespace::new(&client, "lease-cut-pf").await;
    let (n, p) = (ns.name.as_str(), platform.name.as_str());
    Helm::V3.ok(&["install", "app", &common::chart("many"), "-n", n, "--set", "apps=1"]);
    common::apply_crds();
    apply_yaml(&format!("apiVersion: driftwatch.io/v1alpha1\nkind: DriftPolicy\nmetadata: {{name: p, namespace: {n}}}\nspec: {{interval: 1h}}\n"));

    let kubeconfig = format!("{}/kubeconfig-{n}", std::env::temp_dir().display());
    let proxy = proxied_kubeconfig(&kubeconfig);
    let tmp = std::env::temp_dir();
    let (log_a, log_b) = (format!("{}/replica-a-{n}.log", tmp.display()), format!("{}/replica-b-{n}.log", tmp.display()));
    let _a = common::start_controller_with(p, p, &[n], &log_a, Some(&kubeconfig), Some("replica-a"));
    let holder = || kubectl(&["get", "lease", "driftwatch-controller", "-n", p, "-o", "jsonpath={.spec.holderIdentity}"]);
    wait_for("replica-a to lead", 60, || (kubectl(&["get", "lease", "-n", p, "-o", "name"]).contains("driftwatch-controller") && holder() == "replica-a").then_some(()));
    let _b = common::start_controller_with(p, p, &[n], &log_b, None, Some("replica-b"));

    // Black-hole replica-a's connection for longer than the lease (10 s).
    let px = proxy.clone();
    let stall = std::thread::spawn(move || px.stall(Duration::from_secs(20)));
    let started = Instant::now();
    wait_for("replica-b to take the lease", 40, || (holder() == "replica-b").then_some(()));
    let took_over = started.elapsed();
    stall.join().unwrap();

    let when = |log: &str, message: &str| -> Option<jiff::Timestamp> {
        std::fs::read_to_string(log).ok()?.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).find_map(|v| {
            (v["fields"]["message"] == message).then(|| v["timestamp"].as_str()?.parse().ok()).flatten()
        })
    };
    let stepped_down = when(&log_a, "lost the lease; no longer writing").unwrap_or_else(|| panic!("replica-a never stepped down:\n{}", std::fs::read_to_string(&log_a).unwrap_or_default()));
    let b_leads = when(&log_b, "became the leader").expect("replica-b became the leader");
    println!("lease figures: replica-b took the lease {:.1} s into the black hole; replica-a stepped down {:.1} s before that", took_over.as_secs_f64(), (b_leads.as_millisecond() - stepped_down.as_millisecond()) as f64 / 1000.0);
    assert!(stepped_down < b_leads, "two writers: replica-a stepped down at {stepped_down}, after replica-b took over at {b_leads}");
}
