//! What `microd` and `microctl` share: argument parsing helpers, logging set-up and the
//! `Error: <message>` exit convention of SPEC §16.

use std::process::ExitCode;
use std::time::Duration;

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
