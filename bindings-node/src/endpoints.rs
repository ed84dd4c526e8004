//! Extension endpoints answered (and their access checked) by JavaScript: core's
//! `BlockingEndpoints` calling the one dispatcher the `index.js` facade built from the
//! application's servers, through a weak, non-error-first ThreadsafeFunction whose Promise the
//! blocking thread waits for.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use microcluster::extensions::{
    BlockingEndpoints, EndpointCall, access_handler_name, handler_name,
};
use microcluster::{Error, ErrorKind};
use napi::Status;
use napi::bindgen_prelude::{FnArgs, Promise};
use napi::threadsafe_function::ThreadsafeFunction;
use serde_json::Value;

use crate::hooks::JsState;

/// The dispatcher as the addon receives it: `(state, server, endpoint, request, access) =>
/// Promise<{ ok } | { error: { message, status?, code? } }>` (the facade never rejects), where
/// `access` asks for the action's access handler instead of its handler.
pub(crate) type EndpointFunction = ThreadsafeFunction<
    FnArgs<DispatchArgs>,
    Promise<Value>,
    FnArgs<DispatchArgs>,
    Status,
    false,
    true,
>;

/// The dispatcher's arguments: state, server, endpoint, request and whether to check access.
type DispatchArgs = (JsState, String, String, Value, bool);

/// Core's [`BlockingEndpoints`] over the JavaScript dispatcher; refuses to call JavaScript
/// once `closed` is set (by `app.stop()`).
pub(crate) struct JsEndpoints {
    dispatch: Arc<EndpointFunction>,
    closed: Arc<AtomicBool>,
}

impl JsEndpoints {
    /// Endpoints answered by `dispatch` until `closed` is set.
    pub(crate) fn new(dispatch: EndpointFunction, closed: Arc<AtomicBool>) -> JsEndpoints {
        JsEndpoints {
            dispatch: Arc::new(dispatch),
            closed,
        }
    }

    /// What the handler (or, with `access`, the access handler) of `endpoint` resolved with,
    /// on a blocking thread of core's runtime (see `BlockingEndpoints`): waiting is allowed.
    fn dispatch(&self, call: EndpointCall<'_>, access: bool) -> microcluster::Result<Value> {
        let what = if access {
            access_handler_name(call.endpoint)
        } else {
            handler_name(call.endpoint)
        };
        if self.closed.load(Ordering::SeqCst) {
            return Err(Error::unavailable(format!(
                "{what} was not run: the app was stopped"
            )));
        }
        let args = FnArgs::from((
            JsState::new(call.state.clone()),
            call.server.to_string(),
            call.endpoint.to_string(),
            call.request.to_json(),
            access,
        ));
        let dispatch = self.dispatch.clone();
        let outcome = tokio::runtime::Handle::current().block_on(async move {
            let settled = dispatch.call_async_catch(args).await?;
            settled.await
        });
        let outcome =
            outcome.map_err(|err| Error::internal(format!("{what} failed: {}", err.reason)))?;
        match outcome.get("error") {
            Some(error) => Err(failure(&what, error)),
            None => Ok(outcome.get("ok").cloned().unwrap_or(Value::Null)),
        }
    }
}

/// The core error for the facade's `{ error: { message, status, code } }` of `what` (the
/// endpoint or its access handler): an HTTP error status (400–599) is kept, else a `code`
/// naming a core kind (`MC_NOT_FOUND` or `NOT_FOUND`) gives its status, else it is a 500.
fn failure(what: &str, error: &Value) -> Error {
    let message = error["message"].as_str().unwrap_or_default().to_string();
    let status = error["status"]
        .as_u64()
        .and_then(|status| u16::try_from(status).ok())
        .filter(|status| (400..600).contains(status));
    let kind = error["code"]
        .as_str()
        .map(|code| code.strip_prefix("MC_").unwrap_or(code))
        .and_then(ErrorKind::from_code);
    match (status, kind) {
        (Some(status), _) => Error::from_status(status, message),
        (None, Some(kind)) => Error::new(kind, message),
        (None, None) => Error::internal(format!("{what} failed: {message}")),
    }
}

impl BlockingEndpoints for JsEndpoints {
    fn call(&self, call: EndpointCall<'_>) -> microcluster::Result<Value> {
        self.dispatch(call, false)
    }

    fn access(&self, call: EndpointCall<'_>) -> microcluster::Result<bool> {
        let what = access_handler_name(call.endpoint);
        let allowed = self.dispatch(call, true)?;
        allowed
            .as_bool()
            .ok_or_else(|| Error::internal(format!("{what} returned {allowed}, not a boolean")))
    }
}
