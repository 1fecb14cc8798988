//! Scan listings: how a scan reads many objects of one scope (a kind in a namespace; the
//! release records of a namespace) with a few LISTs instead of a GET each, and how a single
//! re-check still reads one object. The first read of a scope is a GET; asking for a second
//! within [`LISTING_TTL`] lists the scope once, in pages of [`LIST_PAGE`], and serves it and
//! the rest from that listing, each item once (a second read of it is a GET: fresh). What
//! nobody asked for within the TTL is dropped with the listing. The caller decides whether a
//! listed item is current (the version its watches have seen) and reads by GET when it is not
//! or when the listing does not hold it, so no answer rests on a listing alone.
//!
//! Used by [`super::Resolver::read_live`] (live objects) and
//! [`super::ReleaseStore::fetch_payload`] (release payloads). A full pass lists; a change's
//! check reads [`one_by_one`].

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use kube::Client;
use kube::api::ListParams;

/// How long one listing serves reads.
pub const LISTING_TTL: Duration = Duration::from_secs(10);
/// Items per page of a listing.
pub const LIST_PAGE: u32 = 500;

tokio::task_local! {
    /// Set for the reads of a task that reads a few objects ([`one_by_one`]).
    static ONE_BY_ONE: ();
}

/// Runs `f` with reads that never start a listing: each is a GET. For a change's check, which
/// reads the one or two objects that changed: the second read of a scope would otherwise list
/// the whole scope (thousands of objects or release records, under a steady churn of edits in
/// the namespace) and make the check wait for it.
pub async fn one_by_one<F: Future>(f: F) -> F::Output {
    ONE_BY_ONE.scope((), f).await
}

/// One scope's listing: made on the second ask, once.
pub struct Listing<V> {
    since: Instant,
    asked: AtomicUsize,
    /// The items by name. `None` when the listing failed: its items are read one by one, each
    /// with its own answer.
    items: tokio::sync::OnceCell<Option<std::sync::Mutex<HashMap<String, V>>>>,
}

impl<V> Listing<V> {
    /// Whether it may still serve reads ([`LISTING_TTL`]).
    pub fn fresh(&self, now: Instant) -> bool {
        now.duration_since(self.since) < LISTING_TTL
    }

    /// Takes one item out, listing the scope first if no one has yet (`list`: None when it
    /// failed).
    pub async fn take<F>(&self, name: &str, list: impl FnOnce() -> F) -> Option<V>
    where
        F: Future<Output = Option<HashMap<String, V>>>,
    {
        let listed = self.items.get_or_init(|| async { list().await.map(std::sync::Mutex::new) }).await;
        listed.as_ref().and_then(|items| items.lock().expect("listing").remove(name))
    }
}

/// The listings of one reader, by scope.
pub struct Listings<V> {
    map: std::sync::Mutex<HashMap<String, Arc<Listing<V>>>>,
}

impl<V> Default for Listings<V> {
    fn default() -> Self {
        Listings { map: std::sync::Mutex::new(HashMap::new()) }
    }
}

impl<V> Listings<V> {
    /// A read in `scope`: None for the first within the TTL (read that one item directly) and
    /// for every read inside [`one_by_one`], else the scope's listing to take it from.
    pub fn ask(&self, scope: String) -> Option<Arc<Listing<V>>> {
        if ONE_BY_ONE.try_with(|_| ()).is_ok() {
            return None;
        }
        let now = Instant::now();
        let listing = {
            let mut map = self.map.lock().expect("listings");
            map.retain(|_, l| l.fresh(now));
            map.entry(scope).or_insert_with(|| Arc::new(Listing { since: now, asked: AtomicUsize::new(0), items: tokio::sync::OnceCell::new() })).clone()
        };
        (listing.asked.fetch_add(1, Ordering::SeqCst) > 0).then_some(listing)
    }

    /// Drops the listings older than [`LISTING_TTL`] (asks drop them too, but after a scan none
    /// may come for a long time: what nobody asked for would stay).
    pub fn drop_stale(&self) {
        let now = Instant::now();
        self.map.lock().expect("listings").retain(|_, l| l.fresh(now));
    }
}

/// One page of a LIST answer, its items kept as text.
#[derive(serde::Deserialize)]
struct Page<'a> {
    #[serde(borrow)]
    items: Vec<&'a serde_json::value::RawValue>,
    #[serde(default)]
    metadata: PageMeta,
}

#[derive(Default, serde::Deserialize)]
struct PageMeta {
    #[serde(rename = "continue", default)]
    continue_: Option<String>,
}

/// Every item of a LIST at `url` (a collection's URL), page by page, as `keep` makes each
/// into (name, value) (None: left out). `params` are the first page's (its selectors are kept
/// for the next pages; a continued list names no resourceVersion, the token carries it).
/// `count` is called once per request. None when a page could not be read.
pub async fn list_pages<V>(client: &Client, url: &str, params: ListParams, count: impl Fn(), keep: impl Fn(&str) -> Option<(String, V)>) -> Option<HashMap<String, V>> {
    let params = params.limit(LIST_PAGE);
    let next = |token: String| ListParams {
        continue_token: Some(token),
        label_selector: params.label_selector.clone(),
        field_selector: params.field_selector.clone(),
        ..ListParams::default().limit(LIST_PAGE)
    };
    let mut page_params = params.clone();
    let mut items = HashMap::new();
    loop {
        count();
        let request = kube::core::Request::new(url).list(&page_params).ok()?;
        let text = match client.request_text(request).await {
            Ok(t) => t,
            Err(e) => {
                tracing::debug!(url, error = %e, "cannot list; reading items one by one");
                return None;
            }
        };
        let page: Page = serde_json::from_str(&text).ok()?;
        items.extend(page.items.into_iter().filter_map(|item| keep(item.get())));
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => page_params = next(token),
            None => return Some(items),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_first_read_of_a_scope_is_direct_the_second_lists_and_each_item_is_served_once() {
        let listings: Listings<u32> = Listings::default();
        assert!(listings.ask("a".into()).is_none(), "the first read is a GET");
        let listing = listings.ask("a".into()).expect("the second lists");
        let lists = AtomicUsize::new(0);
        let list = || async {
            lists.fetch_add(1, Ordering::SeqCst);
            Some(HashMap::from([("x".to_string(), 1), ("y".to_string(), 2)]))
        };
        assert_eq!(listing.take("x", list).await, Some(1));
        let again = listings.ask("a".into()).expect("the listing serves the scope");
        assert_eq!(again.take("x", list).await, None, "an item is handed out once; the next read is a GET");
        assert_eq!(again.take("y", list).await, Some(2));
        assert_eq!(lists.load(Ordering::SeqCst), 1, "one listing per scope");
        assert!(listings.ask("b".into()).is_none(), "another scope starts over");
    }

    #[tokio::test]
    async fn a_change_s_reads_never_list() {
        let listings: Listings<u32> = Listings::default();
        one_by_one(async {
            assert!(listings.ask("a".into()).is_none());
            assert!(listings.ask("a".into()).is_none(), "the second read is a GET too");
        })
        .await;
        assert!(listings.ask("a".into()).is_none(), "and did not count: a scan's first read is still a GET");
        assert!(listings.ask("a".into()).is_some());
    }

    #[tokio::test]
    async fn a_failed_listing_serves_nothing() {
        let listings: Listings<u32> = Listings::default();
        listings.ask("a".into());
        let listing = listings.ask("a".into()).unwrap();
        assert_eq!(listing.take("x", || async { None }).await, None);
    }
}
