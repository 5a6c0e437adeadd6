//! TLS for listeners: rustls with the ring provider, ALPN `h2` + `http/1.1`, and certificates
//! chosen by SNI (exact names first, then `*.suffix` wildcards, then the listener's default).
//! A listener keeps its `ServerConfig` behind an `ArcSwap`, so a reload can rotate certificates
//! for new handshakes without touching established connections.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

#[derive(Debug)]
struct SniResolver {
    default: Arc<CertifiedKey>,
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Keyed by the suffix after `*.`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = hello.server_name() else {
            return Some(self.default.clone());
        };
        let name = name.to_ascii_lowercase();
        if let Some(k) = self.exact.get(&name) {
            return Some(k.clone());
        }
        if let Some((_, suffix)) = name.split_once('.')
            && let Some(k) = self.wildcard.get(suffix)
        {
            return Some(k.clone());
        }
        Some(self.default.clone())
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A PEM certificate chain (`what` names it in errors); at least one certificate.
pub(crate) fn load_chain(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {what} {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("cannot parse {what} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("no certificate found in {}", path.display()));
    }
    Ok(certs)
}

/// A PEM private key (`what` names it in errors).
pub(crate) fn load_key(path: &Path, what: &str) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| format!("cannot read {what} {}: {e}", path.display()))
}

fn load_key_pair(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<Arc<CertifiedKey>, String> {
    let certs = load_chain(cert, "certificate")?;
    let key_der = load_key(key, "private key")?;
    let signing = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| format!("unusable private key {}: {e}", key.display()))?;
    let ck = CertifiedKey::new(certs, signing);
    ck.keys_match().map_err(|e| {
        format!(
            "certificate {} does not match key {}: {e}",
            cert.display(),
            key.display()
        )
    })?;
    Ok(Arc::new(ck))
}

/// Builds the server config of a listener from its `[listener.tls]` table.
pub fn server_config(tls: &weir_config::Tls) -> Result<Arc<ServerConfig>, String> {
    let provider = provider();
    let default = load_key_pair(&tls.cert, &tls.key, &provider)?;
    let mut exact = HashMap::new();
    let mut wildcard = HashMap::new();
    for sni in &tls.sni {
        let key = load_key_pair(&sni.cert, &sni.key, &provider)?;
        match sni.server_name.strip_prefix("*.") {
            Some(suffix) => wildcard.insert(suffix.to_string(), key),
            None => exact.insert(sni.server_name.clone(), key),
        };
    }
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver {
            default,
            exact,
            wildcard,
        }));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
