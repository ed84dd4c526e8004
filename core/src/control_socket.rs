//! Binding `control.socket`: the single-instance check, stale-socket removal, mode and group.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use tokio::net::{UnixListener, UnixStream};

use crate::{Error, Result};

/// Whether a daemon accepts connections on the control socket at `path` within `timeout`.
pub(crate) async fn answers(path: &Path, timeout: Duration) -> bool {
    let probe = tokio::time::timeout(timeout, UnixStream::connect(path)).await;
    matches!(probe, Ok(Ok(_)))
}

/// Binds the control socket at `path` with mode 0660, owned by `group` if given.
///
/// Fails with `Unix socket at "<path>" is already running` when a daemon answers there; a
/// socket file nobody answers on is removed first.
pub(crate) async fn bind(path: &Path, group: Option<&str>) -> Result<UnixListener> {
    if path.exists() {
        if answers(path, Duration::from_secs(2)).await {
            return Err(Error::invalid(format!(
                "Unix socket at {path:?} is already running"
            )));
        }
        tracing::info!("Removing stale control socket {path:?}");
        std::fs::remove_file(path).map_err(|err| {
            Error::internal(format!("Failed to remove stale socket {path:?}: {err}"))
        })?;
    }
    let listener = UnixListener::bind(path).map_err(|err| {
        Error::internal(format!("Failed to bind the control socket {path:?}: {err}"))
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(|err| Error::internal(format!("Failed to set the mode of {path:?}: {err}")))?;
    if let Some(group) = group {
        let gid = nix::unistd::Group::from_name(group)
            .map_err(|err| Error::internal(format!("Failed to look up group {group:?}: {err}")))?
            .ok_or_else(|| Error::invalid(format!("Socket group {group:?} does not exist")))?
            .gid;
        nix::unistd::chown(path, None, Some(gid)).map_err(|err| {
            Error::internal(format!("Failed to give {path:?} to group {group:?}: {err}"))
        })?;
    }
    Ok(listener)
}
