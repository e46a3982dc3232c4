//! Prometheus metrics of one node, served by the admin listener.
//!
//! Label sets are small and bounded: service names come from the catalogue
//! and routes from the declared route templates (never the raw path), so a
//! client cannot grow the series count.

use std::{fmt::Write as _, sync::Arc, time::Duration};

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder},
    metrics::{
        counter::Counter,
        family::Family,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

use crate::store::StoreMetrics;

/// A label value that is cheap to clone on the request path.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub enum Label {
    Static(&'static str),
    Shared(Arc<str>),
}

impl Label {
    pub fn as_str(&self) -> &str {
        match self {
            Label::Static(s) => s,
            Label::Shared(s) => s,
        }
    }

    /// The method's name; standard methods without allocating.
    pub fn method(method: &http::Method) -> Label {
        use http::Method as M;
        let name = match *method {
            M::GET => "GET",
            M::POST => "POST",
            M::PUT => "PUT",
            M::DELETE => "DELETE",
            M::HEAD => "HEAD",
            M::PATCH => "PATCH",
            M::OPTIONS => "OPTIONS",
            // Extension methods are bounded by the routes that accept them;
            // unrouted requests never reach here with their own method name.
            _ => "OTHER",
        };
        Label::Static(name)
    }
}

impl From<&'static str> for Label {
    fn from(s: &'static str) -> Self {
        Label::Static(s)
    }
}

impl From<String> for Label {
    fn from(s: String) -> Self {
        Label::Shared(Arc::from(s))
    }
}

impl EncodeLabelValue for Label {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub service: Label,
    pub route: Label,
    pub method: Label,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LatencyLabels {
    pub service: Label,
    pub route: Label,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ForwardLabels {
    pub service: Label,
    /// `tls` or `plaintext`: how the hop to the other node went.
    pub transport: Label,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 50 µs .. ~26 s
    Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
}

/// Request metrics of the ingress, per service and route template.
#[derive(Clone)]
pub struct HttpMetrics {
    requests: Family<RequestLabels, Counter>,
    latency: HistogramFamily<LatencyLabels>,
    forwarded: Family<ForwardLabels, Counter>,
}

impl HttpMetrics {
    pub fn observe(
        &self,
        service: Label,
        route: Label,
        method: Label,
        status: u16,
        elapsed: Duration,
    ) {
        self.latency
            .get_or_create(&LatencyLabels {
                service: service.clone(),
                route: route.clone(),
            })
            .observe(elapsed.as_secs_f64());
        self.requests
            .get_or_create(&RequestLabels {
                service,
                route,
                method,
                status,
            })
            .inc();
    }

    /// A request forwarded to another node got an answer there.
    pub fn forwarded(&self, service: Label, tls: bool) {
        self.forwarded
            .get_or_create(&ForwardLabels {
                service,
                transport: Label::Static(if tls { "tls" } else { "plaintext" }),
            })
            .inc();
    }
}

/// Every metric of the node, and the registry that encodes them.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub http: HttpMetrics,
    pub store: StoreMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("flotilla");
        let http = HttpMetrics {
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            forwarded: Family::default(),
        };
        registry.register(
            "http_requests",
            "Requests served by the public ingress, by service, route template, method and status",
            http.requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Latency of requests served by the public ingress, by service and route template",
            http.latency.clone(),
        );
        registry.register(
            "forwarded_requests",
            "Requests the ingress forwarded to another node that answered them, by service and transport (tls or plaintext)",
            http.forwarded.clone(),
        );
        let store = StoreMetrics::register(&mut registry);
        Metrics {
            registry: Arc::new(registry),
            http,
            store,
        }
    }

    /// The OpenMetrics text exposition (which Prometheus scrapes natively).
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
