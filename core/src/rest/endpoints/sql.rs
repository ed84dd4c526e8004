//! `/core/internal/sql`: the SQL API (SPEC §12).

use std::sync::Arc;

use serde::Deserialize;
use serde_json::json;

use crate::Result;
use crate::daemon::Daemon;
use crate::rest::envelope::Response;
use crate::rest::router::{Action, Endpoint, Request, handler};

/// `GET` (dump) and `POST` (run statements) `/core/internal/sql`.
pub(super) fn endpoint() -> Endpoint {
    Endpoint::new("core/internal/sql")
        .get(Action::trusted(handler(get_dump)))
        .post(Action::trusted(handler(post_query)))
}

async fn get_dump(daemon: Arc<Daemon>, request: Request) -> Result<Response> {
    let schema_only = request
        .query
        .iter()
        .any(|(key, value)| key == "schema" && matches!(value.as_str(), "1" | "true"));
    let text = daemon.online_database()?.dump(schema_only).await?;
    Ok(Response::sync(json!({ "text": text })))
}

#[derive(Deserialize)]
struct SqlRequest {
    #[serde(default)]
    query: String,
}

async fn post_query(daemon: Arc<Daemon>, request: Request) -> Result<Response> {
    let body: SqlRequest = request.json()?;
    let results = daemon.online_database()?.sql(&body.query).await?;
    Ok(Response::sync(results))
}
