//! `App`: one cluster member for a state directory, its daemon's lifecycle and the operations
//! core's `App` offers, as blocking methods that release the GIL.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use microcluster::{App, Args, DaemonArgs, DaemonSlot, Error, HookGate, HookSet, Spawned};
use pyo3::prelude::*;
use pyo3::types::{PyFloat, PyInt};

use microcluster::extensions::{BlockingEndpoints, ServerSpec};

use crate::block::block;
use crate::endpoints::PyEndpoints;
use crate::error::to_py;
use crate::hooks::PyHooks;
use crate::json;
use crate::tx::TxFunction;

/// The default validity of a join token.
const DEFAULT_TOKEN_VALIDITY: Duration = Duration::from_secs(3 * 3600);

/// A daemon started by `App.start`, with its hook gate.
struct Daemon {
    spawned: Spawned,
    gate: Arc<HookGate>,
}

/// A duration given as `datetime.timedelta` or as float seconds.
fn duration(value: &Bound<'_, PyAny>) -> PyResult<Duration> {
    if value.is_instance_of::<PyFloat>() || value.is_instance_of::<PyInt>() {
        let seconds: f64 = value.extract()?;
        return Duration::try_from_secs_f64(seconds).map_err(|err| {
            to_py(
                value.py(),
                Error::invalid(format!("Invalid duration {seconds} s: {err}")),
            )
        });
    }
    value.extract()
}

/// One cluster member: a state directory and, once started, its daemon running in this
/// process on the library's runtime.
#[pyclass(name = "App", module = "microcluster._microcluster", frozen, weakref)]
pub struct PyApp {
    app: Arc<App>,
    daemon: DaemonSlot<Arc<HookGate>>,
}

impl PyApp {
    /// The daemon started by the latest `start`, if any.
    fn daemon(&self) -> Option<Daemon> {
        let (spawned, gate) = self.daemon.current()?;
        Some(Daemon { spawned, gate })
    }

    /// Runs `f` with the core app on the runtime and waits for it (see [`block`]).
    fn call<T, F, Fut>(&self, py: Python<'_>, f: F) -> PyResult<T>
    where
        F: FnOnce(Arc<App>) -> Fut,
        Fut: Future<Output = microcluster::Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        block(py, f(self.app.clone()))
    }
}

#[pymethods]
impl PyApp {
    /// Opens (creating if needed) the member's state directory; contacts nothing.
    #[new]
    fn new(py: Python<'_>, state_dir: PathBuf) -> PyResult<Self> {
        let app = App::new(Args {
            state_dir: Some(state_dir),
            socket_group: None,
        })
        .map_err(|err| to_py(py, err))?;
        Ok(PyApp {
            app: Arc::new(app),
            daemon: DaemonSlot::default(),
        })
    }

    /// Starts the member's daemon and returns at once; `ready()` waits until it serves,
    /// `stop()` stops it, `wait()` waits for its end. `extension_servers` is a sequence of
    /// `microcluster.ExtensionServer` and `endpoints` one of `microcluster.Endpoint`, served
    /// under `/1.0/` (see there).
    #[pyo3(signature = (version, *, hooks = None, schema_updates = Vec::new(), api_extensions = Vec::new(), heartbeat = None, extension_servers = None, endpoints = None))]
    #[expect(
        clippy::too_many_arguments,
        reason = "they are the keyword arguments of App.start in Python"
    )]
    fn start(
        slf: &Bound<'_, Self>,
        version: String,
        hooks: Option<Py<PyAny>>,
        schema_updates: Vec<String>,
        api_extensions: Vec<String>,
        heartbeat: Option<Bound<'_, PyAny>>,
        extension_servers: Option<Bound<'_, PyAny>>,
        endpoints: Option<Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let heartbeat_interval = heartbeat
            .map(|heartbeat| duration(&heartbeat))
            .transpose()?
            .unwrap_or_default();
        let gate = Arc::new(HookGate::default());
        let extension_servers = match (extension_servers, endpoints) {
            (None, None) => Vec::new(),
            (servers, endpoints) => {
                let (specs, dispatch, access): (String, Py<PyAny>, Py<PyAny>) = py
                    .import("microcluster._endpoints")?
                    .call_method1("compile_servers", (servers, endpoints))?
                    .extract()?;
                let dispatch: Arc<dyn BlockingEndpoints> =
                    Arc::new(PyEndpoints::new(dispatch, access));
                ServerSpec::parse_list(&specs)
                    .and_then(|specs| ServerSpec::build_all(specs, dispatch, gate.clone()))
                    .map_err(|err| to_py(py, err))?
            }
        };
        py.import("microcluster._lifecycle")?
            .call_method1("track", (slf,))?;
        let args = DaemonArgs {
            version,
            heartbeat_interval,
            api_extensions,
            schema_updates,
            hooks: hooks.map_or_else(HookSet::default, |hooks| {
                HookSet::blocking(PyHooks::new(hooks), gate.clone())
            }),
            extension_servers,
            ..DaemonArgs::default()
        };
        this.daemon
            .start(&this.app, args, gate)
            .map_err(|err| to_py(py, err))
    }

    /// Stops the daemon this app started and waits until it has ended and no hook of it runs
    /// any more. Does nothing when it is not running (idempotent).
    fn stop(&self, py: Python<'_>) -> PyResult<()> {
        let Some(daemon) = self.daemon() else {
            return Ok(());
        };
        let spawned = daemon.spawned.clone();
        self.call(py, move |_| async move { spawned.stop().await })?;
        py.detach(|| daemon.gate.close());
        Ok(())
    }

    /// Waits until the daemon has ended (by `stop()`, a shutdown request or a failure) and
    /// raises the error it failed with, if any.
    fn wait(&self, py: Python<'_>) -> PyResult<()> {
        let daemon = self
            .daemon()
            .ok_or_else(|| to_py(py, Error::invalid("The app was not started (App.start)")))?;
        let spawned = daemon.spawned.clone();
        let result = block(py, async move { spawned.finished().await });
        if !matches!(&result, Err(err) if err.is_instance_of::<pyo3::exceptions::PyKeyboardInterrupt>(py))
        {
            py.detach(|| daemon.gate.close());
        }
        result
    }

    /// Waits until the daemon is ready, for at most `timeout` (timedelta or float seconds;
    /// None: no limit). Raises `TimeoutError` when not ready in time, `UnavailableError` when
    /// the daemon has ended.
    #[pyo3(signature = (timeout = None))]
    fn ready(&self, py: Python<'_>, timeout: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        let timeout = timeout.map(|timeout| duration(&timeout)).transpose()?;
        let spawned = self.daemon().map(|daemon| daemon.spawned);
        self.call(py, move |app| async move {
            match spawned {
                Some(spawned) => spawned.ready(timeout).await,
                None => app.ready(timeout).await,
            }
        })
    }

    /// The member's status: `{"name", "address", "version", "ready", "extensions"}`.
    fn status(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let status = self.call(py, |app| async move { app.status().await })?;
        json::to_python(py, &status)
    }

    /// Bootstraps a new cluster with this member, named `name`, at `address` (`IP:port`);
    /// `config` is handed to the init hooks.
    #[pyo3(signature = (name, address, config = None))]
    fn new_cluster(
        &self,
        py: Python<'_>,
        name: String,
        address: String,
        config: Option<BTreeMap<String, String>>,
    ) -> PyResult<()> {
        let config = config.unwrap_or_default();
        self.call(py, move |app| async move {
            app.new_cluster(&name, &address, config).await
        })
    }

    /// Joins the cluster that issued `token`, as `name` at `address`.
    #[pyo3(signature = (name, address, token, config = None))]
    fn join_cluster(
        &self,
        py: Python<'_>,
        name: String,
        address: String,
        token: String,
        config: Option<BTreeMap<String, String>>,
    ) -> PyResult<()> {
        let config = config.unwrap_or_default();
        self.call(py, move |app| async move {
            app.join_cluster(&name, &address, &token, config).await
        })
    }

    /// Issues a join token for the member `name`, valid for `expire_after` (timedelta or float
    /// seconds; zero: until used or revoked).
    #[pyo3(signature = (name, expire_after = None))]
    fn new_join_token(
        &self,
        py: Python<'_>,
        name: String,
        expire_after: Option<Bound<'_, PyAny>>,
    ) -> PyResult<String> {
        let expire_after = expire_after
            .map(|expire_after| duration(&expire_after))
            .transpose()?
            .unwrap_or(DEFAULT_TOKEN_VALIDITY);
        self.call(py, move |app| async move {
            app.new_join_token(&name, expire_after).await
        })
    }

    /// The join tokens that have not expired: dicts `{"name", "token", "expires_at"}`.
    fn join_tokens(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let tokens = self.call(py, |app| async move { app.join_tokens().await })?;
        json::to_python(py, &tokens)
    }

    /// Revokes the join token issued for `name` (`NotFoundError` when there is none).
    fn revoke_join_token(&self, py: Python<'_>, name: String) -> PyResult<()> {
        self.call(
            py,
            move |app| async move { app.revoke_join_token(&name).await },
        )
    }

    /// The cluster members with role and status, as dicts.
    fn cluster_members(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let members = self.call(py, |app| async move { app.cluster_members().await })?;
        json::to_python(py, &members)
    }

    /// Removes the member `name`; `force` ignores its failures, `address` also removes
    /// orphans at that address.
    #[pyo3(signature = (name, force = false, address = None))]
    fn remove_cluster_member(
        &self,
        py: Python<'_>,
        name: String,
        force: bool,
        address: Option<String>,
    ) -> PyResult<()> {
        self.call(py, move |app| async move {
            app.remove_cluster_member(&name, force, address.as_deref())
                .await
        })
    }

    /// The members as this member's own `database/` has them (SPEC §14.1), as dicts
    /// `{"id", "name", "address", "role"}` sorted by name; works with the daemon stopped.
    fn local_members(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let members = self.app.local_members().map_err(|err| to_py(py, err))?;
        json::to_python(py, &members)
    }

    /// Quorum-loss recovery (SPEC §14.2), with every member's daemon stopped: rewrites this
    /// member's Raft membership to exactly `members` (the `local_members()` list with edited
    /// roles and addresses) and returns the path of the recovery tarball, to copy into every
    /// other surviving member's state directory before it starts.
    fn recover(&self, py: Python<'_>, members: Bound<'_, PyAny>) -> PyResult<String> {
        let members = json::from_python(&members)?;
        let members = serde_json::from_value(members).map_err(|err| {
            let message = format!("Invalid members: {err}");
            to_py(py, microcluster::Error::invalid(message))
        })?;
        let path = self.call(py, move |app| async move {
            app.recover_from_quorum_loss(members).await
        })?;
        Ok(path.to_string_lossy().into_owned())
    }

    /// Runs `query` through the SQL API: `{"Results": [{"type", "columns", "rows",
    /// "rows_affected"}, ...]}`.
    fn sql(&self, py: Python<'_>, query: String) -> PyResult<Py<PyAny>> {
        let results = self.call(py, move |app| async move { app.sql(&query).await })?;
        json::to_python(py, &results)
    }

    /// Runs `func(tx)` as a serializable transaction on the replicated database and returns
    /// its result; `func` may run more than once (after conflicts).
    fn transaction(&self, py: Python<'_>, func: Py<PyAny>) -> PyResult<Py<PyAny>> {
        let func = TxFunction::new(func);
        let closure = func.closure(py);
        let result = self.call(py, move |app| async move { app.transaction(closure).await });
        func.result(result)
    }

    /// Sends `method path` (e.g. `"GET"`, `"/1.0/hello?target=c2"`) with the JSON-able `body`
    /// to the member's control socket and returns the answer's `metadata`: extension endpoints
    /// served there (`serve_unix=True`) and the REST API alike. An error answer raises the
    /// exception of its status (`NotFoundError` for 404, ...).
    #[pyo3(signature = (method, path, body = None))]
    fn query(
        &self,
        py: Python<'_>,
        method: String,
        path: String,
        body: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let body = body.map(|body| json::from_python(&body)).transpose()?;
        let answer = self.call(py, move |app| async move {
            app.query(&method, &path, body).await
        })?;
        json::to_python(py, &answer)
    }

    /// Returns the app itself.
    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    /// Stops the daemon (see `stop`).
    #[pyo3(signature = (*_exc_info))]
    fn __exit__(
        &self,
        py: Python<'_>,
        _exc_info: Bound<'_, pyo3::types::PyTuple>,
    ) -> PyResult<bool> {
        self.stop(py)?;
        Ok(false)
    }
}
