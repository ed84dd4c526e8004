//! The trust decision of SPEC §4, in one place.
//!
//! A request is trusted if it came in on the control socket, or if it came in on a network
//! listener with a `Host` header equal to this member's address and a TLS client certificate
//! that is in the truststore and within its validity. Nothing else makes a request trusted.

use std::sync::Arc;

use crate::certs;
use crate::trust::Truststore;

/// Where a request came in.
#[derive(Clone, Debug)]
pub(crate) enum Origin {
    /// The unix control socket: always trusted.
    ControlSocket,
    /// A network listener, with the client certificate presented during the TLS handshake.
    Network {
        client_certificate: Option<Arc<PeerCertificate>>,
        /// The address of the dedicated extension listener the request came in on; `None` on
        /// the core listener (whose address is the member's).
        listener_address: Option<String>,
    },
}

/// A client certificate presented in a TLS handshake, with what the trust check of every
/// request on the connection needs, worked out once (parsing and hashing the certificate for
/// every Raft message cost about 1.5 % of the CPU).
#[derive(Debug)]
pub(crate) struct PeerCertificate {
    /// The certificate's fingerprint, as the truststore indexes it.
    pub fingerprint: String,
    /// Its validity period, or `None` if it does not parse.
    validity: Option<(i64, i64)>,
}

impl PeerCertificate {
    /// Reads a DER certificate.
    pub fn new(der: &[u8]) -> PeerCertificate {
        PeerCertificate {
            fingerprint: certs::fingerprint(der),
            validity: certs::validity(der),
        }
    }

    fn is_valid_now(&self) -> bool {
        self.validity.is_some_and(certs::is_now_within)
    }
}

impl Origin {
    /// Whether the request came in on the control socket.
    pub fn is_control_socket(&self) -> bool {
        matches!(self, Origin::ControlSocket)
    }
}

/// Decides whether a request is trusted. `member_address` is this member's address (`None`
/// before init), `host` the request's `Host` header, which must name the listener the request
/// came in on: the member address, or a dedicated listener's own address.
pub(crate) fn is_trusted(
    origin: &Origin,
    host: Option<&str>,
    member_address: Option<&str>,
    truststore: &Truststore,
) -> bool {
    let (client_certificate, listener_address) = match origin {
        Origin::ControlSocket => return true,
        Origin::Network {
            client_certificate,
            listener_address,
        } => (
            client_certificate,
            listener_address.as_deref().or(member_address),
        ),
    };
    let (Some(certificate), Some(host), Some(address)) =
        (client_certificate, host, listener_address)
    else {
        return false;
    };
    host == address
        && certificate.is_valid_now()
        && truststore
            .by_fingerprint(&certificate.fingerprint)
            .is_some()
}
