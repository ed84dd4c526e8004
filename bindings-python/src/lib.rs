//! The Python binding of microcluster: the extension module `microcluster._microcluster`,
//! wrapped by the pure-Python package `microcluster` (see `python/microcluster`).

mod app;
mod block;
mod endpoints;
mod error;
mod hooks;
mod json;
mod log;
mod tx;

use pyo3::prelude::*;

/// The native part of the `microcluster` package.
#[pymodule(gil_used = false)]
mod _microcluster {
    #[pymodule_export]
    use crate::app::PyApp;
    #[pymodule_export]
    use crate::hooks::PyState;
    #[pymodule_export]
    use crate::log::set_log_handler;
    #[pymodule_export]
    use crate::tx::PyTx;

    use pyo3::prelude::*;

    /// Sets `__version__` from the crate version.
    #[pymodule_init]
    fn init(module: &Bound<'_, PyModule>) -> PyResult<()> {
        module.add("__version__", env!("CARGO_PKG_VERSION"))
    }
}
