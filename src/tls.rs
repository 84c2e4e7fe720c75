//! rustls configuration: server TLS (with optional client certificates on the
//! proxy listener) and the client side used to reach https upstreams.

use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, Context};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::config::TlsConfig;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading certificates from {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing certificates in {}", path.display()))?;
    if certs.is_empty() {
        return Err(anyhow!("{}: no PEM certificates found", path.display()));
    }
    Ok(certs)
}

fn roots_from(path: &Path, roots: &mut RootCertStore) -> anyhow::Result<()> {
    for cert in certs(path)? {
        roots
            .add(cert)
            .with_context(|| format!("{}: not a usable CA certificate", path.display()))?;
    }
    Ok(())
}

/// Server config for a listener; ALPN http/1.1.
pub fn server_config(tls: &TlsConfig) -> anyhow::Result<Arc<ServerConfig>> {
    let chain = certs(&tls.cert)?;
    let key = PrivateKeyDer::from_pem_file(&tls.key)
        .with_context(|| format!("reading private key from {}", tls.key.display()))?;
    let builder =
        ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let builder = match &tls.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            roots_from(ca, &mut roots)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
            let verifier = if tls.client_auth_required {
                verifier.build()?
            } else {
                verifier.allow_unauthenticated().build()?
            };
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).with_context(|| {
        format!(
            "{} does not match {}",
            tls.key.display(),
            tls.cert.display()
        )
    })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Client config trusting the system roots plus `extra_ca`.
pub fn client_config(
    system_roots: &RootCertStore,
    extra_ca: Option<&Path>,
) -> anyhow::Result<ClientConfig> {
    let mut roots = system_roots.clone();
    if let Some(ca) = extra_ca {
        roots_from(ca, &mut roots)?;
    }
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The connector every outgoing HTTP client uses (upstreams, notification
/// channels, trace export, the CLI): `http://` or `https://` trusting the
/// system roots plus `extra_ca`, HTTP/1.1, no Nagle delay.
pub fn https_connector(
    system_roots: &RootCertStore,
    extra_ca: Option<&Path>,
    connect_timeout: Option<std::time::Duration>,
) -> anyhow::Result<hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>>
{
    let tls = client_config(system_roots, extra_ca)?;
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(connect_timeout);
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http))
}

/// The operating system's trusted roots (empty, with a warning, if none load).
pub fn system_roots() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    let loaded = rustls_native_certs::load_native_certs();
    for e in &loaded.errors {
        tracing::warn!(error = %e, "loading system CA certificates");
    }
    let (added, _ignored) = roots.add_parsable_certificates(loaded.certs);
    tracing::debug!(added, "system CA certificates loaded");
    roots
}

/// DNS and URI subject-alternative names of a verified client certificate.
pub fn cert_names(der: &CertificateDer<'_>) -> Vec<String> {
    match webpki::EndEntityCert::try_from(der) {
        Ok(cert) => cert
            .valid_dns_names()
            .chain(cert.valid_uri_names())
            .map(str::to_string)
            .collect(),
        Err(_) => Vec::new(),
    }
}
