//! Transactions from C: `mc_app_transaction` runs a C function with an `mc_tx`, on which
//! `mc_tx_query` and `mc_tx_execute` run SQL with parameters and rows as JSON.

use std::ffi::{c_char, c_int, c_void};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use microcluster_core::db::sql_text::value_to_json;
use microcluster_core::db::tx::DEFAULT_TIMEOUT;
use microcluster_core::{ReadMode, Tx, Value};
use rusqlite::types::ValueRef;
use serde_json::json;

use crate::app::mc_app;
use crate::boundary::{self, Out, UserData, arg, arg_mut, invalid, json_arg, str_arg};
use crate::error::{Failure, callback_result, mc_error, mc_result};
use crate::hooks::mc_state;

/// The key of the JSON object that stands for a BLOB: `{"blob_base64": "<standard base64>"}`.
const BLOB_KEY: &str = "blob_base64";

/// A transaction in progress, handed to an `mc_tx_fn`. Valid only during that call.
pub struct mc_tx<'a, 'c> {
    tx: &'a mut Tx<'c>,
}

/// The body of a transaction. `userdata` is the one given to `mc_app_transaction`; `tx` is valid
/// only during the call. Return 0 to commit what the function did; non-zero rolls it back and
/// makes `mc_app_transaction` fail with the message of the error left in `*err` (by
/// `mc_error_set`, or by a failed `mc_tx_*` call given the same `err`), or with a generic one.
/// The code travels as its HTTP class: `MC_ERR_NULL_ARGUMENT` and `MC_ERR_INVALID_UTF8` arrive
/// as `MC_ERR_INVALID_ARGUMENT`, like any bad input.
///
/// The function may run **more than once**: after a conflict with concurrent writers the library
/// runs it again on fresh state (a bounded number of times). Keep side effects outside the
/// database idempotent, and rely only on the outcome of the run that returns 0 last.
pub type mc_tx_fn = Option<
    unsafe extern "C" fn(
        userdata: *mut c_void,
        tx: *mut mc_tx<'_, '_>,
        err: *mut *mut mc_error,
    ) -> c_int,
>;

/// Runs `func` as a serializable transaction on the replicated database, with reads that see every
/// write acknowledged before it began, and returns once its changes (if any) are committed
/// through the Raft log. The daemon must run in this process (`MC_ERR_UNAVAILABLE` otherwise).
///
/// `func` runs on a library thread while the caller waits, possibly several times (see `mc_tx_fn`);
/// `userdata` is passed to it. Schema changes (DDL) inside `func` are refused: use schema updates
/// (`mc_app_start`) or `mc_app_sql`. Gives up with `MC_ERR_TIMEOUT` after 30 s and with
/// `MC_ERR_CONFLICT` after repeated conflicts.
///
/// Thread-safety: any thread but a callback thread (`MC_ERR_WOULD_BLOCK` there).
///
/// # Safety
/// `app` is a live app; `func` a function of the `mc_tx_fn` contract; `err` NULL or valid for a
/// write and pointing to NULL.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mc_app_transaction(
    app: *const mc_app,
    func: mc_tx_fn,
    userdata: *mut c_void,
    err: *mut *mut mc_error,
) -> mc_result {
    let body = || {
        let app = unsafe { arg(app, "app") }?;
        let func = func.ok_or_else(|| boundary::null("func"))?;
        let userdata = UserData(userdata);
        app.block(move |app| async move { app.transaction(c_transaction(func, userdata)).await })
    };
    // SAFETY: `err` is NULL or valid for a write, per the contract.
    unsafe { boundary::call(err, body) }
}

/// A transaction body calling the C function `func` with `userdata`.
fn c_transaction(
    func: unsafe extern "C" fn(*mut c_void, *mut mc_tx<'_, '_>, *mut *mut mc_error) -> c_int,
    userdata: UserData,
) -> impl FnMut(&mut Tx<'_>) -> microcluster_core::Result<()> + Send + 'static {
    move |tx| {
        // The whole `Send` wrapper, not just its raw pointer, moves into this closure.
        let userdata = userdata;
        let mut handle = mc_tx { tx };
        callback_result("The transaction function", |err| {
            // SAFETY: the C contract of `mc_tx_fn`; `handle` lives across the call.
            unsafe { func(userdata.0, &mut handle, err) }
        })
    }
}

/// `mc_app_transaction` from inside a hook or an endpoint handler (`mc_endpoint_fn`), on the
/// member `state` describes: runs `func` as a serializable transaction with linearizable reads
/// and waits for it, blocking the callback's thread (which is allowed there, unlike
/// `mc_app_transaction`). Same contract for `func` as `mc_app_transaction`.
///
/// Thread-safety: the thread of the callback that was given `state`.
///
/// # Safety
/// `state` is the state of the running callback; `func` a function of the `mc_tx_fn` contract;
/// `err` NULL or valid for a write and pointing to NULL.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mc_state_transaction(
    state: *const mc_state,
    func: mc_tx_fn,
    userdata: *mut c_void,
    err: *mut *mut mc_error,
) -> mc_result {
    let body = || {
        let state = unsafe { arg(state, "state") }?;
        let func = func.ok_or_else(|| boundary::null("func"))?;
        let transaction = c_transaction(func, UserData(userdata));
        Ok(state.state.transaction_blocking(
            ReadMode::Linearizable,
            DEFAULT_TIMEOUT,
            transaction,
        )?)
    };
    // SAFETY: `err` is NULL or valid for a write, per the contract.
    unsafe { boundary::call(err, body) }
}

/// Runs the statement `sql` (one statement, no rows expected) with the positional parameters
/// `params_json` (NULL or a JSON array, see `mc_tx_query`) and writes how many rows it changed
/// to `*rows_affected` (which may be NULL).
///
/// Thread-safety: the thread running the transaction function.
///
/// # Safety
/// `tx` is the transaction of the running `mc_tx_fn`; the strings NUL-terminated
/// (`params_json` may be NULL); `rows_affected` NULL or valid for a write; `err` as for
/// `mc_app_transaction`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mc_tx_execute(
    tx: *mut mc_tx<'_, '_>,
    sql: *const c_char,
    params_json: *const c_char,
    rows_affected: *mut i64,
    err: *mut *mut mc_error,
) -> mc_result {
    let body = || {
        let tx = unsafe { arg_mut(tx, "tx") }?;
        let sql = unsafe { str_arg(sql, "sql") }?;
        let params = params(unsafe { json_arg(params_json, "params_json") }?)?;
        let out = unsafe { Out::optional(rows_affected) };
        let changed = tx.tx.execute(sql, rusqlite::params_from_iter(params))?;
        match out {
            Some(out) => out.write(i64::try_from(changed).unwrap_or(i64::MAX)),
            None => Ok(()),
        }
    };
    // SAFETY: `err` is NULL or valid for a write, per the contract.
    unsafe { boundary::call(err, body) }
}

/// Runs the query `sql` with the positional parameters `params_json` and returns its rows in
/// `*rows_json` as `{"columns": ["name", …], "rows": [[value, …], …]}`, freed by the caller
/// with `mc_string_free`.
///
/// Parameters are NULL or a JSON array bound to `?1`, `?2`, …: integers (INTEGER), other
/// numbers (REAL), strings (TEXT), `null` (NULL), `true`/`false` (INTEGER 1/0) and
/// `{"blob_base64": "…"}` (BLOB, standard base64). Values in rows use the same forms (a REAL
/// that is not finite becomes `null`).
///
/// Thread-safety: the thread running the transaction function.
///
/// # Safety
/// `tx` is the transaction of the running `mc_tx_fn`; the strings NUL-terminated
/// (`params_json` may be NULL); `rows_json` valid for a write; `err` as for
/// `mc_app_transaction`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mc_tx_query(
    tx: *mut mc_tx<'_, '_>,
    sql: *const c_char,
    params_json: *const c_char,
    rows_json: *mut *mut c_char,
    err: *mut *mut mc_error,
) -> mc_result {
    let body = || {
        let tx = unsafe { arg_mut(tx, "tx") }?;
        let sql = unsafe { str_arg(sql, "sql") }?;
        let params = params(unsafe { json_arg(params_json, "params_json") }?)?;
        let out = unsafe { Out::new(rows_json, "rows_json") }?;
        let result = tx.tx.query(sql, rusqlite::params_from_iter(params))?;
        let rows: Vec<Vec<serde_json::Value>> = result
            .rows
            .iter()
            .map(|row| row.iter().map(value_json).collect())
            .collect();
        out.write_json(&json!({ "columns": result.columns, "rows": rows }))
    };
    // SAFETY: `err` is NULL or valid for a write, per the contract.
    unsafe { boundary::call(err, body) }
}

/// The SQL parameters of a `params_json` array (`null` means none).
fn params(json: serde_json::Value) -> Result<Vec<Value>, Failure> {
    let items = match json {
        serde_json::Value::Null => Vec::new(),
        serde_json::Value::Array(items) => items,
        _ => return Err(invalid("Argument params_json is not a JSON array")),
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            param(item)
                .map_err(|why| invalid(format!("Argument params_json: parameter {} {why}", i + 1)))
        })
        .collect()
}

/// One SQL parameter from JSON, or why it cannot be one.
fn param(json: serde_json::Value) -> Result<Value, String> {
    Ok(match json {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Integer(i64::from(b)),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => Value::Integer(i),
            (None, Some(_), _) => return Err(format!("({n}) is out of the range of INTEGER")),
            (None, None, Some(f)) => Value::Real(f),
            _ => return Err(format!("({n}) is not a supported number")),
        },
        serde_json::Value::String(s) => Value::Text(s),
        serde_json::Value::Object(object) => match object.get(BLOB_KEY) {
            Some(serde_json::Value::String(b64)) if object.len() == 1 => Value::Blob(
                BASE64
                    .decode(b64)
                    .map_err(|err| format!("is not valid base64 in \"{BLOB_KEY}\": {err}"))?,
            ),
            _ => {
                return Err(format!(
                    "is an object other than {{\"{BLOB_KEY}\": \"<base64>\"}}"
                ));
            }
        },
        serde_json::Value::Array(_) => return Err("is an array".to_string()),
    })
}

/// The JSON of a value in a row: BLOBs as `{"blob_base64": …}`, the rest as the SQL API has it.
fn value_json(value: &Value) -> serde_json::Value {
    match value {
        Value::Blob(bytes) => json!({ BLOB_KEY: BASE64.encode(bytes) }),
        other => value_to_json(ValueRef::from(other)),
    }
}
