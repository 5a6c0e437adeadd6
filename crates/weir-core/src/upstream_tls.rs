//! TLS to a pool's upstreams (`[pool.tls]`): one rustls `ClientConfig` per pool and
//! generation, built when the generation is (files are read off the request path), used for
//! each new upstream connection and for the pool's health checks.
//!
//! A new generation keeps the previous one's client config when the pool's settings and the
//! files' contents are unchanged (a weight change, a DNS change, a reload of another part):
//! the system's roots are not read again, and the config's session cache keeps resuming
//! sessions with the upstreams instead of starting every new connection with a full handshake.
//!
//! The name sent in SNI and verified is `server_name` when set, else the endpoint's hostname,
//! else its IP address (rustls checks IP SANs). ALPN offers the one protocol the pool speaks
//! (`http/1.1`, or `h2` for a `protocol = "h2"` pool). Roots are the `ca` file's, else the
//! system's.

use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;

use rustls::ClientConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use weir_config::{EndpointAddress, PoolTls, UpstreamProtocol};

/// A pool's TLS client side.
pub struct UpstreamTls {
    connector: TlsConnector,
    server_name: Option<ServerName<'static>>,
    /// Tells a pooled connection made with these settings from one made with others (or
    /// without TLS, 0), so that a reload changing them does not reuse it.
    pub id: u64,
    settings: PoolTls,
    protocol: UpstreamProtocol,
    /// The contents of the `ca`, `cert` and `key` files, hashed.
    files: u64,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls").field("id", &self.id).finish()
    }
}

impl UpstreamTls {
    /// `prev` (the pool's in the previous generation) if it was built from the same settings,
    /// protocol and files; else a new one, as [`UpstreamTls::build`].
    pub fn build_or_keep(
        tls: &PoolTls,
        protocol: UpstreamProtocol,
        prev: Option<&Arc<UpstreamTls>>,
    ) -> Result<Arc<UpstreamTls>, String> {
        // Hashed before the files are read for a new config: a file replaced in between makes
        // the next generation read it again rather than keep a config of older contents.
        let files = files_hash(tls);
        if let (Some(prev), Some(files)) = (prev, files)
            && prev.settings == *tls
            && prev.protocol == protocol
            && prev.files == files
        {
            return Ok(prev.clone());
        }
        Self::build(tls, protocol, files.unwrap_or(0))
    }

    /// Reads the CA, client certificate and key files (whose contents hash to `files`) and
    /// builds the client config.
    fn build(tls: &PoolTls, protocol: UpstreamProtocol, files: u64) -> Result<Arc<UpstreamTls>, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?;
        let builder = if tls.verify {
            builder.with_root_certificates(roots(tls)?)
        } else {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        };
        let mut config = match &tls.client_cert {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = crate::tls::load_chain(cert, "client certificate")?;
                let key_der = crate::tls::load_key(key, "client key")?;
                builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                    key.error(format_args!(
                        "client certificate {} and key {}: {e}",
                        cert.display(),
                        key.display()
                    ))
                })?
            }
        };
        config.alpn_protocols = vec![match protocol {
            UpstreamProtocol::Http1 => b"http/1.1".to_vec(),
            UpstreamProtocol::H2 => b"h2".to_vec(),
        }];
        let server_name = match &tls.server_name {
            Some(n) => Some(
                ServerName::try_from(n.as_str())
                    .map_err(|e| format!("server_name `{n}`: {e}"))?
                    .to_owned(),
            ),
            None => None,
        };
        let mut h = std::collections::hash_map::DefaultHasher::new();
        tls.hash(&mut h);
        protocol.hash(&mut h);
        files.hash(&mut h);
        Ok(Arc::new(UpstreamTls {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
            id: h.finish() | 1,
            settings: tls.clone(),
            protocol,
            files,
        }))
    }

    /// The TLS handshake on a connected socket to `endpoint` at `addr`.
    pub async fn connect(
        &self,
        tcp: TcpStream,
        endpoint: &EndpointAddress,
        addr: SocketAddr,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let name = match (&self.server_name, endpoint) {
            (Some(n), _) => n.clone(),
            (None, EndpointAddress::Host { host, .. }) => ServerName::try_from(host.as_str())
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?
                .to_owned(),
            (None, EndpointAddress::Socket(_)) => ServerName::IpAddress(addr.ip().into()),
        };
        self.connector.connect(name, tcp).await
    }
}

/// A hash of the contents of the files `tls` names; `None` if one cannot be read.
fn files_hash(tls: &PoolTls) -> Option<u64> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let client = tls.client_cert.as_ref();
    for path in [tls.ca.as_ref(), client.map(|c| &c.0), client.map(|c| &c.1)]
        .into_iter()
        .flatten()
    {
        std::fs::read(&path.path).ok()?.hash(&mut h);
    }
    Some(h.finish())
}

fn roots(tls: &PoolTls) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    match &tls.ca {
        Some(ca) => {
            for cert in CertificateDer::pem_file_iter(&ca.path)
                .map_err(|e| ca.error(format_args!("cannot read CA file {}: {e}", ca.display())))?
            {
                let cert = cert.map_err(|e| ca.error(format_args!("cannot parse CA file {}: {e}", ca.display())))?;
                roots
                    .add(cert)
                    .map_err(|e| ca.error(format_args!("CA file {}: {e}", ca.display())))?;
            }
            if roots.is_empty() {
                return Err(ca.error(format_args!("no certificate found in CA file {}", ca.display())));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(format!(
                    "no system CA certificates found ({} errors); set `ca`",
                    found.errors.len()
                ));
            }
        }
    }
    Ok(roots)
}

/// `verify = false`: any certificate is accepted; the handshake's signatures are still checked.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
