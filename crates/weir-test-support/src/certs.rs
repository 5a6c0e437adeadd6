//! Test certificates made with rcgen: one CA, and leaf certificates for the names a test needs,
//! written as PEM files into a temporary folder.

use std::path::PathBuf;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::CertificateDer;

pub struct TestCerts {
    pub dir: tempfile::TempDir,
    pub ca_der: CertificateDer<'static>,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl TestCerts {
    pub fn new() -> TestCerts {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "weir test CA");
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let ca_der = CertificateDer::from(issuer.der().to_vec());
        TestCerts {
            dir: tempfile::tempdir().unwrap(),
            ca_der,
            issuer,
        }
    }

    /// Writes `<file>.pem` and `<file>.key` for a leaf valid for `names`; returns both paths.
    pub fn leaf(&self, file: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        self.leaf_until(file, names, None)
    }

    /// [`TestCerts::leaf`] valid until `not_after` (year, month, day) when given.
    pub fn leaf_until(&self, file: &str, names: &[&str], not_after: Option<(i32, u8, u8)>) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        if let Some((y, m, d)) = not_after {
            params.not_after = rcgen::date_time_ymd(y, m, d);
        }
        params
            .distinguished_name
            .push(DnType::CommonName, names.first().copied().unwrap_or("weir"));
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let cert_path = self.dir.path().join(format!("{file}.pem"));
        let key_path = self.dir.path().join(format!("{file}.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    }
}

impl TestCerts {
    /// Writes the CA certificate as `ca.pem` (what `[pool.tls] ca` names); returns its path.
    pub fn ca_file(&self) -> PathBuf {
        let path = self.dir.path().join("ca.pem");
        std::fs::write(&path, self.issuer.pem()).unwrap();
        path
    }

    /// A TLS server config for an upstream valid for `names`, signed by this CA; with
    /// `client_auth`, it requires a client certificate signed by this CA (mutual TLS).
    pub fn upstream_server(&self, names: &[&str], client_auth: bool) -> std::sync::Arc<rustls::ServerConfig> {
        use rustls::pki_types::PrivateKeyDer;
        use rustls::pki_types::pem::PemObject;
        let file = format!("upstream-{}", names.first().copied().unwrap_or("weir"));
        let (cert, key) = self.leaf(&file, names);
        let chain = vec![CertificateDer::from_pem_file(&cert).unwrap()];
        let key = PrivateKeyDer::from_pem_file(&key).unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = if client_auth {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(self.ca_der.clone()).unwrap();
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                .build()
                .unwrap();
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let mut config = builder.with_single_cert(chain, key).unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        std::sync::Arc::new(config)
    }
}

impl Default for TestCerts {
    fn default() -> Self {
        Self::new()
    }
}
