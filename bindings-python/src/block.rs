//! Blocking calls from Python: core futures run on the library's runtime while the calling
//! thread waits with the GIL released, waking every 100 ms so that Ctrl-C interrupts the wait.

use std::future::Future;
use std::time::Duration;

use microcluster::{Error, runtime};
use pyo3::prelude::*;
use tokio::task::JoinHandle;

use crate::error::to_py;

/// How often a waiting call lets Python handle signals.
const SIGNAL_POLL: Duration = Duration::from_millis(100);

/// A task that has finished, or is still running.
enum Step<T> {
    Done(microcluster::Result<T>),
    Running(JoinHandle<microcluster::Result<T>>),
}

/// Waits for `task` for at most [`SIGNAL_POLL`].
async fn step<T>(mut task: JoinHandle<microcluster::Result<T>>) -> microcluster::Result<Step<T>> {
    match tokio::time::timeout(SIGNAL_POLL, &mut task).await {
        Ok(joined) => Ok(Step::Done(joined.unwrap_or_else(|err| {
            Err(Error::internal(format!(
                "The operation did not finish: {err}"
            )))
        }))),
        Err(_) => Ok(Step::Running(task)),
    }
}

/// Runs `fut` on the library's runtime and waits for it without the GIL; a pending signal's
/// exception (KeyboardInterrupt) abandons the wait. On a library thread (inside a hook) it
/// raises `WouldBlockError` without running `fut`.
pub(crate) fn block<T, F>(py: Python<'_>, fut: F) -> PyResult<T>
where
    F: Future<Output = microcluster::Result<T>> + Send + 'static,
    T: Send + 'static,
{
    let mut next = py.detach(|| runtime::block_on(async move { step(tokio::spawn(fut)).await }));
    loop {
        let task = match next {
            Ok(Step::Done(result)) => return result.map_err(|err| to_py(py, err)),
            Ok(Step::Running(task)) => task,
            Err(err) => return Err(to_py(py, err)),
        };
        if let Err(interrupt) = py.check_signals() {
            task.abort();
            return Err(interrupt);
        }
        next = py.detach(|| runtime::block_on(step(task)));
    }
}
