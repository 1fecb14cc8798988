use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};

/// Is each Helm release what Helm thinks is deployed? Which field differs, who changed it,
/// when — and put it back when asked.
#[derive(Parser, Debug)]
#[command(name = "driftwatch", version, about, long_about = None, bin_name = "driftwatch")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum CheckOutput {
    Text,
    Json,
    Yaml,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the controller: watch policies and releases, write DriftReports, heal on request
    Run {
        #[arg(long, default_value = ":8080")]
        metrics_addr: String,
        #[arg(long, default_value = ":8081")]
        health_addr: String,
        #[arg(long)]
        leader_elect: bool,
        /// Namespaces whose DriftPolicies may select releases in other namespaces
        #[arg(long, value_delimiter = ',')]
        cluster_policy_namespaces: Vec<String>,
        /// Only watch these namespaces (default: all)
        #[arg(long, value_delimiter = ',')]
        watch_namespaces: Vec<String>,
        #[arg(long, value_enum, default_value = "text")]
        log_format: LogFormat,
        /// Do not confirm local verdicts with a server-side dry-run: the controller then needs
        /// no patch permission (a read-only install; the chart sets it unless heal is granted)
        #[arg(long)]
        no_confirm: bool,
        /// Releases checked at once (each check's reads and report writes are API requests;
        /// more at once keeps a busy API server's cores fed during a cold scan)
        #[arg(long, default_value_t = driftwatch::controller::WORKERS)]
        workers: usize,
        /// Split releases into this many shards by namespace, each checked and written by the
        /// replica holding its Lease (needs --leader-elect; the same on every replica). 1: one
        /// leader writes for all, the other replicas stand by
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
        shards: u32,
    },
    /// One-shot drift check of a release, a namespace or the whole cluster
    Check {
        /// Release name (default: every release in scope)
        release: Option<String>,
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        /// Compare against this revision instead of the newest deployed one
        #[arg(long)]
        revision: Option<u32>,
        #[arg(short = 'o', long, value_enum, default_value = "text")]
        output: CheckOutput,
        /// Exit 2 when drift is found
        #[arg(long)]
        detailed_exitcode: bool,
        /// Ignore a path, as KIND:POINTER (e.g. Deployment:/spec/replicas); repeatable
        #[arg(long)]
        ignore_path: Vec<String>,
        /// Changes made by this field manager are not drift; repeatable
        #[arg(long)]
        ignore_manager: Vec<String>,
        /// Apply this DriftPolicy's ignore rules, ignoreManagers and operationsAsDrift (NS/NAME),
        /// so the answer is the one the controller writes in the DriftReport
        #[arg(long, value_name = "NS/NAME")]
        policy: Option<String>,
        /// Count operational actions (rollout restarts, client-side apply stamps) as drift
        #[arg(long)]
        operations_as_drift: bool,
        /// Print the number of API requests made (to stderr)
        #[arg(short = 'v', long)]
        verbose: bool,
        /// Do not confirm local verdicts with a server-side dry-run (needs no patch permission)
        #[arg(long)]
        no_confirm: bool,
        /// Only list the releases found in Helm's storage (like `helm list --all`), read by
        /// Driftwatch's own decoder; no drift check
        #[arg(long)]
        list: bool,
    },
    /// Why a release failed or is stuck, and what to do: its status, history, findings, the
    /// diagnosis with its evidence, the drift, and the next commands
    Diagnose {
        release: String,
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        #[arg(short = 'o', long, value_enum, default_value = "text")]
        output: DiagnoseOutput,
        /// The rendered manifest of an install or upgrade that failed before Helm wrote a record
        /// (`helm template RELEASE CHART -n NS | driftwatch diagnose RELEASE -n NS -f -`): finds
        /// the objects that already exist and are not the release's
        #[arg(short = 'f', long = "filename", value_name = "RENDERED.yaml")]
        rendered: Option<String>,
    },
    /// Get a release out of a stuck pending-install|upgrade|rollback state: its pending revision
    /// is marked failed, as Helm records a failed operation, so the next helm upgrade or
    /// rollback runs
    Unlock {
        release: String,
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        /// Change the record (without it: only show what would change)
        #[arg(long)]
        yes: bool,
        /// Unlock a revision younger than the pending timeout (a helm process may still run it)
        #[arg(long)]
        force: bool,
        /// How long a revision must have been pending (default: the covering DriftPolicy's
        /// health.pendingTimeout, else 15m)
        #[arg(long, value_name = "DURATION")]
        pending_timeout: Option<String>,
    },
    /// What the next upgrade or rollback does to every drifted field of a release
    Preview {
        #[command(subcommand)]
        what: PreviewCommand,
    },
    /// What is deployed where, across clusters: every release at its newest revision with its
    /// chart, version, status and age, from each kubeconfig context asked (read concurrently)
    Inventory {
        /// A kubeconfig context to read (repeatable; default: the current one)
        #[arg(long = "context", value_name = "CONTEXT")]
        contexts: Vec<String>,
        /// Every context of the kubeconfig
        #[arg(long)]
        all_contexts: bool,
        /// Only this namespace (default: all namespaces)
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        /// All namespaces (the default; for symmetry with check)
        #[arg(short = 'A', long, conflicts_with = "namespace")]
        all_namespaces: bool,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: InventoryOutput,
        /// Only failed releases (with --pending: either)
        #[arg(long)]
        failed: bool,
        /// Only releases pending an install, upgrade or rollback (with --failed: either)
        #[arg(long)]
        pending: bool,
        /// Only releases last deployed longer ago than this (720h, 30m)
        #[arg(long, value_name = "DURATION")]
        stale: Option<String>,
        /// Charts deployed at more than one version, each version with its clusters and releases
        #[arg(long)]
        skew: bool,
        /// Only charts whose name matches this glob (`*`, `?`)
        #[arg(long, value_name = "GLOB")]
        chart: Option<String>,
        /// Only drifted releases: from DriftReports where the controller runs, else by a check
        #[arg(long)]
        drifted: bool,
    },
    /// Print the CustomResourceDefinitions (crds/ holds this output)
    Crdgen,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum InventoryOutput {
    Table,
    Json,
    Csv,
}

#[derive(Subcommand, Debug)]
enum PreviewCommand {
    /// An upgrade to a rendered manifest: `helm template RELEASE CHART -n NS ... | driftwatch
    /// preview upgrade RELEASE -n NS -f -`
    Upgrade {
        release: String,
        /// The new manifest, as `helm template` renders it (`-`: stdin)
        #[arg(short = 'f', long = "filename", value_name = "RENDERED.yaml")]
        rendered: String,
        #[command(flatten)]
        flags: PreviewFlags,
    },
    /// A rollback to a revision (default: the one before the newest, as helm rollback)
    Rollback {
        release: String,
        revision: Option<u32>,
        #[command(flatten)]
        flags: PreviewFlags,
    },
}

/// What both previews take.
#[derive(clap::Args, Debug)]
struct PreviewFlags {
    #[arg(short = 'n', long)]
    namespace: Option<String>,
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    output: DiagnoseOutput,
    /// Exit 2 when any drifted field would be reverted or kept, or anything would conflict
    #[arg(long)]
    detailed_exitcode: bool,
    /// Predict the operation with `--force-conflicts` (server-side apply)
    #[arg(long)]
    force_conflicts: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum DiagnoseOutput {
    Text,
    Json,
}

/// bench/memory's heap profile (`--features dhat-heap`): every allocation, by call site.
#[cfg(feature = "dhat-heap")]
#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

/// The heap profiler, written out when `run` is asked to stop (its "at end" is then the
/// steady state, before the controller's memory is freed) or when the process ends.
#[cfg(feature = "dhat-heap")]
static PROFILER: std::sync::Mutex<Option<dhat::Profiler>> = std::sync::Mutex::new(None);

fn main() -> ExitCode {
    #[cfg(feature = "dhat-heap")]
    PROFILER.lock().unwrap().replace(dhat::Profiler::builder().trim_backtraces(None).build());
    let code = main_inner();
    #[cfg(feature = "dhat-heap")]
    drop(PROFILER.lock().unwrap().take());
    code
}

fn main_inner() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(dispatch(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            // The outermost context says what failed, the root cause why; the layers in
            // between (kube's config inference) repeat each other.
            let root = e.root_cause().to_string();
            if root == e.to_string() {
                eprintln!("driftwatch: error: {e}");
            } else {
                eprintln!("driftwatch: error: {e}: {root}");
            }
            ExitCode::from(1)
        }
    }
}

async fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Check { list: true, namespace, all_namespaces, release, output, .. } => {
            list(namespace, all_namespaces, release, output).await
        }
        Command::Check {
            release,
            namespace,
            all_namespaces,
            revision,
            output,
            detailed_exitcode,
            ignore_path,
            ignore_manager,
            policy,
            operations_as_drift,
            verbose,
            no_confirm,
            list: false,
        } => {
            let opts = CheckOpts { release, revision, output, detailed_exitcode, ignore_path, ignore_manager, policy, operations_as_drift, verbose, confirm: !no_confirm };
            check(namespace, all_namespaces, opts).await
        }
        Command::Run { metrics_addr, health_addr, leader_elect, cluster_policy_namespaces, watch_namespaces, log_format, no_confirm, workers, shards } => {
            if shards > 1 && !leader_elect {
                anyhow::bail!("--shards {shards} needs --leader-elect: each shard is written by the replica that holds its Lease");
            }
            run(RunOpts { metrics_addr, health_addr, leader_elect, cluster_policy_namespaces, watch_namespaces, log_format, confirm: !no_confirm, workers, shards }).await
        }
        Command::Diagnose { release, namespace, output, rendered } => diagnose(release, namespace, output, rendered).await,
        Command::Unlock { release, namespace, yes, force, pending_timeout } => unlock(release, namespace, yes, force, pending_timeout).await,
        Command::Preview { what: PreviewCommand::Upgrade { release, rendered, flags } } => {
            let objects = rendered_objects(&rendered)?;
            preview(release, Target::Rendered(objects), flags).await
        }
        Command::Preview { what: PreviewCommand::Rollback { release, revision, flags } } => preview(release, Target::Revision(revision), flags).await,
        Command::Inventory { contexts, all_contexts, namespace, all_namespaces: _, output, failed, pending, stale, skew, chart, drifted } => {
            let stale = stale.map(|d| driftwatch::api::parse_duration(&d).map_err(|e| anyhow::anyhow!("--stale: {e}"))).transpose()?;
            let filters = driftwatch::inventory::Filters { failed, pending, stale, chart, drifted };
            inventory(contexts, all_contexts, namespace, output, filters, skew).await
        }
        Command::Crdgen => {
            emit(&driftwatch::api::crds_yaml())?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

struct RunOpts {
    metrics_addr: String,
    health_addr: String,
    leader_elect: bool,
    cluster_policy_namespaces: Vec<String>,
    watch_namespaces: Vec<String>,
    log_format: LogFormat,
    confirm: bool,
    workers: usize,
    shards: u32,
}

async fn run(o: RunOpts) -> anyhow::Result<ExitCode> {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,kube=warn".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match o.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    let metrics_addr = driftwatch::http::parse_addr(&o.metrics_addr)?;
    let health_addr = driftwatch::http::parse_addr(&o.health_addr)?;
    let namespace = std::env::var("POD_NAMESPACE").unwrap_or_else(|_| "driftwatch-system".into());
    let identity = std::env::var("POD_NAME").unwrap_or_else(|_| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "local".into());
        format!("{}-{}", host.trim(), std::process::id())
    });
    let mut cluster_ns = vec![namespace.clone()];
    cluster_ns.extend(o.cluster_policy_namespaces.iter().filter(|n| !n.is_empty()).cloned());
    let settings = driftwatch::controller::Settings {
        tenancy: driftwatch::controller::policy::Tenancy { cluster_policy_namespaces: cluster_ns },
        watch_namespaces: o.watch_namespaces.into_iter().filter(|n| !n.is_empty()).collect(),
        leader_elect: o.leader_elect,
        identity: identity.clone(),
        namespace,
        concurrency: o.workers.max(1),
        confirm: o.confirm,
        shards: o.shards,
    };
    let client = client().await?;
    let metrics = Arc::new(driftwatch::metrics::Metrics::new());
    let ready = Arc::new(AtomicBool::new(false));
    tracing::info!(identity, %metrics_addr, %health_addr, leader_elect = o.leader_elect, shards = o.shards, "driftwatch controller starting");
    let m = metrics.clone();
    let metrics_server = tokio::spawn(async move { driftwatch::http::serve_metrics(metrics_addr, m).await });
    let r = ready.clone();
    let health_server = tokio::spawn(async move { driftwatch::http::serve_health(health_addr, r).await });
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        #[cfg(feature = "dhat-heap")]
        drop(PROFILER.lock().unwrap().take());
    };
    tokio::select! {
        r = driftwatch::controller::run(client, settings, metrics, ready, shutdown) => r?,
        r = metrics_server => { r??; }
        r = health_server => { r??; }
    }
    Ok(ExitCode::SUCCESS)
}

struct CheckOpts {
    release: Option<String>,
    revision: Option<u32>,
    output: CheckOutput,
    detailed_exitcode: bool,
    ignore_path: Vec<String>,
    ignore_manager: Vec<String>,
    policy: Option<String>,
    operations_as_drift: bool,
    verbose: bool,
    confirm: bool,
}

/// `KIND:POINTER` → an ignore rule for that kind.
fn ignore_rule(arg: &str) -> anyhow::Result<driftwatch::drift::IgnoreRule> {
    let (kind, pointer) = arg
        .split_once(':')
        .filter(|(k, p)| !k.is_empty() && p.starts_with('/'))
        .with_context(|| format!("--ignore-path {arg:?}: expected KIND:POINTER, e.g. Deployment:/spec/replicas"))?;
    Ok(driftwatch::drift::IgnoreRule {
        paths: vec![pointer.to_string()],
        target: Some(driftwatch::drift::IgnoreTarget { kind: Some(regex::escape(kind)), ..Default::default() }),
    })
}

async fn check(namespace: Option<String>, all: bool, opts: CheckOpts) -> anyhow::Result<ExitCode> {
    use driftwatch::check::{CheckSettings, check_release};
    let mut rules = opts.ignore_path.iter().map(|a| ignore_rule(a)).collect::<anyhow::Result<Vec<_>>>()?;
    let policy_ref = opts.policy.as_deref().map(driftwatch::cli::policy::parse_ref).transpose().map_err(anyhow::Error::msg)?;
    let ns = scope(namespace, all).await?;
    let client = client().await?;
    let mut ignore_managers = opts.ignore_manager.clone();
    let mut operations_as_drift = opts.operations_as_drift;
    let policy_requests = usize::from(policy_ref.is_some());
    if let Some((pns, pname)) = &policy_ref {
        let api: kube::Api<driftwatch::api::DriftPolicy> = kube::Api::namespaced(client.clone(), pns);
        let p = api
            .get_opt(pname)
            .await
            .with_context(|| format!("reading DriftPolicy {pns}/{pname}"))?
            .with_context(|| format!("DriftPolicy {pns}/{pname} not found"))?;
        driftwatch::drift::IgnoreRules::compile(&p.spec.ignore).with_context(|| format!("DriftPolicy {pns}/{pname} is invalid"))?;
        rules.extend(p.spec.ignore.iter().cloned());
        ignore_managers.extend(p.spec.ignore_managers.iter().cloned());
        operations_as_drift |= p.spec.operations_as_drift;
    }
    let ignore = driftwatch::drift::IgnoreRules::compile(&rules)?;
    let policy_view = driftwatch::cli::policy::PolicyView::read(&client, ns.as_deref()).await;
    let store = driftwatch::cluster::ReleaseStore::new(client.clone());
    let resolver = driftwatch::cluster::Resolver::new(client);
    let listing = store.list(ns.as_deref()).await;
    for e in &listing.errors {
        eprintln!("warning: {e}");
    }
    for e in &listing.malformed {
        eprintln!("warning: {e}");
    }
    let mut histories = driftwatch::helm::group_releases(listing.records);
    if let Some(name) = &opts.release {
        histories.retain(|h| &h.name == name);
        if histories.is_empty() {
            let where_ = ns.map_or_else(|| "any namespace".to_string(), |n| format!("namespace {n}"));
            anyhow::bail!("release {name:?} not found in {where_}");
        }
    }
    if histories.is_empty() && listing.errors.len() == 2 {
        anyhow::bail!("could not read Helm's release storage");
    }
    // No digest key: this run's own random one, so digests cannot be compared across runs.
    let settings = CheckSettings { ignore_managers: &ignore_managers, operations_as_drift, confirm: opts.confirm, ..CheckSettings::new(&ignore) };
    // Several releases at once (the API server answers in parallel); reported in order.
    use futures::StreamExt as _;
    let pending: Vec<_> = histories.iter().map(|h| check_release(&store, &resolver, h, opts.revision, &settings)).collect();
    let mut reports: Vec<_> = futures::stream::iter(pending).buffered(driftwatch::check::RELEASES_AT_ONCE).collect().await;
    let applied = policy_ref.as_ref().map(|(n, p)| format!("{n}/{p}"));
    for (r, h) in reports.iter_mut().zip(&histories) {
        let covering = policy_view.covering(h, r);
        if let (Some(a), Some(c)) = (&applied, &covering)
            && a != c
        {
            eprintln!("warning: release {}/{} is covered by DriftPolicy {c}, not {a}; applied {a} as asked", r.namespace, r.name);
        }
        r.policy = driftwatch::cli::policy::note(applied.as_deref(), covering);
    }
    // Release-level findings: no request for a release whose newest revision is deployed; the
    // newest revision's evidence for a failed one (or one pending past the timeout).
    let mut assess_requests = 0;
    for (r, h) in reports.iter_mut().zip(&histories) {
        let key = r.policy.as_ref().map(|p| p.name.clone());
        let thresholds = thresholds_of(&policy_view, key.as_deref());
        let a = driftwatch::cluster::evidence::Assess { history: h, report: r, thresholds, orphans: Vec::new(), settings: &settings, always: false };
        let assessed = driftwatch::cluster::evidence::assess(&store, &resolver, a).await;
        assess_requests += assessed.requests;
        r.findings = assessed.findings;
    }
    let text = match opts.output {
        CheckOutput::Text => {
            use std::io::IsTerminal as _;
            let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            driftwatch::cli::check_output::render_text(&reports, driftwatch::cli::check_output::Style { colour })
        }
        CheckOutput::Json => serde_json::to_string_pretty(&driftwatch::cli::check_output::document(&reports))? + "\n",
        CheckOutput::Yaml => serde_saphyr::to_string(&driftwatch::cli::check_output::document(&reports))?,
    };
    emit(&text)?;
    if opts.verbose {
        let confirmed: usize = reports.iter().map(|r| r.confirmed_away).sum();
        eprintln!(
            "driftwatch: {} API requests for {} release(s) ({} to list storage, {} to fetch records, {} to read DriftPolicies and DriftReports, {} for discovery, schemas, live reads and dry-runs, {} for the evidence of failed or stuck revisions); {confirmed} local finding(s) dismissed by dry-run",
            2 + reports.len() + policy_view.requests + policy_requests + resolver.requests() + assess_requests,
            reports.len(),
            2,
            reports.len(),
            policy_view.requests + policy_requests,
            resolver.requests(),
            assess_requests
        );
    }
    let checked_something = reports.iter().any(|r| r.error.is_none() && r.summary.errors < r.summary.resources);
    if !reports.is_empty() && !checked_something {
        return Ok(ExitCode::from(1));
    }
    let drifted = reports.iter().any(|r| r.drifted);
    Ok(if drifted && opts.detailed_exitcode { ExitCode::from(2) } else { ExitCode::SUCCESS })
}

/// Writes to stdout; a closed pipe (`| head`) is not an error.
fn emit(text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

async fn client() -> anyhow::Result<kube::Client> {
    let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
    let default_kubeconfig = std::env::home_dir().map(|h| h.join(".kube/config"));
    if !in_cluster && std::env::var_os("KUBECONFIG").is_none() && !default_kubeconfig.as_ref().is_some_and(|p| p.exists()) {
        anyhow::bail!(
            "no cluster to talk to: KUBECONFIG is not set, ~/.kube/config does not exist, and this is not a pod \
             (for the local control plane: eval \"$(tests/cluster/env)\")"
        );
    }
    let source = std::env::var("KUBECONFIG").map_or_else(|_| "the default kubeconfig".to_string(), |k| format!("KUBECONFIG={k}"));
    let context = context_asked();
    let config = driftwatch::cluster::config_for(context.as_deref()).await.with_context(|| match &context {
        Some(c) => format!("no usable context {c:?} (DRIFTWATCH_CONTEXT, or helm's --kube-context) in {source}"),
        None => format!("cannot read {source}"),
    })?;
    kube::Client::try_from(config).with_context(|| format!("cannot build a Kubernetes client from {source}"))
}

/// The kubeconfig context asked for instead of the current one: `DRIFTWATCH_CONTEXT` (`helm
/// --kube-context C driftwatch …` sets it).
fn context_asked() -> Option<String> {
    std::env::var("DRIFTWATCH_CONTEXT").ok().filter(|c| !c.is_empty())
}

/// The configuration of the context asked for, else the current one (in a pod: its service
/// account).
async fn kube_config() -> anyhow::Result<kube::Config> {
    driftwatch::cluster::config_for(context_asked().as_deref()).await
}

/// The namespace from `-n`, else the kubeconfig context's, like kubectl; None with `-A`.
async fn scope(namespace: Option<String>, all: bool) -> anyhow::Result<Option<String>> {
    if all {
        return Ok(None);
    }
    if let Some(ns) = namespace {
        return Ok(Some(ns));
    }
    let config = kube_config().await.context("reading the kubeconfig")?;
    Ok(Some(config.default_namespace))
}

async fn list(
    namespace: Option<String>,
    all: bool,
    release: Option<String>,
    output: CheckOutput,
) -> anyhow::Result<ExitCode> {
    let ns = scope(namespace, all).await?;
    let store = driftwatch::cluster::ReleaseStore::new(client().await?);
    let mut found = driftwatch::cli::list::list_releases(&store, ns.as_deref()).await;
    if let Some(name) = &release {
        found.releases.retain(|r| &r.name == name);
    }
    let doc = serde_json::json!({"releases": found.releases});
    let text = match output {
        CheckOutput::Text if found.releases.is_empty() && !found.nothing_readable => {
            let where_ = ns.map_or_else(|| "any namespace".to_string(), |n| format!("namespace {n}"));
            format!("No Helm releases found in {where_}.\n")
        }
        CheckOutput::Text => driftwatch::cli::list::render_table(&found.releases),
        CheckOutput::Json => serde_json::to_string_pretty(&doc)? + "\n",
        CheckOutput::Yaml => serde_saphyr::to_string(&doc)?,
    };
    if !found.releases.is_empty() || !found.nothing_readable {
        emit(&text)?;
    }
    for p in &found.problems {
        eprintln!("warning: {p}");
    }
    Ok(if found.nothing_readable { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// The rendered objects of `-f FILE` (`-`: stdin).
fn rendered_objects(path: &str) -> anyhow::Result<Vec<driftwatch::helm::DesiredObject>> {
    use std::io::Read as _;
    let mut text = String::new();
    if path == "-" {
        std::io::stdin().read_to_string(&mut text).context("reading the rendered manifest from stdin")?;
    } else {
        text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    }
    let split = driftwatch::helm::split_manifest(&text);
    if let Some(e) = split.errors.first() {
        anyhow::bail!("{path}: {e}");
    }
    Ok(split.objects)
}

/// The thresholds of the DriftPolicy that covers a release (the defaults without one).
fn thresholds_of(view: &driftwatch::cli::policy::PolicyView, covering: Option<&str>) -> driftwatch::diagnose::Thresholds {
    covering
        .and_then(|key| view.policies.iter().find(|p| driftwatch::controller::policy::policy_key(p) == key))
        .map(|p| driftwatch::diagnose::Thresholds::of(&p.spec.health))
        .unwrap_or_default()
}

async fn diagnose(release: String, namespace: Option<String>, output: DiagnoseOutput, rendered: Option<String>) -> anyhow::Result<ExitCode> {
    use driftwatch::cli::diagnose::{Document, DriftView, HistoryEntry, ReleaseView};
    use driftwatch::report::FindingResource;
    let rendered = rendered.as_deref().map(rendered_objects).transpose()?;
    let ns = scope(namespace, false).await?.unwrap_or_default();
    let client = client().await?;
    let store = driftwatch::cluster::ReleaseStore::new(client.clone());
    let resolver = driftwatch::cluster::Resolver::new(client.clone());
    let listing = store.list_release(&ns, &release).await;
    let histories = driftwatch::helm::group_releases(listing.records);
    if histories.is_empty()
        && let Some(e) = listing.errors.first()
    {
        anyhow::bail!("cannot read release {release} in namespace {ns}: {e}");
    }
    let mut doc = Document { name: release.clone(), namespace: ns.clone(), ..Default::default() };
    let mut found = false;
    let ignore = driftwatch::drift::IgnoreRules::default();
    let settings = driftwatch::check::CheckSettings::new(&ignore);
    let rendered_kinds: Vec<(String, String)> = rendered.iter().flatten().map(|o| (o.api_version.clone(), o.kind.clone())).collect();
    match histories.first() {
        None => {
            let mut kinds: Vec<(String, String)> = driftwatch::cluster::evidence::COMMON_KINDS.iter().map(|(a, k)| (a.to_string(), k.to_string())).collect();
            kinds.extend(rendered_kinds.iter().cloned());
            kinds.sort();
            kinds.dedup();
            let stamped: Vec<FindingResource> = driftwatch::cluster::evidence::stamped_objects(&resolver, &ns, &kinds).await.into_iter().filter(|(r, _)| r == &release).map(|(_, o)| o).collect();
            if !stamped.is_empty() {
                found = true;
                doc.findings.push(driftwatch::diagnose::lost_records(&ns, &release, stamped));
            }
        }
        Some(h) => {
            found = true;
            let view = driftwatch::cli::policy::PolicyView::read(&client, Some(&ns)).await;
            let report = driftwatch::check::check_release(&store, &resolver, h, None, &settings).await;
            let covering = view.covering(h, &report);
            let thresholds = thresholds_of(&view, covering.as_deref());
            // Stamped objects of the kinds the release has, that its manifest lacks.
            let mut kinds: Vec<(String, String)> = report.resources.iter().filter(|r| !r.kind.is_empty()).map(|r| (r.api_version.clone(), r.kind.clone())).collect();
            kinds.sort();
            kinds.dedup();
            let orphans: Vec<FindingResource> = driftwatch::cluster::evidence::stamped_objects(&resolver, &ns, &kinds)
                .await
                .into_iter()
                .filter(|(r, o)| r == &release && !report.resources.iter().any(|m| m.api_version == o.api_version && m.kind == o.kind && m.name == o.name && m.namespace == o.namespace))
                .map(|(_, o)| o)
                .collect();
            let assessed = driftwatch::cluster::evidence::assess(
                &store,
                &resolver,
                driftwatch::cluster::evidence::Assess { history: h, report: &report, thresholds, orphans, settings: &settings, always: true },
            )
            .await;
            doc.diagnosis = assessed.diagnosis;
            doc.findings = assessed.findings;
            doc.drift = Some(DriftView {
                revision: report.revision,
                drifted: report.drifted,
                summary: report.summary,
                resources: report
                    .resources
                    .iter()
                    .filter(|r| r.state != driftwatch::drift::ObjectState::InSync)
                    .map(|r| FindingResource { api_version: r.api_version.clone(), kind: r.kind.clone(), namespace: r.namespace.clone(), name: r.name.clone(), state: Some(format!("{:?}", r.state)), detail: r.message.clone() })
                    .collect(),
                error: report.error.clone(),
            });
            // History, newest first, as helm history shows it (values dropped at once).
            use futures::StreamExt as _;
            let newest: Vec<&driftwatch::helm::RecordMeta> = h.revisions.iter().rev().take(driftwatch::cli::diagnose::HISTORY).collect();
            let fetched: Vec<_> = futures::stream::iter(newest.iter().map(|r| store.fetch(r))).buffered(4).collect().await;
            let fetched: Vec<_> = fetched
                .into_iter()
                .map(|r| {
                    r.map(|mut r| {
                        r.config = Default::default();
                        r
                    })
                })
                .collect();
            for (record, rel) in newest.iter().zip(&fetched) {
                let (chart, app_version, updated, description) = match &rel {
                    Ok(r) => (format!("{}-{}", r.chart.metadata.name, r.chart.metadata.version), r.chart.metadata.app_version.clone(), r.info.last_deployed.map(|t| t.to_string()), r.info.description.clone()),
                    Err(e) => (String::new(), String::new(), None, format!("(record unreadable: {e})")),
                };
                doc.history.push(HistoryEntry { revision: record.revision, status: record.status.to_string(), chart, app_version, updated, description });
            }
            // The newest revision is the history's first entry, already read.
            if let Some(Ok(r)) = fetched.first() {
                doc.release = Some(ReleaseView {
                    revision: h.latest().revision,
                    status: h.latest().status.to_string(),
                    chart: r.chart.metadata.name.clone(),
                    chart_version: r.chart.metadata.version.clone(),
                    app_version: r.chart.metadata.app_version.clone(),
                    updated: r.info.last_deployed.map(|t| t.to_string()),
                    description: r.info.description.clone(),
                    apply_method: r.apply_method.to_string(),
                    deployed_revision: h.reference().map(|r| r.revision),
                });
            }
        }
    }
    if let Some(objects) = &rendered {
        let conflicts = conflicts(&resolver, &ns, &release, objects).await;
        if let Some(d) = driftwatch::diagnose::already_exists(&release, &ns, &conflicts) {
            found = true;
            doc.diagnosis = Some(d);
        }
    }
    doc.conclude();
    let text = match output {
        DiagnoseOutput::Json => serde_json::to_string_pretty(&doc)? + "\n",
        DiagnoseOutput::Text => driftwatch::cli::diagnose::render_text(&doc),
    };
    emit(&text)?;
    if !found {
        eprintln!(
            "driftwatch: release {release:?} not found in namespace {ns}: no Helm record and no object stamped for it. If `helm install` failed with \"exists and cannot be imported\", pass what it renders: helm template {release} CHART -n {ns} | driftwatch diagnose {release} -n {ns} -f -"
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// Objects of a rendered manifest that exist live and are not stamped for the release.
async fn conflicts(resolver: &driftwatch::cluster::Resolver, ns: &str, release: &str, objects: &[driftwatch::helm::DesiredObject]) -> Vec<driftwatch::diagnose::Conflict> {
    let mut out = Vec::new();
    for o in objects {
        let Ok(kind) = resolver.resolve(&o.api_version, &o.kind).await else { continue };
        let on = kind.namespace_of(o.namespace.as_deref(), ns);
        let Ok(Some(live)) = resolver.get_live(&kind, on.as_deref(), &o.name).await else { continue };
        let ann = |k: &str| live.pointer(&format!("/metadata/annotations/{}", k.replace('/', "~1"))).and_then(|v| v.as_str()).map(str::to_string);
        let (name, rns) = (ann("meta.helm.sh/release-name"), ann("meta.helm.sh/release-namespace"));
        if name.as_deref() == Some(release) && rns.as_deref() == Some(ns) {
            continue;
        }
        let managers: Vec<String> = live
            .pointer("/metadata/managedFields")
            .and_then(|m| m.as_array())
            .map(|m| m.iter().filter_map(|e| e["manager"].as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        out.push(driftwatch::diagnose::Conflict {
            object: driftwatch::report::FindingResource { api_version: o.api_version.clone(), kind: o.kind.clone(), namespace: on, name: o.name.clone(), state: None, detail: None },
            owner: name.zip(rns).map(|(n, r)| format!("{r}/{n}")),
            managers,
        });
    }
    out
}

/// Who the kubeconfig's credentials are, as the API server sees them (SelfSubjectReview).
async fn whoami(client: &kube::Client) -> String {
    use k8s_openapi::api::authentication::v1::SelfSubjectReview;
    let api: kube::Api<SelfSubjectReview> = kube::Api::all(client.clone());
    let review = SelfSubjectReview { metadata: Default::default(), status: None };
    match api.create(&Default::default(), &review).await {
        Ok(r) => r.status.and_then(|s| s.user_info).and_then(|u| u.username).unwrap_or_else(|| "an unknown user".into()),
        Err(_) => std::env::var("USER").map_or_else(|_| "an unknown user".into(), |u| format!("local user {u}")),
    }
}

async fn unlock(release: String, namespace: Option<String>, yes: bool, force: bool, pending_timeout: Option<String>) -> anyhow::Result<ExitCode> {
    use driftwatch::helm::Driver;
    use k8s_openapi::api::core::v1::{ConfigMap, Secret};
    let timeout = pending_timeout.as_deref().map(driftwatch::api::parse_duration).transpose().map_err(|e| anyhow::anyhow!("--pending-timeout: {e}"))?;
    let ns = scope(namespace, false).await?.unwrap_or_default();
    let client = client().await?;
    let store = driftwatch::cluster::ReleaseStore::new(client.clone());
    let h = release_history(&store, &ns, &release).await?;
    let latest = h.latest().clone();
    if !latest.status.is_pending() {
        anyhow::bail!("release {ns}/{release} is not locked: its newest revision {} is {}; nothing to unlock", latest.revision, latest.status);
    }
    let timeout = match timeout {
        Some(t) => t,
        None => {
            let view = driftwatch::cli::policy::PolicyView::read(&client, Some(&ns)).await;
            let probe = driftwatch::report::ReleaseReport::new(&release, &ns, latest.revision, latest.status.clone());
            thresholds_of(&view, view.covering(&h, &probe).as_deref()).pending_timeout
        }
    };
    let now = jiff::Timestamp::now();
    let since = match latest.since() {
        Some(s) => jiff::Timestamp::from_second(s).ok(),
        None => store.fetch(&latest).await.ok().and_then(|r| r.info.last_deployed),
    };
    let age = since.map(|s| std::time::Duration::from_secs((now.as_second() - s.as_second()).max(0) as u64));
    let young = age.is_none_or(|a| a < timeout);
    let age_text = age.map_or_else(|| "an unknown time".to_string(), |a| format!("{}s", a.as_secs()));
    if young && !force {
        anyhow::bail!(
            "revision {} of {ns}/{release} has been {} for {age_text}, less than the pending timeout ({}s): a helm process may still be running it. Wait, or pass --force if you know it stopped",
            latest.revision,
            latest.status,
            timeout.as_secs()
        );
    }
    let who = whoami(&client).await;
    let (payload, labels, resource_version) = match latest.driver {
        Driver::Secret => {
            let s = kube::Api::<Secret>::namespaced(client.clone(), &ns).get(&latest.object_name).await.with_context(|| format!("reading Secret {ns}/{}", latest.object_name))?;
            let payload = s.data.as_ref().and_then(|d| d.get("release")).map(|b| b.0.clone()).unwrap_or_default();
            (payload, s.metadata.labels.clone().unwrap_or_default(), s.metadata.resource_version.clone())
        }
        Driver::ConfigMap => {
            let c = kube::Api::<ConfigMap>::namespaced(client.clone(), &ns).get(&latest.object_name).await.with_context(|| format!("reading ConfigMap {ns}/{}", latest.object_name))?;
            let payload = c.data.as_ref().and_then(|d| d.get("release")).map(|s| s.clone().into_bytes()).unwrap_or_default();
            (payload, c.metadata.labels.clone().unwrap_or_default(), c.metadata.resource_version.clone())
        }
    };
    let unlocked = driftwatch::helm::unlock::unlock(&payload, &labels, &who, now).with_context(|| format!("{} {ns}/{}", latest.driver, latest.object_name))?;
    let record = format!("{} {ns}/{}", latest.driver, latest.object_name);
    let back = h.reference().map(|r| r.revision);
    if !yes {
        emit(&format!(
            "Would mark revision {} of {ns}/{release} ({}, for {age_text}) failed, in {record}, with the description:\n  {}\nNothing changed. Run again with --yes to do it.\n",
            latest.revision, unlocked.from, unlocked.description
        ))?;
        return Ok(ExitCode::SUCCESS);
    }
    let params = kube::api::PostParams::default();
    let result = match latest.driver {
        Driver::Secret => {
            let api = kube::Api::<Secret>::namespaced(client.clone(), &ns);
            let mut s = api.get(&latest.object_name).await?;
            s.metadata.resource_version = resource_version;
            s.metadata.labels = Some(unlocked.labels.clone());
            s.data.get_or_insert_default().insert("release".into(), k8s_openapi::ByteString(unlocked.payload.clone()));
            api.replace(&latest.object_name, &params, &s).await.map(|_| ())
        }
        Driver::ConfigMap => {
            let api = kube::Api::<ConfigMap>::namespaced(client.clone(), &ns);
            let mut c = api.get(&latest.object_name).await?;
            c.metadata.resource_version = resource_version;
            c.metadata.labels = Some(unlocked.labels.clone());
            c.data.get_or_insert_default().insert("release".into(), String::from_utf8_lossy(&unlocked.payload).into_owned());
            api.replace(&latest.object_name, &params, &c).await.map(|_| ())
        }
    };
    match result {
        Ok(()) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => anyhow::bail!("{record} changed while unlocking (a helm process is still writing it?); nothing was changed"),
        Err(e) => return Err(anyhow::Error::new(e).context(format!("writing {record}"))),
    }
    let next = match back {
        Some(g) => format!("helm upgrade {release} CHART -n {ns}   (or: helm rollback {release} {g} -n {ns})"),
        None => format!("helm upgrade --install {release} CHART -n {ns}   (or: helm uninstall {release} -n {ns})"),
    };
    emit(&format!("Unlocked {ns}/{release}: revision {} is now failed (was {}).\nNext: {next}\n", latest.revision, unlocked.from))?;
    Ok(ExitCode::SUCCESS)
}

/// The contexts `inventory` reads: those named, every one of the kubeconfig, or the current
/// one (in a pod: its own cluster, as `in-cluster`). Returns (name, whether it is the current
/// one, read without naming it).
fn inventory_contexts(named: Vec<String>, all: bool) -> anyhow::Result<Vec<(String, bool)>> {
    if !named.is_empty() && !all {
        return Ok(named.into_iter().map(|c| (c, false)).collect());
    }
    let kubeconfig = match kube::config::Kubeconfig::read() {
        Ok(k) => k,
        Err(_) if !all && std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() => return Ok(vec![("in-cluster".into(), true)]),
        Err(e) => anyhow::bail!("cannot read the kubeconfig: {e} (KUBECONFIG, or ~/.kube/config)"),
    };
    if all {
        let names: Vec<(String, bool)> = kubeconfig.contexts.iter().map(|c| (c.name.clone(), false)).collect();
        anyhow::ensure!(!names.is_empty(), "the kubeconfig has no context");
        return Ok(names);
    }
    let current = context_asked().or(kubeconfig.current_context.clone());
    match current {
        Some(c) => Ok(vec![(c, false)]),
        None => anyhow::bail!("the kubeconfig has no current context: name one with --context, or use --all-contexts"),
    }
}

async fn inventory(contexts: Vec<String>, all: bool, namespace: Option<String>, output: InventoryOutput, filters: driftwatch::inventory::Filters, skew: bool) -> anyhow::Result<ExitCode> {
    use driftwatch::inventory as inv;
    let contexts = inventory_contexts(contexts, all)?;
    let ask = driftwatch::cluster::inventory::Ask { namespace, drifted: filters.drifted };
    let answers = futures::future::join_all(contexts.iter().map(|(c, current)| driftwatch::cluster::inventory::read(c, *current, &ask))).await;
    let now = jiff::Timestamp::now();
    let mut clusters = Vec::new();
    let mut releases = Vec::new();
    for (cluster, rs) in answers {
        clusters.push(cluster);
        releases.extend(rs.into_iter().filter(|r| filters.keep(r, now)));
    }
    inv::sort(&mut releases);
    let skewed = skew.then(|| inv::skew(&releases));
    let answer = inv::Answer { clusters: &clusters, releases: &releases, skew: skewed.as_deref(), drift: filters.drifted, now };
    let text = match output {
        InventoryOutput::Table => {
            use std::io::IsTerminal as _;
            let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            inv::render_table(&answer, colour)
        }
        InventoryOutput::Json => inv::render_json(&answer),
        InventoryOutput::Csv => inv::render_csv(&answer),
    };
    emit(&text)?;
    if !matches!(output, InventoryOutput::Table) {
        for c in clusters.iter().filter(|c| c.state != inv::State::Ok) {
            eprintln!("driftwatch: cluster {}: {}: {}", c.context, c.state.as_str(), c.reason.as_deref().unwrap_or_default());
        }
    }
    if !inv::any_answered(&clusters) {
        eprintln!("driftwatch: no cluster answered ({} asked)", clusters.len());
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// What a preview applies: a rendered manifest (upgrade) or a stored revision (rollback).
enum Target {
    Rendered(Vec<driftwatch::helm::DesiredObject>),
    Revision(Option<u32>),
}

async fn preview(release: String, target: Target, flags: PreviewFlags) -> anyhow::Result<ExitCode> {
    let PreviewFlags { namespace, output, detailed_exitcode: detailed, force_conflicts: force } = flags;
    let ns = scope(namespace, false).await?.unwrap_or_default();
    let client = client().await?;
    let store = driftwatch::cluster::ReleaseStore::new(client.clone());
    let resolver = driftwatch::cluster::Resolver::new(client.clone());
    let h = release_history(&store, &ns, &release).await?;
    let ignore = driftwatch::drift::IgnoreRules::default();
    let settings = driftwatch::check::CheckSettings::new(&ignore);
    let report = driftwatch::check::check_release(&store, &resolver, &h, None, &settings).await;
    if let Some(e) = &report.error {
        anyhow::bail!("cannot check release {ns}/{release}: {e}");
    }
    let reference = h.reference().context("no deployed revision")?;
    let reference = driftwatch::check::decoded(&store, None, reference).await.map_err(|e| anyhow::anyhow!(e.message))?;
    let (new, operation) = match target {
        Target::Rendered(objects) => (objects, "upgrade"),
        Target::Revision(n) => {
            let n = n.unwrap_or(h.latest().revision.saturating_sub(1));
            let record = h.revision(n).with_context(|| format!("release {ns}/{release} has no revision {n}"))?;
            let d = driftwatch::check::decoded(&store, None, record).await.map_err(|e| anyhow::anyhow!(e.message))?;
            (d.split.objects.clone(), "rollback")
        }
    };
    // The live objects with their managedFields, for the fields other managers own that have
    // not drifted (one GET per object present; the check read the same ones).
    let mut live = Vec::new();
    for r in report.resources.iter().filter(|r| r.state != driftwatch::drift::ObjectState::Missing) {
        let Ok(kind) = resolver.resolve(&r.api_version, &r.kind).await else { continue };
        if let Ok(Some(object)) = resolver.get_live(&kind, r.namespace.as_deref(), &r.name).await {
            live.push(object);
        }
    }
    let doc = driftwatch::cli::preview::preview(driftwatch::cli::preview::Inputs {
        report: &report,
        reference: &reference.split.objects,
        new: &new,
        live: &live,
        force,
        operation,
        now: jiff::Timestamp::now(),
    });
    let text = match output {
        DiagnoseOutput::Json => serde_json::to_string_pretty(&doc)? + "\n",
        DiagnoseOutput::Text => driftwatch::cli::preview::render_text(&doc),
    };
    emit(&text)?;
    Ok(if detailed && doc.tally.consequential() { ExitCode::from(2) } else { ExitCode::SUCCESS })
}

/// A release's records (both drivers); an error when either driver cannot be read or the
/// release has none.
async fn release_history(store: &driftwatch::cluster::ReleaseStore, ns: &str, release: &str) -> anyhow::Result<driftwatch::helm::ReleaseHistory> {
    let listing = store.list_release(ns, release).await;
    if let Some(e) = listing.errors.first() {
        anyhow::bail!("cannot read release {release} in namespace {ns}: {e}");
    }
    let Some(h) = driftwatch::helm::group_releases(listing.records).into_iter().next() else {
        anyhow::bail!("release {release:?} not found in namespace {ns}");
    };
    Ok(h)
}
