//! Lifecycle hooks as Python callables, through core's `BlockingHooks`, and the `State` they
//! get.

use microcluster::db::tx::DEFAULT_TIMEOUT;
use microcluster::{BlockingHooks, Error, HookEvent, ReadMode, State};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::error::{hook_failure, to_py};
use crate::json;
use crate::tx::TxFunction;

/// What a hook can see and do on its member.
#[pyclass(name = "State", module = "microcluster._microcluster", frozen)]
pub struct PyState {
    state: State,
}

impl PyState {
    /// The Python view of `state`.
    pub(crate) fn new(state: State) -> PyState {
        PyState { state }
    }
}

#[pymethods]
impl PyState {
    /// This member's name (the host name before init).
    #[getter]
    fn name(&self) -> String {
        self.state.name()
    }

    /// This member's address, `IP:port` (empty before init).
    #[getter]
    fn address(&self) -> String {
        self.state.address()
    }

    /// Runs `func(tx)` as a serializable transaction and returns its result (see
    /// `App.transaction`).
    fn transaction(&self, py: Python<'_>, func: Py<PyAny>) -> PyResult<Py<PyAny>> {
        let func = TxFunction::new(func);
        let closure = func.closure(py);
        let state = self.state.clone();
        let result = py
            .detach(move || {
                state.transaction_blocking(ReadMode::Linearizable, DEFAULT_TIMEOUT, closure)
            })
            .map_err(|err| to_py(py, err));
        func.result(result)
    }

    /// The cluster members as the database has them (dicts, without status).
    fn cluster_members(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let state = self.state.clone();
        let members = py
            .detach(move || state.cluster_members_blocking())
            .map_err(|err| to_py(py, err))?;
        json::to_python(py, &members)
    }
}

/// The Python hooks object (a `microcluster.Hooks` or anything with the same attributes).
pub(crate) struct PyHooks {
    hooks: Py<PyAny>,
}

impl PyHooks {
    /// Wraps `hooks`.
    pub(crate) fn new(hooks: Py<PyAny>) -> PyHooks {
        PyHooks { hooks }
    }

    /// Calls the hook for `event`, if set, with the state and the event's arguments as keyword
    /// arguments; a coroutine it returns runs to completion with `asyncio.run`.
    fn run(&self, py: Python<'_>, state: &State, event: &HookEvent) -> PyResult<()> {
        let attribute = match event {
            HookEvent::Reset { .. } => "on_reset".to_string(),
            _ => event.name().replace('-', "_"),
        };
        let Some(hook) = self.hooks.bind(py).getattr_opt(attribute)? else {
            return Ok(());
        };
        if hook.is_none() {
            return Ok(());
        }
        let kwargs = json::to_python(py, &event.args_json())?;
        let kwargs = kwargs.bind(py).cast::<PyDict>()?;
        let state = PyState {
            state: state.clone(),
        };
        let returned = hook.call((state,), Some(kwargs))?;
        if py
            .import("inspect")?
            .call_method1("iscoroutine", (&returned,))?
            .is_truthy()?
        {
            py.import("asyncio")?.call_method1("run", (returned,))?;
        }
        Ok(())
    }
}

impl BlockingHooks for PyHooks {
    fn call(&self, state: &State, event: HookEvent) -> microcluster::Result<()> {
        Python::try_attach(|py| {
            self.run(py, state, &event)
                .map_err(|err| hook_failure(py, event.name(), err))
        })
        .unwrap_or_else(|| {
            Err(Error::unavailable(
                "The Python interpreter is shutting down",
            ))
        })
    }
}
