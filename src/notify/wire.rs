//! The one way notifications leave: a JSON POST with a time limit, and how
//! an answer maps to "sent", "try again (maybe after Retry-After)" or "give up".

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;

/// Largest answer body read from a notification endpoint.
const MAX_ANSWER: usize = 1 << 20;

/// Why a delivery try failed, and whether trying again can help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// What went wrong, for the dead-letter list and the log.
    pub error: String,
    /// Trying again cannot help (bad credentials, a 4xx).
    pub permanent: bool,
    /// The endpoint asked us to wait this long (`Retry-After`).
    pub retry_after: Option<Duration>,
}

impl Failure {
    /// A failure worth retrying.
    pub fn transient(error: impl Into<String>) -> Failure {
        Failure {
            error: error.into(),
            permanent: false,
            retry_after: None,
        }
    }

    /// A failure retrying cannot fix.
    pub fn permanent(error: impl Into<String>) -> Failure {
        Failure {
            error: error.into(),
            permanent: true,
            retry_after: None,
        }
    }
}

/// An endpoint's answer.
#[derive(Debug)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// `Retry-After`, when given in seconds.
    pub retry_after: Option<Duration>,
    /// Body (at most 1 MiB).
    pub body: Bytes,
}

impl Answer {
    /// 2xx is delivered; 408, 425, 429 and 5xx are worth another try
    /// (after `Retry-After` if given); any other status will not improve.
    pub fn check(&self) -> Result<(), Failure> {
        match self.status {
            200..=299 => Ok(()),
            408 | 425 | 429 | 500..=599 => Err(Failure {
                error: format!("HTTP {}", self.status),
                permanent: false,
                retry_after: self.retry_after,
            }),
            s => Err(Failure::permanent(format!(
                "HTTP {s}: {}",
                String::from_utf8_lossy(&self.body[..self.body.len().min(200)])
            ))),
        }
    }
}

/// HTTPS (or loopback HTTP) client for one channel.
#[derive(Clone)]
pub struct Client {
    inner: HyperClient<HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
}

impl Client {
    /// A client trusting the system roots plus `ca_file`.
    pub fn new(
        roots: &rustls::RootCertStore,
        ca_file: Option<&std::path::Path>,
        timeout: Duration,
    ) -> anyhow::Result<Client> {
        let https = crate::tls::https_connector(roots, ca_file, Some(timeout))?;
        let inner = HyperClient::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(https);
        Ok(Client { inner, timeout })
    }

    /// POST `body` as JSON to `url` with `headers`.
    pub async fn post_json(
        &self,
        url: &str,
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) -> Result<Answer, Failure> {
        let mut req = http::Request::post(url)
            .header(
                http::header::CONTENT_TYPE,
                "application/json; charset=utf-8",
            )
            .header(
                http::header::USER_AGENT,
                concat!("latch/", env!("CARGO_PKG_VERSION")),
            );
        for (k, v) in headers {
            req = req.header(*k, v.as_str());
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| Failure::permanent(format!("cannot build the request to {url}: {e}")))?;
        let exchange = async {
            let resp = self
                .inner
                .request(req)
                .await
                .map_err(|e| Failure::transient(format!("{url}: {}", error_chain(&e))))?;
            let status = resp.status().as_u16();
            let retry_after = resp
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(|s| Duration::from_secs(s.min(3600)));
            let body = Limited::new(resp.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| Failure::transient(format!("{url}: reading the answer: {e}")))?
                .to_bytes();
            Ok(Answer {
                status,
                retry_after,
                body,
            })
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| {
                Failure::transient(format!("{url}: no answer within {:?}", self.timeout))
            })?
    }
}

/// An error and its causes on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, retry_after: Option<u64>) -> Answer {
        Answer {
            status,
            retry_after: retry_after.map(Duration::from_secs),
            body: Bytes::from_static(b"nope"),
        }
    }

    #[test]
    fn statuses_map_to_retry_or_give_up() {
        assert!(answer(202, None).check().is_ok());
        let busy = answer(429, Some(7)).check().unwrap_err();
        assert!(!busy.permanent);
        assert_eq!(busy.retry_after, Some(Duration::from_secs(7)));
        assert!(!answer(503, None).check().unwrap_err().permanent);
        let bad = answer(400, None).check().unwrap_err();
        assert!(bad.permanent && bad.error.contains("nope"));
    }
}
