//! TLS on every way in: the TCP protocol and the HTTP gateway (HTTPS, and so WSS and SSE
//! over HTTPS) share one server configuration, made with rustls and its `ring` provider
//! from `--tls-cert` and `--tls-key` (PEM). `--tls-client-ca` makes every client present a
//! certificate signed by that CA; the certificate's common name is the client's name.
//!
//! A TLS port answers a client that speaks plaintext in its own language before closing —
//! an error frame on the TCP port, `400` on the HTTP port — rather than leaving it to wait
//! for a handshake that never comes. The handshake runs in the connection's own task, under
//! `--hello-timeout-ms`, so a client that connects and says nothing holds up nobody.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// Why TLS could not be set up from the files given.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("--tls-cert and --tls-key go together: give both or neither")]
    Incomplete,
    #[error("--tls-client-ca needs --tls-cert and --tls-key")]
    ClientCaWithoutCert,
    #[error("{flag} {}: {message}", path.display())]
    File {
        flag: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("TLS settings: {0}")]
    Config(String),
}

/// The first byte of every TLS connection: a handshake record.
const HANDSHAKE_RECORD: u8 = 0x16;

/// The broker's TLS side, shared by its listeners.
#[derive(Clone)]
pub struct Tls {
    acceptor: TlsAcceptor,
    /// Whether clients must present a certificate.
    pub client_certificates: bool,
}

/// What the first bytes of a connection turned out to be.
pub enum Accepted {
    /// A TLS session, and the common name of the client's certificate if it gave one.
    Tls(Box<TlsStream<TcpStream>>, Option<String>),
    /// Plaintext at a TLS port: the stream, to be told so.
    Plaintext(TcpStream),
}

impl Tls {
    /// TLS from the PEM files `cert` (the chain, leaf first) and `key`, asking clients for
    /// certificates signed by `client_ca` if given. `None` when no certificate is set.
    pub fn from_files(
        cert: Option<&Path>,
        key: Option<&Path>,
        client_ca: Option<&Path>,
    ) -> Result<Option<Tls>, TlsError> {
        let (cert, key) = match (cert, key, client_ca) {
            (None, None, None) => return Ok(None),
            (None, None, Some(_)) => return Err(TlsError::ClientCaWithoutCert),
            (Some(cert), Some(key), _) => (cert, key),
            _ => return Err(TlsError::Incomplete),
        };
        let chain = certificates(cert, "--tls-cert")?;
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::File {
            flag: "--tls-key",
            path: key.to_path_buf(),
            message: format!("no private key in PEM form: {e}"),
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let mut roots = RootCertStore::empty();
                for ca in certificates(path, "--tls-client-ca")? {
                    roots.add(ca).map_err(|e| TlsError::File {
                        flag: "--tls-client-ca",
                        path: path.to_path_buf(),
                        message: e.to_string(),
                    })?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .map_err(|e| TlsError::Config(e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder
            .with_single_cert(chain, key)
            .map_err(|e| TlsError::Config(format!("the certificate and key: {e}")))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Some(Tls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            client_certificates: client_ca.is_some(),
        }))
    }

    /// Waits (at most `within`) for the client's first byte; a TLS client then gets the
    /// handshake, a plaintext one is handed back to be told.
    pub async fn accept(&self, stream: TcpStream, within: Duration) -> io::Result<Accepted> {
        let timed_out = || io::Error::new(io::ErrorKind::TimedOut, "no TLS handshake in time");
        let mut first = [0u8; 1];
        let peeked = tokio::time::timeout(within, stream.peek(&mut first))
            .await
            .map_err(|_| timed_out())??;
        if peeked == 0 || first[0] != HANDSHAKE_RECORD {
            return Ok(Accepted::Plaintext(stream));
        }
        let tls = tokio::time::timeout(within, self.acceptor.accept(stream))
            .await
            .map_err(|_| timed_out())??;
        let name = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(common_name);
        Ok(Accepted::Tls(Box::new(tls), name))
    }
}

/// Every certificate in the PEM file at `path`.
fn certificates(path: &Path, flag: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let error = |message: String| TlsError::File {
        flag,
        path: path.to_path_buf(),
        message,
    };
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|e| error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(e.to_string()))?;
    if chain.is_empty() {
        return Err(error("no certificate in PEM form".into()));
    }
    Ok(chain)
}

/// The common name (CN) of a certificate's subject.
fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let name = parsed
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    Some(name)
}
