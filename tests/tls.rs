//! TLS on the proxy and admin listeners, agents identified by client
//! certificate (mTLS), and an https upstream trusted through `ca_file`.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpListener;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use common::*;
use latch::config::TlsConfig;
use latch::http_util::json;
use latch::server::{self, ListenerOptions};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tls")
        .join(name)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn connector(with_client_cert: bool) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(fixture("ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = if with_client_cert {
        let chain: Vec<_> = CertificateDer::pem_file_iter(fixture("client.pem"))
            .unwrap()
            .map(|c| c.unwrap())
            .collect();
        let key = PrivateKeyDer::from_pem_file(fixture("client.key")).unwrap();
        builder.with_client_auth_cert(chain, key).unwrap()
    } else {
        builder.with_no_client_auth()
    };
    TlsConnector::from(Arc::new(config))
}

/// One HTTPS request over a fresh TLS connection.
async fn https(
    addr: SocketAddr,
    client_cert: bool,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> Answer {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = connector(client_cert)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::post(path)
        .header("host", "localhost")
        .header("content-type", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = sender
        .send_request(req.body(Full::new(Bytes::from(body.to_string()))).unwrap())
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

fn tls_section() -> String {
    format!(
        r#"
[proxy.tls]
cert = "{cert}"
key = "{key}"
client_ca = "{ca}"
client_auth = "optional"

[admin.tls]
cert = "{cert}"
key = "{key}"

[[principals]]
id = "cert-bot"
roles = ["agent"]
cert_names = ["bot.agents.test"]
"#,
        cert = fixture("server.pem").display(),
        key = fixture("server.key").display(),
        ca = fixture("ca.pem").display(),
    )
}

#[tokio::test]
async fn mtls_identifies_the_agent_by_certificate() {
    let up = Upstream::start().await;
    let latch = TestLatch::start_with(&up.url(), &tls_section(), TEST_POLICY).await;

    // The certificate alone identifies the agent; the policy sees it.
    let a = https(
        latch.proxy(),
        true,
        "/tools/echo/x",
        None,
        r#"{"echo_input": true}"#,
    )
    .await;
    assert_eq!(a.status, 403);
    let input: serde_json::Value =
        serde_json::from_str(a.json()["reasons"][0].as_str().unwrap()).unwrap();
    assert_eq!(input["agent"]["id"], "cert-bot");

    let a = https(latch.proxy(), true, "/tools/echo/x", None, "{}").await;
    assert_eq!(a.status, 200);
    let seen = up.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].headers["x-forwarded-proto"], "https");

    // Certificate and token naming different principals is refused.
    let a = https(
        latch.proxy(),
        true,
        "/tools/echo/x",
        Some(AGENT_TOKEN),
        "{}",
    )
    .await;
    assert_eq!(a.status, 401);

    // Without a certificate a bearer token still works (client_auth = optional)...
    let a = https(
        latch.proxy(),
        false,
        "/tools/echo/x",
        Some(AGENT_TOKEN),
        "{}",
    )
    .await;
    assert_eq!(a.status, 200);
    // ...and without either the caller is unauthenticated.
    let a = https(latch.proxy(), false, "/tools/echo/x", None, "{}").await;
    assert_eq!(a.status, 401);
    assert_eq!(a.header("latch-error"), "unauthenticated");

    // The admin listener serves TLS too.
    let tcp = tokio::net::TcpStream::connect(latch.admin()).await.unwrap();
    let tls = connector(false)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = sender
        .send_request(
            Request::get("/healthz")
                .header("host", "localhost")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn plain_http_to_a_tls_listener_gets_nothing() {
    let up = Upstream::start().await;
    let latch = TestLatch::start_with(&up.url(), &tls_section(), TEST_POLICY).await;
    let status = raw_status(
        latch.proxy(),
        &format!(
            "GET /tools/echo/x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {AGENT_TOKEN}\r\n\r\n"
        ),
    )
    .await;
    assert_ne!(status, 200);
    assert!(up.requests().is_empty());
}

#[tokio::test]
async fn https_upstream_trusted_through_ca_file() {
    // A TLS upstream with the test server certificate.
    let config = latch::tls::server_config(&TlsConfig {
        cert: fixture("server.pem"),
        key: fixture("server.key"),
        client_ca: None,
        client_auth_required: false,
    })
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (_stop, rx) = tokio::sync::watch::channel(false);
    let opts = ListenerOptions {
        tls: Some(TlsAcceptor::from(config)),
        directory: None,
        header_read_timeout: Duration::from_secs(5),
        max_connections: 1024,
    };
    tokio::spawn(server::serve(listener, opts, rx, |req, conn| async move {
        json(
            StatusCode::OK,
            &serde_json::json!({"tls": conn.tls, "auth": req.headers().get("authorization").and_then(|v| v.to_str().ok())}),
        )
    }));

    let up = Upstream::start().await;
    let extra = format!(
        r#"
[[routes]]
name = "secure"
prefix = "/tools/secure"
upstream = "https://localhost:{port}"
ca_file = "{ca}"
inject_headers = {{ authorization = "Bearer tls-upstream" }}
"#,
        ca = fixture("ca.pem").display()
    );
    let latch = TestLatch::start_with(&up.url(), &extra, TEST_POLICY).await;
    let a = call("POST", latch.proxy(), "/tools/secure/x", "{}").await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(
        a.json(),
        serde_json::json!({"tls": true, "auth": "Bearer tls-upstream"})
    );
}
