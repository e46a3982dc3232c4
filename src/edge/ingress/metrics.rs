//! Counts every answer the layers below give, by service, route template,
//! method and status, with its latency. The labels come from `lookup`; an
//! unrouted request counts under `-`, never under its raw path, so a
//! client cannot grow the series count.

use std::time::Instant;

use axum::{extract::Request, response::Response};
use futures_util::future::BoxFuture;

use super::{Labels, Layer, Next};
use crate::telemetry::metrics::{HttpMetrics, Label};

async fn observe(metrics: &HttpMetrics, req: Request, next: Next<'_>) -> Response {
    let started = Instant::now();
    let method = Label::method(req.method());
    let response = next.run(req).await;
    let labels = response.extensions().get::<Labels>();
    let unrouted = || Label::Static("-");
    metrics.observe(
        labels
            .and_then(|l| l.service.clone())
            .unwrap_or_else(unrouted),
        labels
            .and_then(|l| l.route.clone())
            .unwrap_or_else(unrouted),
        method,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// The layer: `observe` over its state.
pub(super) struct Metrics(pub HttpMetrics);

impl Layer for Metrics {
    fn handle<'a>(&'a self, req: Request, next: Next<'a>) -> BoxFuture<'a, Response> {
        Box::pin(observe(&self.0, req, next))
    }
}

#[cfg(test)]
mod tests {
    use tower::ServiceExt;

    use super::*;
    use crate::{
        edge::ingress::test_support::{get, inner, layered},
        telemetry::metrics::Metrics,
    };

    #[tokio::test]
    async fn answers_are_counted_by_their_labels_or_as_unrouted() {
        let metrics = Metrics::new();
        let labelled = tower::service_fn(|_req: Request| async {
            let mut r = Response::new(axum::body::Body::empty());
            r.extensions_mut().insert(Labels {
                service: Some(Label::Static("kv")),
                route: Some(Label::Static("/api/kv/keys")),
            });
            Ok::<_, std::convert::Infallible>(r)
        });
        let stack = layered(Metrics(metrics.http.clone()), labelled);
        stack.oneshot(get("/api/kv/keys")).await.unwrap();
        let stack = layered(Metrics(metrics.http.clone()), inner());
        stack.oneshot(get("/no/such/thing")).await.unwrap();
        let text = metrics.encode();
        assert!(
            text.contains(r#"service="kv",route="/api/kv/keys",method="GET",status="200""#),
            "{text}"
        );
        assert!(
            text.contains(r#"service="-",route="-",method="GET",status="200""#),
            "{text}"
        );
        assert!(!text.contains("/no/such/thing"), "{text}");
    }
}
