//! Transactions from Python: the `Tx` handle a transaction function gets, SQLite values as
//! Python objects, and the closure core runs for a Python function.

use std::sync::{Arc, Mutex};
use std::thread::ThreadId;

use microcluster::{Error, Tx, Value, sync};
use pyo3::IntoPyObjectExt;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyFloat, PyInt, PyList, PyString, PyTuple};

use crate::error::to_py;

/// A `&mut Tx` lent to Python for the duration of one call of the transaction function.
struct Lent(*mut Tx<'static>);

// SAFETY: the pointer is only dereferenced on the thread that lent it (checked by `PyTx::with`),
// while that thread is inside the transaction function call that the borrow outlives.
unsafe impl Send for Lent {}

/// The handle a transaction function gets: `query` and `execute` on the transaction's
/// database. Valid only during that call and on its thread.
#[pyclass(name = "Tx", module = "microcluster._microcluster", frozen)]
pub struct PyTx {
    lent: Mutex<Option<Lent>>,
    thread: ThreadId,
    /// The last core error a call raised, with the exception it became.
    failure: Mutex<Option<(Error, Py<PyAny>)>>,
}

impl PyTx {
    /// Runs `f` with the lent transaction, without the GIL.
    fn with<R: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut Tx<'_>) -> microcluster::Result<R> + Send,
    ) -> PyResult<R> {
        let result = match std::thread::current().id() == self.thread {
            false => Err(Error::invalid(
                "A Tx can only be used on the thread of its transaction function",
            )),
            true => {
                let lent = sync::lock(&self.lent);
                match lent.as_ref() {
                    None => Err(Error::invalid(
                        "The Tx was used after its transaction function returned",
                    )),
                    Some(lent) => {
                        let lent = Lent(lent.0);
                        py.detach(move || {
                            let lent = lent;
                            // SAFETY: see `Lent`: same thread, inside the lending call.
                            f(unsafe { &mut *lent.0 })
                        })
                    }
                }
            }
        };
        result.map_err(|err| {
            let exception = to_py(py, err.clone());
            *sync::lock(&self.failure) =
                Some((err, exception.value(py).clone().into_any().unbind()));
            exception
        })
    }
}

#[pymethods]
impl PyTx {
    /// Runs a query and returns its rows as tuples of int, float, str, bytes or None.
    #[pyo3(signature = (sql, params = None))]
    fn query<'py>(
        &self,
        py: Python<'py>,
        sql: String,
        params: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyList>> {
        let params = to_values(py, params)?;
        let rows = self.with(py, move |tx| {
            tx.query(&sql, rusqlite::params_from_iter(params))
        })?;
        let rows = rows
            .rows
            .into_iter()
            .map(|row| PyTuple::new(py, row.into_iter().map(|value| from_value(py, value))))
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, rows)
    }

    /// Runs a statement and returns how many rows it changed.
    #[pyo3(signature = (sql, params = None))]
    fn execute(
        &self,
        py: Python<'_>,
        sql: String,
        params: Option<Bound<'_, PyAny>>,
    ) -> PyResult<usize> {
        let params = to_values(py, params)?;
        self.with(py, move |tx| {
            tx.execute(&sql, rusqlite::params_from_iter(params))
        })
    }
}

/// Python parameters (any iterable, or None) as SQLite values.
fn to_values(py: Python<'_>, params: Option<Bound<'_, PyAny>>) -> PyResult<Vec<Value>> {
    let Some(params) = params else {
        return Ok(Vec::new());
    };
    params
        .try_iter()?
        .map(|item| to_value(py, &item?))
        .collect()
}

/// One Python object as an SQLite value: None, bool, int, float, str or bytes.
fn to_value(py: Python<'_>, obj: &Bound<'_, PyAny>) -> PyResult<Value> {
    if obj.is_none() {
        Ok(Value::Null)
    } else if let Ok(flag) = obj.cast::<PyBool>() {
        Ok(Value::Integer(i64::from(flag.is_true())))
    } else if obj.is_instance_of::<PyInt>() {
        Ok(Value::Integer(obj.extract()?))
    } else if obj.is_instance_of::<PyFloat>() {
        Ok(Value::Real(obj.extract()?))
    } else if let Ok(text) = obj.cast::<PyString>() {
        Ok(Value::Text(text.to_str()?.to_string()))
    } else if let Ok(bytes) = obj.cast::<PyBytes>() {
        Ok(Value::Blob(bytes.as_bytes().to_vec()))
    } else {
        let type_name = obj.get_type().name()?;
        Err(to_py(
            py,
            Error::invalid(format!(
                "Unsupported SQL parameter type {type_name}: use int, float, str, bytes or None"
            )),
        ))
    }
}

/// An SQLite value as a Python object.
fn from_value(py: Python<'_>, value: Value) -> Py<PyAny> {
    let converted = match value {
        Value::Null => Ok(py.None()),
        Value::Integer(int) => int.into_py_any(py),
        Value::Real(real) => real.into_py_any(py),
        Value::Text(text) => text.into_py_any(py),
        Value::Blob(blob) => PyBytes::new(py, &blob).into_py_any(py),
    };
    converted.unwrap_or_else(|_| py.None())
}

/// A Python transaction function and the exception it raised, if any.
pub(crate) struct TxFunction {
    func: Py<PyAny>,
    raised: Arc<Mutex<Option<PyErr>>>,
}

impl TxFunction {
    /// Wraps `func(tx)`.
    pub(crate) fn new(func: Py<PyAny>) -> TxFunction {
        TxFunction {
            func,
            raised: Arc::default(),
        }
    }

    /// The closure core runs (perhaps more than once): calls the function with a fresh `Tx`.
    /// A core error the function let through is returned as it is (so that core can retry a
    /// conflict); any other exception is kept for [`TxFunction::result`].
    pub(crate) fn closure(
        &self,
        py: Python<'_>,
    ) -> impl FnMut(&mut Tx<'_>) -> microcluster::Result<Py<PyAny>> + Send + 'static {
        let func = self.func.clone_ref(py);
        let raised = self.raised.clone();
        move |tx: &mut Tx<'_>| {
            Python::try_attach(|py| {
                let lent = Lent((tx as *mut Tx<'_>).cast::<Tx<'static>>());
                let handle = Bound::new(
                    py,
                    PyTx {
                        lent: Mutex::new(Some(lent)),
                        thread: std::thread::current().id(),
                        failure: Mutex::new(None),
                    },
                )
                .map_err(|err| Error::internal(format!("Cannot create the Tx: {err}")))?;
                let result = func.call1(py, (&handle,));
                let handle = handle.get();
                *sync::lock(&handle.lent) = None;
                let failure = sync::lock(&handle.failure).take();
                match result {
                    Ok(value) => Ok(value),
                    Err(err) => match failure {
                        Some((core, exception)) if err.value(py).is(&exception) => Err(core),
                        _ => {
                            let message = err.to_string();
                            *sync::lock(&raised) = Some(err);
                            Err(Error::internal(message))
                        }
                    },
                }
            })
            .unwrap_or_else(|| {
                Err(Error::unavailable(
                    "The Python interpreter is shutting down",
                ))
            })
        }
    }

    /// The transaction's outcome for Python: the function's result, the exception it raised,
    /// or the core error as a `microcluster` exception.
    pub(crate) fn result(self, result: PyResult<Py<PyAny>>) -> PyResult<Py<PyAny>> {
        result.map_err(|err| sync::lock(&self.raised).take().unwrap_or(err))
    }
}
