//! TLS for listeners: rustls with the ring provider, ALPN `h2` + `http/1.1`, and certificates
//! chosen by SNI (exact names first, then `*.suffix` wildcards, then the listener's default).
//! A listener keeps its `ServerConfig` behind an `ArcSwap`, so a reload can rotate certificates
//! for new handshakes without touching established connections.
//!
//! Sessions resume with stateless tickets ([`ticketer`]), one key set per listener, kept across
//! reloads: rustls's default is a cache of 256 sessions per `ServerConfig`, which a gateway with
//! more than about a hundred clients (two tickets each) outgrows, and which a reload emptied.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ProducesTickets, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use weir_config::FileRef;

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

/// A PEM certificate chain (`what` names it in errors, which say where the config names it);
/// at least one certificate.
pub(crate) fn load_chain(file: &FileRef, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&file.path)
        .map_err(|e| file.error(format_args!("cannot read {what} {}: {e}", file.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| file.error(format_args!("cannot parse {what} {}: {e}", file.display())))?;
    if certs.is_empty() {
        return Err(file.error(format_args!("no certificate found in {}", file.display())));
    }
    Ok(certs)
}

/// A PEM private key (`what` names it in errors).
pub(crate) fn load_key(file: &FileRef, what: &str) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(&file.path)
        .map_err(|e| file.error(format_args!("cannot read {what} {}: {e}", file.display())))
}

fn load_key_pair(cert: &FileRef, key: &FileRef, provider: &CryptoProvider) -> Result<Arc<CertifiedKey>, String> {
    let certs = load_chain(cert, "certificate")?;
    let key_der = load_key(key, "private key")?;
    let signing = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| key.error(format_args!("unusable private key {}: {e}", key.display())))?;
    let ck = CertifiedKey::new(certs, signing);
    ck.keys_match().map_err(|e| {
        key.error(format_args!(
            "certificate {} does not match key {}: {e}",
            cert.display(),
            key.display()
        ))
    })?;
    Ok(Arc::new(ck))
}

/// Builds the server config of the listener `name` from its `[listener.tls]` table; every
/// certificate and key that does not load is an error (`weir check` lists them all), said where
/// the config names the file, or after `listener `name`` when no file is to blame.
pub fn listener_config(name: &str, tls: &weir_config::Tls) -> Result<Arc<ServerConfig>, Vec<String>> {
    server_config(tls, name).map_err(|errors| {
        let context = format!("listener `{name}`");
        errors
            .into_iter()
            .map(|e| weir_config::in_context(&context, e))
            .collect()
    })
}

/// What [`crate::cert_expiry`] knows a built config by: its address.
pub fn config_key(config: &Arc<ServerConfig>) -> usize {
    Arc::as_ptr(config) as usize
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The session ticket keys of the listener `name`: rustls's rotating ChaCha20-Poly1305 keys
/// (a new one every 6 hours, the previous one still accepted), the same for every config a
/// reload builds for that listener, so that clients resume across certificate rotations and
/// reloads. One per listener: a ticket of one listener does not resume at another.
fn ticketer(name: &str) -> Result<Arc<dyn ProducesTickets>, String> {
    static TICKETERS: LazyLock<Mutex<HashMap<String, Arc<dyn ProducesTickets>>>> = LazyLock::new(Default::default);
    let mut ticketers = TICKETERS
        .lock()
        .map_err(|_| "TLS setup: session ticket keys unavailable".to_string())?;
    if let Some(t) = ticketers.get(name) {
        return Ok(t.clone());
    }
    let t = rustls::crypto::ring::Ticketer::new().map_err(|e| format!("TLS setup: session ticket keys: {e}"))?;
    ticketers.insert(name.to_string(), t.clone());
    Ok(t)
}

fn server_config(tls: &weir_config::Tls, name: &str) -> Result<Arc<ServerConfig>, Vec<String>> {
    let provider = provider();
    let mut errors = Vec::new();
    let default = load_key_pair(&tls.cert, &tls.key, &provider).map_err(|e| errors.push(e));
    let mut exact = HashMap::new();
    let mut wildcard = HashMap::new();
    for sni in &tls.sni {
        let Ok(key) = load_key_pair(&sni.cert, &sni.key, &provider).map_err(|e| errors.push(e)) else {
            continue;
        };
        match sni.server_name.strip_prefix("*.") {
            Some(suffix) => wildcard.insert(suffix.to_string(), key),
            None => exact.insert(sni.server_name.clone(), key),
        };
    }
    let Ok(default) = default else {
        return Err(errors);
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut served: Vec<(&str, Arc<CertifiedKey>)> = vec![("default", default.clone())];
    for sni in &tls.sni {
        let key = match sni.server_name.strip_prefix("*.") {
            Some(suffix) => wildcard.get(suffix),
            None => exact.get(&sni.server_name),
        };
        if let Some(key) = key {
            served.push((&sni.server_name, key.clone()));
        }
    }

    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| vec![format!("TLS setup: {e}")])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver {
            default,
            exact,
            wildcard,
        }));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.ticketer = ticketer(name).map_err(|e| vec![e])?;
    let config = Arc::new(config);
    let chains: Vec<(&str, &[CertificateDer<'static>])> = served.iter().map(|(n, k)| (*n, &k.cert[..])).collect();
    crate::cert_expiry::built(name, config_key(&config), &chains, unix_now());
    Ok(config)
}
