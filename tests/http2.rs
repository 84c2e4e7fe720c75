//! HTTP/2 on the agents' listener: h2c with prior knowledge, many held
//! calls multiplexed on one connection, and `h2` negotiated by ALPN over TLS.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};

use common::*;

type H2 = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

fn h2c() -> H2 {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

async fn send_h2(client: &H2, req: Request<Full<Bytes>>) -> (Version, Answer) {
    read(client.request(req).await.unwrap()).await
}

async fn read(resp: http::Response<hyper::body::Incoming>) -> (Version, Answer) {
    let version = resp.version();
    let (parts, body) = resp.into_parts();
    let answer = Answer {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    };
    (version, answer)
}

fn agent_post(addr: std::net::SocketAddr, path: &str) -> http::request::Builder {
    Request::post(format!("http://{addr}{path}"))
        .header("authorization", format!("Bearer {AGENT_TOKEN}"))
        .header("content-type", "application/json")
}

#[tokio::test]
async fn h2c_calls_are_judged_and_forwarded_like_http1_ones() {
    let up = Upstream::start().await;
    let latch = TestLatch::start(&up.url()).await;
    let client = h2c();
    let body = r#"{"to": "a@example.com"}"#;
    let req = agent_post(latch.proxy(), "/tools/echo/send")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let (version, a) = send_h2(&client, req).await;
    assert_eq!(version, Version::HTTP_2);
    assert_eq!(a.status, 200, "{:?}", a.body);
    let seen = up.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].body,
        body.as_bytes(),
        "the judged bytes reached the tool"
    );
    assert_eq!(seen[0].headers["authorization"], "Bearer upstream-secret");

    // A denied call over HTTP/2 is still denied, and nothing is sent.
    let blocked = r#"{"block": true}"#;
    let req = agent_post(latch.proxy(), "/tools/echo/send")
        .body(Full::new(Bytes::from(blocked)))
        .unwrap();
    let (_, d) = send_h2(&client, req).await;
    assert_eq!(d.status, 403);
    assert_eq!(d.json()["error"], "denied");
    assert_eq!(up.requests().len(), 1);
}

/// Ten calls held at once on one HTTP/2 connection; each is released with
/// its own upstream answer when approved.
#[tokio::test]
async fn many_held_calls_share_one_http2_connection() {
    let up = Upstream::start().await;
    let latch = TestLatch::start(&up.url()).await;
    // Exactly one TCP connection, HTTP/2 with prior knowledge.
    let tcp = tokio::net::TcpStream::connect(latch.proxy()).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut held = Vec::new();
    for n in 0..10 {
        let body =
            json!({"gate": true, "n": n, "approval": {"require": [{"role": "lead", "count": 1}]}})
                .to_string();
        let req = agent_post(latch.proxy(), &format!("/tools/echo/call-{n}"))
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let mut sender = sender.clone();
        held.push(tokio::spawn(async move {
            read(sender.send_request(req).await.unwrap()).await
        }));
    }
    let ids = wait_pending_n(latch.admin(), 10).await;
    assert_eq!(ids.len(), 10, "all ten calls are held");
    assert!(up.requests().is_empty());
    for id in &ids {
        let path = format!("/api/v1/approvals/{id}/approve");
        assert_eq!(
            admin(latch.admin(), "POST", &path, "alice-token", "{}")
                .await
                .status,
            200
        );
    }
    for (n, h) in held.into_iter().enumerate() {
        let (version, a) = h.await.unwrap();
        assert_eq!(version, Version::HTTP_2);
        assert_eq!(a.status, 200, "{:?}", a.body);
        let echoed: Value = a.json();
        assert_eq!(echoed["path"], format!("/base/call-{n}"), "{echoed}");
    }
    assert_eq!(up.requests().len(), 10);
}

fn tls_fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tls")
        .join(name)
}

#[tokio::test]
async fn tls_clients_negotiate_h2_by_alpn() {
    let up = Upstream::start().await;
    let extra = format!(
        "\n[proxy.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        tls_fixture("server.pem").display(),
        tls_fixture("server.key").display()
    );
    let latch = TestLatch::start_with(&up.url(), &extra, TEST_POLICY).await;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(tls_fixture("ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(latch.proxy()).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::post("https://localhost/tools/echo/tls")
        .header("authorization", format!("Bearer {AGENT_TOKEN}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.version(), Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    assert_eq!(up.requests().len(), 1);
}
