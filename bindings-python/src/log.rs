//! The library's log events handed to a Python callable: `set_log_handler`.

use std::sync::Arc;

use microcluster::logging::{self, LogLevel, LogSink};
use pyo3::prelude::*;

use crate::error::to_py;

/// Sends the library's log events of `level` (`"error"`, `"warn"`, `"info"`, `"debug"`,
/// `"trace"`) and more severe to `handler(level, target, message)`, or stops sending them
/// (`handler=None`). The handler runs on library threads; an exception it raises is printed
/// as unraisable and otherwise ignored.
#[pyfunction]
#[pyo3(signature = (handler, level = "info"))]
pub(crate) fn set_log_handler(
    py: Python<'_>,
    handler: Option<Py<PyAny>>,
    level: &str,
) -> PyResult<()> {
    let level = LogLevel::parse(level).map_err(|err| to_py(py, err))?;
    let sink = handler.map(|handler| -> LogSink {
        Arc::new(move |level: LogLevel, target: &str, message: &str| {
            // Not after the interpreter has begun to finalise.
            Python::try_attach(|py| {
                if let Err(err) = handler.call1(py, (level.name(), target, message)) {
                    err.write_unraisable(py, Some(handler.bind(py)));
                }
            });
        })
    });
    py.detach(|| logging::set_log_sink(sink, level))
        .map_err(|err| to_py(py, err))
}
