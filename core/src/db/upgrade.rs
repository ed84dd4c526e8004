//! Rolling upgrades (SPEC §11.5): at every database open that is not a bootstrap, a member
//! writes its own versions into its row and compares them with the other members' rows. A
//! member behind the others refuses to open its database; a member ahead of some waits until
//! they are upgraded too; once every row is equal, the missing schema updates are applied.
//! Also the member status shown while waiting (SPEC §8.5).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::params;

use super::node::Database;
use super::{ReadMode, schema};
use crate::membership::members::{self, PENDING};
use crate::types::ClusterMember;
use crate::{Error, ErrorKind, Result};

/// The error of a member whose schema versions are lower than another member's.
pub const VERSION_BEHIND: &str = "This node's version is behind, please upgrade";

/// The error of a member whose API extensions are behind another member's.
pub const EXTENSIONS_BEHIND: &str = "This node's API extensions are behind, please upgrade";

/// What a waiting member logs before each wait.
const WAITING_LOG: &str = "Waiting for other cluster members to upgrade their versions";

/// How long a waiting member waits for a peer's `PATCH /core/internal/database` before it
/// checks again.
const UPGRADE_WAIT: Duration = Duration::from_secs(30);

/// The member status of a member whose versions are not behind this one's, while waiting.
pub(crate) const UPGRADING: &str = "UPGRADING";

/// The member status of a member behind this one, while waiting.
pub(crate) const NEEDS_UPGRADE: &str = "NEEDS UPGRADE";

/// What a member's code has: the number of internal and external schema updates, and its API
/// extensions (not what its database has applied).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CodeVersions {
    /// The number of internal schema updates.
    pub internal: u64,
    /// The number of external (application) schema updates.
    pub external: u64,
    /// The API extension registry, in order.
    pub extensions: Vec<String>,
}

impl CodeVersions {
    /// The versions a member with the application's `schema_updates` and full extension
    /// registry `extensions` has.
    pub fn of(schema_updates: &[String], extensions: &[String]) -> CodeVersions {
        CodeVersions {
            internal: schema::INTERNAL_VERSION,
            external: schema_updates.len() as u64,
            extensions: extensions.to_vec(),
        }
    }

    /// Whether `row`'s schema versions are lower than ours in either count.
    fn schema_ahead_of(&self, row: &ClusterMember) -> bool {
        row.schema_internal_version < self.internal || row.schema_external_version < self.external
    }
}

/// Whether a row's versions are unknown: internal version 0, which no release has. That is a
/// row re-created by reconciliation (SPEC §8.4), which knows a member's name, address,
/// certificate and role from Raft but not its versions, until that member starts again and
/// writes them. Such a row is neither ahead nor behind: waiting for it could last forever.
fn versions_unknown(row: &ClusterMember) -> bool {
    row.schema_internal_version == 0
}

/// Compares this member's versions with every other row whose role is not `PENDING` (exact
/// comparison, SPEC §17 j) and whose versions are known, and returns how many of those rows
/// are behind. Fails when this member is behind any of them (SPEC §11.5 steps 2–4).
pub(crate) fn count_behind(
    own_name: &str,
    own: &CodeVersions,
    rows: &[ClusterMember],
) -> Result<usize> {
    let mut behind = 0;
    for row in rows
        .iter()
        .filter(|row| row.name != own_name && row.role != PENDING && !versions_unknown(row))
    {
        if row.schema_internal_version > own.internal || row.schema_external_version > own.external
        {
            return Err(Error::invalid(VERSION_BEHIND));
        }
        if own.schema_ahead_of(row) {
            behind += 1;
        } else if row.extensions != own.extensions {
            if row.extensions.len() < own.extensions.len() {
                behind += 1;
            } else {
                return Err(Error::invalid(EXTENSIONS_BEHIND));
            }
        }
    }
    Ok(behind)
}

/// The status of `row` while this member's database waits for an upgrade (SPEC §8.5):
/// `NEEDS UPGRADE` when its schema versions are lower than this member's or its API
/// extensions differ, else `UPGRADING`.
pub(crate) fn waiting_status(own: &CodeVersions, row: &ClusterMember) -> &'static str {
    if own.schema_ahead_of(row) || row.extensions != own.extensions {
        NEEDS_UPGRADE
    } else {
        UPGRADING
    }
}

/// What bringing a member's database online needs (SPEC §11.3 "Opening the database").
pub(crate) struct Opening {
    /// This member's name (its row in `core_cluster_members`).
    pub name: String,
    /// This member's code versions.
    pub own: CodeVersions,
    /// The application's schema updates (SQL text), in order.
    pub schema_updates: Vec<String>,
    /// `<state>/patch.global.sql`.
    pub patch_file: PathBuf,
    /// Whether to run the upgrade check (every open but a bootstrap).
    pub check_versions: bool,
}

/// Whether an error of [`Database::bring_online`] is final: the database does not open, and
/// trying again cannot help (a member behind, a failing patch or update). Other errors (no
/// leader yet, a timeout, a persistent conflict) are worth another try.
pub(crate) fn is_final(err: &Error) -> bool {
    err.kind() == ErrorKind::InvalidArgument
}

impl Database {
    /// Opens the database for use, in the order of SPEC §11.3: `patch.global.sql`, then the
    /// upgrade check of SPEC §11.5 (unless bootstrapping), then the missing schema updates.
    /// While other members are behind, calls `waiting` with their number and waits for a
    /// peer's `PATCH /core/internal/database` (or 30 s) before checking again. Each step
    /// gets `step_timeout`.
    pub(crate) async fn bring_online(
        self: &Arc<Self>,
        opening: &Opening,
        step_timeout: Duration,
        waiting: impl Fn(usize),
    ) -> Result<()> {
        self.apply_global_patch(&opening.patch_file, Instant::now() + step_timeout)
            .await?;
        if opening.check_versions {
            loop {
                let deadline = Instant::now() + step_timeout;
                let behind = self
                    .check_versions(&opening.name, &opening.own, deadline)
                    .await?;
                if behind == 0 {
                    break;
                }
                waiting(behind);
                tracing::info!("{WAITING_LOG}");
                tokio::select! {
                    _ = self.peer_started() => {}
                    _ = tokio::time::sleep(UPGRADE_WAIT) => {}
                }
            }
        }
        self.apply_schema_updates(&opening.schema_updates, Instant::now() + step_timeout)
            .await?;
        Ok(())
    }

    /// One round of the upgrade check (SPEC §11.5 steps 1–3), in one replicated transaction:
    /// writes this member's versions into its row unless it is behind, and returns how many
    /// other members are behind it.
    pub(crate) async fn check_versions(
        self: &Arc<Self>,
        name: &str,
        own: &CodeVersions,
        deadline: Instant,
    ) -> Result<usize> {
        let extensions = serde_json::to_string(&own.extensions)
            .map_err(|err| Error::internal(format!("Failed to encode extensions: {err}")))?;
        let (name, own) = (name.to_string(), own.clone());
        let timeout = deadline.saturating_duration_since(Instant::now());
        self.transaction(ReadMode::Linearizable, timeout, move |tx| {
            let rows = members::list(tx)?;
            let behind = count_behind(&name, &own, &rows)?;
            tx.execute(
                "UPDATE core_cluster_members SET schema_internal = ?2, schema_external = ?3, api_extensions = ?4
                 WHERE name = ?1 AND (schema_internal != ?2 OR schema_external != ?3 OR api_extensions != ?4)",
                params![name, own.internal as i64, own.external as i64, extensions],
            )?;
            Ok(behind)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own() -> CodeVersions {
        CodeVersions {
            internal: 2,
            external: 3,
            extensions: vec!["a".into(), "b".into()],
        }
    }

    fn row(
        name: &str,
        role: &str,
        internal: u64,
        external: u64,
        extensions: &[&str],
    ) -> ClusterMember {
        ClusterMember {
            name: name.into(),
            role: role.into(),
            schema_internal_version: internal,
            schema_external_version: external,
            extensions: extensions.iter().map(|e| e.to_string()).collect(),
            ..ClusterMember::default()
        }
    }

    #[test]
    fn equal_rows_are_not_behind() {
        let rows = [
            row("c1", "voter", 2, 3, &["a", "b"]),
            row("c2", "voter", 2, 3, &["a", "b"]),
            row("c3", "stand-by", 2, 3, &["a", "b"]),
        ];
        assert_eq!(count_behind("c1", &own(), &rows).unwrap(), 0);
    }

    #[test]
    fn a_higher_internal_version_elsewhere_fails() {
        let rows = [
            row("c1", "voter", 2, 3, &["a", "b"]),
            row("c2", "voter", 3, 3, &["a", "b"]),
        ];
        let err = count_behind("c1", &own(), &rows).unwrap_err();
        assert_eq!(err.message(), VERSION_BEHIND);
        assert!(is_final(&err));
    }

    #[test]
    fn a_higher_external_version_elsewhere_fails() {
        // Even when the same row is lower in the other count.
        let rows = [row("c2", "spare", 1, 4, &["a", "b"])];
        let err = count_behind("c1", &own(), &rows).unwrap_err();
        assert_eq!(err.message(), VERSION_BEHIND);
    }

    #[test]
    fn more_or_other_extensions_elsewhere_fail() {
        for extensions in [&["a", "b", "c"][..], &["a", "x"][..]] {
            let rows = [row("c2", "voter", 2, 3, extensions)];
            let err = count_behind("c1", &own(), &rows).unwrap_err();
            assert_eq!(err.message(), EXTENSIONS_BEHIND, "{extensions:?}");
        }
    }

    #[test]
    fn a_pending_row_is_ignored_whatever_its_versions() {
        // SPEC §17 j: the filter compares the role exactly, in upper case.
        let rows = [
            row("c1", "voter", 2, 3, &["a", "b"]),
            row("c4", "PENDING", 10, 9, &["a", "b", "c"]),
            row("c5", "PENDING", 0, 0, &[]),
        ];
        assert_eq!(count_behind("c1", &own(), &rows).unwrap(), 0);
        // A row whose role merely looks like PENDING in another case is compared.
        let rows = [row("c4", "pending", 10, 9, &["a", "b"])];
        assert_eq!(
            count_behind("c1", &own(), &rows).unwrap_err().message(),
            VERSION_BEHIND
        );
    }

    #[test]
    fn a_row_recreated_by_reconciliation_is_not_waited_for() {
        let rows = [
            row("c1", "voter", 2, 3, &["a", "b"]),
            row("c2", "voter", 0, 0, &[]),
        ];
        assert_eq!(count_behind("c1", &own(), &rows).unwrap(), 0);
    }

    #[test]
    fn rows_behind_are_counted() {
        let rows = [
            row("c1", "voter", 2, 3, &["a", "b"]),
            row("c2", "voter", 2, 2, &["a", "b"]),
            row("c3", "voter", 2, 3, &["a"]),
            row("c4", "spare", 1, 3, &["a", "b"]),
            row("c5", "stand-by", 2, 3, &["a", "b"]),
        ];
        assert_eq!(count_behind("c1", &own(), &rows).unwrap(), 3);
    }

    #[test]
    fn own_row_is_not_compared() {
        // This member's row may still hold its older versions: it is rewritten, not compared.
        let rows = [row("c1", "voter", 2, 2, &["a"])];
        assert_eq!(count_behind("c1", &own(), &rows).unwrap(), 0);
    }

    #[test]
    fn waiting_status_tells_upgraded_members_from_the_others() {
        let own = own();
        assert_eq!(
            waiting_status(&own, &row("c1", "voter", 2, 3, &["a", "b"])),
            UPGRADING
        );
        assert_eq!(
            waiting_status(&own, &row("c2", "voter", 2, 2, &["a", "b"])),
            NEEDS_UPGRADE
        );
        assert_eq!(
            waiting_status(&own, &row("c3", "voter", 1, 3, &["a", "b"])),
            NEEDS_UPGRADE
        );
        assert_eq!(
            waiting_status(&own, &row("c4", "voter", 2, 3, &["a"])),
            NEEDS_UPGRADE
        );
    }
}
