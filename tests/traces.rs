//! OpenTelemetry traces end to end: an OTLP/HTTP receiver in the test
//! decodes the protobuf Latch exports; the upstream shows which span it was
//! called from; a held call's execution joins the agent's trace.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

use common::*;

const AGENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn attr(s: &Span, key: &str) -> String {
    s.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
        .map(|v| match v {
            AnyValue::StringValue(s) => s.clone(),
            other => format!("{other:?}"),
        })
        .unwrap_or_default()
}

/// Every span the receiver has decoded so far.
fn spans(otlp: &Stub) -> Vec<Span> {
    let mut out = Vec::new();
    for (_, seen) in otlp.calls("/v1/traces") {
        assert_eq!(seen.headers["content-type"], "application/x-protobuf");
        let req = ExportTraceServiceRequest::decode(seen.body.as_ref()).expect("OTLP protobuf");
        for rs in req.resource_spans {
            let service = rs.resource.as_ref().map(|r| {
                r.attributes.iter().any(|kv| {
                    kv.key == "service.name"
                        && matches!(kv.value.as_ref().and_then(|v| v.value.as_ref()), Some(AnyValue::StringValue(s)) if s == "latch-test")
                })
            });
            assert_eq!(service, Some(true), "service.name");
            for ss in rs.scope_spans {
                out.extend(ss.spans);
            }
        }
    }
    out
}

/// Wait until the receiver has spans named `names` in trace `trace`.
async fn wait_spans(otlp: &Stub, trace: &str, names: &[&str]) -> HashMap<String, Span> {
    for _ in 0..400 {
        let by_name: HashMap<String, Span> = spans(otlp)
            .into_iter()
            .filter(|s| hex(&s.trace_id) == trace)
            .map(|s| (s.name.clone(), s))
            .collect();
        if names.iter().all(|n| by_name.contains_key(*n)) {
            return by_name;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("spans {names:?} of trace {trace} never arrived");
}

fn traced_request(
    proxy: std::net::SocketAddr,
    body: &str,
    traceparent: &str,
) -> http::Request<Full<Bytes>> {
    agent_request("POST", proxy, "/tools/echo/send")
        .header("content-type", "application/json")
        .header("traceparent", traceparent)
        .header("prefer", "respond-async")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

#[tokio::test]
async fn calls_and_their_approved_executions_are_traced_over_otlp() {
    let up = Upstream::start().await;
    let otlp = Stub::start(Arc::new(|_: &str, _| (200, vec![], String::new()))).await;
    let extra = format!(
        "[telemetry]\notlp_endpoint = \"{}\"\nservice_name = \"latch-test\"\n",
        otlp.url()
    );
    let latch = TestLatch::start_with(&up.url(), &extra, TEST_POLICY).await;

    // An allowed call continues the agent's trace.
    let incoming = format!("00-{AGENT_TRACE}-00f067aa0ba902b7-01");
    let a = send(traced_request(latch.proxy(), "{}", &incoming)).await;
    assert_eq!(a.status, 200);
    let spans = wait_spans(
        &otlp,
        AGENT_TRACE,
        &[
            "latch.call",
            "latch.policy",
            "latch.audit",
            "latch.upstream",
        ],
    )
    .await;
    let call = &spans["latch.call"];
    assert_eq!(hex(&call.parent_span_id), "00f067aa0ba902b7");
    for child in ["latch.policy", "latch.audit", "latch.upstream"] {
        assert_eq!(
            spans[child].parent_span_id, call.span_id,
            "{child} is a child of the call"
        );
    }
    assert_eq!(attr(call, "latch.decision"), "allow");
    assert_eq!(attr(call, "latch.route"), "echo");
    assert_eq!(attr(call, "latch.tool"), "echo");
    assert_eq!(attr(call, "latch.agent"), "bot");
    assert_eq!(attr(call, "latch.code"), "ok");
    assert_eq!(attr(call, "latch.risk"), "low");
    // The upstream was called from the upstream span.
    let sent = up.requests()[0].headers["traceparent"]
        .to_str()
        .unwrap()
        .to_string();
    let upstream = &spans["latch.upstream"];
    assert_eq!(
        sent,
        format!("00-{AGENT_TRACE}-{}-01", hex(&upstream.span_id))
    );
    assert_eq!(attr(upstream, "http.response.status_code"), "200");

    // A held call: approved later, its execution joins the same trace.
    let held_trace = "0af7651916cd43dd8448eb211c80319c";
    let gated = r#"{"gate": true, "approval": {"require": [{"role": "lead", "count": 1}]}}"#;
    let h = send(traced_request(
        latch.proxy(),
        gated,
        &format!("00-{held_trace}-b7ad6b7169203331-01"),
    ))
    .await;
    assert_eq!(h.status, 202);
    let id = h.json()["approval_id"].as_str().unwrap().to_string();
    let ok = admin(
        latch.admin(),
        "POST",
        &format!("/api/v1/approvals/{id}/approve"),
        "alice-token",
        "{}",
    )
    .await;
    assert_eq!(ok.status, 200);
    wait_state(latch.admin(), &id, "executed").await;
    let spans = wait_spans(&otlp, held_trace, &["latch.call", "latch.execute"]).await;
    let call = &spans["latch.call"];
    assert_eq!(
        (
            attr(call, "latch.decision"),
            attr(call, "latch.approval_id")
        ),
        ("gate".into(), id.clone())
    );
    let exec = &spans["latch.execute"];
    assert_eq!(
        exec.parent_span_id, call.span_id,
        "the execution links back to the held call"
    );
    assert_eq!(attr(exec, "latch.approval_id"), id);
    let sent = up.requests()[1].headers["traceparent"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(sent, format!("00-{held_trace}-{}-01", hex(&exec.span_id)));
}

#[tokio::test]
async fn without_an_exporter_the_agents_traceparent_passes_through() {
    let up = Upstream::start().await;
    let latch = TestLatch::start(&up.url()).await;
    let incoming = format!("00-{AGENT_TRACE}-00f067aa0ba902b7-01");
    assert_eq!(
        send(traced_request(latch.proxy(), "{}", &incoming))
            .await
            .status,
        200
    );
    assert_eq!(up.requests()[0].headers["traceparent"], incoming.as_str());
}
