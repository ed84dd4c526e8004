//! What `microd` and `microctl` share: argument parsing helpers, logging set-up and the
//! `Error: <message>` exit convention of SPEC §16.

use std::process::ExitCode;
use std::time::Duration;

use serde_json::{Map, Value};

pub mod extended;
pub mod output;

/// The example application's API extensions (SPEC §16.1).
pub const API_EXTENSIONS: [&str; 2] = ["custom_extension_a_0", "custom_extension_a_1"];

/// The example application's schema updates (SPEC §16.1).
pub const SCHEMA_UPDATES: [&str; 2] = [
    "CREATE TABLE extended_table (id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, UNIQUE(key));",
    "CREATE TABLE some_other_table (id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, field_one TEXT NOT NULL, field_two TEXT NOT NULL, UNIQUE(field_one), UNIQUE(field_two));",
];

/// Parses a duration written as Go writes them: `3h`, `1h30m`, `1.5s`, `500ms`, `0`.
///
/// ```
/// use std::time::Duration;
/// use microcluster_examples::parse_duration;
/// assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
/// assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
/// assert!(parse_duration("3 days").is_err());
/// ```
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let invalid = || format!("invalid duration {text:?}");
    let mut rest = text;
    let mut total = 0f64;
    if rest.is_empty() {
        return Err(invalid());
    }
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(invalid)?;
        let number: f64 = rest[..number_len].parse().map_err(|_| invalid())?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(invalid()),
        };
        total += number * seconds;
        rest = &rest[unit_len..];
    }
    Duration::try_from_secs_f64(total).map_err(|_| invalid())
}

/// Parses `tokens add --expire-after` into nanoseconds: a [`parse_duration`] with an optional
/// sign, so that a negative value reaches the server (which rejects it, SPEC §6.1).
///
/// ```
/// use microcluster_examples::parse_expire_after;
/// assert_eq!(parse_expire_after("3h").unwrap(), 10_800_000_000_000);
/// assert_eq!(parse_expire_after("-1s").unwrap(), -1_000_000_000);
/// assert!(parse_expire_after("soon").is_err());
/// ```
pub fn parse_expire_after(text: &str) -> Result<i64, String> {
    let invalid = || format!("invalid duration {text:?}");
    let (negative, magnitude) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let duration = parse_duration(magnitude).map_err(|_| invalid())?;
    let nanos = i64::try_from(duration.as_nanos()).map_err(|_| invalid())?;
    Ok(if negative { -nanos } else { nanos })
}

/// Parses the `init --config` values: each is a comma-separated list of `key=value` items
/// (the value may itself hold `=`); an empty value adds nothing. Keys keep their order, and a
/// repeated key keeps its last value.
pub fn parse_config(values: &[String]) -> microcluster::Result<Map<String, Value>> {
    let mut config = Map::new();
    for item in values
        .iter()
        .filter(|value| !value.is_empty())
        .flat_map(|value| value.split(','))
    {
        let (key, value) = item.split_once('=').ok_or_else(|| {
            microcluster::Error::invalid(format!("Malformed additional configuration value {item}"))
        })?;
        config.insert(key.to_string(), Value::String(value.to_string()));
    }
    Ok(config)
}

/// Percent-encodes `text` for one URL path segment or query value: everything but the
/// unreserved characters of RFC 3986 (`A-Z a-z 0-9 - . _ ~`) becomes `%XX`.
///
/// ```
/// use microcluster_examples::percent_encode;
/// assert_eq!(percent_encode("c1"), "c1");
/// assert_eq!(percent_encode("a b/c?"), "a%20b%2Fc%3F");
/// ```
pub fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(byte).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

/// The path of `cluster remove`: `/core/1.0/cluster/<name>` with `force=1` and `address=…`
/// only when set (SPEC §9.1).
///
/// ```
/// use microcluster_examples::cluster_remove_path;
/// assert_eq!(cluster_remove_path("c2", false, None), "/core/1.0/cluster/c2");
/// assert_eq!(
///     cluster_remove_path("c2", true, Some("127.0.0.1:9002")),
///     "/core/1.0/cluster/c2?force=1&address=127.0.0.1%3A9002",
/// );
/// ```
pub fn cluster_remove_path(name: &str, force: bool, address: Option<&str>) -> String {
    let mut params = Vec::new();
    if force {
        params.push("force=1".to_string());
    }
    if let Some(address) = address {
        params.push(format!("address={}", percent_encode(address)));
    }
    let path = format!("/core/1.0/cluster/{}", percent_encode(name));
    if params.is_empty() {
        path
    } else {
        format!("{path}?{}", params.join("&"))
    }
}

/// Sends logs to stderr: warnings by default, info with `verbose`, debug with `debug`.
pub fn init_logging(verbose: bool, debug: bool) {
    let level = match (debug, verbose) {
        (true, _) => tracing::Level::DEBUG,
        (false, true) => tracing::Level::INFO,
        (false, false) => tracing::Level::WARN,
    };
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Parses the command line; help and `--version` print and exit 0, and any usage error prints
/// the usage and exits 1 (clap alone would exit 2).
pub fn parse_args<T: clap::Parser>() -> T {
    match T::try_parse() {
        Ok(args) => args,
        Err(err) => {
            let _ = err.print();
            let code = match err.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => 0,
                _ => 1,
            };
            std::process::exit(code);
        }
    }
}

/// Turns a result into the process exit code, printing `Error: <message>` on failure.
pub fn exit_code(result: microcluster::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("Error: {err}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(values: &[&str]) -> Vec<String> {
        values.iter().map(|value| value.to_string()).collect()
    }

    #[test]
    fn config_is_repeatable_and_comma_separated() {
        let config = parse_config(&strings(&["a=1,b=x=y", "", "c=", "a=2"])).unwrap();
        assert_eq!(
            Value::Object(config).to_string(),
            r#"{"a":"2","b":"x=y","c":""}"#
        );
        assert!(parse_config(&[]).unwrap().is_empty());
    }

    #[test]
    fn config_item_without_equals_is_malformed() {
        let err = parse_config(&strings(&["a=1,oops"])).unwrap_err();
        assert_eq!(
            err.message(),
            "Malformed additional configuration value oops"
        );
        assert_eq!(err.http_status(), 400);
    }

    #[test]
    fn expire_after_in_nanoseconds() {
        assert_eq!(parse_expire_after("0").unwrap(), 0);
        assert_eq!(parse_expire_after("+1m").unwrap(), 60_000_000_000);
        assert_eq!(
            parse_expire_after("3 days").unwrap_err(),
            r#"invalid duration "3 days""#
        );
        assert!(
            parse_expire_after("9999999h").is_err(),
            "overflows i64 nanoseconds"
        );
    }

    #[test]
    fn remove_path_encodes_the_name() {
        assert_eq!(
            cluster_remove_path("a/b", false, Some("::1")),
            "/core/1.0/cluster/a%2Fb?address=%3A%3A1"
        );
    }
}
