//! The OpenAPI document and the admin router agree, checked over HTTP.

mod common;

use bytes::Bytes;
use http_body_util::Full;

use common::*;

const ROUTER_404: &str = "no such admin endpoint";

async fn request(latch: &TestLatch, method: &str, path: &str) -> Answer {
    let req = http::Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", latch.admin()))
        .header("authorization", "Bearer alice-token")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    let resp = client().request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    // The event stream never ends; its head is enough.
    let streaming = parts
        .headers
        .get("content-type")
        .is_some_and(|v| v == "text/event-stream");
    let body = if streaming {
        Bytes::new()
    } else {
        http_body_util::BodyExt::collect(body)
            .await
            .unwrap()
            .to_bytes()
    };
    Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

fn router_404(a: &Answer) -> bool {
    a.status == 404
        && serde_json::from_slice::<serde_json::Value>(&a.body)
            .is_ok_and(|v| v["message"] == ROUTER_404)
}

#[tokio::test]
async fn every_documented_route_is_served_and_nothing_else() {
    let up = Upstream::start().await;
    let latch = TestLatch::start(&up.url()).await;
    let doc = call("GET", latch.admin(), "/api/openapi.json", "")
        .await
        .json();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 10);
    for (template, ops) in paths {
        let path = template.replace("{id}", "some-id");
        let documented: Vec<String> = ops
            .as_object()
            .unwrap()
            .keys()
            .map(|m| m.to_uppercase())
            .collect();
        for method in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
            let a = request(&latch, method, &path).await;
            if documented.iter().any(|m| m == method) {
                assert!(
                    !router_404(&a) && a.status != 405,
                    "{method} {template} is documented but not served: {}",
                    a.status
                );
            } else {
                assert_eq!(
                    a.status, 405,
                    "{method} {template} is served but not documented"
                );
                assert!(a.header("allow").contains(documented[0].as_str()));
            }
        }
    }
    for undocumented in [
        "/api/v1/nothing",
        "/api/v1/approvals/x/y/z",
        "/admin",
        "/api/v2/approvals",
    ] {
        assert!(
            router_404(&request(&latch, "GET", undocumented).await),
            "{undocumented} is served but not documented"
        );
    }
}
