//! The store's Prometheus metrics: per-namespace statement latency and
//! refusals, and how writes share commits. Registered by the node into its
//! one registry; label sets are bounded by the namespaces.

use std::time::Duration;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatementLabels {
    namespace: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    namespace: String,
    reason: &'static str,
}

fn latency_histogram() -> Histogram {
    // 50 µs .. ~26 s
    Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
}

/// Store metrics: per-namespace statement latency and refusals, and commit
/// behaviour.
#[derive(Clone)]
pub struct StoreMetrics {
    statements: Family<StatementLabels, Histogram, fn() -> Histogram>,
    refusals: Family<RefusalLabels, Counter>,
    commit: Histogram,
    batch_latency: Histogram,
    batch_size: Histogram,
}

impl Default for StoreMetrics {
    /// Metrics kept but registered nowhere (tools and tests).
    fn default() -> Self {
        StoreMetrics {
            statements: Family::new_with_constructor(latency_histogram),
            refusals: Family::default(),
            commit: latency_histogram(),
            batch_latency: latency_histogram(),
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 11)),
        }
    }
}

impl StoreMetrics {
    /// The store's metrics, registered in `registry`.
    pub fn register(registry: &mut Registry) -> StoreMetrics {
        let store = StoreMetrics::default();
        registry.register(
            "store_statement_duration_seconds",
            "Time to run a service's statements (kind=read: one statement; kind=write: one write call), by namespace",
            store.statements.clone(),
        );
        registry.register(
            "store_refusals",
            "Service calls the store refused, by namespace and reason (denied, budget, ended_transaction)",
            store.refusals.clone(),
        );
        registry.register(
            "store_commit_duration_seconds",
            "Time of one durable COMMIT (fsync included) of a group of writes",
            store.commit.clone(),
        );
        registry.register(
            "store_batch_duration_seconds",
            "Time from BEGIN to durable COMMIT of one group of writes",
            store.batch_latency.clone(),
        );
        registry.register(
            "store_batch_size",
            "Write calls committed together by one COMMIT",
            store.batch_size.clone(),
        );
        store
    }

    pub fn observe_statement(&self, namespace: &str, kind: &'static str, elapsed: Duration) {
        self.statements
            .get_or_create(&StatementLabels {
                namespace: namespace.to_owned(),
                kind,
            })
            .observe(elapsed.as_secs_f64());
    }

    /// A service's call refused: `denied` (outside its namespace or its
    /// rules), `budget` (over its budget) or `ended_transaction` (it ended
    /// the transaction it shared, and failed alone).
    pub fn observe_refusal(&self, namespace: &str, reason: &'static str) {
        self.refusals
            .get_or_create(&RefusalLabels {
                namespace: namespace.to_owned(),
                reason,
            })
            .inc();
    }

    pub fn observe_commit(&self, commit: Duration, batch: usize, whole: Duration) {
        self.commit.observe(commit.as_secs_f64());
        self.batch_latency.observe(whole.as_secs_f64());
        self.batch_size.observe(batch as f64);
    }
}
