//! The Prometheus series of PRODUCT.md section 5, with exactly those names and labels. No label
//! carries a revision, a time or a message.

use std::collections::HashMap;
use std::sync::Mutex;

use prometheus::{Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry, TextEncoder};

pub struct Metrics {
    registry: Registry,
    release_info: GaugeVec,
    last_deployed: GaugeVec,
    drift_detected: GaugeVec,
    drifted_resources: GaugeVec,
    first_detected: GaugeVec,
    findings: GaugeVec,
    /// The finding types each release has had a series for (set to 0 when one clears).
    finding_types: Mutex<HashMap<(String, String), std::collections::BTreeSet<String>>>,
    pub heals_total: IntCounterVec,
    pub checks_total: IntCounterVec,
    pub check_duration: Histogram,
    /// How long a release waited in the work queue before its check, by lane (`now`: a change
    /// a watch saw; `later`: a full pass).
    pub queue_wait: HistogramVec,
    pub decode_errors: IntCounter,
    pub watched_objects: Gauge,
    /// Shards whose lease this replica holds (`--shards`; with one shard, 1 on the leader).
    pub shards_held: Gauge,
    /// The `helm_release_info` label values last set per release, to remove them on change.
    info_labels: Mutex<HashMap<(String, String), [String; 6]>>,
}

/// What the metrics say about one release.
pub struct ReleaseSeries<'a> {
    pub namespace: &'a str,
    pub release: &'a str,
    pub chart: &'a str,
    pub chart_version: &'a str,
    pub app_version: &'a str,
    pub status: &'a str,
    pub last_deployed: Option<f64>,
    pub drifted: bool,
    pub drifted_resources: usize,
    pub first_drift: Option<f64>,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let g = GaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(g.clone())).expect("registered once");
            g
        };
        let release_info = gauge_vec(
            "helm_release_info",
            "Helm releases (1 per release), with chart, versions and status",
            &["namespace", "release", "chart", "chart_version", "app_version", "status"],
        );
        let last_deployed = gauge_vec("helm_release_last_deployed_timestamp", "When the release was last deployed (unix seconds)", &["namespace", "release"]);
        let drift_detected = gauge_vec("helm_drift_detected", "1 when the release has drifted from its deployed revision, 0 in sync", &["namespace", "release"]);
        let drifted_resources = gauge_vec("driftwatch_drifted_resources", "Resources of the release that are not in sync", &["namespace", "release"]);
        let first_detected = gauge_vec("driftwatch_drift_first_detected_timestamp", "Start of the current drift episode (unix seconds)", &["namespace", "release"]);
        let findings = gauge_vec(
            "driftwatch_release_findings",
            "Release-level findings (1 present, 0 cleared): Failed, PartialUpgrade, StuckPending, HookOrphans, OrphanedResources, LostRecords, Stale",
            &["namespace", "release", "type"],
        );
        let heals_total = IntCounterVec::new(Opts::new("driftwatch_heals_total", "Heals by result"), &["namespace", "release", "result"]).unwrap();
        let checks_total = IntCounterVec::new(Opts::new("driftwatch_checks_total", "Release checks by result"), &["result"]).unwrap();
        let check_duration = Histogram::with_opts(
            HistogramOpts::new("driftwatch_check_duration_seconds", "Time to check one release")
                .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
        )
        .unwrap();
        let queue_wait = HistogramVec::new(
            HistogramOpts::new("driftwatch_queue_wait_seconds", "Time a release waited in the work queue before its check, by lane (now: a change a watch saw; later: a full pass)")
                .buckets(vec![0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0]),
            &["lane"],
        )
        .unwrap();
        let decode_errors = IntCounter::new("driftwatch_release_decode_errors_total", "Release records that could not be decoded").unwrap();
        let watched_objects = Gauge::new("driftwatch_watched_objects", "Live objects of tracked releases being watched").unwrap();
        let shards_held = Gauge::new("driftwatch_shards_held", "Release shards whose lease this replica holds (with leader election; one shard: 1 on the leader)").unwrap();
        for c in [Box::new(heals_total.clone()) as Box<dyn prometheus::core::Collector>, Box::new(checks_total.clone()), Box::new(check_duration.clone()), Box::new(queue_wait.clone()), Box::new(decode_errors.clone()), Box::new(watched_objects.clone()), Box::new(shards_held.clone())] {
            registry.register(c).expect("registered once");
        }
        Metrics {
            registry,
            release_info,
            last_deployed,
            drift_detected,
            drifted_resources,
            first_detected,
            findings,
            finding_types: Mutex::new(HashMap::new()),
            heals_total,
            checks_total,
            check_duration,
            queue_wait,
            decode_errors,
            watched_objects,
            shards_held,
            info_labels: Mutex::new(HashMap::new()),
        }
    }

    pub fn set_release(&self, s: &ReleaseSeries) {
        let key = (s.namespace.to_string(), s.release.to_string());
        let labels = [s.namespace, s.release, s.chart, s.chart_version, s.app_version, s.status].map(str::to_string);
        {
            let mut known = self.info_labels.lock().expect("metrics lock");
            if let Some(old) = known.get(&key).filter(|old| **old != labels) {
                let old: Vec<&str> = old.iter().map(String::as_str).collect();
                let _ = self.release_info.remove_label_values(&old);
            }
            known.insert(key, labels.clone());
        }
        let l: Vec<&str> = labels.iter().map(String::as_str).collect();
        self.release_info.with_label_values(&l).set(1.0);
        let nr = [s.namespace, s.release];
        match s.last_deployed {
            Some(t) => self.last_deployed.with_label_values(&nr).set(t),
            None => {
                let _ = self.last_deployed.remove_label_values(&nr);
            }
        }
        self.drift_detected.with_label_values(&nr).set(if s.drifted { 1.0 } else { 0.0 });
        self.drifted_resources.with_label_values(&nr).set(s.drifted_resources as f64);
        match s.first_drift {
            Some(t) => self.first_detected.with_label_values(&nr).set(t),
            None => {
                let _ = self.first_detected.remove_label_values(&nr);
            }
        }
    }

    /// A release's findings: 1 for each type it has; a type it had and no longer has stays, at
    /// 0 (an alert resolves instead of vanishing), until the release is forgotten. A release that
    /// never had a finding has no series.
    pub fn set_findings(&self, namespace: &str, release: &str, types: &[&str]) {
        let mut known = self.finding_types.lock().expect("metrics lock");
        let had = known.entry((namespace.to_string(), release.to_string())).or_default();
        had.extend(types.iter().map(|t| t.to_string()));
        for t in had.iter() {
            let v = if types.contains(&t.as_str()) { 1.0 } else { 0.0 };
            self.findings.with_label_values(&[namespace, release, t]).set(v);
        }
    }

    /// Removes every series of the releases of the namespaces `gone` accepts (their shard went to
    /// another replica, which exports them now).
    pub fn forget_releases_where(&self, gone: impl Fn(&str) -> bool) {
        let mut keys: Vec<(String, String)> = self.info_labels.lock().expect("metrics lock").keys().cloned().collect();
        keys.extend(self.finding_types.lock().expect("metrics lock").keys().cloned());
        keys.retain(|(ns, _)| gone(ns));
        keys.sort();
        keys.dedup();
        for (ns, release) in keys {
            self.forget_release(&ns, &release);
        }
    }

    /// Removes every series of a release that is gone (or no longer covered by a policy).
    pub fn forget_release(&self, namespace: &str, release: &str) {
        if let Some(types) = self.finding_types.lock().expect("metrics lock").remove(&(namespace.to_string(), release.to_string())) {
            for t in types {
                let _ = self.findings.remove_label_values(&[namespace, release, &t]);
            }
        }
        if let Some(old) = self.info_labels.lock().expect("metrics lock").remove(&(namespace.to_string(), release.to_string())) {
            let old: Vec<&str> = old.iter().map(String::as_str).collect();
            let _ = self.release_info.remove_label_values(&old);
        }
        let nr = [namespace, release];
        for g in [&self.last_deployed, &self.drift_detected, &self.drifted_resources, &self.first_detected] {
            let _ = g.remove_label_values(&nr);
        }
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf).expect("text encoding");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series<'a>(status: &'a str, drifted: bool) -> ReleaseSeries<'a> {
        ReleaseSeries {
            namespace: "prod",
            release: "shop",
            chart: "fullstack",
            chart_version: "1.0.0",
            app_version: "2.4.1",
            status,
            last_deployed: Some(1_700_000_000.0),
            drifted,
            drifted_resources: usize::from(drifted),
            first_drift: drifted.then_some(1_700_000_100.0),
        }
    }

    #[test]
    fn release_series_follow_the_release() {
        let m = Metrics::new();
        m.set_release(&series("deployed", true));
        let text = m.render();
        assert!(text.contains(r#"helm_release_info{app_version="2.4.1",chart="fullstack",chart_version="1.0.0",namespace="prod",release="shop",status="deployed"} 1"#), "{text}");
        assert!(text.contains(r#"helm_drift_detected{namespace="prod",release="shop"} 1"#));
        assert!(text.contains(r#"helm_release_last_deployed_timestamp{namespace="prod",release="shop"} 1700000000"#));
        // A status change replaces the info series rather than adding a second one.
        m.set_release(&series("failed", false));
        let text = m.render();
        assert!(!text.contains(r#"status="deployed""#), "{text}");
        assert!(text.contains(r#"status="failed"} 1"#));
        assert!(text.contains(r#"helm_drift_detected{namespace="prod",release="shop"} 0"#));
        assert!(!text.contains("driftwatch_drift_first_detected_timestamp{"));
        m.forget_release("prod", "shop");
        assert!(!m.render().contains(r#"release="shop""#));
    }

    #[test]
    fn findings_are_one_series_per_type_the_release_has_had() {
        let m = Metrics::new();
        m.set_findings("prod", "shop", &[]);
        assert!(!m.render().contains("driftwatch_release_findings{"), "a healthy release has no series");
        m.set_findings("prod", "shop", &["Failed", "HookOrphans"]);
        let text = m.render();
        assert!(text.contains(r#"driftwatch_release_findings{namespace="prod",release="shop",type="Failed"} 1"#), "{text}");
        assert!(text.contains(r#"driftwatch_release_findings{namespace="prod",release="shop",type="HookOrphans"} 1"#), "{text}");
        // Cleared: 0, so an alert on == 1 resolves.
        m.set_findings("prod", "shop", &["HookOrphans"]);
        assert!(m.render().contains(r#"driftwatch_release_findings{namespace="prod",release="shop",type="Failed"} 0"#));
        m.forget_release("prod", "shop");
        assert!(!m.render().contains("driftwatch_release_findings{"));
    }
}
