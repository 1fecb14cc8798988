//! Two replicas with `--shards 2`, end to end: releases split by namespace, each shard written
//! by the holder of its Lease; a second replica takes half; one that dies leaves its shard to
//! the other; no report is lost or duplicated on the way (issue 18).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Helm, TestNamespace, apply_yaml, drifted, kubectl, report, wait_for};
use driftwatch::controller::lease::{lease_name, shard_of};
use serde_json::Value;

fn holder(platform: &str, k: u32) -> String {
    kubectl(&["get", "lease", &lease_name(k, 2), "-n", platform, "-o", "jsonpath={.spec.holderIdentity}", "--ignore-not-found"])
}

/// "DriftReport written" lines of a replica's log, by namespace/release.
fn writes(log: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for v in std::fs::read_to_string(log).unwrap_or_default().lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()) {
        if v["fields"]["message"] == "DriftReport written" {
            let key = format!("{}/{}", v["fields"]["namespace"].as_str().unwrap_or(""), v["fields"]["release"].as_str().unwrap_or(""));
            *out.entry(key).or_default() += 1;
        }
    }
    out
}

/// Events of one reason about a release's DriftReport, counting an aggregated series as its
/// count.
fn events(ns: &str, release: &str, reason: &str) -> u64 {
    let out = kubectl(&["get", "events.events.k8s.io", "-n", ns, "-o", "json"]);
    let list: Value = serde_json::from_str(&out).unwrap();
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["regarding"]["kind"] == "DriftReport" && e["regarding"]["name"] == release && e["reason"] == reason)
        .map(|e| e["series"]["count"].as_u64().unwrap_or(1))
        .sum()
}

fn uid_and_version(ns: &str, name: &str) -> (String, String) {
    let r = report(ns, name).unwrap_or_else(|| panic!("no report {ns}/{name}"));
    (r["metadata"]["uid"].as_str().unwrap().to_string(), r["metadata"]["resourceVersion"].as_str().unwrap().to_string())
}

fn set_feature(ns: &str, release: &str, value: &str) {
    kubectl(&["patch", "configmap", &format!("{release}-app-0"), "-n", ns, "--type", "merge", "-p", &format!("{{\"data\":{{\"settings.yaml\":\"feature: {value}\\n\"}}}}")]);
}

fn is_drifted(ns: &str, release: &str, want: &str) -> Option<()> {
    report(ns, release).filter(|r| drifted(r) == Some(want)).map(|_| ())
}

#[tokio::test]
async fn two_shards_split_the_releases_and_hand_them_over_without_losing_a_report() {
    let client = common::client().await;
    let platform = TestNamespace::new(&client, "shards-pf").await;
    // One namespace of each shard: namespaces are made until both shards have one.
    let mut made = Vec::new();
    let mut of_shard: [Option<String>; 2] = [None, None];
    while of_shard.iter().any(Option::is_none) {
        let ns = TestNamespace::new(&client, "shards").await;
        let k = shard_of(&ns.name, 2) as usize;
        of_shard[k].get_or_insert_with(|| ns.name.clone());
        made.push(ns);
    }
    let [n0, n1] = of_shard.map(Option::unwrap);
    let p = platform.name.as_str();
    common::apply_crds();
    for ns in [&n0, &n1] {
        for release in ["a", "b"] {
            Helm::V3.ok(&["install", release, &common::chart("many"), "-n", ns, "--set", "apps=1"]);
        }
        apply_yaml(&format!("apiVersion: driftwatch.io/v1alpha1\nkind: DriftPolicy\nmetadata: {{name: p, namespace: {ns}}}\nspec: {{interval: 1h}}\n"));
    }
    let tmp = std::env::temp_dir();
    let (log_a, log_b) = (format!("{}/shards-a-{p}.log", tmp.display()), format!("{}/shards-b-{p}.log", tmp.display()));
    let start = |log: &str, who: &str| common::start_controller_args(p, p, &[&n0, &n1], log, None, Some(who), &["--shards", "2"]);

    // One replica: it holds both shards and writes every report.
    let a = start(&log_a, "replica-a");
    wait_for("replica-a to hold both shards", 60, || (holder(p, 0) == "replica-a" && holder(p, 1) == "replica-a").then_some(()));
    for ns in [&n0, &n1] {
        for release in ["a", "b"] {
            wait_for(&format!("the report of {ns}/{release}"), 60, || is_drifted(ns, release, "False"));
        }
    }
    // The policies' status comes from shard 0's holder, counted from the reports of both shards.
    for ns in [&n0, &n1] {
        wait_for(&format!("policy {ns}/p to count its 2 releases"), 60, || {
            (kubectl(&["get", "driftpolicy", "p", "-n", ns, "-o", "jsonpath={.status.matchedReleases}"]) == "2").then_some(())
        });
    }
    assert_eq!(common::metric(a.metrics_port, "driftwatch_shards_held").as_deref(), Some("2"));
    let before: BTreeMap<String, (String, String)> = [&n0, &n1].iter().flat_map(|ns| ["a", "b"].map(|r| (format!("{ns}/{r}"), uid_and_version(ns, r)))).collect();

    // A second replica: replica-a hands shard 1 over, replica-b takes it. Every report stays
    // there all along.
    let b = start(&log_b, "replica-b");
    let mut missing = Vec::new();
    wait_for("replica-b to hold shard 1 and replica-a shard 0", 60, || {
        for ns in [&n0, &n1] {
            for release in ["a", "b"] {
                if report(ns, release).is_none() {
                    missing.push(format!("{ns}/{release}"));
                }
            }
        }
        (holder(p, 0) == "replica-a" && holder(p, 1) == "replica-b").then_some(())
    });
    assert!(missing.is_empty(), "reports missing during the handover: {missing:?}");
    wait_for("each replica to say it holds one shard", 30, || {
        (common::metric(a.metrics_port, "driftwatch_shards_held").as_deref() == Some("1") && common::metric(b.metrics_port, "driftwatch_shards_held").as_deref() == Some("1")).then_some(())
    });
    // replica-b's first pass over shard 1 reads the reports first: nothing unchanged is
    // written again (same object, same version).
    let b_checked = || std::fs::read_to_string(&log_b).unwrap_or_default().lines().filter(|l| l.contains("became the leader")).count();
    wait_for("replica-b to take its term", 30, || (b_checked() > 0).then_some(()));
    std::thread::sleep(Duration::from_secs(3));
    for (key, was) in &before {
        let (ns, name) = key.split_once('/').unwrap();
        assert_eq!(&uid_and_version(ns, name), was, "the report {key} was rewritten or made again by the handover");
    }
    assert!(writes(&log_b).is_empty(), "replica-b wrote unchanged reports: {:?}", writes(&log_b));

    // Drift in each shard is written by that shard's holder, once.
    let a_before = writes(&log_a);
    set_feature(&n1, "a", "9");
    set_feature(&n0, "a", "9");
    wait_for("drift in shard 1", 30, || is_drifted(&n1, "a", "True"));
    wait_for("drift in shard 0", 30, || is_drifted(&n0, "a", "True"));
    std::thread::sleep(Duration::from_secs(2));
    let (a_after, b_after) = (writes(&log_a), writes(&log_b));
    assert_eq!(b_after.get(&format!("{n1}/a")), Some(&1), "replica-b writes shard 1: {b_after:?}");
    assert_eq!(a_after.get(&format!("{n1}/a")), a_before.get(&format!("{n1}/a")), "replica-a no longer writes shard 1");
    assert_eq!(a_after.get(&format!("{n0}/a")).copied().unwrap_or(0), a_before.get(&format!("{n0}/a")).copied().unwrap_or(0) + 1, "replica-a writes shard 0");
    assert!(!b_after.contains_key(&format!("{n0}/a")), "replica-b never writes shard 0: {b_after:?}");
    for ns in [&n0, &n1] {
        assert_eq!(events(ns, "a", "DriftDetected"), 1, "one DriftDetected Event for {ns}/a");
    }
    // replica-a (shard 0) counts the drift replica-b reported in shard 1, from the reports' watch.
    wait_for("policy p in shard 1 to count the drift replica-b wrote", 30, || {
        (kubectl(&["get", "driftpolicy", "p", "-n", &n1, "-o", "jsonpath={.status.driftedReleases}"]) == "1").then_some(())
    });
    // Each replica exports the series of its own shard only.
    let series = |port: u16, ns: &str| common::metrics_text(port).unwrap_or_default().lines().any(|l| l.starts_with("helm_drift_detected{") && l.contains(&format!("namespace=\"{ns}\"")));
    assert!(series(a.metrics_port, &n0) && !series(a.metrics_port, &n1), "replica-a's series");
    assert!(series(b.metrics_port, &n1) && !series(b.metrics_port, &n0), "replica-b's series");

    // replica-b dies (no handover). While nobody holds shard 1, its drift is put back and a
    // release is uninstalled: once replica-a takes the shard over (after the lease and
    // replica-b's membership expire), its pass catches both.
    drop(b);
    set_feature(&n1, "a", "0");
    Helm::V3.ok(&["uninstall", "b", "-n", &n1]);
    wait_for("replica-a to take shard 1 back", 60, || (holder(p, 1) == "replica-a").then_some(()));
    wait_for("shard 1's drift to end in its report", 60, || is_drifted(&n1, "a", "False"));
    wait_for("the uninstalled release's report to go", 60, || report(&n1, "b").is_none().then_some(()));
    assert_eq!(events(&n1, "a", "DriftResolved"), 1, "one DriftResolved Event");
    assert!(report(&n0, "b").is_some() && report(&n0, "a").is_some() && report(&n1, "a").is_some());
    wait_for("policy p in shard 1 to count 1 release", 60, || {
        (kubectl(&["get", "driftpolicy", "p", "-n", &n1, "-o", "jsonpath={.status.matchedReleases}"]) == "1").then_some(())
    });
    drop(a);
    drop(made);
}
