//! OpenTelemetry traces: a span per proxied call with children for the
//! policy, the audit write, the upstream call and the wait for a verdict;
//! the agent's W3C `traceparent` is continued and passed on, and stored
//! with an approval so its execution (maybe hours later) joins the agent's
//! trace. Spans leave over OTLP/HTTP (protobuf) from a background task; a
//! full queue drops spans rather than slowing a call. Without
//! `[telemetry] otlp_endpoint` every method here is a no-op.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider, SpanData, SpanProcessor};
use opentelemetry_sdk::Resource;
use prost::Message as _;
use tokio::sync::mpsc;

use crate::config::TelemetryConfig;

/// Spans waiting for export; beyond this they are dropped (and counted in the log).
const QUEUE: usize = 8192;
/// Spans per export request.
const BATCH: usize = 512;

/// Cheap-to-clone handle; `Tracer::default()` traces nothing.
#[derive(Clone, Default)]
pub struct Tracer(Option<Arc<Inner>>);

struct Inner {
    tracer: SdkTracer,
    _provider: SdkTracerProvider,
}

/// A span (or nothing, when tracing is off or the trace is not sampled).
/// Ends when dropped.
#[derive(Default)]
pub struct Span(Option<Context>);

impl Tracer {
    /// Start exporting to `config.otlp_endpoint` (spawned on the current
    /// tokio runtime); nothing at all when no endpoint is configured.
    pub fn new(config: &TelemetryConfig) -> anyhow::Result<Tracer> {
        let Some(endpoint) = &config.otlp_endpoint else {
            return Ok(Tracer(None));
        };
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| anyhow::anyhow!("tracing needs a tokio runtime"))?;
        let resource = Resource::builder()
            .with_service_name(config.service_name.clone())
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        let (tx, rx) = mpsc::channel(QUEUE);
        let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
        runtime.spawn(export(rx, url, resource.clone(), config.timeout));
        let provider = SdkTracerProvider::builder()
            .with_span_processor(Queue(tx))
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                config.sample_ratio,
            ))))
            .with_resource(resource)
            .build();
        let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "latch");
        Ok(Tracer(Some(Arc::new(Inner {
            tracer,
            _provider: provider,
        }))))
    }

    /// Whether spans are recorded at all.
    pub fn enabled(&self) -> bool {
        self.0.is_some()
    }

    /// A span continuing the W3C `traceparent` (a new trace without one).
    pub fn start_from(&self, name: &'static str, traceparent: Option<&str>) -> Span {
        let Some(inner) = &self.0 else {
            return Span(None);
        };
        let parent = match traceparent.and_then(parse_traceparent) {
            Some(sc) => Context::new().with_remote_span_context(sc),
            None => Context::new(),
        };
        let span = inner.tracer.start_with_context(name, &parent);
        Span(Some(parent.with_span(span)))
    }

    /// A child of `parent`.
    pub fn child(&self, name: &'static str, parent: &Span) -> Span {
        self.child_in(name, parent.0.as_ref())
    }

    /// A child of the span `parent` names (e.g. on another thread).
    pub fn child_of(&self, name: &'static str, parent: &Parent) -> Span {
        self.child_in(name, parent.0.as_ref())
    }

    fn child_in(&self, name: &'static str, parent: Option<&Context>) -> Span {
        match (&self.0, parent) {
            (Some(inner), Some(cx)) => {
                let span = inner.tracer.start_with_context(name, cx);
                Span(Some(cx.with_span(span)))
            }
            _ => Span(None),
        }
    }
}

/// Names a span for its children without ending it when dropped, so a
/// child can start on another thread.
#[derive(Clone, Default)]
pub struct Parent(Option<Context>);

impl Span {
    /// What a child of this span started elsewhere needs.
    pub fn parent(&self) -> Parent {
        Parent(self.0.clone())
    }

    /// Set a string attribute.
    pub fn set(&self, key: &'static str, value: impl Into<String>) {
        if let Some(cx) = &self.0 {
            cx.span().set_attribute(KeyValue::new(key, value.into()));
        }
    }

    /// Mark the span failed with `why`.
    pub fn fail(&self, why: impl Into<String>) {
        if let Some(cx) = &self.0 {
            cx.span()
                .set_status(opentelemetry::trace::Status::error(why.into()));
        }
    }

    /// The W3C `traceparent` naming this span (for the next hop).
    pub fn traceparent(&self) -> Option<String> {
        let cx = self.0.as_ref()?;
        let span = cx.span();
        let sc = span.span_context();
        sc.is_valid().then(|| {
            format!(
                "00-{}-{}-{:02x}",
                sc.trace_id(),
                sc.span_id(),
                sc.trace_flags().to_u8()
            )
        })
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        if let Some(cx) = &self.0 {
            cx.span().end();
        }
    }
}

/// `00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`; anything else,
/// or all-zero ids, is ignored (a new trace starts).
pub fn parse_traceparent(s: &str) -> Option<SpanContext> {
    let mut parts = s.trim().split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |t: &str, n: usize| {
        t.len() == n
            && t.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    };
    if version != "00"
        || parts.next().is_some()
        || !hex(trace, 32)
        || !hex(span, 16)
        || !hex(flags, 2)
    {
        return None;
    }
    let sc = SpanContext::new(
        TraceId::from_hex(trace).ok()?,
        SpanId::from_hex(span).ok()?,
        TraceFlags::new(u8::from_str_radix(flags, 16).ok()?),
        true,
        TraceState::default(),
    );
    sc.is_valid().then_some(sc)
}

/// Hands ended spans to the export task without ever blocking a call.
#[derive(Debug)]
struct Queue(mpsc::Sender<SpanData>);

impl SpanProcessor for Queue {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if self.0.try_send(span).is_err() {
            tracing::debug!("trace export queue full; a span was dropped");
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// Send spans as OTLP/HTTP protobuf, a batch at a time.
async fn export(
    mut rx: mpsc::Receiver<SpanData>,
    url: String,
    resource: Resource,
    timeout: Duration,
) {
    let roots = crate::tls::system_roots();
    let client = match crate::tls::https_connector(&roots, None, Some(timeout)) {
        Ok(https) => {
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build::<_, Full<Bytes>>(https)
        }
        Err(e) => {
            tracing::error!(error = %e, "trace export disabled: no TLS configuration");
            return;
        }
    };
    let attrs = (&resource).into();
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(s) => batch.push(s),
                Err(_) => break,
            }
        }
        let n = batch.len();
        let request = opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest {
            resource_spans:
                opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope(
                    batch, &attrs,
                ),
        };
        let req = http::Request::post(&url)
            .header(http::header::CONTENT_TYPE, "application/x-protobuf")
            .body(Full::new(Bytes::from(request.encode_to_vec())));
        let Ok(req) = req else {
            tracing::error!(%url, "trace export disabled: bad endpoint URL");
            return;
        };
        match tokio::time::timeout(timeout, client.request(req)).await {
            Ok(Ok(resp)) if resp.status().is_success() => {
                let _ = resp.into_body().collect().await;
            }
            Ok(Ok(resp)) => {
                tracing::warn!(status = %resp.status(), spans = n, "trace export refused")
            }
            Ok(Err(e)) => tracing::warn!(error = %e, spans = n, "trace export failed"),
            Err(_) => tracing::warn!(spans = n, "trace export timed out"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_parse_strictly() {
        let sc =
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(sc.is_sampled() && sc.is_remote());
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn without_an_endpoint_nothing_is_traced() {
        let t = Tracer::default();
        let s = t.start_from(
            "x",
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        assert!(!t.enabled());
        assert_eq!(s.traceparent(), None);
        assert_eq!(t.child("y", &s).traceparent(), None);
    }
}
