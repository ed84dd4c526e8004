//! Core errors as JavaScript `Error`s with a stable string `code`, and Promises settled by
//! futures that run on core's runtime.

use std::future::Future;

use microcluster::{Error, ErrorKind, runtime};
use napi::bindgen_prelude::{Object, ToNapiValue};
use napi::{Env, JsError, Unknown};

/// The `code` of the JavaScript errors for `kind`: `MC_` and core's stable kind name
/// (`MC_NOT_FOUND`, `MC_INVALID_ARGUMENT`, `MC_CONFLICT`, `MC_UNAVAILABLE`, `MC_TIMEOUT`, …).
pub(crate) fn code(kind: ErrorKind) -> String {
    format!("MC_{}", kind.as_str())
}

/// `err` as a JavaScript `Error` with `code` (see [`code`]), wrapped so that napi throws or
/// rejects with that very object.
pub(crate) fn to_js(env: &Env, err: &Error) -> napi::Error {
    let js = JsError::from(napi::Error::new(
        code(err.kind()),
        err.message().to_string(),
    ));
    let value: Unknown<'_> = js.into_unknown(*env);
    napi::Error::from(value)
}

/// A Promise settled on the JavaScript thread with the outcome of `fut`, which runs on core's
/// runtime.
pub(crate) fn promise<'env, T, F>(env: &'env Env, fut: F) -> napi::Result<Object<'env>>
where
    T: ToNapiValue + Send + 'static,
    F: Future<Output = microcluster::Result<T>> + Send + 'static,
{
    let (deferred, promise) = env.create_deferred()?;
    runtime::handle().spawn(async move {
        let outcome = fut.await;
        deferred.resolve(move |env| outcome.map_err(|err| to_js(&env, &err)));
    });
    Ok(promise)
}
