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
    /// Print the CustomResourceDefinitions (crds/ holds this output)
    Crdgen,
}

fn main() -> ExitCode {
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
        Command::Run { metrics_addr, health_addr, leader_elect, cluster_policy_namespaces, watch_namespaces, log_format, no_confirm } => {
            run(RunOpts { metrics_addr, health_addr, leader_elect, cluster_policy_namespaces, watch_namespaces, log_format, confirm: !no_confirm }).await
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
        concurrency: driftwatch::check::RELEASES_AT_ONCE,
        confirm: o.confirm,
    };
    let client = client().await?;
    let metrics = Arc::new(driftwatch::metrics::Metrics::new());
    let ready = Arc::new(AtomicBool::new(false));
    tracing::info!(identity, %metrics_addr, %health_addr, leader_elect = o.leader_elect, "driftwatch controller starting");
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
    let settings = CheckSettings {
        ignore: &ignore,
        ignore_managers: &ignore_managers,
        operations_as_drift,
        digest_key: None,
        confirm: opts.confirm,
        concurrency: driftwatch::check::OBJECTS_AT_ONCE,
        reuse: None,
    };
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
            "driftwatch: {} API requests for {} release(s) ({} to list storage, {} to fetch records, {} to read DriftPolicies and DriftReports, {} for discovery, schemas, live reads and dry-runs); {confirmed} local finding(s) dismissed by dry-run",
            2 + reports.len() + policy_view.requests + policy_requests + resolver.requests(),
            reports.len(),
            2,
            reports.len(),
            policy_view.requests + policy_requests,
            resolver.requests()
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
    kube::Client::try_default()
        .await
        .with_context(|| format!("cannot build a Kubernetes client from {source}"))
}

/// The namespace from `-n`, else the kubeconfig context's, like kubectl; None with `-A`.
async fn scope(namespace: Option<String>, all: bool) -> anyhow::Result<Option<String>> {
    if all {
        return Ok(None);
    }
    if let Some(ns) = namespace {
        return Ok(Some(ns));
    }
    let config = kube::Config::infer().await.context("reading the kubeconfig")?;
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
