//! Core's serializable values (status, members, tokens, SQL results, hook arguments) as plain
//! Python dicts and lists, through the `json` module.

use pyo3::prelude::*;
use serde::Serialize;

/// `value` as the Python object `json.loads` makes of its JSON.
pub(crate) fn to_python(py: Python<'_>, value: &impl Serialize) -> PyResult<Py<PyAny>> {
    let text = serde_json::to_string(value)
        .map_err(|err| pyo3::exceptions::PyValueError::new_err(err.to_string()))?;
    Ok(py.import("json")?.call_method1("loads", (text,))?.unbind())
}

/// The JSON value of a JSON-able Python object, through `json.dumps` (which raises
/// `TypeError` for anything else).
pub(crate) fn from_python(value: &Bound<'_, PyAny>) -> PyResult<serde_json::Value> {
    let py = value.py();
    let text: String = py
        .import("json")?
        .call_method1("dumps", (value,))?
        .extract()?;
    serde_json::from_str(&text)
        .map_err(|err| pyo3::exceptions::PyValueError::new_err(err.to_string()))
}
