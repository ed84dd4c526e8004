//! Validation of member names and addresses (SPEC §6.1 and the address convention).

use std::net::SocketAddr;

/// Checks that `name` is a valid FQDN and returns the first rule it breaks, worded as SPEC §6.1
/// words it (the callers put their own prefix before it).
///
/// ```
/// use microcluster::validate::fqdn;
/// assert!(fqdn("c1.example.com").is_ok());
/// assert_eq!(fqdn("c/1").unwrap_err(), "Name can only contain alphanumeric and hyphen characters");
/// ```
pub fn fqdn(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 255 {
        return Err("Name must be 1-255 characters long");
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err("Name must be 1-63 characters long");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err("Name can only contain alphanumeric and hyphen characters");
        }
        if label.starts_with('-') {
            return Err("Name must not start with \"-\" character");
        }
        if label.ends_with('-') {
            return Err("Name must not end with \"-\" character");
        }
        if label.bytes().all(|b| b.is_ascii_digit()) {
            return Err("Name cannot be a number");
        }
    }
    Ok(())
}

/// Parses a member address `IP:port` (IPv6 as `[::1]:9001`). Host names, wildcard IPs and
/// port 0 are rejected; the error text says why.
///
/// ```
/// use microcluster::validate::member_address;
/// assert!(member_address("127.0.0.1:9001").is_ok());
/// assert!(member_address("localhost:9001").is_err());
/// assert!(member_address("0.0.0.0:9001").is_err());
/// ```
pub fn member_address(address: &str) -> Result<SocketAddr, String> {
    let parsed: SocketAddr = address.parse().map_err(|_| {
        "Address must be an IP address and a port, like 127.0.0.1:9001 or [::1]:9001".to_string()
    })?;
    if parsed.ip().is_unspecified() {
        return Err("Wildcard addresses cannot be member addresses".to_string());
    }
    if parsed.port() == 0 {
        return Err("Port must not be 0".to_string());
    }
    Ok(parsed)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The invalid names of SPEC §6.1 (and a few more), each with the first rule it breaks;
    /// shared with the tests of every message that wraps [`fqdn`].
    pub(crate) const INVALID_NAMES: &[(&str, &str)] = &[
        ("", "Name must be 1-255 characters long"),
        (
            "invalid_name",
            "Name can only contain alphanumeric and hyphen characters",
        ),
        (
            "invalid_",
            "Name can only contain alphanumeric and hyphen characters",
        ),
        (
            "_invalid",
            "Name can only contain alphanumeric and hyphen characters",
        ),
        ("invalid.", "Name must be 1-63 characters long"),
        (".invalid", "Name must be 1-63 characters long"),
        (
            "c/1",
            "Name can only contain alphanumeric and hyphen characters",
        ),
        ("-c1", "Name must not start with \"-\" character"),
        ("c1-", "Name must not end with \"-\" character"),
        ("123", "Name cannot be a number"),
    ];

    #[test]
    fn spec_invalid_names_are_rejected_with_the_first_broken_rule() {
        let cases = INVALID_NAMES.iter().copied();
        for (name, want) in cases {
            assert_eq!(fqdn(name), Err(want), "name {name:?}");
        }
        assert_eq!(
            fqdn(&"a".repeat(64)),
            Err("Name must be 1-63 characters long")
        );
        assert_eq!(
            fqdn(&"a.".repeat(128)),
            Err("Name must be 1-255 characters long")
        );
    }

    #[test]
    fn valid_names_pass() {
        for name in ["c1", "c-1", "node1.example.com", "a", "x1.2b"] {
            assert_eq!(fqdn(name), Ok(()), "name {name:?}");
        }
    }

    #[test]
    fn addresses() {
        assert_eq!(member_address("[::1]:9001").unwrap().port(), 9001);
        for bad in [
            "localhost:9001",
            "127.0.0.1",
            "[::]:9001",
            "0.0.0.0:1",
            "127.0.0.1:0",
            "",
            "1.2.3.4:99999",
        ] {
            assert!(member_address(bad).is_err(), "address {bad:?}");
        }
    }
}
