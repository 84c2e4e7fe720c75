//! Routes and the upstream HTTP(S) client.

use std::time::Duration;

use http::uri::{PathAndQuery, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::RootCertStore;

use crate::config::RouteConfig;
use crate::server::Body;

/// The pooled client type used for upstreams.
pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, Body>;

/// A configured route with its client.
pub struct Route {
    /// Validated config.
    pub config: RouteConfig,
    /// Upstream base URL as text (for policy input and logs).
    pub upstream_text: String,
    /// Path of the upstream base URL without a trailing slash.
    base_path: String,
    /// Client for this route (its own CA bundle, connect timeout).
    pub client: UpstreamClient,
    /// `input.route`, built once.
    pub input: regorus::Value,
}

impl Route {
    /// Build the route and its client.
    pub fn new(config: RouteConfig, system_roots: &RootCertStore) -> anyhow::Result<Route> {
        let tls = crate::tls::client_config(system_roots, config.ca_file.as_deref())?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.timeout.min(Duration::from_secs(10))));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .build(https);
        let upstream_text = config
            .upstream
            .to_string()
            .trim_end_matches('/')
            .to_string();
        let base_path = config.upstream.path().trim_end_matches('/').to_string();
        let input = crate::policy::input::route_facts(&config.name, &upstream_text, &config.tool);
        Ok(Route {
            input,
            config,
            upstream_text,
            base_path,
            client,
        })
    }

    /// The upstream URI for a request whose raw path after the prefix is
    /// `suffix` (empty or starting with `/`).
    pub fn upstream_uri(&self, suffix: &str, query: Option<&str>) -> Result<Uri, http::Error> {
        let mut pq = String::with_capacity(self.base_path.len() + suffix.len() + 16);
        pq.push_str(&self.base_path);
        pq.push_str(suffix);
        if pq.is_empty() {
            pq.push('/');
        }
        if let Some(q) = query {
            pq.push('?');
            pq.push_str(q);
        }
        let mut parts = self.config.upstream.clone().into_parts();
        parts.path_and_query = Some(PathAndQuery::try_from(pq)?);
        Ok(Uri::from_parts(parts)?)
    }
}

/// Find the route with the longest prefix that `path` falls under.
pub fn find<'a>(routes: &'a [Route], path: &str) -> Option<&'a Route> {
    routes
        .iter()
        .filter(|r| super::path::under(path, &r.config.prefix))
        .max_by_key(|r| r.config.prefix.len())
}
