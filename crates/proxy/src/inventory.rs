//! The endpoint inventory: the declared routes, and the requests that matched none of them
//! (the start of shadow-API detection). Undeclared hits are counted in memory on the request
//! path and written to the store in batches by a background task, so a flood of 404s costs a
//! map update each, not a database write each.

use http::Method;
use portcullis_store::{Store, StoreError, UndeclaredHit};
use serde::Serialize;
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{SystemTime, UNIX_EPOCH},
};

/// Most distinct (method, shape) pairs held between flushes; beyond it hits are counted under
/// one overflow shape, so a scanner cannot grow memory without bound.
const MAX_PENDING: usize = 10_000;
use portcullis_store::OVERFLOW_SHAPE;

/// A declared route as the inventory shows it.
#[derive(Debug, Clone, Serialize)]
pub struct DeclaredRoute {
    /// Route id.
    pub id: String,
    /// Methods it answers.
    pub methods: Vec<String>,
    /// Path template.
    pub path: String,
    /// Upstream base URL.
    pub upstream: String,
    /// Labels from config.
    pub tags: Vec<String>,
    /// Sunset date (RFC 3339) when deprecated.
    pub sunset: Option<String>,
    /// Policies in chain order.
    pub policies: Vec<&'static str>,
}

/// Declared and undeclared endpoints.
#[derive(Debug, Clone, Serialize)]
pub struct InventoryReport {
    /// Routes in the running configuration.
    pub declared: Vec<DeclaredRoute>,
    /// Requests that matched no route, by method and path shape, most hit first.
    pub undeclared: Vec<UndeclaredEntry>,
}

/// One undeclared endpoint shape.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct UndeclaredEntry {
    /// Request method.
    pub method: String,
    /// Normalised path.
    pub shape: String,
    /// Requests seen.
    pub hits: u64,
    /// First seen, Unix seconds.
    pub first_seen: i64,
    /// Last seen, Unix seconds.
    pub last_seen: i64,
}

impl From<UndeclaredHit> for UndeclaredEntry {
    fn from(h: UndeclaredHit) -> Self {
        UndeclaredEntry {
            method: h.method,
            shape: h.shape,
            hits: h.hits,
            first_seen: h.first_seen,
            last_seen: h.last_seen,
        }
    }
}

/// Counts undeclared requests and persists them.
pub struct Inventory {
    pending: Mutex<HashMap<(String, String), UndeclaredHit>>,
    store: Arc<dyn Store>,
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl Inventory {
    /// An inventory that persists to `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Inventory {
            pending: Mutex::new(HashMap::new()),
            store,
        }
    }

    /// Counts one request that matched no declared route.
    pub fn record(&self, method: &Method, path: &str) {
        let method = portcullis_telemetry::method_label(method).to_string();
        metrics::counter!("portcullis_undeclared_requests_total", "method" => method.clone())
            .increment(1);
        let mut shape = path_shape(path);
        let now = now_secs();
        let Ok(mut map) = self.pending.lock() else {
            return;
        };
        if map.len() >= MAX_PENDING && !map.contains_key(&(method.clone(), shape.clone())) {
            shape = OVERFLOW_SHAPE.to_string();
        }
        map.entry((method.clone(), shape.clone()))
            .and_modify(|h| {
                h.hits += 1;
                h.last_seen = now;
            })
            .or_insert(UndeclaredHit {
                method,
                shape,
                hits: 1,
                first_seen: now,
                last_seen: now,
            });
    }

    fn take_pending(&self) -> Vec<UndeclaredHit> {
        match self.pending.lock() {
            Ok(mut map) => map.drain().map(|(_, v)| v).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Writes the counted hits to the store. On failure they are kept for the next attempt.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let batch = self.take_pending();
        if batch.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.store.record_undeclared(&batch).await {
            if let Ok(mut map) = self.pending.lock() {
                for h in batch {
                    map.entry((h.method.clone(), h.shape.clone()))
                        .and_modify(|p| {
                            p.hits += h.hits;
                            p.first_seen = p.first_seen.min(h.first_seen);
                        })
                        .or_insert(h);
                }
            }
            return Err(e);
        }
        Ok(())
    }

    /// Stored totals plus hits not yet flushed.
    pub async fn undeclared(&self) -> Result<Vec<UndeclaredEntry>, StoreError> {
        let mut all: HashMap<(String, String), UndeclaredHit> = self
            .store
            .undeclared()
            .await?
            .into_iter()
            .map(|h| ((h.method.clone(), h.shape.clone()), h))
            .collect();
        if let Ok(map) = self.pending.lock() {
            for (k, p) in map.iter() {
                all.entry(k.clone())
                    .and_modify(|h| {
                        h.hits += p.hits;
                        h.last_seen = h.last_seen.max(p.last_seen);
                    })
                    .or_insert_with(|| p.clone());
            }
        }
        let mut out: Vec<UndeclaredEntry> = all.into_values().map(UndeclaredEntry::from).collect();
        out.sort_by(|a, b| {
            b.hits
                .cmp(&a.hits)
                .then_with(|| a.shape.cmp(&b.shape))
                .then_with(|| a.method.cmp(&b.method))
        });
        Ok(out)
    }
}

/// Normalises a path into a template-ish shape: segments that look like identifiers (numbers,
/// UUIDs, long hex or mixed letter-and-digit tokens) become `{id}`, long segments are cut, and
/// deep paths are truncated. `/users/42/orders/9f8e7d6c5b4a` becomes `/users/{id}/orders/{id}`.
pub fn path_shape(path: &str) -> String {
    const MAX_SEGMENTS: usize = 12;
    const MAX_SEGMENT_LEN: usize = 48;
    let mut out = String::with_capacity(path.len().min(256));
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    for (i, seg) in segments.iter().enumerate() {
        if i == MAX_SEGMENTS {
            out.push_str("/{...}");
            break;
        }
        out.push('/');
        if looks_like_id(seg) {
            out.push_str("{id}");
        } else if seg.len() > MAX_SEGMENT_LEN {
            out.push_str("{long}");
        } else {
            out.extend(
                seg.chars()
                    .map(|c| if c.is_ascii_graphic() { c } else { '?' }),
            );
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

fn looks_like_id(seg: &str) -> bool {
    if seg.is_empty() {
        return false;
    }
    let digits = seg.bytes().filter(u8::is_ascii_digit).count();
    if digits == seg.len() {
        return true;
    }
    let hexish = seg.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    if hexish && seg.len() >= 8 && digits > 0 {
        return true;
    }
    let token = seg
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    token && seg.len() >= 16 && digits > 0 && seg.bytes().any(|b| b.is_ascii_alphabetic())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_fold_identifiers() {
        assert_eq!(
            path_shape("/users/42/orders/9f8e7d6c5b4a"),
            "/users/{id}/orders/{id}"
        );
        assert_eq!(
            path_shape("/a/550e8400-e29b-41d4-a716-446655440000"),
            "/a/{id}"
        );
        assert_eq!(path_shape("/admin/debug"), "/admin/debug");
        assert_eq!(path_shape("/"), "/");
        assert_eq!(path_shape("/t/ab12cd34ef56gh78ij90"), "/t/{id}");
        assert_eq!(path_shape(&format!("/x/{}", "y".repeat(100))), "/x/{long}");
        assert_eq!(path_shape(&"/a".repeat(20)).matches('/').count(), 13);
    }

    #[tokio::test]
    async fn hits_are_counted_then_flushed() -> Result<(), StoreError> {
        let store: Arc<dyn Store> = Arc::new(portcullis_store::SqliteStore::memory().await?);
        let inv = Inventory::new(store.clone());
        inv.record(&Method::GET, "/admin/1");
        inv.record(&Method::GET, "/admin/2");
        inv.record(&Method::DELETE, "/admin/2");
        let before = inv.undeclared().await?;
        assert_eq!(before[0].hits, 2);
        inv.flush().await?;
        assert!(inv.take_pending().is_empty());
        let stored = store.undeclared().await?;
        assert_eq!(stored.iter().map(|h| h.hits).sum::<u64>(), 3);
        assert_eq!(inv.undeclared().await?, before);
        Ok(())
    }
}
