//! Routing the library's log events to the embedding application: a Rust program may install
//! any `tracing` subscriber itself; the C, Python and Node bindings install this one, which
//! hands each event to a callback of theirs (SPEC §1.2: logs go to stderr unless the binding
//! routes them elsewhere).

use std::fmt::Write as _;
use std::sync::{Arc, OnceLock, RwLock};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

use crate::sync;
use crate::{Error, Result};

/// The severity of a log event; a sink set for a level gets that level and the ones above.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum LogLevel {
    /// Failures.
    Error = 1,
    /// Problems the library works around.
    Warn = 2,
    /// Lifecycle events (the default of `verbose`).
    Info = 3,
    /// Details for debugging.
    Debug = 4,
    /// Everything.
    Trace = 5,
}

impl LogLevel {
    /// The level called `name` (`error`, `warn`, `info`, `debug`, `trace`, any case).
    pub fn parse(name: &str) -> Result<LogLevel> {
        match name.to_ascii_lowercase().as_str() {
            "error" => Ok(LogLevel::Error),
            "warn" | "warning" => Ok(LogLevel::Warn),
            "info" => Ok(LogLevel::Info),
            "debug" => Ok(LogLevel::Debug),
            "trace" => Ok(LogLevel::Trace),
            _ => Err(Error::invalid(format!(
                "Invalid log level {name:?}: expected error, warn, info, debug or trace"
            ))),
        }
    }

    /// The level numbered `number` (1 = error … 5 = trace).
    pub fn from_number(number: i64) -> Result<LogLevel> {
        match number {
            1 => Ok(LogLevel::Error),
            2 => Ok(LogLevel::Warn),
            3 => Ok(LogLevel::Info),
            4 => Ok(LogLevel::Debug),
            5 => Ok(LogLevel::Trace),
            _ => Err(Error::invalid(format!(
                "Invalid log level {number}: expected 1 (error) to 5 (trace)"
            ))),
        }
    }

    /// The lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }

    fn of(level: &Level) -> LogLevel {
        match *level {
            Level::ERROR => LogLevel::Error,
            Level::WARN => LogLevel::Warn,
            Level::INFO => LogLevel::Info,
            Level::DEBUG => LogLevel::Debug,
            Level::TRACE => LogLevel::Trace,
        }
    }
}

/// Receives each log event: its level, its target (the module that logged it, such as
/// `microcluster::daemon`) and its message with any fields appended as ` key=value`. Called on
/// whatever thread logged, possibly several at once; it must return quickly and must not log
/// through the library.
pub type LogSink = Arc<dyn Fn(LogLevel, &str, &str) + Send + Sync>;

/// The sink and the most detailed level it wants.
type Route = Option<(LogSink, LogLevel)>;

fn route() -> &'static RwLock<Route> {
    static ROUTE: OnceLock<RwLock<Route>> = OnceLock::new();
    ROUTE.get_or_init(|| RwLock::new(None))
}

/// Sends the library's log events of `max_level` and above to `sink`, or stops sending them
/// (`None`). The first call installs a process-wide `tracing` subscriber; it fails if the
/// program installed another one before, and later calls only swap the sink.
pub fn set_log_sink(sink: Option<LogSink>, max_level: LogLevel) -> Result<()> {
    static INSTALLED: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            let subscriber = tracing_subscriber::registry().with(SinkLayer);
            tracing::subscriber::set_global_default(subscriber).map_err(|err| err.to_string())
        })
        .clone()
        .map_err(|err| {
            Error::new(
                crate::ErrorKind::Conflict,
                format!("Another logger is installed in this process: {err}"),
            )
        })?;
    *sync::write(route()) = sink.map(|sink| (sink, max_level));
    Ok(())
}

/// The `tracing` layer that hands events to the current sink.
struct SinkLayer;

impl<S: Subscriber> Layer<S> for SinkLayer {
    fn on_event(&self, event: &Event<'_>, _context: Context<'_, S>) {
        let level = LogLevel::of(event.metadata().level());
        let sink = match &*sync::read(route()) {
            Some((sink, max_level)) if level <= *max_level => sink.clone(),
            _ => return,
        };
        let mut message = Message::default();
        event.record(&mut message);
        sink(level, event.metadata().target(), &message.text);
    }
}

/// An event's message followed by its other fields as ` key=value`.
#[derive(Default)]
struct Message {
    text: String,
}

impl Visit for Message {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.text.insert_str(0, value),
            name => {
                let _ = write!(self.text, " {name}={value}");
            }
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => self.text.insert_str(0, &format!("{value:?}")),
            name => {
                let _ = write!(self.text, " {name}={value:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn levels_parse_by_name_and_number() {
        assert_eq!(LogLevel::parse("WARNING").unwrap(), LogLevel::Warn);
        assert_eq!(LogLevel::from_number(5).unwrap(), LogLevel::Trace);
        assert_eq!(
            LogLevel::parse("loud").unwrap_err().message(),
            "Invalid log level \"loud\": expected error, warn, info, debug or trace"
        );
        assert!(LogLevel::from_number(0).is_err());
        assert!(LogLevel::Error < LogLevel::Debug);
    }

    #[test]
    fn events_reach_the_sink_filtered_by_level_until_it_is_removed() {
        let seen: Arc<Mutex<Vec<(LogLevel, String, String)>>> = Arc::default();
        let record = seen.clone();
        let sink: LogSink = Arc::new(move |level, target, message| {
            record
                .lock()
                .unwrap()
                .push((level, target.to_string(), message.to_string()));
        });
        set_log_sink(Some(sink), LogLevel::Info).unwrap();
        tracing::info!(member = "c1", "Member {} is up", 1);
        tracing::debug!("too detailed");
        set_log_sink(None, LogLevel::Info).unwrap();
        tracing::warn!("after removal");
        // Other tests of this process may log meanwhile: keep this module's events.
        let target = "microcluster::logging::tests";
        let seen: Vec<_> = seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, from, _)| from == target)
            .cloned()
            .collect();
        assert_eq!(
            seen,
            vec![(
                LogLevel::Info,
                target.to_string(),
                "Member 1 is up member=c1".to_string()
            )]
        );
    }
}
