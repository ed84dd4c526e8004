//! TLS for the core listener and for member clients: mutual authentication by pinning.
//!
//! Servers request a client certificate but do not require one; the trust decision is made per
//! request (`access.rs`). Clients accept a server only if its leaf certificate is byte-identical
//! to the pinned one and within its validity. The ring provider is passed explicitly and is
//! never installed as the process default.

use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::certs::{self, CertKeyPair};
use crate::sync;
use crate::{Error, Result};

/// TLS 1.3 preferred, 1.2 the minimum (SPEC §4).
static VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// The crypto provider of every TLS configuration of the library.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

fn tls_error(what: &str, err: rustls::Error) -> Error {
    Error::internal(format!("Failed to build TLS {what} configuration: {err}"))
}

fn verify_tls12(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls12_signature(
        message,
        cert,
        dss,
        &provider().signature_verification_algorithms,
    )
}

fn verify_tls13(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls13_signature(
        message,
        cert,
        dss,
        &provider().signature_verification_algorithms,
    )
}

fn schemes() -> Vec<SignatureScheme> {
    provider()
        .signature_verification_algorithms
        .supported_schemes()
}

/// Accepts any client certificate whose handshake signature verifies; whether it is trusted is
/// decided per request against the truststore.
#[derive(Debug)]
struct OptionalClientCertificate;

impl ClientCertVerifier for OptionalClientCertificate {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        schemes()
    }
}

/// Accepts exactly one server certificate, byte for byte, while it is valid.
#[derive(Debug)]
struct PinnedServerCertificate {
    /// The only certificate accepted; `None` accepts any (only to fetch a certificate whose
    /// fingerprint the caller then checks, SPEC §7.3 J2).
    pinned: Option<CertificateDer<'static>>,
}

impl ServerCertVerifier for PinnedServerCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let Some(pinned) = &self.pinned else {
            return Ok(ServerCertVerified::assertion());
        };
        if end_entity.as_ref() != pinned.as_ref() {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ));
        }
        if !certs::is_valid_now(end_entity) {
            return Err(rustls::Error::InvalidCertificate(CertificateError::Expired));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        schemes()
    }
}

/// The certificate a listener presents, replaceable while it runs (certificate rotation,
/// SPEC §13.7): new handshakes get the new certificate, open connections keep theirs.
#[derive(Debug)]
pub(crate) struct CertificateSlot(std::sync::RwLock<Arc<rustls::sign::CertifiedKey>>);

impl CertificateSlot {
    /// A slot presenting `identity`.
    pub fn new(identity: &CertKeyPair) -> Result<Arc<CertificateSlot>> {
        Ok(Arc::new(CertificateSlot(std::sync::RwLock::new(
            certs::certified_key(identity)?,
        ))))
    }

    /// Presents `identity` from the next handshake on.
    pub fn replace(&self, identity: &CertKeyPair) -> Result<()> {
        let key = certs::certified_key(identity)?;
        *sync::write(&self.0) = key;
        Ok(())
    }
}

impl rustls::server::ResolvesServerCert for CertificateSlot {
    fn resolve(
        &self,
        _client_hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(sync::read(&self.0).clone())
    }
}

/// The server configuration of a listener presenting the certificate in `slot`.
pub(crate) fn server_config(slot: Arc<CertificateSlot>) -> Result<Arc<rustls::ServerConfig>> {
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|err| tls_error("server", err))?
        .with_client_cert_verifier(Arc::new(OptionalClientCertificate))
        .with_cert_resolver(slot);
    Ok(Arc::new(config))
}

/// The client configuration pinning `server_cert_pem`, presenting `identity` if given.
pub(crate) fn client_config(
    server_cert_pem: &str,
    identity: Option<&CertKeyPair>,
) -> Result<Arc<rustls::ClientConfig>> {
    let pinned = Some(certs::parse_cert_pem(server_cert_pem)?);
    build_client_config(pinned, identity)
}

/// Connects to `address` accepting any server certificate and returns the certificate the
/// server presented, PEM. The caller must check it (by fingerprint) before trusting it.
pub(crate) async fn fetch_server_certificate(address: &str) -> Result<String> {
    let socket_address = crate::validate::member_address(address)
        .map_err(|reason| Error::invalid(format!("Invalid address {address:?}: {reason}")))?;
    let config = build_client_config(None, None)?;
    let failed = |err: &dyn std::fmt::Display| {
        Error::unavailable(format!("Failed to connect to {address}: {err}"))
    };
    let connect = async {
        let tcp = tokio::net::TcpStream::connect(socket_address)
            .await
            .map_err(|err| failed(&err))?;
        let server_name = ServerName::IpAddress(socket_address.ip().into());
        tokio_rustls::TlsConnector::from(config)
            .connect(server_name, tcp)
            .await
            .map_err(|err| failed(&err))
    };
    let stream = tokio::time::timeout(FETCH_TIMEOUT, connect)
        .await
        .map_err(|_| failed(&"timed out"))??;
    let der = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .ok_or_else(|| failed(&"the server presented no certificate"))?;
    Ok(certs::der_to_pem(der))
}

/// How long fetching a peer's certificate may take.
const FETCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn build_client_config(
    pinned: Option<CertificateDer<'static>>,
    identity: Option<&CertKeyPair>,
) -> Result<Arc<rustls::ClientConfig>> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|err| tls_error("client", err))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedServerCertificate { pinned }));
    let config = match identity {
        Some(identity) => builder
            .with_client_auth_cert(
                vec![certs::parse_cert_pem(&identity.cert_pem)?],
                certs::parse_key_pem(&identity.key_pem)?,
            )
            .map_err(|err| tls_error("client", err))?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}
