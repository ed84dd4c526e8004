//! The state machine database runs without fsync (`synchronous=OFF`), and a marker file says
//! when that is not safe to keep.
//!
//! Without fsync, a process crash loses nothing (the kernel holds every write), but a machine
//! crash (power loss, kernel panic) can leave the database file torn: checkpoints write pages
//! back with no ordering. So while the database runs unsynced, the marker holds the boot id of
//! the kernel holding its writes. A start that finds the marker of another boot cannot trust
//! the file, and replaces it with the last snapshot, which is fsynced; openraft then applies
//! the log after it again (the log is fsynced, and only purged behind snapshots). A clean close
//! writes everything back, fsyncs, and removes the marker.
//!
//! While the database file is replaced (by a snapshot), the marker says so, and no start trusts
//! the file then: a crash half-way through is rebuilt the same way.
//!
//! Where the system has no boot id, the database runs with every commit fsynced, and the marker
//! is only used while the file is replaced.
//!
//! The fsyncs saved are those of the checkpoints: with three members on one disk they stalled
//! the Raft log's own fsyncs (`docs/benchmarks.md`, eleventh session).

use std::path::{Path, PathBuf};

use super::sqlite::{Kind, OrFail, Res};
use crate::state_dir::{sync_dir, write_atomic};

/// The marker file inside the database directory.
const MARKER_FILE: &str = "db.sqlite3.unsynced";

/// The mode of the marker file.
const MARKER_MODE: u32 = 0o600;

/// The content of a marker while the database file is replaced: no boot trusts the file.
const REPLACING: &str = "replacing";

/// Where Linux publishes the id of the running kernel's boot.
const BOOT_ID_FILE: &str = "/proc/sys/kernel/random/boot_id";

/// The id of the running kernel's boot, if the system publishes one.
fn boot_id() -> Option<String> {
    let id = std::fs::read_to_string(BOOT_ID_FILE).ok()?;
    let id = id.trim();
    (!id.is_empty()).then(|| id.to_string())
}

/// What a start finds of the marker in a database directory.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Found {
    /// No marker: the database was closed cleanly, or never ran unsynced.
    Clean,
    /// The marker of this boot: the process stopped without closing the database, and the
    /// kernel still holds every write.
    ThisBoot,
    /// The marker of another boot, of a replacement, or an unreadable one: the machine
    /// stopped while the database ran unsynced, or a replacement of the file did not end, so
    /// the file may be torn.
    AnotherBoot,
}

/// Whether the state machine database in `dir` holds what it says, as it is on disk now:
/// false when a start would rebuild it (see [`Found::AnotherBoot`]).
pub(super) fn database_trusted(dir: &Path, kind: Kind) -> Res<bool> {
    let (_, found) = UnsyncedMarker::open(dir, kind)?;
    Ok(found != Found::AnotherBoot)
}

/// The marker of the database in one directory, for this boot.
pub(super) struct UnsyncedMarker {
    path: PathBuf,
    /// The id of this boot; `None` where the system has none.
    boot_id: Option<String>,
    /// Whether the marker of this boot is on disk.
    set: bool,
}

impl UnsyncedMarker {
    /// The marker of the database in `dir`, and what a start finds of it.
    pub(super) fn open(dir: &Path, kind: Kind) -> Res<(UnsyncedMarker, Found)> {
        let path = dir.join(MARKER_FILE);
        let left = match std::fs::read_to_string(&path) {
            Ok(text) => Some(text.trim().to_string()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
            Err(err) => return Err(err).or_fail(kind),
        };
        let boot_id = boot_id();
        let found = match (&left, &boot_id) {
            (None, _) => Found::Clean,
            (Some(left), Some(current)) if left == current => Found::ThisBoot,
            (Some(_), _) => Found::AnotherBoot,
        };
        let marker = UnsyncedMarker {
            path,
            set: found == Found::ThisBoot,
            boot_id,
        };
        Ok((marker, found))
    }

    /// Whether the database may run unsynced: the system has a boot id. Else every commit
    /// must be fsynced.
    pub(super) fn unsynced(&self) -> bool {
        self.boot_id.is_some()
    }

    /// Puts the marker of this boot on disk, if the database runs unsynced and it is not there
    /// yet: before the database writes anything.
    pub(super) fn set(&mut self, kind: Kind) -> Res<()> {
        let Some(boot_id) = self.boot_id.as_ref().filter(|_| !self.set) else {
            return Ok(());
        };
        let content = format!("{boot_id}\n");
        self.write(&content, kind)?;
        self.set = true;
        Ok(())
    }

    /// Says that the database file is being replaced, until [`UnsyncedMarker::replaced`].
    pub(super) fn replacing(&mut self, kind: Kind) -> Res<()> {
        self.write(REPLACING, kind)?;
        self.set = false;
        Ok(())
    }

    /// Says that the database file was replaced by a file on disk.
    pub(super) fn replaced(&mut self, kind: Kind) -> Res<()> {
        match self.unsynced() {
            true => self.set(kind),
            false => self.clear(kind),
        }
    }

    /// Writes the marker durably.
    fn write(&self, content: &str, kind: Kind) -> Res<()> {
        write_atomic(&self.path, content.as_bytes(), MARKER_MODE).or_fail(kind)
    }

    /// Removes the marker, once everything the database holds is on disk.
    pub(super) fn clear(&mut self, kind: Kind) -> Res<()> {
        match std::fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(err).or_fail(kind),
        }
        sync_dir(self.path.parent().unwrap_or(Path::new("."))).or_fail(kind)?;
        self.set = false;
        Ok(())
    }
}

#[cfg(test)]
pub(super) mod tests {
    use openraft::StorageIOError;

    use super::*;

    const KIND: Kind = StorageIOError::write_state_machine;

    /// Leaves the marker of a boot that is not this one in `dir`, as a machine crash would.
    pub(in crate::db::raft) fn leave_marker_of_another_boot(dir: &Path) {
        std::fs::write(
            dir.join(MARKER_FILE),
            "00000000-0000-0000-0000-000000000000\n",
        )
        .unwrap();
    }

    /// Whether a marker is in `dir`.
    pub(in crate::db::raft) fn marker_present(dir: &Path) -> bool {
        dir.join(MARKER_FILE).exists()
    }

    #[test]
    fn a_marker_says_which_boot_left_it() {
        let dir = tempfile::tempdir().unwrap();
        let (mut marker, found) = UnsyncedMarker::open(dir.path(), KIND).unwrap();
        assert_eq!(found, Found::Clean);
        assert!(marker.unsynced(), "Linux publishes a boot id");
        marker.set(KIND).unwrap();
        let text = std::fs::read_to_string(dir.path().join(MARKER_FILE)).unwrap();
        assert_eq!(Some(text.trim().to_string()), boot_id());

        let (_, found) = UnsyncedMarker::open(dir.path(), KIND).unwrap();
        assert_eq!(found, Found::ThisBoot);

        leave_marker_of_another_boot(dir.path());
        let (_, found) = UnsyncedMarker::open(dir.path(), KIND).unwrap();
        assert_eq!(found, Found::AnotherBoot);
        // An empty (or otherwise unreadable) marker cannot vouch for the file either.
        std::fs::write(dir.path().join(MARKER_FILE), "").unwrap();
        let (_, found) = UnsyncedMarker::open(dir.path(), KIND).unwrap();
        assert_eq!(found, Found::AnotherBoot);

        // A replacement of the file that did not end: no boot trusts the file.
        marker.replacing(KIND).unwrap();
        let (_, found) = UnsyncedMarker::open(dir.path(), KIND).unwrap();
        assert_eq!(found, Found::AnotherBoot);
        marker.replaced(KIND).unwrap();
        let (_, found) = UnsyncedMarker::open(dir.path(), KIND).unwrap();
        assert_eq!(found, Found::ThisBoot);

        marker.clear(KIND).unwrap();
        assert!(!marker_present(dir.path()));
        let (_, found) = UnsyncedMarker::open(dir.path(), KIND).unwrap();
        assert_eq!(found, Found::Clean);
    }
}
