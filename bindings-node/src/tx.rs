//! Transactions from JavaScript: core runs the transaction closure on a blocking thread,
//! which calls the (async) JavaScript function through a ThreadsafeFunction and then serves
//! the `query`/`execute` requests that function's `Tx` sends back over a channel, until the
//! function's Promise settles.

use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};

use microcluster::{Error, Tx, Value, sync};
use napi::bindgen_prelude::{
    BigInt, Buffer, FromNapiValue, Null, Promise, ToNapiValue, Uint8Array, Unknown,
};
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi::{Env, JsDeferred, Status, ValueType, sys};
use napi_derive::napi;

use crate::error::to_js;

/// The largest integer a JavaScript number holds exactly (`Number.MAX_SAFE_INTEGER`).
const MAX_SAFE_INTEGER: i64 = (1 << 53) - 1;

/// A transaction function as the addon receives it: `(tx) => Promise<void>` (the facade makes
/// every user function async).
pub(crate) type TxFunction = ThreadsafeFunction<JsTx, Promise<()>, JsTx, Status, false>;

/// What settles a `query` Promise.
type RowsResolver = Box<dyn FnOnce(Env) -> napi::Result<Vec<Vec<SqlValue>>> + Send>;

/// What settles an `execute` Promise.
type ChangedResolver = Box<dyn FnOnce(Env) -> napi::Result<i64> + Send>;

/// A message to the blocking thread that owns the transaction.
enum Request {
    /// `tx.query(sql, params)`.
    Query(
        String,
        Vec<Value>,
        JsDeferred<Vec<Vec<SqlValue>>, RowsResolver>,
    ),
    /// `tx.execute(sql, params)`.
    Execute(String, Vec<Value>, JsDeferred<i64, ChangedResolver>),
    /// The function's Promise settled: `Ok` or the rejection's message.
    Done(Result<(), String>),
}

/// The handle a transaction function gets: `query` and `execute` on the transaction's
/// database, valid until the function's Promise settles.
#[napi(js_name = "Tx")]
pub struct JsTx {
    requests: Mutex<Sender<Request>>,
}

impl JsTx {
    /// Sends a request; fails once the transaction function has settled.
    fn send(&self, request: Request) -> Result<(), Error> {
        sync::lock(&self.requests)
            .send(request)
            .map_err(|_| Error::invalid("The Tx was used after its transaction function settled"))
    }
}

#[napi]
impl JsTx {
    /// Runs a query; resolves with its rows, each an array of values.
    #[napi(catch_unwind, ts_return_type = "Promise<Array<Array<SqlValue>>>")]
    pub fn query<'env>(
        &self,
        env: &'env Env,
        sql: String,
        #[napi(ts_arg_type = "Array<SqlValue>")] params: Option<Vec<Unknown<'_>>>,
    ) -> napi::Result<napi::bindgen_prelude::Object<'env>> {
        let params = to_values(params)?;
        let (deferred, promise) = env.create_deferred::<Vec<Vec<SqlValue>>, RowsResolver>()?;
        if let Err(err) = self.send(Request::Query(sql, params, deferred)) {
            return Err(to_js(env, &err));
        }
        Ok(promise)
    }

    /// Runs a statement; resolves with how many rows it changed.
    #[napi(catch_unwind, ts_return_type = "Promise<number>")]
    pub fn execute<'env>(
        &self,
        env: &'env Env,
        sql: String,
        #[napi(ts_arg_type = "Array<SqlValue>")] params: Option<Vec<Unknown<'_>>>,
    ) -> napi::Result<napi::bindgen_prelude::Object<'env>> {
        let params = to_values(params)?;
        let (deferred, promise) = env.create_deferred::<i64, ChangedResolver>()?;
        if let Err(err) = self.send(Request::Execute(sql, params, deferred)) {
            return Err(to_js(env, &err));
        }
        Ok(promise)
    }
}

/// JavaScript parameters as SQLite values.
fn to_values(params: Option<Vec<Unknown<'_>>>) -> napi::Result<Vec<Value>> {
    params
        .unwrap_or_default()
        .into_iter()
        .map(to_value)
        .collect()
}

/// One JavaScript value as an SQLite value: null/undefined, boolean (0/1), number (integer
/// when it is a safe integer), bigint, string, or Buffer/Uint8Array.
fn to_value(value: Unknown<'_>) -> napi::Result<Value> {
    let invalid = |what: &str| {
        napi::Error::new(
            Status::InvalidArg,
            format!(
                "Unsupported SQL parameter type {what}: use null, boolean, number, bigint, string or Uint8Array"
            ),
        )
    };
    Ok(match value.get_type()? {
        ValueType::Null | ValueType::Undefined => Value::Null,
        ValueType::Boolean => Value::Integer(i64::from(bool::from_unknown(value)?)),
        ValueType::Number => {
            let number = f64::from_unknown(value)?;
            if number.fract() == 0.0 && number.abs() <= MAX_SAFE_INTEGER as f64 {
                Value::Integer(number as i64)
            } else {
                Value::Real(number)
            }
        }
        ValueType::BigInt => {
            let (int, lossless) = BigInt::from_unknown(value)?.get_i64();
            if !lossless {
                return Err(invalid("bigint outside the 64-bit range"));
            }
            Value::Integer(int)
        }
        ValueType::String => Value::Text(String::from_unknown(value)?),
        ValueType::Object => match Uint8Array::from_unknown(value) {
            Ok(bytes) => Value::Blob(bytes.to_vec()),
            Err(_) => return Err(invalid("object")),
        },
        other => return Err(invalid(&other.to_string())),
    })
}

/// An SQLite value for JavaScript: null, number (bigint outside the safe range), string or
/// Buffer.
pub(crate) struct SqlValue(Value);

impl ToNapiValue for SqlValue {
    unsafe fn to_napi_value(env: sys::napi_env, val: Self) -> napi::Result<sys::napi_value> {
        // SAFETY: napi calls this on the JavaScript thread of `env`.
        unsafe {
            match val.0 {
                Value::Null => Null::to_napi_value(env, Null),
                Value::Integer(int) if int.abs() <= MAX_SAFE_INTEGER => {
                    i64::to_napi_value(env, int)
                }
                Value::Integer(int) => BigInt::to_napi_value(env, BigInt::from(int)),
                Value::Real(real) => f64::to_napi_value(env, real),
                Value::Text(text) => String::to_napi_value(env, text),
                Value::Blob(blob) => Buffer::to_napi_value(env, Buffer::from(blob)),
            }
        }
    }
}

/// The closure core runs (perhaps more than once, after conflicts): calls `function` with a
/// fresh `Tx` and serves its requests until the function's Promise settles.
pub(crate) fn closure(
    function: TxFunction,
) -> impl FnMut(&mut Tx<'_>) -> microcluster::Result<()> + Send + 'static {
    let function = Arc::new(function);
    move |tx: &mut Tx<'_>| {
        let (requests, received) = channel();
        let done = requests.clone();
        let handle = JsTx {
            requests: Mutex::new(requests),
        };
        let status = function.call_with_return_value(
            handle,
            ThreadsafeFunctionCallMode::NonBlocking,
            move |returned: napi::Result<Promise<()>>, _env| {
                match returned {
                    Ok(settled) => {
                        microcluster::runtime::handle().spawn(async move {
                            let outcome = settled.await.map_err(|err| err.reason.clone());
                            let _ = done.send(Request::Done(outcome));
                        });
                    }
                    Err(err) => {
                        let _ = done.send(Request::Done(Err(err.reason.clone())));
                    }
                }
                Ok(())
            },
        );
        if status != Status::Ok {
            return Err(Error::unavailable(format!(
                "Cannot call the transaction function: {status}"
            )));
        }
        serve(tx, &received)
    }
}

/// Answers the function's requests on `tx` until it settles. A rejection caused by an error of
/// this transaction's own statements returns that error (so that core retries what it can
/// retry); any other rejection is `Internal` with the rejection's message.
fn serve(tx: &mut Tx<'_>, received: &Receiver<Request>) -> microcluster::Result<()> {
    let mut failed: Option<Error> = None;
    loop {
        match received.recv() {
            Ok(Request::Query(sql, params, deferred)) => {
                let rows = tx
                    .query(&sql, rusqlite::params_from_iter(params))
                    .map(|rows| {
                        rows.rows
                            .into_iter()
                            .map(|row| row.into_iter().map(SqlValue).collect())
                            .collect::<Vec<Vec<_>>>()
                    });
                if let Err(err) = &rows {
                    failed = Some(err.clone());
                }
                deferred.resolve(Box::new(move |env| rows.map_err(|err| to_js(&env, &err))));
            }
            Ok(Request::Execute(sql, params, deferred)) => {
                let changed = tx
                    .execute(&sql, rusqlite::params_from_iter(params))
                    .map(|changed| i64::try_from(changed).unwrap_or(i64::MAX));
                if let Err(err) = &changed {
                    failed = Some(err.clone());
                }
                deferred.resolve(Box::new(move |env| {
                    changed.map_err(|err| to_js(&env, &err))
                }));
            }
            Ok(Request::Done(Ok(()))) => return Ok(()),
            Ok(Request::Done(Err(message))) => {
                return Err(match failed {
                    Some(err) if message.contains(err.message()) => err,
                    _ => Error::internal(message),
                });
            }
            Err(_) => return Err(Error::internal("The transaction function went away")),
        }
    }
}
