//! One watch driver for every watched type: kube-runtime's watcher (with its backoff) turned
//! into three kinds of change: a whole listing (the first, or a re-list after the watch broke),
//! an object applied, an object deleted. The caller's handler updates an index and says what
//! to re-check; nothing here decides anything.

use std::fmt::Debug;

use futures::StreamExt as _;
use kube::Api;
use kube::runtime::{WatchStreamExt as _, watcher};
use serde::de::DeserializeOwned;

#[derive(Debug)]
pub enum Change<K> {
    /// Everything there is, after the first listing (`first`) or a re-list.
    Listed { objects: Vec<K>, first: bool },
    Applied(K),
    Deleted(K),
}

/// Watches `api` until the stream ends (it does not: the watcher retries with backoff),
/// handing each change to `on`. Each object is first reduced by `keep` to what the handler
/// needs, as it arrives: a listing is held until it is complete, and whole objects (metadata
/// with managed fields) of every object of a kind in the cluster were most of the controller's
/// peak heap (issue 18). `what` names the watch in logs.
pub async fn drive<K, C>(what: &str, api: Api<K>, config: watcher::Config, keep: impl Fn(K) -> C, mut on: impl FnMut(Change<C>))
where
    K: kube::Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let mut stream = watcher(api, config).default_backoff().boxed();
    let (mut building, mut first) = (Vec::new(), true);
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(watcher::Event::Init) => building.clear(),
            Ok(watcher::Event::InitApply(o)) => building.push(keep(o)),
            Ok(watcher::Event::InitDone) => {
                on(Change::Listed { objects: std::mem::take(&mut building), first });
                first = false;
            }
            Ok(watcher::Event::Apply(o)) => on(Change::Applied(keep(o))),
            Ok(watcher::Event::Delete(o)) => on(Change::Deleted(keep(o))),
            Err(e) => tracing::debug!(watch = what, error = %e, "watch interrupted; retrying"),
        }
    }
}
