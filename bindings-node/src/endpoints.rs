//! Extension endpoints answered by JavaScript: core's `BlockingEndpoints` calling the one
//! dispatcher the `index.js` facade built from the application's servers, through a weak,
//! non-error-first ThreadsafeFunction whose Promise the blocking thread waits for.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use microcluster::extensions::{BlockingEndpoints, EndpointRequest};
use microcluster::{Error, ErrorKind, State};
use napi::Status;
use napi::bindgen_prelude::{FnArgs, Promise};
use napi::threadsafe_function::ThreadsafeFunction;
use serde_json::Value;

use crate::hooks::JsState;

/// The dispatcher as the addon receives it: `(state, server, endpoint, request) =>
/// Promise<{ ok } | { error: { message, status?, code? } }>` (the facade never rejects).
pub(crate) type EndpointFunction = ThreadsafeFunction<
    FnArgs<(JsState, String, String, Value)>,
    Promise<Value>,
    FnArgs<(JsState, String, String, Value)>,
    Status,
    false,
    true,
>;

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
}

/// The core error for the facade's `{ error: { message, status, code } }`: an HTTP error
/// status (400–599) is kept, else a `code` naming a core kind (`MC_NOT_FOUND` or
/// `NOT_FOUND`) gives its status, else it is a 500.
fn failure(endpoint: &str, error: &Value) -> Error {
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
        (None, None) => Error::internal(format!("The {endpoint} endpoint failed: {message}")),
    }
}

impl BlockingEndpoints for JsEndpoints {
    fn call(
        &self,
        state: &State,
        server: &str,
        endpoint: &str,
        request: EndpointRequest,
    ) -> microcluster::Result<Value> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(Error::unavailable(format!(
                "The {endpoint} endpoint was not run: the app was stopped"
            )));
        }
        let failed = |err: napi::Error| {
            Error::internal(format!("The {endpoint} endpoint failed: {}", err.reason))
        };
        let args = FnArgs::from((
            JsState::new(state.clone()),
            server.to_string(),
            endpoint.to_string(),
            request.to_json(),
        ));
        let dispatch = self.dispatch.clone();
        // A blocking thread of core's runtime (see `BlockingEndpoints`): waiting is allowed.
        let outcome = tokio::runtime::Handle::current().block_on(async move {
            let settled = dispatch.call_async_catch(args).await?;
            settled.await
        });
        let outcome = outcome.map_err(failed)?;
        match outcome.get("error") {
            Some(error) => Err(failure(endpoint, error)),
            None => Ok(outcome.get("ok").cloned().unwrap_or(Value::Null)),
        }
    }
}
