//! The measuring half of `bench/fleet` (which creates the fleet with real helm and then runs
//! this): starts the controller against the fleet and measures it, then runs today's
//! alternatives on the same cluster, and writes one table (markdown + JSON).
//!
//! Phases, in order:
//!  1. cold start: reports deleted, controller started, time until every release has a report
//!     with Ready=True; API requests in that window (apiserver_request_total, by verb/resource);
//!  2. idle: CPU (utime+stime from /proc) and API requests over `--idle-seconds` with nothing
//!     changing; RSS sampled every 500 ms throughout (steady = the idle window, peak = VmHWM);
//!  3. detection latency: `--edits` real kubectl edit/patch/delete, one at a time, spread over
//!     the fleet, each timed until the release's report says Drifted=True (seen by a watch);
//!  4. the edits are put back by switching the policy to Heal (time until all InSync), then
//!     back to Detect, and the controller is stopped;
//!  5. `helm diff upgrade --three-way-merge` over every release (or `--diff-releases`, scaled);
//!  6. a per-object server-side dry-run pass (GET + dry-run apply per object, the way Flux's
//!     drift detection works), 4 releases at a time;
//!  7. one `driftwatch check -A` pass.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use driftwatch::api::{DriftPolicy, DriftReport};
use driftwatch::cluster::{ReleaseStore, Resolver};
use driftwatch::helm::{group_releases, split_manifest};
use futures::StreamExt as _;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Client, ResourceExt as _};
use serde_json::{Value, json};

#[derive(Parser, Debug)]
struct Args {
    #[arg(long)]
    out: PathBuf,
    /// Deployed releases in the fleet (what "every release has a report" means).
    #[arg(long)]
    n: usize,
    #[arg(long, default_value_t = 0)]
    records: usize,
    #[arg(long, default_value_t = 20)]
    namespaces: usize,
    #[arg(long, default_value_t = 300)]
    idle_seconds: u64,
    #[arg(long, default_value_t = 100)]
    edits: usize,
    #[arg(long)]
    diff_releases: usize,
    #[arg(long, default_value = "0")]
    create_seconds: String,
    #[arg(long, default_value_t = 0)]
    created: usize,
    #[arg(long)]
    driftwatch: PathBuf,
    /// The fleet plan (`index namespace name helm chart revisions values…` per line).
    #[arg(long)]
    plan: PathBuf,
    #[arg(long)]
    helm3: PathBuf,
    /// Skip phases (comma list of: cold,idle,latency,diff,dryrun,check) — for trying things out.
    #[arg(long, value_delimiter = ',')]
    skip: Vec<String>,
    /// Background churn during the latency phase: this many ConfigMap patches per second to
    /// releases the timed edits do not touch (each a real change the controller must check).
    #[arg(long, default_value_t = 0.0)]
    churn: f64,
    /// After the other phases: a cold start over this many replicas with `--leader-elect
    /// --shards <this>` (docs/SCALING.md), and a replica killed.
    #[arg(long, default_value_t = 1)]
    shards: usize,
    /// The controller's `--workers` (0: its default).
    #[arg(long, default_value_t = 0)]
    workers: usize,
}

#[derive(Clone, Debug)]
struct Planned {
    namespace: String,
    name: String,
    chart: String,
    values: Vec<String>,
}

fn read_plan(path: &Path) -> anyhow::Result<Vec<Planned>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading the plan {}", path.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 6).then(|| Planned { namespace: f[1].into(), name: f[2].into(), chart: f[4].into(), values: f[6..].iter().map(|s| s.to_string()).collect() })
        })
        .collect())
}

/// apiserver_request_total summed by (verb, resource[/subresource]).
type Requests = BTreeMap<(String, String), f64>;

async fn requests(client: &Client) -> anyhow::Result<Requests> {
    let req = http::Request::get("/metrics").body(Vec::new())?;
    let text = client.request_text(req).await?;
    let mut out = Requests::new();
    for line in text.lines().filter(|l| l.starts_with("apiserver_request_total{")) {
        let Some((labels, value)) = line.rsplit_once(' ') else { continue };
        let label = |k: &str| {
            labels.split(&format!("{k}=\"")).nth(1).and_then(|r| r.split('"').next()).unwrap_or("").to_string()
        };
        let mut resource = label("resource");
        let sub = label("subresource");
        if !sub.is_empty() {
            resource = format!("{resource}/{sub}");
        }
        if resource.is_empty() {
            resource = "(non-resource)".into();
        }
        let mut verb = label("verb");
        if label("dry_run") == "All" {
            verb = format!("{verb} (dry-run)");
        }
        *out.entry((verb, resource)).or_default() += value.parse::<f64>().unwrap_or(0.0);
    }
    Ok(out)
}

fn delta(before: &Requests, after: &Requests) -> Requests {
    let mut d = Requests::new();
    for (k, v) in after {
        let x = v - before.get(k).copied().unwrap_or(0.0);
        if x > 0.0 {
            d.insert(k.clone(), x);
        }
    }
    // The /metrics read that ends the window is counted by the server itself.
    if let Some(v) = d.get_mut(&("GET".to_string(), "(non-resource)".to_string())) {
        *v -= 1.0;
    }
    d.retain(|_, v| *v > 0.0);
    d
}

fn total(d: &Requests) -> f64 {
    d.values().sum::<f64>() + 0.0 // an empty sum is -0.0
}

fn requests_json(d: &Requests) -> Value {
    let mut by: BTreeMap<String, f64> = BTreeMap::new();
    for ((verb, res), v) in d {
        by.insert(format!("{verb} {res}"), *v);
    }
    json!({"total": total(d), "byVerbResource": by})
}

fn clk_tck() -> f64 {
    std::process::Command::new("getconf").arg("CLK_TCK").output().ok().and_then(|o| String::from_utf8(o.stdout).ok()).and_then(|s| s.trim().parse().ok()).unwrap_or(100.0)
}

/// Before a cold start: every fleet report deleted (and seen gone by the watch), the policy in
/// `Detect`, two seconds for the API server to settle.
async fn fresh_start(client: &Client, reports: &Mutex<Reports>, notify: &tokio::sync::Notify, namespaces: usize) -> anyhow::Result<()> {
    for i in 0..namespaces {
        let api: Api<DriftReport> = Api::namespaced(client.clone(), &format!("fleet-{i:02}"));
        let _ = api.delete_collection(&DeleteParams::default(), &ListParams::default()).await;
    }
    // Deleting 10,000 reports beside a busy API server takes minutes, not seconds.
    if !wait_until(reports, notify, Duration::from_secs(900), |r| r.by_key.keys().all(|(ns, _)| !fleet_ns(ns))).await {
        bail!("old DriftReports did not go away");
    }
    set_policy(client, "Detect").await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok(())
}

/// `--workers N` for the controller, when set.
fn workers_arg(workers: usize) -> Vec<String> {
    if workers > 0 { vec!["--workers".into(), workers.to_string()] } else { Vec::new() }
}

/// The controller's metrics page; empty when it cannot be read.
async fn controller_metrics() -> String {
    metrics_page(26880).await
}

/// A controller's metrics page at this port; empty when it cannot be read.
async fn metrics_page(port: u16) -> String {
    let text = tokio::task::spawn_blocking(move || {
        use std::io::{Read as _, Write as _};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
        let mut body = String::new();
        stream.read_to_string(&mut body).ok()?;
        Some(body)
    });
    text.await.ok().flatten().unwrap_or_default()
}

/// `driftwatch_shards_held` on a metrics page; 0 when it is not there.
fn shards_held(page: &str) -> usize {
    page.lines().find_map(|l| l.strip_prefix("driftwatch_shards_held ")?.trim().parse::<f64>().ok()).unwrap_or(0.0) as usize
}

/// The controller's release checks so far (`driftwatch_checks_total`, every result), from its
/// metrics endpoint; 0 when it cannot be read.
async fn controller_checks() -> f64 {
    controller_metrics().await.lines().filter(|l| l.starts_with("driftwatch_checks_total{")).filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok()).sum()
}

/// A histogram's cumulative buckets (`le` → count) from a metrics page: the series whose line
/// starts with `prefix` (the name and any labels before `le`).
fn buckets(page: &str, prefix: &str) -> Vec<(f64, f64)> {
    page.lines()
        .filter_map(|l| l.strip_prefix(prefix))
        .filter_map(|rest| {
            let le = rest.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            Some((le, rest.rsplit_once(' ')?.1.parse().ok()?))
        })
        .collect()
}

/// What a histogram saw between two pages: the count, and the bucket bound under which 50% and
/// 99% of it fall (a bound, not an exact quantile: the buckets are coarse).
fn histogram_between(before: &str, after: &str, prefix: &str) -> (f64, f64, f64) {
    let (b, a) = (buckets(before, prefix), buckets(after, prefix));
    let d: Vec<(f64, f64)> = a.iter().map(|(le, n)| (*le, n - b.iter().find(|(l, _)| l == le).map_or(0.0, |(_, m)| *m))).collect();
    let total = d.iter().map(|(_, n)| *n).fold(0.0, f64::max);
    let bound = |q: f64| d.iter().find(|(_, n)| *n >= q * total).map_or(f64::NAN, |(le, _)| *le);
    (total, bound(0.5), bound(0.99))
}

/// utime+stime of a process, in seconds.
fn cpu_seconds(pid: u32, tck: f64) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields after the name: state(3) … utime(14) stime(15) → index 11, 12 here.
    let n = |i: usize| f.get(i).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    (n(11) + n(12)) / tck
}

/// CPU of this process's waited-for children (cutime + cstime), in seconds.
fn children_cpu_seconds(tck: f64) -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    (n(13) + n(14)) / tck
}

fn status_kib(pid: u32, field: &str) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

/// What the reports say, kept current by a watch.
#[derive(Default)]
struct Reports {
    by_key: HashMap<(String, String), (bool, bool)>, // (ready, drifted)
    /// What a re-list has sent so far; it replaces `by_key` when the re-list is done, so a
    /// report deleted while the watch was down does not stay in `by_key`.
    relist: Option<HashMap<(String, String), (bool, bool)>>,
}

impl Reports {
    /// Fleet releases whose report is Ready.
    fn fleet_ready(&self) -> usize {
        self.by_key.iter().filter(|((ns, _), (ready, _))| fleet_ns(ns) && *ready).count()
    }
}

fn report_state(r: &DriftReport) -> (bool, bool) {
    let Some(st) = &r.status else { return (false, false) };
    let cond = |t: &str| st.conditions.iter().any(|c| c.type_ == t && c.status == "True");
    (cond("Ready"), cond("Drifted"))
}

fn watch_reports(client: Client) -> (Arc<Mutex<Reports>>, Arc<tokio::sync::Notify>) {
    let state = Arc::new(Mutex::new(Reports::default()));
    let notify = Arc::new(tokio::sync::Notify::new());
    let (s, n) = (state.clone(), notify.clone());
    tokio::spawn(async move {
        let api: Api<DriftReport> = Api::all(client);
        let mut stream = watcher(api, watcher::Config::default()).default_backoff().boxed();
        while let Some(ev) = stream.next().await {
            let mut g = s.lock().expect("reports lock");
            match ev {
                Ok(watcher::Event::Init) => g.relist = Some(HashMap::new()),
                Ok(watcher::Event::InitApply(r)) => {
                    let key = (r.namespace().unwrap_or_default(), r.name_any());
                    match &mut g.relist {
                        Some(m) => m.insert(key, report_state(&r)),
                        None => g.by_key.insert(key, report_state(&r)),
                    };
                }
                Ok(watcher::Event::InitDone) => {
                    if let Some(m) = g.relist.take() {
                        g.by_key = m;
                    }
                }
                Ok(watcher::Event::Apply(r)) => {
                    g.by_key.insert((r.namespace().unwrap_or_default(), r.name_any()), report_state(&r));
                }
                Ok(watcher::Event::Delete(r)) => {
                    g.by_key.remove(&(r.namespace().unwrap_or_default(), r.name_any()));
                }
                _ => {}
            }
            drop(g);
            n.notify_waiters();
        }
    });
    (state, notify)
}

async fn wait_until(state: &Mutex<Reports>, notify: &tokio::sync::Notify, timeout: Duration, pred: impl Fn(&Reports) -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let notified = notify.notified();
        if pred(&state.lock().expect("reports lock")) {
            return true;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        let _ = tokio::time::timeout(left.min(Duration::from_millis(200)), notified).await;
    }
}

fn fleet_ns(ns: &str) -> bool {
    ns.starts_with("fleet-")
}

async fn set_policy(client: &Client, mode: &str) -> anyhow::Result<()> {
    let api: Api<DriftPolicy> = Api::namespaced(client.clone(), "driftwatch-system");
    let body = json!({
        "apiVersion": "driftwatch.io/v1alpha1", "kind": "DriftPolicy",
        "metadata": {"name": "fleet"},
        "spec": {"mode": mode, "interval": "5m", "ignoreManagers": ["kube-controller-manager"], "heal": {"maxPerHour": 10}}
    });
    api.patch("fleet", &PatchParams::apply("fleet-bench").force(), &Patch::Apply(body)).await?;
    Ok(())
}

struct Sampler {
    samples: Arc<Mutex<Vec<(f64, f64)>>>, // (seconds since start, RSS MiB)
}

fn sample_rss(pid: u32, t0: Instant) -> Sampler {
    let samples = Arc::new(Mutex::new(Vec::new()));
    let s = samples.clone();
    tokio::spawn(async move {
        loop {
            match status_kib(pid, "VmRSS:") {
                Some(kib) => s.lock().expect("samples").push((t0.elapsed().as_secs_f64(), kib / 1024.0)),
                None => break,
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    Sampler { samples }
}

/// An edit of one release, the way people make them: (description, kubectl arguments, editor).
fn edit_for(p: &Planned, k: usize) -> (String, Vec<String>, Option<String>) {
    let ns = p.namespace.clone();
    let (obj, memory_from, memory_to, cm_key) = if p.chart == "fullstack" {
        (format!("{}-fullstack", p.name), "memory: 512Mi", "memory: 1Gi", "greeting")
    } else {
        (format!("{}-app-0", p.name), "memory: 128Mi", "memory: 256Mi", "index")
    };
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    match k % 4 {
        0 => ("kubectl patch configmap (merge)".into(), s(&["patch", "configmap", &obj, "-n", &ns, "--type", "merge", "-p", &format!("{{\"data\":{{\"{cm_key}\":\"edited\"}}}}")]), None),
        1 => (
            "kubectl edit deployment (memory limit)".into(),
            s(&["edit", &format!("deployment/{obj}"), "-n", &ns]),
            Some(format!("sed -i s/{}/{}/", memory_from.replace(' ', "\\ "), memory_to.replace(' ', "\\ "))),
        ),
        2 => ("kubectl delete configmap".into(), s(&["delete", "configmap", &obj, "-n", &ns, "--wait=false"]), None),
        _ => (
            "kubectl patch deployment (json, image)".into(),
            s(&["patch", "deployment", &obj, "-n", &ns, "--type", "json", "-p", r#"[{"op":"replace","path":"/spec/template/spec/containers/0/image","value":"registry.example.com/hotfix:1"}]"#]),
            None,
        ),
    }
}

fn table_md(rows: &[(String, String, String)]) -> String {
    let mut s = String::from("| measurement | value | target |\n|---|---|---|\n");
    for (a, b, c) in rows {
        s.push_str(&format!("| {a} | {b} | {c} |\n"));
    }
    s
}

fn requests_md(title: &str, d: &Requests) -> String {
    let mut s = format!("\n#### {title}: {} requests\n\n| verb | resource | requests |\n|---|---|---|\n", total(d));
    let mut rows: Vec<_> = d.iter().collect();
    rows.sort_by(|a, b| b.1.partial_cmp(a.1).unwrap_or(std::cmp::Ordering::Equal));
    for ((verb, res), v) in rows {
        s.push_str(&format!("| {verb} | {res} | {v} |\n"));
    }
    s
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let skip = |p: &str| args.skip.iter().any(|s| s == p);
    let client = Client::try_default().await.context("connecting to the control plane (KUBECONFIG)")?;
    let plan = read_plan(&args.plan)?;
    let tck = clk_tck();
    let mut rows: Vec<(String, String, String)> = Vec::new();
    let mut detail = String::new();
    let mut j = json!({
        "n": args.n, "records": args.records, "namespaces": args.namespaces,
        "fleetCreated": args.created, "fleetCreateSeconds": args.create_seconds.parse::<f64>().unwrap_or(0.0),
        "machine": {"cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)},
    });
    let log = |s: &str| eprintln!("[fleet] {s}");

    let (reports, notify) = watch_reports(client.clone());
    let mut controller_pid = None;
    if !skip("cold") {
        // ---- 1. cold start ------------------------------------------------------------
        log("cold start: deleting reports, starting the controller");
        let policies: Api<DriftPolicy> = Api::namespaced(client.clone(), "driftwatch-system");
        let _ = policies.delete("fleet", &DeleteParams::default()).await;
        fresh_start(&client, &reports, &notify, args.namespaces).await?;
        let before = requests(&client).await?;
        let logfile = std::fs::File::create(args.out.join("controller.log"))?;
        let t0 = Instant::now();
        let mut child = tokio::process::Command::new(&args.driftwatch)
            .args(["run", "--metrics-addr", "127.0.0.1:26880", "--health-addr", "127.0.0.1:26881"])
            .args(workers_arg(args.workers))
            .env("POD_NAMESPACE", "driftwatch-system")
            // A heap-profiling build (FLEET_HEAP=1) leaves dhat-heap.json with the results.
            .current_dir(&args.out)
            .stdout(Stdio::null())
            .stderr(logfile)
            .kill_on_drop(true)
            .spawn()
            .context("starting the controller")?;
        let pid = child.id().context("controller pid")?;
        controller_pid = Some(pid);
        let sampler = sample_rss(pid, t0);
        let n = args.n;
        // When the first report, a quarter, half, three quarters and all were Ready: where the
        // time goes (a late first report is start-up: the watches' initial lists).
        let deadline = t0 + Duration::from_secs(600);
        let (mut done, mut marks) = (true, Vec::new());
        for want in [1, n / 4, n / 2, 3 * n / 4, n] {
            if !wait_until(&reports, &notify, deadline.saturating_duration_since(Instant::now()), |r| r.fleet_ready() >= want.max(1)).await {
                done = false;
                break;
            }
            marks.push((want.max(1), t0.elapsed().as_secs_f64()));
        }
        let cold = t0.elapsed().as_secs_f64();
        let cold_cpu = cpu_seconds(pid, tck);
        let after = requests(&client).await?;
        let cold_req = delta(&before, &after);
        let ready_count = reports.lock().expect("reports").fleet_ready();
        if !done {
            log(&format!("cold start: only {ready_count} of {n} reports Ready after 600 s"));
        }
        log(&format!("cold start: {cold:.1} s, {} API requests", total(&cold_req)));
        rows.push(("cold start → every release has a Ready report".into(), format!("{cold:.1} s ({ready_count}/{n} Ready; controller CPU {cold_cpu:.1} s)"), "< 30 s".into()));
        let marks_text: Vec<String> = marks.iter().map(|(k, t)| format!("{k} at {t:.1} s")).collect();
        rows.push(("cold start: reports Ready over time".into(), marks_text.join(", "), "".into()));
        rows.push(("API requests during the cold scan".into(), format!("{}", total(&cold_req)), "fewer than the dry-run pass".into()));
        detail.push_str(&requests_md("Cold scan", &cold_req));
        j["coldStart"] = json!({"seconds": cold, "ready": ready_count, "controllerCpuSeconds": cold_cpu, "requests": requests_json(&cold_req),
            "readyAt": marks.iter().map(|(k, t)| json!({"ready": k, "seconds": t})).collect::<Vec<_>>()});

        // ---- 2. idle ------------------------------------------------------------------
        if !skip("idle") {
            tokio::time::sleep(Duration::from_secs(10)).await;
            log(&format!("idle: {} s with nothing changing", args.idle_seconds));
            let before = requests(&client).await?;
            let checks0 = controller_checks().await;
            let cpu0 = cpu_seconds(pid, tck);
            let idle_from = t0.elapsed().as_secs_f64();
            let i0 = Instant::now();
            tokio::time::sleep(Duration::from_secs(args.idle_seconds)).await;
            let secs = i0.elapsed().as_secs_f64();
            let cpu = cpu_seconds(pid, tck) - cpu0;
            let after = requests(&client).await?;
            let idle_checks = controller_checks().await - checks0;
            let idle_req = delta(&before, &after);
            let samples: Vec<f64> = sampler.samples.lock().expect("samples").iter().filter(|(t, _)| *t >= idle_from).map(|(_, m)| *m).collect();
            let steady = samples.iter().sum::<f64>() / samples.len().max(1) as f64;
            let steady_max = samples.iter().cloned().fold(0.0, f64::max);
            let pct = 100.0 * cpu / secs;
            log(&format!("idle: CPU {pct:.2}% of a core, RSS {steady:.1} MiB, {} API requests", total(&idle_req)));
            rows.push((format!("controller CPU, idle {:.0} s", secs), format!("{pct:.2}% of one core ({cpu:.2} s; {idle_checks:.0} release checks)"), "< 2%".into()));
            rows.push(("controller RSS, steady (idle mean / max)".into(), format!("{steady:.1} / {steady_max:.1} MiB"), "< 150 MiB".into()));
            rows.push((format!("API requests, idle {:.0} s (all clients)", secs), format!("{}", total(&idle_req)), "watches only".into()));
            detail.push_str(&requests_md(&format!("Idle {secs:.0} s (every client of the API server, kube-controller-manager included)"), &idle_req));
            j["idle"] = json!({"seconds": secs, "controllerCpuSeconds": cpu, "cpuPercentOfOneCore": pct, "checks": idle_checks, "rssMiBMean": steady, "rssMiBMax": steady_max, "requests": requests_json(&idle_req)});
        }
        let peak = status_kib(pid, "VmHWM:").unwrap_or(0.0) / 1024.0;

        // ---- 3. detection latency -------------------------------------------------------
        if !skip("latency") && args.edits > 0 {
            log(&format!("latency: {} edits", args.edits));
            let in_sync: Vec<&Planned> = {
                let g = reports.lock().expect("reports");
                plan.iter().filter(|p| g.by_key.get(&(p.namespace.clone(), p.name.clone())).is_some_and(|(ready, drifted)| *ready && !drifted)).collect()
            };
            let step = (in_sync.len() / args.edits.max(1)).max(1);
            // Churn: patches at a steady rate to the releases between the timed ones.
            let churn = (args.churn > 0.0).then(|| {
                let targets: Vec<Planned> = in_sync.iter().enumerate().filter(|(i, _)| i % step != 0).map(|(_, p)| (*p).clone()).collect();
                let client = client.clone();
                let every = Duration::from_secs_f64(1.0 / args.churn);
                let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
                let count = sent.clone();
                let task = tokio::spawn(async move {
                    let mut tick = tokio::time::interval(every);
                    for (k, p) in targets.iter().cycle().enumerate() {
                        tick.tick().await;
                        let (obj, key) = if p.chart == "fullstack" { (format!("{}-fullstack", p.name), "greeting") } else { (format!("{}-app-0", p.name), "index") };
                        let api: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(client.clone(), &p.namespace);
                        let body = json!({"data": {key: format!("churn-{k}")}});
                        if api.patch(&obj, &PatchParams::default(), &Patch::Merge(&body)).await.is_ok() {
                            count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                });
                (task, sent)
            });
            let churn_started = Instant::now();
            let metrics0 = controller_metrics().await;
            let (mut from_start, mut from_exit, mut kinds, mut timeouts) = (Vec::new(), Vec::new(), BTreeMap::<String, Vec<f64>>::new(), 0);
            for (k, p) in in_sync.iter().step_by(step).take(args.edits).enumerate() {
                let (what, kargs, editor) = edit_for(p, k);
                let key = (p.namespace.clone(), p.name.clone());
                let mut cmd = tokio::process::Command::new("kubectl");
                cmd.args(&kargs).stdout(Stdio::null()).stderr(Stdio::piped());
                if let Some(e) = &editor {
                    cmd.env("KUBE_EDITOR", e);
                }
                let s0 = Instant::now();
                let out = cmd.output().await?;
                let s1 = Instant::now();
                if !out.status.success() {
                    log(&format!("{what} on {}/{} failed: {}", p.namespace, p.name, String::from_utf8_lossy(&out.stderr).trim()));
                    continue;
                }
                let seen = wait_until(&reports, &notify, Duration::from_secs(30), |r| r.by_key.get(&key).is_some_and(|(_, d)| *d)).await;
                if !seen {
                    timeouts += 1;
                    log(&format!("{what} on {}/{}: not Drifted after 30 s", p.namespace, p.name));
                    continue;
                }
                let now = Instant::now();
                from_start.push((now - s0).as_secs_f64() * 1000.0);
                from_exit.push((now - s1).as_secs_f64() * 1000.0);
                kinds.entry(what).or_default().push((now - s1).as_secs_f64() * 1000.0);
            }
            let churned = churn.map(|(task, sent)| {
                task.abort();
                let n = sent.load(std::sync::atomic::Ordering::Relaxed);
                (n, n as f64 / churn_started.elapsed().as_secs_f64())
            });
            if let Some((n, rate)) = churned {
                log(&format!("churn: {n} ConfigMap patches during the edits ({rate:.1}/s)"));
                rows.push(("background churn during the edits".into(), format!("{n} ConfigMap patches, {rate:.1}/s"), "".into()));
                j["churn"] = json!({"patches": n, "perSecond": rate});
            }
            // Where the controller's part of the time went: how long the checks waited for a
            // worker (lane now: the changes) and how long they took.
            let metrics1 = controller_metrics().await;
            let ms = |s: f64| if s.is_infinite() { "> the largest bucket".to_string() } else { format!("≤ {:.0} ms", s * 1000.0) };
            let (waits, w50, w99) = histogram_between(&metrics0, &metrics1, "driftwatch_queue_wait_seconds_bucket{lane=\"now\",");
            let (checks, c50, c99) = histogram_between(&metrics0, &metrics1, "driftwatch_check_duration_seconds_bucket{");
            rows.push(("controller, during the edits: queue wait of changes (lane now)".into(), format!("{waits:.0} checks; p50 {}, p99 {}", ms(w50), ms(w99)), "".into()));
            rows.push(("controller, during the edits: check duration".into(), format!("{checks:.0} checks; p50 {}, p99 {}", ms(c50), ms(c99)), "".into()));
            j["latencyController"] = json!({"queueWaitNow": {"checks": waits, "p50BoundS": w50, "p99BoundS": w99}, "checkDuration": {"checks": checks, "p50BoundS": c50, "p99BoundS": c99}});
            from_start.sort_by(f64::total_cmp);
            from_exit.sort_by(f64::total_cmp);
            let (p50, p99) = (percentile(&from_start, 50.0), percentile(&from_start, 99.0));
            let (e50, e99) = (percentile(&from_exit, 50.0), percentile(&from_exit, 99.0));
            log(&format!("latency: p50 {p50:.0} ms, p99 {p99:.0} ms from kubectl start ({} edits, {timeouts} timeouts)", from_start.len()));
            rows.push((
                format!("detection latency, {} edits (from kubectl start)", from_start.len()),
                format!("p50 {p50:.0} ms, p99 {p99:.0} ms, max {:.0} ms", from_start.last().copied().unwrap_or(f64::NAN)),
                "p99 < 2 s".into(),
            ));
            rows.push(("detection latency (from kubectl exit)".into(), format!("p50 {e50:.0} ms, p99 {e99:.0} ms; {timeouts} not seen in 30 s"), "".into()));
            let by_kind: BTreeMap<String, Value> = kinds
                .iter_mut()
                .map(|(k, v)| {
                    v.sort_by(f64::total_cmp);
                    (k.clone(), json!({"edits": v.len(), "p50Ms": percentile(v, 50.0), "p99Ms": percentile(v, 99.0)}))
                })
                .collect();
            j["latency"] = json!({"edits": from_start.len(), "timeouts": timeouts,
                "fromKubectlStartMs": {"p50": p50, "p99": p99, "max": from_start.last()},
                "fromKubectlExitMs": {"p50": e50, "p99": e99, "max": from_exit.last()}, "byEdit": by_kind});

            // ---- 4. put the edits back (heal) ------------------------------------------
            log("healing the edits back (policy mode Heal)");
            let h0 = Instant::now();
            set_policy(&client, "Heal").await?;
            let healed = wait_until(&reports, &notify, Duration::from_secs(300), |r| r.by_key.iter().all(|((ns, _), (_, d))| !fleet_ns(ns) || !d)).await;
            let heal_secs = h0.elapsed().as_secs_f64();
            let left = reports.lock().expect("reports").by_key.iter().filter(|((ns, _), (_, d))| fleet_ns(ns) && *d).count();
            set_policy(&client, "Detect").await?;
            rows.push((format!("heal back {} drifted releases (policy → Heal)", from_start.len()), format!("{heal_secs:.1} s{}", if healed { String::new() } else { format!(" ({left} still drifted)") }), "".into()));
            j["healBack"] = json!({"seconds": heal_secs, "stillDrifted": left});
        }
        let peak = peak.max(status_kib(pid, "VmHWM:").unwrap_or(0.0) / 1024.0);
        rows.push(("controller RSS, peak (VmHWM)".into(), format!("{peak:.1} MiB"), "".into()));
        j["rssPeakMiB"] = json!(peak);
        let _ = std::process::Command::new("kill").arg(pid.to_string()).status();
        let _ = tokio::time::timeout(Duration::from_secs(120), child.wait()).await;
        let samples = sampler.samples.lock().expect("samples").clone();
        std::fs::write(args.out.join("rss.tsv"), samples.iter().map(|(t, m)| format!("{t:.1}\t{m:.1}\n")).collect::<String>())?;
    }
    let _ = controller_pid;

    // ---- 4b. shards by namespace ------------------------------------------------------
    // docs/SCALING.md's shards, for real: S replicas with --leader-elect --shards S share the
    // shards by their Leases, from no reports to every report Ready; each one's CPU, peak and
    // steady RSS, its shards and releases. Then the last replica is killed (no hand-over): how
    // long until the others hold its shards, and every report is Ready again after an edit in
    // each of its namespaces.
    if args.shards > 1 {
        let shards = args.shards;
        log(&format!("shards: a cold start over {shards} replicas with --shards {shards}"));
        fresh_start(&client, &reports, &notify, args.namespaces).await?;
        // No lease of an earlier run may hold a shard for a replica that is gone.
        let leases: kube::Api<k8s_openapi::api::coordination::v1::Lease> = kube::Api::namespaced(client.clone(), "driftwatch-system");
        for l in leases.list(&Default::default()).await?.items {
            let name = l.metadata.name.unwrap_or_default();
            if name.starts_with("driftwatch-") {
                let _ = leases.delete(&name, &Default::default()).await;
            }
        }
        let before = requests(&client).await?;
        let t0 = Instant::now();
        let mut children = Vec::new();
        let port = |k: usize| 26882 + 2 * k as u16;
        for k in 0..shards {
            let logfile = std::fs::File::create(args.out.join(format!("shard-{k}.log")))?;
            let child = tokio::process::Command::new(&args.driftwatch)
                .args(["run", "--metrics-addr", &format!("127.0.0.1:{}", port(k)), "--health-addr", &format!("127.0.0.1:{}", port(k) + 1)])
                .args(["--leader-elect", "--shards", &shards.to_string()])
                .args(workers_arg(args.workers))
                .env("POD_NAMESPACE", "driftwatch-system")
                .env("POD_NAME", format!("replica-{k}"))
                .stdout(Stdio::null())
                .stderr(logfile)
                .kill_on_drop(true)
                .spawn()
                .context("starting a replica")?;
            children.push(child);
        }
        let pids: Vec<u32> = children.iter().filter_map(|c| c.id()).collect();
        let n = args.n;
        let done = wait_until(&reports, &notify, Duration::from_secs(600), |r| r.fleet_ready() >= n).await;
        let cold = t0.elapsed().as_secs_f64();
        let cpu: Vec<f64> = pids.iter().map(|p| cpu_seconds(*p, tck)).collect();
        let req = delta(&before, &requests(&client).await?);
        tokio::time::sleep(Duration::from_secs(30)).await;
        let steady: Vec<f64> = pids.iter().map(|p| status_kib(*p, "VmRSS:").unwrap_or(0.0) / 1024.0).collect();
        let peak: Vec<f64> = pids.iter().map(|p| status_kib(*p, "VmHWM:").unwrap_or(0.0) / 1024.0).collect();
        // Each replica's shards and the releases it exports (its own shards' only).
        let mut held = Vec::new();
        for k in 0..shards {
            let page = metrics_page(port(k)).await;
            held.push((shards_held(&page), page.lines().filter(|l| l.starts_with("helm_release_info{")).count()));
        }
        // The last replica dies.
        let last = shards - 1;
        let _ = std::process::Command::new("kill").args(["-9", &pids[last].to_string()]).status();
        let k0 = Instant::now();
        let mut took_over = None;
        while k0.elapsed() < Duration::from_secs(90) {
            let mut sum = 0;
            for k in 0..last {
                sum += shards_held(&metrics_page(port(k)).await);
            }
            if sum == shards {
                took_over = Some(k0.elapsed().as_secs_f64());
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for p in &pids {
            let _ = std::process::Command::new("kill").arg(p.to_string()).status();
        }
        for mut c in children {
            let _ = tokio::time::timeout(Duration::from_secs(120), c.wait()).await;
        }
        let list = |v: &[f64]| v.iter().map(|x| format!("{x:.1}")).collect::<Vec<_>>().join(" / ");
        let held_list = held.iter().map(|(s, r)| format!("{s} shards, {r} releases")).collect::<Vec<_>>().join(" / ");
        log(&format!("shards: {cold:.1} s, {} API requests; {held_list}", total(&req)));
        rows.push((
            format!("{shards} replicas, --shards {shards}: cold start → every report Ready"),
            format!("{cold:.1} s{}; controller CPU {} s; RSS steady {} MiB, peak {} MiB; {held_list}", if done { "" } else { " (not all Ready)" }, list(&cpu), list(&steady), list(&peak)),
            "".into(),
        ));
        rows.push((format!("API requests, {shards} replicas' cold scan (all clients)"), format!("{}", total(&req)), "".into()));
        rows.push((
            "a replica killed: until the others hold its shards".into(),
            took_over.map_or("not within 90 s".into(), |s| format!("{s:.1} s (the lease is {} s)", 10)),
            "".into(),
        ));
        detail.push_str(&requests_md(&format!("{shards} replicas' cold scan"), &req));
        j["shards"] = json!({"shards": shards, "seconds": cold, "allReady": done, "controllerCpuSeconds": cpu, "rssMiBSteady": steady, "rssMiBPeak": peak,
            "held": held.iter().map(|(s, r)| json!({"shards": s, "releases": r})).collect::<Vec<_>>(), "takeOverSeconds": took_over, "requests": requests_json(&req)});
    }

    // ---- 5. the helm-diff loop ----------------------------------------------------------
    let mut diff_pass = None;
    if !skip("diff") && args.diff_releases > 0 {
        let take = args.diff_releases.min(plan.len());
        let step = (plan.len() / take.max(1)).max(1);
        log(&format!("helm diff upgrade --three-way-merge over {take} releases, one after another"));
        let before = requests(&client).await?;
        let cpu0 = children_cpu_seconds(tck);
        let t0 = Instant::now();
        let mut failed = 0;
        for p in plan.iter().step_by(step).take(take) {
            let st = tokio::process::Command::new(&args.helm3)
                .args(["diff", "upgrade", &p.name, &format!("tests/charts/{}", p.chart), "-n", &p.namespace, "--three-way-merge"])
                .args(&p.values)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .await?;
            if !st.success() {
                failed += 1;
            }
        }
        let secs = t0.elapsed().as_secs_f64();
        let cpu = children_cpu_seconds(tck) - cpu0;
        let after = requests(&client).await?;
        let d = delta(&before, &after);
        let scale = plan.len() as f64 / take as f64;
        let (pass, pass_cpu, pass_req) = (secs * scale, cpu * scale, total(&d) * scale);
        let note = if take < plan.len() { format!(" (measured over {take}, scaled ×{scale:.1})") } else { String::new() };
        log(&format!("helm-diff loop: {pass:.0} s{note}, {failed} failed"));
        rows.push(("helm diff --three-way-merge loop, one pass".into(), format!("{pass:.0} s wall, {pass_cpu:.0} s CPU, {pass_req:.0} API requests{note}; {failed} failed"), "".into()));
        detail.push_str(&requests_md(&format!("helm-diff loop over {take} releases"), &d));
        j["helmDiffLoop"] = json!({"releases": take, "seconds": secs, "cpuSeconds": cpu, "failed": failed, "scaledToN": {"seconds": pass, "cpuSeconds": pass_cpu, "requests": pass_req}, "requests": requests_json(&d)});
        diff_pass = Some(pass);
    }

    // ---- 6. the dry-run-per-object pass -------------------------------------------------
    let mut dry_requests = None;
    if !skip("dryrun") {
        log("server-side dry-run pass: GET + dry-run apply per object, 4 releases at a time");
        let before = requests(&client).await?;
        let t0 = Instant::now();
        let store = ReleaseStore::new(client.clone());
        let resolver = Arc::new(Resolver::new(client.clone()));
        let listing = store.list(None).await;
        let histories: Vec<_> = group_releases(listing.records).into_iter().filter(|h| fleet_ns(&h.namespace)).collect();
        let objects = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let errors = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        futures::stream::iter(histories.into_iter().map(|h| {
            let (store, resolver, objects, errors) = (store.clone(), resolver.clone(), objects.clone(), errors.clone());
            async move {
                let Some(r) = h.reference() else { return };
                let Ok(release) = store.fetch(r).await else {
                    errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    return;
                };
                for o in split_manifest(&release.manifest).objects {
                    objects.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Ok(kind) = resolver.resolve(&o.api_version, &o.kind).await else { continue };
                    let ns = kind.namespace_of(o.namespace.as_deref(), &release.namespace);
                    let live = resolver.get_live(&kind, ns.as_deref(), &o.name).await;
                    let dry = resolver.dry_run_apply(&kind, ns.as_deref(), &o.object).await;
                    if live.is_err() || dry.is_err() {
                        errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
        }))
        .buffer_unordered(4)
        .collect::<Vec<()>>()
        .await;
        let secs = t0.elapsed().as_secs_f64();
        let after = requests(&client).await?;
        let d = delta(&before, &after);
        let objects = objects.load(std::sync::atomic::Ordering::Relaxed);
        log(&format!("dry-run pass: {secs:.1} s, {} API requests, {objects} objects", total(&d)));
        rows.push((format!("per-object server-side dry-run pass ({objects} objects)"), format!("{secs:.1} s wall, {} API requests; {} errors", total(&d), errors.load(std::sync::atomic::Ordering::Relaxed)), "".into()));
        detail.push_str(&requests_md("Dry-run-per-object pass", &d));
        j["dryRunPass"] = json!({"seconds": secs, "objects": objects, "requests": requests_json(&d)});
        dry_requests = Some(total(&d));
    }

    // ---- 7. one driftwatch check -A pass --------------------------------------------------
    if !skip("check") {
        log("driftwatch check -A (one pass, the CLI)");
        let before = requests(&client).await?;
        let cpu0 = children_cpu_seconds(tck);
        let t0 = Instant::now();
        let out = tokio::process::Command::new(&args.driftwatch).args(["check", "-A", "-o", "json"]).stderr(Stdio::null()).output().await?;
        let secs = t0.elapsed().as_secs_f64();
        let cpu = children_cpu_seconds(tck) - cpu0;
        let after = requests(&client).await?;
        let d = delta(&before, &after);
        let parsed: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        let checked = parsed.get("releases").and_then(Value::as_array).map_or(0, Vec::len);
        let drifted = parsed.get("releases").and_then(Value::as_array).map_or(0, |a| a.iter().filter(|r| r["drifted"] == true).count());
        let speedup = diff_pass.map(|p| p / secs);
        log(&format!("driftwatch check -A: {secs:.1} s, {} API requests, {checked} releases, {drifted} drifted", total(&d)));
        rows.push((
            format!("driftwatch check -A, one pass ({checked} releases, {drifted} drifted)"),
            format!("{secs:.1} s wall, {cpu:.1} s CPU, {} API requests{}", total(&d), speedup.map(|s| format!("; {s:.0}× faster than the helm-diff loop")).unwrap_or_default()),
            "≥ 50× faster than helm-diff; fewer requests than dry-run".into(),
        ));
        if let Some(dr) = dry_requests {
            rows.push(("requests: check pass / dry-run pass".into(), format!("{} / {} = {:.2}", total(&d), dr, total(&d) / dr), "< 1".into()));
        }
        detail.push_str(&requests_md("driftwatch check -A", &d));
        j["checkPass"] = json!({"seconds": secs, "cpuSeconds": cpu, "releases": checked, "drifted": drifted, "speedupOverHelmDiff": speedup, "requests": requests_json(&d)});
    }

    let head = format!(
        "# Fleet benchmark — {} releases ({} records) in {} namespaces\n\n{}\n",
        args.n,
        args.records,
        args.namespaces,
        if args.created > 0 { format!("Fleet created in this run: {} releases in {} s.\n", args.created, args.create_seconds) } else { String::new() }
    );
    let md = format!("{head}{}\n### API requests by verb and resource\n{detail}", table_md(&rows));
    std::fs::write(args.out.join("fleet.md"), &md)?;
    std::fs::write(args.out.join("fleet.json"), serde_json::to_string_pretty(&j)?)?;
    println!("{md}");
    Ok(())
}
