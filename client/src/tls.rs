//! TLS towards the broker ([`ConnectOptions::tls`](crate::ConnectOptions)), with rustls and
//! its `ring` provider.
//!
//! ```no_run
//! # async fn run() -> herald_client::Result<()> {
//! use herald_client::{Client, ConnectOptions, TlsOptions};
//! let options = ConnectOptions {
//!     tls: Some(TlsOptions::ca_file("ca.pem")?.server_name("broker.example.com")),
//!     ..ConnectOptions::default()
//! };
//! let client = Client::connect_with("broker.example.com:7420", options).await?;
//! # Ok(()) }
//! ```

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::error::{Error, Result};

/// Whom to trust, what to present, and the name the broker's certificate must carry.
#[derive(Clone)]
pub struct TlsOptions {
    roots: Arc<RootCertStore>,
    identity: Option<(Vec<CertificateDer<'static>>, Arc<PrivateKeyDer<'static>>)>,
    server_name: Option<String>,
}

impl fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsOptions")
            .field("roots", &self.roots.len())
            .field("client_certificate", &self.identity.is_some())
            .field("server_name", &self.server_name)
            .finish()
    }
}

impl TlsOptions {
    /// Trusts the CA certificates in the PEM file at `path` (and nothing else).
    pub fn ca_file(path: impl AsRef<Path>) -> Result<TlsOptions> {
        let path = path.as_ref();
        let mut roots = RootCertStore::empty();
        for cert in pem_certificates(path)? {
            roots
                .add(cert)
                .map_err(|e| tls_setup(format!("{}: {e}", path.display())))?;
        }
        Ok(TlsOptions::trusting(roots))
    }

    /// Trusts the operating system's certificate store.
    pub fn system_roots() -> Result<TlsOptions> {
        let found = rustls_native_certs::load_native_certs();
        let mut roots = RootCertStore::empty();
        let (added, _) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            return Err(tls_setup(format!(
                "no usable certificate in the system's store ({} errors)",
                found.errors.len()
            )));
        }
        Ok(TlsOptions::trusting(roots))
    }

    fn trusting(roots: RootCertStore) -> TlsOptions {
        TlsOptions {
            roots: Arc::new(roots),
            identity: None,
            server_name: None,
        }
    }

    /// Presents the certificate chain and key in these PEM files (for a broker started
    /// with `--tls-client-ca`).
    pub fn client_cert_files(
        mut self,
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<TlsOptions> {
        let chain = pem_certificates(cert.as_ref())?;
        let key = PrivateKeyDer::from_pem_file(key.as_ref())
            .map_err(|e| tls_setup(format!("{}: {e}", key.as_ref().display())))?;
        self.identity = Some((chain, Arc::new(key)));
        Ok(self)
    }

    /// The name the broker's certificate must carry; without it, the IP address connected
    /// to.
    pub fn server_name(mut self, name: impl Into<String>) -> TlsOptions {
        self.server_name = Some(name.into());
        self
    }

    fn config(&self) -> Result<Arc<ClientConfig>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_setup(e.to_string()))?
            .with_root_certificates(Arc::clone(&self.roots));
        let config = match &self.identity {
            None => builder.with_no_client_auth(),
            Some((chain, key)) => builder
                .with_client_auth_cert(chain.clone(), key.clone_key())
                .map_err(|e| tls_setup(format!("the client certificate: {e}")))?,
        };
        Ok(Arc::new(config))
    }

    /// The TLS handshake over `stream` to the broker at `addr`.
    pub(crate) async fn connect(
        &self,
        stream: TcpStream,
        addr: SocketAddr,
    ) -> Result<TlsStream<TcpStream>> {
        let name = match &self.server_name {
            Some(name) => ServerName::try_from(name.clone())
                .map_err(|e| tls_setup(format!("server name {name:?}: {e}")))?,
            None => ServerName::IpAddress(addr.ip().into()),
        };
        TlsConnector::from(self.config()?)
            .connect(name, stream)
            .await
            .map_err(|e| {
                Error::Io(std::io::Error::new(
                    e.kind(),
                    format!(
                        "TLS handshake with {addr} failed: {e} (does the broker speak TLS there, \
                         and does its certificate carry the name connected to?)"
                    ),
                ))
            })
    }
}

fn pem_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| tls_setup(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(tls_setup(format!(
            "{}: no certificate in PEM form",
            path.display()
        )));
    }
    Ok(certs)
}

fn tls_setup(message: String) -> Error {
    Error::Io(std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!("TLS: {message}"),
    ))
}
