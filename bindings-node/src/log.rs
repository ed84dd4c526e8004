//! The library's log events handed to a JavaScript function: `setLogHandler`.

use std::sync::Arc;

use microcluster::logging::{self, LogLevel, LogSink};
use napi::Status;
use napi::bindgen_prelude::FnArgs;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi::{Env, Result};
use napi_derive::napi;

use crate::error::to_js;

/// The handler as the addon receives it: `(level, target, message) => void`, weak (it does
/// not keep the process alive) and never waited for.
pub(crate) type LogFunction = ThreadsafeFunction<
    FnArgs<(String, String, String)>,
    (),
    FnArgs<(String, String, String)>,
    Status,
    false,
    true,
>;

/// Sends the library's log events of `level` (`error`, `warn`, `info` — the default —,
/// `debug`, `trace`) and more severe to `handler`, queued to the event loop without blocking
/// the thread that logged; `null` stops sending them.
#[napi(catch_unwind)]
pub fn set_log_handler(
    env: Env,
    #[napi(ts_arg_type = "((level: string, target: string, message: string) => void) | null")]
    handler: Option<LogFunction>,
    level: Option<String>,
) -> Result<()> {
    let level =
        LogLevel::parse(level.as_deref().unwrap_or("info")).map_err(|err| to_js(&env, &err))?;
    let sink = handler.map(|handler| -> LogSink {
        let handler = Arc::new(handler);
        Arc::new(move |level: LogLevel, target: &str, message: &str| {
            let args = (
                level.name().to_string(),
                target.to_string(),
                message.to_string(),
            );
            // A full queue or a closing environment drops the event.
            let _ = handler.call(FnArgs::from(args), ThreadsafeFunctionCallMode::NonBlocking);
        })
    });
    logging::set_log_sink(sink, level).map_err(|err| to_js(&env, &err))
}
