//! Extension endpoints answered by Python: core's `BlockingEndpoints` calling the one
//! dispatcher that `microcluster._endpoints.compile` built from the application's servers.

use microcluster::extensions::{BlockingEndpoints, EndpointRequest};
use microcluster::{Error, ErrorKind, State};
use pyo3::prelude::*;
use serde_json::Value;

use crate::hooks::PyState;
use crate::json;

/// The Python dispatcher: `dispatch(state, server, endpoint, request) -> str`, the JSON text
/// of the handler's answer.
pub(crate) struct PyEndpoints {
    dispatch: Py<PyAny>,
}

impl PyEndpoints {
    /// Wraps `dispatch`.
    pub(crate) fn new(dispatch: Py<PyAny>) -> PyEndpoints {
        PyEndpoints { dispatch }
    }

    /// Calls the dispatcher and decodes the JSON it returns.
    fn run(
        &self,
        py: Python<'_>,
        state: &State,
        server: &str,
        endpoint: &str,
        request: &EndpointRequest,
    ) -> PyResult<Value> {
        let request = json::to_python(py, &request.to_json())?;
        let state = PyState::new(state.clone());
        let text: String = self
            .dispatch
            .call1(py, (state, server, endpoint, request))?
            .extract(py)?;
        serde_json::from_str(&text)
            .map_err(|err| pyo3::exceptions::PyValueError::new_err(err.to_string()))
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
    fn call(
        &self,
        state: &State,
        server: &str,
        endpoint: &str,
        request: EndpointRequest,
    ) -> microcluster::Result<Value> {
        Python::try_attach(|py| {
            self.run(py, state, server, endpoint, &request)
                .map_err(|err| handler_failure(py, endpoint, err))
        })
        .unwrap_or_else(|| {
            Err(Error::unavailable(
                "The Python interpreter is shutting down",
            ))
        })
    }
}
