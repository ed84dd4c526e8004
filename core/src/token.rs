//! Join tokens (SPEC §6): the token string, its secret and the checks on a join.
//!
//! This module holds the pure parts only: encoding and decoding the token, making and hashing
//! secrets, the name and expiry rules of issuing, and checks 2–4 of a join. Storing, listing and
//! revoking records, and the hash lookup of check 1, belong to the callers.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ring::rand::SecureRandom as _;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::certs;
use crate::error::{Error, Result, ResultExt as _};
use crate::validate;

/// Length in bytes of a freshly generated secret (before hex encoding).
const SECRET_BYTES: usize = 32;

/// Length in characters of a hex-encoded secret, secret hash or certificate fingerprint.
const HEX_LEN: usize = 64;

/// The prefix of every error of [`JoinToken::decode`].
const INVALID: &str = "Invalid join token: ";

/// The content of a join token (SPEC §6.2). It holds no name and no expiry.
///
/// Its JSON is `{"secret":"…","fingerprint":"…","join_addresses":[…]}`, keys in this order.
/// `Debug` does not show the secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinToken {
    /// The secret, 64 lowercase hex characters; only its SHA-256 is stored by the cluster.
    pub secret: String,
    /// The fingerprint of the cluster certificate (lowercase hex SHA-256, 64 characters).
    pub fingerprint: String,
    /// The addresses (`IP:port`) of the members a joiner may contact.
    pub join_addresses: Vec<String>,
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("secret", &"<redacted>")
            .field("fingerprint", &self.fingerprint)
            .field("join_addresses", &self.join_addresses)
            .finish()
    }
}

impl JoinToken {
    /// The token string: standard base64 (with padding) of the token's JSON.
    pub fn encode(&self) -> String {
        // A struct of strings always serialises; the fallback is never taken.
        let json = serde_json::to_vec(self).unwrap_or_default();
        STANDARD.encode(json)
    }

    /// Parses and checks a token string; surrounding whitespace is ignored. Every failure is
    /// a 400 whose message starts with `Invalid join token: `. The fingerprint is returned in
    /// lowercase.
    pub fn decode(token: &str) -> Result<JoinToken> {
        let json = STANDARD
            .decode(token.trim())
            .map_err(|e| Error::invalid(format!("{INVALID}not valid base64: {e}")))?;
        let mut parsed: JoinToken = serde_json::from_slice(&json)
            .map_err(|e| Error::invalid(format!("{INVALID}not valid token JSON: {e}")))?;

        if !is_hex_of_len(&parsed.secret, HEX_LEN, true) {
            return Err(Error::invalid(format!(
                "{INVALID}secret must be {HEX_LEN} lowercase hexadecimal characters"
            )));
        }
        if parsed.fingerprint.is_empty() {
            return Err(Error::invalid(format!("{INVALID}fingerprint is empty")));
        }
        if !is_hex_of_len(&parsed.fingerprint, HEX_LEN, false) {
            return Err(Error::invalid(format!(
                "{INVALID}fingerprint must be {HEX_LEN} hexadecimal characters"
            )));
        }
        parsed.fingerprint.make_ascii_lowercase();
        if parsed.join_addresses.is_empty() {
            return Err(Error::invalid(format!("{INVALID}no join addresses")));
        }
        for address in &parsed.join_addresses {
            validate::member_address(address).map_err(|e| {
                Error::invalid(format!("{INVALID}join address {address:?} is invalid: {e}"))
            })?;
        }
        Ok(parsed)
    }
}

/// Whether `s` is exactly `len` hex digits (only lowercase ones if `lowercase_only`).
fn is_hex_of_len(s: &str, len: usize, lowercase_only: bool) -> bool {
    s.len() == len
        && s.bytes().all(|b| {
            b.is_ascii_digit()
                || (b'a'..=b'f').contains(&b)
                || (!lowercase_only && (b'A'..=b'F').contains(&b))
        })
}

/// A new secret: 32 bytes from the system CSPRNG, lowercase hex (64 characters). Fails (500)
/// only if the system has no random numbers to give.
pub fn new_secret() -> Result<String> {
    let mut bytes = [0u8; SECRET_BYTES];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| {
            Error::internal("Failed to generate a join token secret: no random numbers available")
        })?;
    Ok(hex::encode(bytes))
}

/// The stored form of a secret: lowercase hex SHA-256 of the secret string's bytes.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        secret.as_bytes(),
    ))
}

/// Whether `presented_secret` hashes to `stored_hash`, compared in constant time (every byte
/// is looked at; only a difference in length returns early).
pub fn secret_matches(presented_secret: &str, stored_hash: &str) -> bool {
    let presented = hash_secret(presented_secret);
    let (a, b) = (presented.as_bytes(), stored_hash.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Checks the name of a new token (SPEC §6.1 step 2): 400
/// `Token name "<name>" is not a valid FQDN: <first broken rule>`.
pub fn validate_token_name(name: &str) -> Result<()> {
    validate::fqdn(name)
        .map_err(|rule| Error::invalid(format!("Token name {name:?} is not a valid FQDN: {rule}")))
}

/// Checks 2–4 of a join (SPEC §6.4), in order, for the token record named `record_name`:
/// not expired at `now` (an expiry equal to `now` has passed), the joiner asks for the token's
/// name, and that name is a DNS SAN of the joiner's certificate. Failures are 403, except a
/// certificate that does not parse (400).
pub fn validate_join(
    record_name: &str,
    expires_at: Option<OffsetDateTime>,
    now: OffsetDateTime,
    requested_name: &str,
    joiner_cert_pem: &str,
) -> Result<()> {
    if expires_at.is_some_and(|expiry| expiry <= now) {
        return Err(Error::forbidden("Token expired"));
    }
    if requested_name != record_name {
        return Err(Error::forbidden(format!(
            "Joining member name {requested_name:?} does not match join token name {record_name:?}"
        )));
    }
    let der = certs::parse_cert_pem(joiner_cert_pem).context("Joining server certificate: ")?;
    let names = certs::dns_names(&der).context("Joining server certificate: ")?;
    if !names.iter().any(|dns| dns == record_name) {
        return Err(Error::forbidden(
            "Joining server certificate SAN does not contain join token name",
        ));
    }
    Ok(())
}

/// The expiry of a token issued at `now` with `expire_after_ns` (SPEC §6.1 step 6): `0` is
/// never (`None`), a negative value is a 400, and a time past the representable range is a
/// 400 too.
pub fn expiry_from(now: OffsetDateTime, expire_after_ns: i64) -> Result<Option<OffsetDateTime>> {
    match expire_after_ns {
        0 => Ok(None),
        ns if ns < 0 => Err(Error::invalid("Token expiry must not be negative")),
        ns => now
            .checked_add(time::Duration::nanoseconds(ns))
            .map(Some)
            .ok_or_else(|| {
                Error::invalid(format!("Token expiry of {ns}ns is too far in the future"))
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    const SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const FINGERPRINT: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";

    fn token() -> JoinToken {
        JoinToken {
            secret: SECRET.to_string(),
            fingerprint: FINGERPRINT.to_string(),
            join_addresses: vec!["127.0.0.1:9001".to_string(), "[::1]:9002".to_string()],
        }
    }

    /// The token string of arbitrary JSON text.
    fn b64(json: &str) -> String {
        STANDARD.encode(json)
    }

    /// The token string of `token()` with one JSON field replaced.
    fn with_field(key: &str, value: serde_json::Value) -> String {
        let mut json = serde_json::to_value(token()).unwrap();
        json[key] = value;
        b64(&json.to_string())
    }

    fn assert_invalid(result: Result<impl fmt::Debug>, want: &str) {
        let err = result.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
        assert_eq!(err.http_status(), 400);
        assert!(
            err.message().starts_with(want),
            "message {:?} does not start with {want:?}",
            err.message()
        );
    }

    fn assert_forbidden(result: Result<()>, want: &str) {
        let err = result.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Forbidden, "{err}");
        assert_eq!(err.http_status(), 403);
        assert_eq!(err.message(), want);
    }

    #[test]
    fn encode_is_base64_of_json_with_keys_in_order() {
        let encoded = token().encode();
        let json = String::from_utf8(STANDARD.decode(&encoded).unwrap()).unwrap();
        assert_eq!(
            json,
            format!(
                r#"{{"secret":"{SECRET}","fingerprint":"{FINGERPRINT}","join_addresses":["127.0.0.1:9001","[::1]:9002"]}}"#
            )
        );
        assert_eq!(encoded, b64(&json));
    }

    #[test]
    fn encode_keeps_padding() {
        let mut one = token();
        one.join_addresses.pop();
        let json = serde_json::to_string(&one).unwrap();
        assert_ne!(json.len() % 3, 0, "this JSON needs padding");
        let encoded = one.encode();
        assert_eq!(encoded.len() % 4, 0);
        assert!(encoded.ends_with('='), "padding is kept: {encoded}");
        assert_eq!(JoinToken::decode(&encoded).unwrap(), one);
        // Without its padding, the same token is rejected (standard base64 requires it).
        assert_invalid(
            JoinToken::decode(encoded.trim_end_matches('=')),
            "Invalid join token: not valid base64: ",
        );
    }

    #[test]
    fn decode_round_trips_and_trims_whitespace() {
        let encoded = token().encode();
        assert_eq!(JoinToken::decode(&encoded).unwrap(), token());
        assert_eq!(
            JoinToken::decode(&format!("  {encoded}\n")).unwrap(),
            token()
        );
        assert_eq!(
            JoinToken::decode(&format!("{encoded}\r\n")).unwrap(),
            token()
        );
    }

    #[test]
    fn decode_ignores_unknown_fields_and_lowercases_the_fingerprint() {
        let upper = FINGERPRINT.to_ascii_uppercase();
        let json = format!(
            r#"{{"secret":"{SECRET}","fingerprint":"{upper}","join_addresses":["127.0.0.1:9001"],"extra":1}}"#
        );
        let decoded = JoinToken::decode(&b64(&json)).unwrap();
        assert_eq!(decoded.fingerprint, FINGERPRINT);
        assert_eq!(decoded.join_addresses, ["127.0.0.1:9001"]);
    }

    #[test]
    fn decode_rejects_bad_base64() {
        for bad in ["not base64!", "abc", "eyJ4IjoxfQ"] {
            assert_invalid(
                JoinToken::decode(bad),
                "Invalid join token: not valid base64: ",
            );
        }
    }

    #[test]
    fn decode_rejects_bad_json() {
        for json in ["", "not json", "[]", r#"{"secret":"x"}"#, "null"] {
            assert_invalid(
                JoinToken::decode(&b64(json)),
                "Invalid join token: not valid token JSON: ",
            );
        }
        assert_invalid(
            JoinToken::decode(&with_field("join_addresses", serde_json::Value::Null)),
            "Invalid join token: not valid token JSON: ",
        );
        assert_invalid(
            JoinToken::decode(""),
            "Invalid join token: not valid token JSON: ",
        );
    }

    #[test]
    fn decode_rejects_bad_secrets() {
        let want = "Invalid join token: secret must be 64 lowercase hexadecimal characters";
        for secret in [
            String::new(),
            SECRET[1..].to_string(),
            format!("{SECRET}0"),
            SECRET.to_ascii_uppercase(),
            SECRET.replace('0', "g"),
        ] {
            assert_invalid(
                JoinToken::decode(&with_field("secret", secret.into())),
                want,
            );
        }
    }

    #[test]
    fn decode_rejects_bad_fingerprints() {
        assert_invalid(
            JoinToken::decode(&with_field("fingerprint", "".into())),
            "Invalid join token: fingerprint is empty",
        );
        let want = "Invalid join token: fingerprint must be 64 hexadecimal characters";
        for fingerprint in [
            FINGERPRINT[1..].to_string(),
            format!("{FINGERPRINT}0"),
            FINGERPRINT.replace('f', "z"),
        ] {
            assert_invalid(
                JoinToken::decode(&with_field("fingerprint", fingerprint.into())),
                want,
            );
        }
    }

    #[test]
    fn decode_rejects_bad_join_addresses() {
        assert_invalid(
            JoinToken::decode(&with_field("join_addresses", serde_json::json!([]))),
            "Invalid join token: no join addresses",
        );
        for address in ["localhost:9001", "0.0.0.0:9001", "127.0.0.1", "127.0.0.1:0"] {
            let encoded = with_field(
                "join_addresses",
                serde_json::json!(["127.0.0.1:9001", address]),
            );
            assert_invalid(
                JoinToken::decode(&encoded),
                &format!("Invalid join token: join address {address:?} is invalid: "),
            );
        }
    }

    #[test]
    fn debug_hides_the_secret() {
        let debug = format!("{:?}", token());
        assert!(!debug.contains(SECRET), "{debug}");
        assert!(debug.contains(FINGERPRINT), "{debug}");
    }

    #[test]
    fn new_secrets_are_64_lowercase_hex_and_differ() {
        let a = new_secret().unwrap();
        let b = new_secret().unwrap();
        assert!(is_hex_of_len(&a, 64, true), "{a}");
        assert!(is_hex_of_len(&b, 64, true), "{b}");
        assert_ne!(a, b);
    }

    #[test]
    fn hash_secret_is_lowercase_sha256_hex() {
        assert_eq!(
            hash_secret(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            hash_secret("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn secret_matches_only_its_own_hash() {
        let secret = new_secret().unwrap();
        let stored = hash_secret(&secret);
        assert!(secret_matches(&secret, &stored));
        assert!(!secret_matches(&new_secret().unwrap(), &stored));
        assert!(!secret_matches(&secret, &stored[..63]));
        assert!(!secret_matches(&secret, ""));
        assert!(!secret_matches(&secret, &stored.to_ascii_uppercase()));
        // The stored value is a hash, not the secret itself.
        assert!(!secret_matches(&secret, &secret));
    }

    #[test]
    fn token_names_follow_the_fqdn_rules() {
        let cases = crate::validate::tests::INVALID_NAMES.iter().copied();
        let long_name = format!("{}.{}", "a".repeat(63), "b".repeat(192));
        let long_label = "a".repeat(64);
        let cases = cases.chain([
            (long_name.as_str(), "Name must be 1-255 characters long"),
            (long_label.as_str(), "Name must be 1-63 characters long"),
        ]);
        for (name, rule) in cases {
            let err = validate_token_name(name).unwrap_err();
            assert_eq!(err.http_status(), 400, "name {name:?}");
            assert_eq!(err.kind(), ErrorKind::InvalidArgument);
            assert_eq!(
                err.message(),
                format!("Token name \"{name}\" is not a valid FQDN: {rule}"),
                "name {name:?}"
            );
        }
        for name in ["c1", "node-1.example.com", "a", &"a".repeat(63)] {
            assert_eq!(validate_token_name(name), Ok(()), "name {name:?}");
        }
    }

    #[test]
    fn token_name_is_quoted_with_escapes() {
        let err = validate_token_name("a\"b\n").unwrap_err();
        assert_eq!(
            err.message(),
            "Token name \"a\\\"b\\n\" is not a valid FQDN: \
             Name can only contain alphanumeric and hyphen characters"
        );
    }

    #[test]
    fn join_with_matching_name_and_san_passes() {
        let cert = certs::generate("c1").unwrap().cert_pem;
        let now = OffsetDateTime::now_utc();
        assert_eq!(validate_join("c1", None, now, "c1", &cert), Ok(()));
        let later = now + time::Duration::nanoseconds(1);
        assert_eq!(validate_join("c1", Some(later), now, "c1", &cert), Ok(()));
    }

    #[test]
    fn join_checks_run_in_spec_order_with_exact_texts() {
        let c1 = certs::generate("c1").unwrap().cert_pem;
        let c2 = certs::generate("c2").unwrap().cert_pem;
        let now = OffsetDateTime::now_utc();
        let past = now - time::Duration::seconds(1);

        // Expiry first: even a wrong name and a bad certificate report the expiry.
        assert_forbidden(
            validate_join("c1", Some(now), now, "c1", &c1),
            "Token expired",
        );
        assert_forbidden(
            validate_join("c1", Some(past), now, "c2", "junk"),
            "Token expired",
        );

        // Then the name, before the certificate is looked at.
        assert_forbidden(
            validate_join("c1", None, now, "c2", "junk"),
            "Joining member name \"c2\" does not match join token name \"c1\"",
        );
        assert_forbidden(
            validate_join("c1", None, now, "c2", &c2),
            "Joining member name \"c2\" does not match join token name \"c1\"",
        );

        // Then the SAN: a valid certificate for another name.
        assert_forbidden(
            validate_join("c1", None, now, "c1", &c2),
            "Joining server certificate SAN does not contain join token name",
        );
    }

    #[test]
    fn join_with_unparsable_certificate_is_400() {
        let now = OffsetDateTime::now_utc();
        assert_invalid(
            validate_join("c1", None, now, "c1", "junk"),
            "Joining server certificate: Invalid certificate: ",
        );
        assert_invalid(
            validate_join("c1", None, now, "c1", ""),
            "Joining server certificate: Invalid certificate: ",
        );
    }

    #[test]
    fn expiry_from_follows_spec() {
        let now = OffsetDateTime::now_utc();
        assert_eq!(expiry_from(now, 0), Ok(None));
        assert_eq!(
            expiry_from(now, 1_500_000_000),
            Ok(Some(now + time::Duration::milliseconds(1500)))
        );
        assert_eq!(
            expiry_from(now, 1),
            Ok(Some(now + time::Duration::nanoseconds(1)))
        );
        for negative in [-1, i64::MIN] {
            let err = expiry_from(now, negative).unwrap_err();
            assert_eq!(err.http_status(), 400);
            assert_eq!(err.message(), "Token expiry must not be negative");
        }
        // Far from the end of the range, even the largest value fits.
        assert!(expiry_from(now, i64::MAX).unwrap().is_some());
    }

    #[test]
    fn expiry_past_the_representable_range_is_400() {
        let end = time::PrimitiveDateTime::MAX.assume_utc();
        assert_invalid(
            expiry_from(end, 1),
            "Token expiry of 1ns is too far in the future",
        );
        assert_eq!(expiry_from(end, 0), Ok(None));
    }
}
