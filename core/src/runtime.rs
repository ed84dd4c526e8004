//! The library's one tokio runtime, created lazily, shared by every `App` in the process.
//!
//! Bindings and example programs never create a runtime of their own: async callers await work
//! spawned here (a `JoinHandle` can be awaited from any executor), and blocking callers use
//! [`block_on`], which refuses to run on a runtime thread instead of deadlocking.

use std::future::Future;
use std::sync::OnceLock;

use tokio::runtime::{Handle, Runtime};

use crate::{Error, ErrorKind, Result};

/// Worker threads of the runtime (DESIGN §3: two by default).
const WORKER_THREADS: usize = 2;

fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(WORKER_THREADS)
            .thread_name("microcluster")
            .enable_all()
            .build()
            .unwrap_or_else(|err| panic!("cannot create the microcluster runtime: {err}"))
    })
}

/// A handle to the library's runtime.
pub fn handle() -> Handle {
    runtime().handle().clone()
}

/// Runs `fut` on the library's runtime and waits for its output from any executor.
///
/// A panic inside `fut` becomes an `Internal` error instead of unwinding into the caller.
pub async fn run<T, F>(fut: F) -> Result<T>
where
    F: Future<Output = Result<T>> + Send + 'static,
    T: Send + 'static,
{
    match runtime().spawn(fut).await {
        Ok(result) => result,
        Err(err) => Err(Error::internal(format!("internal task failed: {err}"))),
    }
}

/// Blocks the current thread until `fut`, run on the library's runtime, completes.
///
/// Called from a thread of any tokio runtime (for example from inside a hook), it returns a
/// `WouldBlock` error at once rather than deadlocking.
pub fn block_on<T, F>(fut: F) -> Result<T>
where
    F: Future<Output = Result<T>> + Send + 'static,
    T: Send + 'static,
{
    if Handle::try_current().is_ok() {
        return Err(Error::new(
            ErrorKind::WouldBlock,
            "Blocking call made from an async context (a hook or handler): use the async API there",
        ));
    }
    runtime().block_on(run(fut))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_on_runs_and_refuses_inside_a_runtime() {
        assert_eq!(block_on(async { Ok(7) }).unwrap(), 7);
        let nested = block_on(async { Ok(block_on(async { Ok(1) })) }).unwrap();
        assert_eq!(nested.unwrap_err().kind(), ErrorKind::WouldBlock);
    }

    #[test]
    fn panics_become_errors() {
        let err = block_on(async {
            if true {
                panic!("boom");
            }
            Ok(())
        })
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Internal);
    }
}
