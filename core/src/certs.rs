//! Certificates and keys (SPEC §3): generation, PEM parsing, fingerprints and the key files.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::sync::Arc;

use p384::pkcs8::{DecodePrivateKey, LineEnding};
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair, SanType,
    SerialNumber,
};
use ring::rand::SecureRandom;
use rustls::pki_types::pem::{PemObject, SectionKind};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use crate::error::{Error, Result, ResultExt};
use crate::state_dir::{StateDir, write_atomic};

/// Validity of a generated certificate, in days (about ten years).
const VALIDITY_DAYS: i64 = 3650;

/// A certificate and its private key, both PEM encoded.
#[derive(Clone)]
pub struct CertKeyPair {
    /// The certificate, a PEM `CERTIFICATE` block.
    pub cert_pem: String,
    /// The private key, a PEM `EC PRIVATE KEY` (or PKCS#8 `PRIVATE KEY`) block.
    pub key_pem: String,
}

impl fmt::Debug for CertKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertKeyPair")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// Generates a self-signed ECDSA P-384 certificate for `name` as SPEC §3 describes: random
/// positive 128-bit serial, valid from one minute ago for ten years, subject
/// `O=microcluster, CN=<name>`, usages serverAuth and clientAuth, SANs DNS `<name>`,
/// IP `127.0.0.1` and IP `::1`. The key is returned as a SEC1 `EC PRIVATE KEY` PEM.
pub fn generate(name: &str) -> Result<CertKeyPair> {
    let failed = |err: &dyn fmt::Display| {
        Error::internal(format!(
            "Failed to generate a certificate for {name:?}: {err}"
        ))
    };
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).map_err(|e| failed(&e))?;

    let mut serial = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut serial)
        .map_err(|_| failed(&"no random numbers available"))?;
    serial[0] &= 0x7f;

    let dns_name: rcgen::string::Ia5String = name
        .try_into()
        .map_err(|e| Error::invalid(format!("Invalid certificate name {name:?}: {e}")))?;
    let mut distinguished_name = DistinguishedName::new();
    distinguished_name.push(DnType::OrganizationName, "microcluster");
    distinguished_name.push(DnType::CommonName, name);
    let now = time::OffsetDateTime::now_utc();

    let mut params = CertificateParams::default();
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    params.not_before = now - time::Duration::minutes(1);
    params.not_after = now + time::Duration::days(VALIDITY_DAYS);
    params.distinguished_name = distinguished_name;
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.subject_alt_names = vec![
        SanType::DnsName(dns_name),
        SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)),
    ];
    let cert = params.self_signed(&key).map_err(|e| failed(&e))?;

    let secret = p384::SecretKey::from_pkcs8_der(key.serialized_der()).map_err(|e| failed(&e))?;
    let key_pem = secret.to_sec1_pem(LineEnding::LF).map_err(|e| failed(&e))?;
    Ok(CertKeyPair {
        cert_pem: cert.pem(),
        key_pem: key_pem.to_string(),
    })
}

/// A DER certificate as a PEM `CERTIFICATE` block.
pub fn der_to_pem(der: &[u8]) -> String {
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in encoded.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

/// The fingerprint of a DER certificate: lowercase hex SHA-256, 64 characters.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, der))
}

/// The fingerprint of a PEM certificate (see [`fingerprint`]).
pub fn fingerprint_pem(pem: &str) -> Result<String> {
    Ok(fingerprint(&parse_cert_pem(pem)?))
}

/// All PEM sections of `pem`; `what` names the expected content in errors.
fn pem_sections(pem: &str, what: &str) -> Result<Vec<(SectionKind, Vec<u8>)>> {
    let sections = <(SectionKind, Vec<u8>)>::pem_slice_iter(pem.as_bytes())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::invalid(format!("Invalid {what}: malformed PEM: {e}")))?;
    if sections.is_empty() {
        return Err(Error::invalid(format!("Invalid {what}: not PEM encoded")));
    }
    Ok(sections)
}

/// Parses a PEM holding exactly one X.509 certificate and returns its DER.
pub fn parse_cert_pem(pem: &str) -> Result<CertificateDer<'static>> {
    let mut certs: Vec<_> = pem_sections(pem, "certificate")?
        .into_iter()
        .filter(|(kind, _)| *kind == SectionKind::Certificate)
        .map(|(_, der)| der)
        .collect();
    let der = match (certs.pop(), certs.len()) {
        (Some(der), 0) => der,
        (None, _) => {
            return Err(Error::invalid(
                "Invalid certificate: no CERTIFICATE block found",
            ));
        }
        (Some(_), n) => {
            return Err(Error::invalid(format!(
                "Invalid certificate: expected one CERTIFICATE block, found {}",
                n + 1
            )));
        }
    };
    match X509Certificate::from_der(&der) {
        Ok(([], _)) => Ok(CertificateDer::from(der)),
        Ok(_) => Err(Error::invalid(
            "Invalid certificate: trailing data after the certificate",
        )),
        Err(err) => Err(Error::invalid(format!("Invalid certificate: {err}"))),
    }
}

/// Parses a PEM private key: SEC1 `EC PRIVATE KEY` or PKCS#8 `PRIVATE KEY`.
pub fn parse_key_pem(pem: &str) -> Result<PrivateKeyDer<'static>> {
    let mut keys: Vec<_> = pem_sections(pem, "private key")?
        .into_iter()
        .filter_map(|(kind, der)| match kind {
            SectionKind::EcPrivateKey => Some(PrivateKeyDer::Sec1(der.into())),
            SectionKind::PrivateKey => Some(PrivateKeyDer::Pkcs8(der.into())),
            _ => None,
        })
        .collect();
    match (keys.pop(), keys.len()) {
        (Some(key), 0) => Ok(key),
        (None, _) => Err(Error::invalid(
            "Invalid private key: no EC PRIVATE KEY or PRIVATE KEY block found",
        )),
        (Some(_), n) => Err(Error::invalid(format!(
            "Invalid private key: expected one key block, found {}",
            n + 1
        ))),
    }
}

/// Parses a DER certificate, with a clear error.
fn parse_der(der: &[u8]) -> Result<X509Certificate<'_>> {
    X509Certificate::from_der(der)
        .map(|(_, cert)| cert)
        .map_err(|e| Error::invalid(format!("Invalid certificate: {e}")))
}

/// The DNS names among the subject alternative names of a DER certificate.
pub fn dns_names(der: &[u8]) -> Result<Vec<String>> {
    let cert = parse_der(der)?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| Error::invalid(format!("Invalid certificate: {e}")))?;
    Ok(san
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::DNSName(dns) => Some(dns.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default())
}

/// Whether now is within the validity period of a DER certificate (false if it does not parse).
pub fn is_valid_now(der: &[u8]) -> bool {
    validity(der).is_some_and(is_now_within)
}

/// The validity period of a DER certificate, as Unix times (inclusive), if it parses.
pub fn validity(der: &[u8]) -> Option<(i64, i64)> {
    let cert = parse_der(der).ok()?;
    let validity = cert.validity();
    Some((
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    ))
}

/// Whether now is within `validity` (see [`validity`]).
pub fn is_now_within((not_before, not_after): (i64, i64)) -> bool {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    not_before <= now && now <= not_after
}

/// Writes a keypair atomically: the certificate with mode 0644, the key with mode 0600.
pub fn write_pair(cert_path: &Path, key_path: &Path, pair: &CertKeyPair) -> Result<()> {
    write_atomic(key_path, pair.key_pem.as_bytes(), 0o600)?;
    write_atomic(cert_path, pair.cert_pem.as_bytes(), 0o644)
}

/// Reads a keypair and checks that both parse and that the key belongs to the certificate.
pub fn load_pair(cert_path: &Path, key_path: &Path) -> Result<CertKeyPair> {
    let read = |path: &Path| {
        std::fs::read_to_string(path).context(format_args!("Failed to read {path:?}: "))
    };
    let pair = CertKeyPair {
        cert_pem: read(cert_path)?,
        key_pem: read(key_path)?,
    };
    certified_key(&pair).context(format_args!("Invalid keypair {cert_path:?}: "))?;
    Ok(pair)
}

/// The keypair as a rustls [`CertifiedKey`] (signing through rustls' ring provider), after
/// checking that the key belongs to the certificate.
pub fn certified_key(pair: &CertKeyPair) -> Result<Arc<CertifiedKey>> {
    let cert = parse_cert_pem(&pair.cert_pem)?;
    let key = parse_key_pem(&pair.key_pem)?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| Error::invalid(format!("Unsupported private key: {e}")))?;
    let certified = CertifiedKey::new(vec![cert], signer);
    certified
        .keys_match()
        .map_err(|_| Error::invalid("Certificate does not match its private key"))?;
    Ok(Arc::new(certified))
}

/// Makes sure `server.crt`/`server.key` exist and are issued for `name`: if they are absent or
/// `name` is not among the certificate's DNS names, a new pair is generated and written.
/// Returns whether it did so. An existing pair that does not load is an error, not replaced.
pub fn ensure_server_cert(dir: &StateDir, name: &str) -> Result<bool> {
    let (cert_path, key_path) = (dir.server_cert(), dir.server_key());
    if cert_path.exists() && key_path.exists() {
        let pair = load_pair(&cert_path, &key_path)?;
        let der = parse_cert_pem(&pair.cert_pem)?;
        if dns_names(&der)?.iter().any(|n| n == name) {
            return Ok(false);
        }
    }
    write_pair(&cert_path, &key_path, &generate(name)?)?;
    Ok(true)
}

/// The host name of this machine, or `localhost` if it cannot be read.
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|name| name.into_string().ok())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;
    use std::os::unix::fs::PermissionsExt;

    fn mode_of(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn generated_certificate_follows_the_spec() {
        let pair = generate("c1.example.com").unwrap();
        let der = parse_cert_pem(&pair.cert_pem).unwrap();
        let (_, cert) = X509Certificate::from_der(&der).unwrap();

        let spki = &cert.public_key().algorithm;
        assert_eq!(spki.algorithm.to_id_string(), "1.2.840.10045.2.1");
        let curve = spki.parameters.as_ref().unwrap().as_oid().unwrap();
        assert_eq!(curve.to_id_string(), "1.3.132.0.34");
        assert_eq!(
            cert.signature_algorithm.algorithm.to_id_string(),
            "1.2.840.10045.4.3.3"
        );

        let sans = &cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names;
        let want = [
            GeneralName::DNSName("c1.example.com"),
            GeneralName::IPAddress(&[127, 0, 0, 1]),
            GeneralName::IPAddress(&Ipv6Addr::LOCALHOST.octets()),
        ];
        assert_eq!(sans.as_slice(), want.as_slice());
        assert_eq!(dns_names(&der).unwrap(), ["c1.example.com"]);

        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let validity = cert.validity();
        assert!(validity.not_before.timestamp() <= now - 50);
        assert!(validity.not_before.timestamp() >= now - 120);
        let ten_years = now + VALIDITY_DAYS * 86_400;
        assert!((validity.not_after.timestamp() - ten_years).abs() < 86_400);
        assert!(is_valid_now(&der));
        assert!(!is_valid_now(b"garbage"));
        assert_eq!(
            super::validity(&der),
            Some((
                validity.not_before.timestamp(),
                validity.not_after.timestamp()
            ))
        );
        assert!(is_now_within((now - 10, now + 10)));
        assert!(!is_now_within((now - 100, now - 10)));
        assert!(!is_now_within((now + 10, now + 100)));

        let org: Vec<_> = cert
            .subject()
            .iter_organization()
            .map(|o| o.as_str().unwrap())
            .collect();
        let cn: Vec<_> = cert
            .subject()
            .iter_common_name()
            .map(|o| o.as_str().unwrap())
            .collect();
        assert_eq!(
            (org.as_slice(), cn.as_slice()),
            (["microcluster"].as_slice(), ["c1.example.com"].as_slice())
        );

        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);

        let serial = cert.raw_serial();
        assert!(!serial.is_empty() && serial.len() <= 17);
        assert!(serial[0] & 0x80 == 0, "serial must be positive");
        assert!(cert.serial.bits() <= 128 && cert.serial.bits() > 64);

        assert!(pair.key_pem.starts_with("-----BEGIN EC PRIVATE KEY-----\n"));
        assert!(!format!("{pair:?}").contains("PRIVATE KEY"));
    }

    #[test]
    fn fingerprint_is_sha256_of_der() {
        let pair = generate("c1").unwrap();
        let der = parse_cert_pem(&pair.cert_pem).unwrap();
        let fp = fingerprint_pem(&pair.cert_pem).unwrap();
        assert_eq!(fp.len(), 64);
        assert!(
            fp.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
        assert_eq!(
            fp,
            hex::encode(ring::digest::digest(&ring::digest::SHA256, &der))
        );
        assert_eq!(fp, fingerprint(&der));
    }

    #[test]
    fn files_have_spec_modes_and_load_back() {
        let tmp = tempfile::tempdir().unwrap();
        let (cert, key) = (tmp.path().join("server.crt"), tmp.path().join("server.key"));
        let pair = generate("c1").unwrap();
        write_pair(&cert, &key, &pair).unwrap();
        assert_eq!((mode_of(&cert), mode_of(&key)), (0o644, 0o600));
        let loaded = load_pair(&cert, &key).unwrap();
        assert_eq!(
            (loaded.cert_pem, loaded.key_pem),
            (pair.cert_pem, pair.key_pem)
        );
    }

    #[test]
    fn sec1_and_pkcs8_keys_load_into_rustls() {
        let pair = generate("c1").unwrap();
        certified_key(&pair).unwrap();
        assert!(matches!(
            parse_key_pem(&pair.key_pem).unwrap(),
            PrivateKeyDer::Sec1(_)
        ));

        // A PKCS#8 key, as other tools write it.
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let cert = CertificateParams::new(vec!["c2".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let pkcs8 = CertKeyPair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        assert!(pkcs8.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert!(matches!(
            parse_key_pem(&pkcs8.key_pem).unwrap(),
            PrivateKeyDer::Pkcs8(_)
        ));
        certified_key(&pkcs8).unwrap();

        let tmp = tempfile::tempdir().unwrap();
        let (c, k) = (tmp.path().join("a.crt"), tmp.path().join("a.key"));
        write_pair(&c, &k, &pkcs8).unwrap();
        load_pair(&c, &k).unwrap();
    }

    #[test]
    fn mismatched_key_is_rejected() {
        let (a, b) = (generate("a").unwrap(), generate("b").unwrap());
        let mixed = CertKeyPair {
            cert_pem: a.cert_pem,
            key_pem: b.key_pem,
        };
        let err = certified_key(&mixed).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert_eq!(err.message(), "Certificate does not match its private key");

        let tmp = tempfile::tempdir().unwrap();
        let (c, k) = (tmp.path().join("a.crt"), tmp.path().join("a.key"));
        write_pair(&c, &k, &mixed).unwrap();
        let err = load_pair(&c, &k).unwrap_err();
        assert!(
            err.message()
                .ends_with("Certificate does not match its private key"),
            "{err}"
        );
    }

    #[test]
    fn garbage_is_rejected_clearly() {
        let pair = generate("c1").unwrap();
        let cases = [
            ("hello", "Invalid certificate: not PEM encoded"),
            ("", "Invalid certificate: not PEM encoded"),
            (
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                "Invalid certificate: ",
            ),
            (
                "-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n",
                "Invalid certificate: malformed PEM",
            ),
            (
                pair.key_pem.as_str(),
                "Invalid certificate: no CERTIFICATE block found",
            ),
        ];
        for (pem, want) in cases {
            let err = parse_cert_pem(pem).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidArgument);
            assert!(err.message().starts_with(want), "{pem:?}: {err}");
        }
        let two = format!("{}{}", pair.cert_pem, pair.cert_pem);
        assert_eq!(
            parse_cert_pem(&two).unwrap_err().message(),
            "Invalid certificate: expected one CERTIFICATE block, found 2"
        );
        let err = parse_key_pem(&pair.cert_pem).unwrap_err();
        assert_eq!(
            err.message(),
            "Invalid private key: no EC PRIVATE KEY or PRIVATE KEY block found"
        );
        assert_eq!(
            parse_key_pem("junk").unwrap_err().message(),
            "Invalid private key: not PEM encoded"
        );
    }

    #[test]
    fn server_cert_is_regenerated_only_when_the_name_changes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(tmp.path()).unwrap();
        assert!(ensure_server_cert(&dir, "c1").unwrap());
        let first = fingerprint_pem(&std::fs::read_to_string(dir.server_cert()).unwrap()).unwrap();
        assert!(!ensure_server_cert(&dir, "c1").unwrap());
        let same = fingerprint_pem(&std::fs::read_to_string(dir.server_cert()).unwrap()).unwrap();
        assert_eq!(first, same);

        assert!(ensure_server_cert(&dir, "c2").unwrap());
        let pem = std::fs::read_to_string(dir.server_cert()).unwrap();
        assert_ne!(fingerprint_pem(&pem).unwrap(), first);
        assert_eq!(dns_names(&parse_cert_pem(&pem).unwrap()).unwrap(), ["c2"]);
        assert_eq!(mode_of(&dir.server_key()), 0o600);

        std::fs::remove_file(dir.server_key()).unwrap();
        assert!(ensure_server_cert(&dir, "c2").unwrap());
        load_pair(&dir.server_cert(), &dir.server_key()).unwrap();
    }

    #[test]
    fn hostname_is_never_empty() {
        assert!(!hostname().is_empty());
        generate(&hostname()).unwrap();
    }
}
