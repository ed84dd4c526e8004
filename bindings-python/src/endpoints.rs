//! Extension endpoints answered by Python: core's `BlockingEndpoints` calling the two
//! dispatchers that `microcluster._endpoints.compile_servers` built from the application's
//! servers, one for the handlers and one for the access handlers.

use microcluster::extensions::{BlockingEndpoints, EndpointCall};
use microcluster::{Error, ErrorKind};
use pyo3::prelude::*;
use serde_json::Value;

use crate::hooks::PyState;
use crate::json;

/// The Python dispatchers, both called as `(state, server, endpoint, request)`: `dispatch`
/// returns the JSON text of the handler's answer, `access` the access handler's `bool`.
pub(crate) struct PyEndpoints {
    dispatch: Py<PyAny>,
    access: Py<PyAny>,
}

impl PyEndpoints {
    /// Wraps `dispatch` and `access`.
    pub(crate) fn new(dispatch: Py<PyAny>, access: Py<PyAny>) -> PyEndpoints {
        PyEndpoints { dispatch, access }
    }

    /// Calls `dispatcher(state, server, endpoint, request)` with the interpreter attached and
    /// turns its result into a `T` with `decode`; an exception (also one `decode` raises)
    /// becomes the core error [`handler_failure`] makes of it.
    fn invoke<T>(
        dispatcher: &Py<PyAny>,
        call: &EndpointCall<'_>,
        decode: impl FnOnce(&Bound<'_, PyAny>) -> PyResult<T>,
    ) -> microcluster::Result<T> {
        Python::try_attach(|py| {
            let run = || {
                let request = json::to_python(py, &call.request.to_json())?;
                let state = PyState::new(call.state.clone());
                let result =
                    dispatcher
                        .bind(py)
                        .call1((state, call.server, call.endpoint, request))?;
                decode(&result)
            };
            run().map_err(|err| handler_failure(py, call.endpoint, err))
        })
        .unwrap_or_else(|| {
            Err(Error::unavailable(
                "The Python interpreter is shutting down",
            ))
        })
    }
}

/// The core error for an exception a handler raised: a `microcluster.Error` keeps its kind
/// (so `NotFoundError` answers 404) and message; anything else is a 500 naming the exception.
fn handler_failure(py: Python<'_>, endpoint: &str, err: PyErr) -> Error {
    let value = err.value(py);
    let kind = py
        .import("microcluster.errors")
        .and_then(|errors| errors.getattr("Error"))
        .ok()
        .filter(|class| value.is_instance(class).unwrap_or(false))
        .and_then(|_| value.getattr("code").ok())
        .and_then(|code| code.extract::<String>().ok())
        .and_then(|code| ErrorKind::from_code(&code));
    match kind {
        Some(kind) => Error::new(kind, value.to_string()),
        None => {
            let type_name = err
                .get_type(py)
                .name()
                .map_or_else(|_| "Exception".to_string(), |name| name.to_string());
            Error::internal(format!(
                "The {endpoint} endpoint raised {type_name}: {value}"
            ))
        }
    }
}

impl BlockingEndpoints for PyEndpoints {
    fn call(&self, call: EndpointCall<'_>) -> microcluster::Result<Value> {
        Self::invoke(&self.dispatch, &call, |text| {
            serde_json::from_str(&text.extract::<String>()?)
                .map_err(|err| pyo3::exceptions::PyValueError::new_err(err.to_string()))
        })
    }

    /// The Python `access` dispatcher already answers a 500 naming the endpoint when the access
    /// handler returns anything but a `bool`, so extracting it here does not fail in practice.
    fn access(&self, call: EndpointCall<'_>) -> microcluster::Result<bool> {
        Self::invoke(&self.access, &call, |allowed| allowed.extract())
    }
}
