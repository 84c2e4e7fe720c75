//! Listener plumbing shared by the proxy, admin and demo listeners: accept,
//! optional TLS handshake (and client-certificate identity), HTTP/1.1 with a
//! header read timeout or HTTP/2 (h2c with prior knowledge, or `h2` by ALPN
//! over TLS) so a client can hold many calls on one connection, graceful
//! shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::http_util::{boxed_request, Body};
use crate::identity::{Directory, Principal};

/// Most requests in flight on one HTTP/2 connection (held calls included).
const H2_MAX_STREAMS: u32 = 1000;
/// Largest header block an HTTP/2 request may send.
const H2_MAX_HEADER_LIST: u32 = 64 * 1024;

/// What a handler knows about the connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// Remote address.
    pub peer: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// Principal named by a verified client certificate.
    pub cert_principal: Option<Arc<Principal>>,
}

/// How a listener runs.
#[derive(Clone)]
pub struct ListenerOptions {
    /// TLS acceptor, if the listener is TLS.
    pub tls: Option<TlsAcceptor>,
    /// Maps client certificates to principals (mTLS proxy listener only).
    pub directory: Option<Arc<Directory>>,
    /// Time allowed for the TLS handshake and each request head.
    pub header_read_timeout: Duration,
    /// Most connections served at once; further ones wait in the kernel's
    /// backlog, so one listener cannot use up every file descriptor.
    pub max_connections: usize,
}

/// Accept connections until `shutdown` turns true, then let open connections
/// finish their current request (up to 10 s).
pub async fn serve<H, F>(
    listener: TcpListener,
    opts: ListenerOptions,
    mut shutdown: watch::Receiver<bool>,
    handler: H,
) where
    H: Fn(Request<Body>, Arc<ConnInfo>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(opts.max_connections.max(1)));
    loop {
        // A slot first, then a connection: at the cap, accepting pauses.
        let slot = tokio::select! {
            s = slots.clone().acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => break,
            },
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and similar: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let opts = opts.clone();
        let handler = handler.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _slot = slot; // freed when the connection ends
            match opts.tls.clone() {
                None => {
                    let info = Arc::new(ConnInfo {
                        peer,
                        tls: false,
                        cert_principal: None,
                    });
                    // Plain TCP: HTTP/2 with prior knowledge opens with
                    // its preface ("PRI * HTTP/2.0"), anything else is HTTP/1.1.
                    let Some(proto) = sniff(&stream, opts.header_read_timeout).await else {
                        return;
                    };
                    serve_conn(stream, proto, info, &opts, handler, watcher).await;
                }
                Some(acceptor) => {
                    let tls = match Box::pin(tokio::time::timeout(
                        opts.header_read_timeout,
                        acceptor.accept(stream),
                    ))
                    .await
                    {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    let cert_principal =
                        match (&opts.directory, tls.get_ref().1.peer_certificates()) {
                            (Some(dir), Some([leaf, ..])) => {
                                dir.by_cert_names(&crate::tls::cert_names(leaf)).cloned()
                            }
                            _ => None,
                        };
                    let info = Arc::new(ConnInfo {
                        peer,
                        tls: true,
                        cert_principal,
                    });
                    let proto = match tls.get_ref().1.alpn_protocol() {
                        Some(b"h2") => Proto::Http2,
                        _ => Proto::Http1,
                    };
                    Box::pin(serve_conn(tls, proto, info, &opts, handler, watcher)).await;
                }
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(Duration::from_secs(10), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after 10 s; closing them");
    }
}

/// The protocol a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    Http1,
    Http2,
}

/// Peek at a plain connection's first bytes: the HTTP/2 preface or not.
/// `None`: it closed, or sent nothing within `timeout`.
async fn sniff(stream: &tokio::net::TcpStream, timeout: Duration) -> Option<Proto> {
    const PREFACE: &[u8] = b"PRI ";
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = [0u8; 4];
    loop {
        let n = tokio::time::timeout_at(deadline, stream.peek(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        if buf[..n] != PREFACE[..n] {
            return Some(Proto::Http1);
        }
        if n == PREFACE.len() {
            return Some(Proto::Http2);
        }
        // A prefix of the preface so far: wait for more.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Serve one connection as `proto`. HTTP/1.1 gets its own builder rather
/// than hyper's auto-detection, which keeps an extra read buffer for the
/// life of every connection (≈8 KiB per held call).
async fn serve_conn<S, H, F>(
    stream: S,
    proto: Proto,
    info: Arc<ConnInfo>,
    opts: &ListenerOptions,
    handler: H,
    watcher: hyper_util::server::graceful::Watcher,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Body>, Arc<ConnInfo>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    // A connection must start a request within the header read timeout
    // (hyper's HTTP/1.1 timeout does not cover the wait before the first
    // byte after a TLS handshake; HTTP/2 has none).
    let started = Arc::new(AtomicBool::new(false));
    let first = started.clone();
    let service = service_fn(move |req| {
        first.store(true, Ordering::Relaxed);
        // Boxed: an `async` block that awaits a captured future keeps room
        // for it twice, and hyper keeps room for this future in every
        // connection (≈3 KiB unboxed, per held call).
        let fut = Box::pin(handler(boxed_request(req), info.clone()));
        async move { Ok::<_, Infallible>(fut.await) }
    });
    let io = TokioIo::new(stream);
    let limit = opts.header_read_timeout;
    match proto {
        Proto::Http1 => {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limit)
                .keep_alive(true)
                .serve_connection(io, service);
            Box::pin(finish(watcher.watch(conn), &started, limit)).await
        }
        Proto::Http2 => {
            let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .max_concurrent_streams(H2_MAX_STREAMS)
                .max_header_list_size(H2_MAX_HEADER_LIST)
                .keep_alive_interval(Some(Duration::from_secs(30)))
                .keep_alive_timeout(Duration::from_secs(20))
                .serve_connection(io, service);
            Box::pin(finish(watcher.watch(conn), &started, limit)).await
        }
    }
}

/// Run a connection to its end, or drop it if no request started within
/// `limit`.
async fn finish(
    serving: impl Future<Output = Result<(), hyper::Error>>,
    started: &AtomicBool,
    limit: Duration,
) {
    let silent = async {
        tokio::time::sleep(limit).await;
        if started.load(Ordering::Relaxed) {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        ended = serving => {
            if let Err(e) = ended {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        }
        _ = silent => tracing::debug!("no request within the header read timeout; closing"),
    }
}
