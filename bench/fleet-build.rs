//! `bench/fleet`'s fast fleet (issue 18): the first `--samples` releases of the plan are made by
//! real helm (by the script, before this runs); every other release is written as a copy of
//! the sample at its index modulo `--samples` (the plan repeats every 20 releases: same helm
//! major, chart, values and revisions) — its records exactly as Helm writes them and its
//! objects as Helm creates them. See `fleet_build.rs`. Prints one line of totals.

#[path = "fleet_build.rs"]
mod fleet_build;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context as _, bail};
use clap::Parser;
use futures::StreamExt as _;

#[derive(Parser, Debug)]
struct Args {
    /// The fleet plan (`index namespace name helm chart revisions values…` per line).
    #[arg(long)]
    plan: PathBuf,
    /// Releases at the head of the plan made by helm, copied by the rest.
    #[arg(long, default_value_t = 20)]
    samples: usize,
    /// Releases written at once.
    #[arg(long, default_value_t = 16)]
    jobs: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let plan: Vec<Vec<String>> = std::fs::read_to_string(&args.plan)?.lines().map(|l| l.split_whitespace().map(str::to_string).collect()).filter(|f: &Vec<String>| f.len() >= 6).collect();
    if plan.len() <= args.samples {
        return Ok(());
    }
    let client = kube::Client::try_default().await?;
    let resolver = driftwatch::cluster::Resolver::new(client.clone());
    let mut samples = Vec::new();
    for line in &plan[..args.samples] {
        samples.push(fleet_build::Sample::read(&client, &line[1], &line[2]).await.with_context(|| format!("sample {}/{}", line[1], line[2]))?);
    }
    for (i, line) in plan.iter().enumerate().skip(args.samples) {
        let like = &plan[i % args.samples];
        // helm major, chart, revisions: the copy must be what helm would have made.
        if line[3..6] != like[3..6] {
            bail!("plan line {i} ({line:?}) is not like its sample {like:?}: --samples must be a multiple of the plan's period");
        }
    }
    let started = Instant::now();
    let (client, resolver, samples) = (&client, &resolver, &samples);
    let copies = plan.iter().enumerate().skip(args.samples).map(|(i, line)| async move {
        fleet_build::copy_release(client, resolver, &samples[i % samples.len()], &line[1], &line[2]).await.with_context(|| format!("{}/{}", line[1], line[2]))
    });
    let mut results = futures::stream::iter(copies).buffer_unordered(args.jobs.max(1));
    let (mut releases, mut objects, mut records) = (0usize, 0usize, 0usize);
    while let Some(r) = results.next().await {
        let w = r?;
        if w.records > 0 {
            releases += 1;
        }
        objects += w.objects;
        records += w.records;
        if releases > 0 && releases % 1000 == 0 && w.records > 0 {
            eprintln!("[fleet-build] {releases} releases written ({:.0} s)", started.elapsed().as_secs_f64());
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!("{releases} releases copied from {} samples: {objects} objects and {records} records in {secs:.1} s ({:.0} objects/s)", samples.len(), (objects + records) as f64 / secs.max(0.001));
    Ok(())
}
