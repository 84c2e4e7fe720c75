//! A recording HTTP endpoint whose answers a test scripts: stands in for
//! the Slack Web API, webhook receivers and PagerDuty in tests.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use tokio::sync::watch;

use super::Seen;
use crate::http_util::Body;
use crate::server::{self, ListenerOptions};

/// Decides each answer: (status, headers, JSON body text).
pub type Answerer = dyn Fn(&str, usize) -> (u16, Vec<(&'static str, String)>, String) + Send + Sync;

/// A recording HTTP endpoint; `answer(path, how many times this path was
/// asked before)` decides each answer.
pub struct Stub {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<(Instant, Seen)>>>,
    _stop: watch::Sender<bool>,
}

impl Stub {
    pub async fn start(answer: Arc<Answerer>) -> Stub {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<(Instant, Seen)>>> = Arc::default();
        let (stop, rx) = watch::channel(false);
        let opts = ListenerOptions {
            tls: None,
            directory: None,
            header_read_timeout: Duration::from_secs(5),
            max_connections: 64,
        };
        let s = seen.clone();
        tokio::spawn(server::serve(
            listener,
            opts,
            rx,
            move |req: Request<Body>, _| {
                let (s, answer) = (s.clone(), answer.clone());
                async move {
                    let (parts, body) = req.into_parts();
                    let body = body
                        .collect()
                        .await
                        .map(|c| c.to_bytes())
                        .unwrap_or_default();
                    let path = parts.uri.path().to_string();
                    let n = {
                        let mut seen = s.lock().unwrap();
                        let n = seen.iter().filter(|(_, r)| r.uri == path).count();
                        seen.push((
                            Instant::now(),
                            Seen {
                                method: parts.method.to_string(),
                                uri: path.clone(),
                                headers: parts.headers,
                                body,
                            },
                        ));
                        n
                    };
                    let (status, headers, text) = answer(&path, n);
                    let mut r = Response::new(crate::http_util::full(text));
                    *r.status_mut() = StatusCode::from_u16(status).unwrap();
                    for (k, v) in headers {
                        r.headers_mut().insert(k, v.parse().unwrap());
                    }
                    r.headers_mut()
                        .insert("content-type", "application/json".parse().unwrap());
                    r
                }
            },
        ));
        Stub {
            addr,
            seen,
            _stop: stop,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn calls(&self, path: &str) -> Vec<(Instant, Seen)> {
        let seen = self.seen.lock().unwrap();
        seen.iter()
            .filter(|(_, s)| s.uri == path)
            .cloned()
            .collect()
    }

    /// Wait (10 s at most) until `path` was asked `n` times.
    pub async fn wait(&self, path: &str, n: usize) -> Vec<(Instant, Seen)> {
        for _ in 0..400 {
            let calls = self.calls(path);
            if calls.len() >= n {
                return calls;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!(
            "{path} was not called {n} times: {:?}",
            self.calls(path).len()
        );
    }
}
