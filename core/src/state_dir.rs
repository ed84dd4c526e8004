//! The state directory of a member (SPEC §2): its layout, modes and atomic file writes.

use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result, ResultExt};

/// Mode of the state directory itself.
const ROOT_MODE: u32 = 0o711;
/// Mode of `truststore/`, `certificates/` and `database/`.
const PRIVATE_DIR_MODE: u32 = 0o700;

/// The state directory of one member; every path the library uses in it comes from here.
#[derive(Clone, Debug)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// Makes `path` absolute (relative to the current directory; it need not exist), creates it
    /// and its `truststore/`, `certificates/` and `database/` directories if missing, and sets
    /// the modes of SPEC §2.1 on all of them whatever the umask.
    pub fn open(path: impl AsRef<Path>) -> Result<StateDir> {
        let path = path.as_ref();
        if path.as_os_str().is_empty() {
            return Err(Error::invalid("Missing state directory"));
        }
        let root = std::path::absolute(path).context(format_args!(
            "Failed to make state directory {path:?} absolute: "
        ))?;
        let dir = StateDir { root };
        create_dir(&dir.root, ROOT_MODE)?;
        for sub in [
            dir.truststore_dir(),
            dir.certificates_dir(),
            dir.database_dir(),
        ] {
            create_dir(&sub, PRIVATE_DIR_MODE)?;
        }
        Ok(dir)
    }

    /// The absolute path of the state directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `control.socket`, the local admin API.
    pub fn control_socket(&self) -> PathBuf {
        self.root.join("control.socket")
    }

    /// `daemon.yaml`, the member's name, address and listener configuration.
    pub fn daemon_yaml(&self) -> PathBuf {
        self.root.join("daemon.yaml")
    }

    /// `server.crt`, the member's identity certificate.
    pub fn server_cert(&self) -> PathBuf {
        self.root.join("server.crt")
    }

    /// `server.key`, the private key of `server.crt`.
    pub fn server_key(&self) -> PathBuf {
        self.root.join("server.key")
    }

    /// `cluster.crt`, the certificate every core listener presents.
    pub fn cluster_cert(&self) -> PathBuf {
        self.root.join("cluster.crt")
    }

    /// `cluster.key`, the private key of `cluster.crt`.
    pub fn cluster_key(&self) -> PathBuf {
        self.root.join("cluster.key")
    }

    /// `cluster.ca`, the optional CA of the cluster certificate.
    pub fn cluster_ca(&self) -> PathBuf {
        self.root.join("cluster.ca")
    }

    /// `truststore/`, one `<name>.yaml` per trusted member.
    pub fn truststore_dir(&self) -> PathBuf {
        self.root.join("truststore")
    }

    /// `certificates/`, keypairs of the extension listeners.
    pub fn certificates_dir(&self) -> PathBuf {
        self.root.join("certificates")
    }

    /// `certificates/<name>.crt` and `.key`: the certificate of an extension listener.
    pub fn extension_certificate(&self, name: &str) -> (PathBuf, PathBuf) {
        let dir = self.certificates_dir();
        (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        )
    }

    /// `database/`, the Raft log, snapshots, SQLite database and Raft identity.
    pub fn database_dir(&self) -> PathBuf {
        self.root.join("database")
    }

    /// `database/raft_identity.yaml`, the member's persisted Raft identity.
    pub fn raft_identity(&self) -> PathBuf {
        self.database_dir().join("raft_identity.yaml")
    }

    /// `patch.global.sql`, SQL run once at the next database open.
    pub fn patch_global_sql(&self) -> PathBuf {
        self.root.join("patch.global.sql")
    }

    /// Whether the member is initialised (SPEC §2.3): `daemon.yaml` exists and `database/`
    /// holds the persisted Raft identity.
    pub fn is_initialised(&self) -> bool {
        self.daemon_yaml().exists() && self.raft_identity().exists()
    }
}

/// Creates `path` (and missing parents) if needed, then sets `mode` on it explicitly.
pub(crate) fn create_dir(path: &Path, mode: u32) -> Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .context(format_args!("Failed to create directory {path:?}: "))?;
    fs::set_permissions(path, Permissions::from_mode(mode)).context(format_args!(
        "Failed to set the mode of directory {path:?}: "
    ))
}

/// Distinguishes the temporary files of concurrent writers in one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Replaces `path` atomically with `contents` and mode `mode`: writes a uniquely named temporary
/// file in the same directory, syncs it, renames it over `path` and syncs the directory. On
/// failure the temporary file is removed and `path` is left as it was.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let (Some(dir), Some(file_name)) = (path.parent(), path.file_name()) else {
        return Err(Error::invalid(format!("Invalid file path {path:?}")));
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let counter = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let temp = dir.join(format!(
        ".{}.tmp-{}-{counter}",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let result = write_temp(&temp, contents, mode).and_then(|()| {
        fs::rename(&temp, path).context(format_args!("Failed to rename {temp:?} to {path:?}: "))
    });
    if let Err(err) = result {
        // Best effort: the temporary file may not exist if its creation failed.
        let _ = fs::remove_file(&temp);
        return Err(err);
    }
    sync_dir(dir)
}

/// Syncs the directory `dir`, so that files created, renamed or removed in it stay so.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .context(format_args!("Failed to sync directory {dir:?}: "))
}

/// Creates `temp` exclusively with `mode`, writes `contents` and syncs it.
fn write_temp(temp: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(temp)
        .context(format_args!("Failed to create {temp:?}: "))?;
    file.set_permissions(Permissions::from_mode(mode))
        .context(format_args!("Failed to set the mode of {temp:?}: "))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .context(format_args!("Failed to write {temp:?}: "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    fn assert_layout(dir: &StateDir) {
        assert_eq!(mode_of(dir.root()), 0o711);
        for sub in [
            dir.truststore_dir(),
            dir.certificates_dir(),
            dir.database_dir(),
        ] {
            assert_eq!(mode_of(&sub), 0o700, "{sub:?}");
        }
    }

    #[test]
    fn fresh_directory_gets_the_spec_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(tmp.path().join("a/b/state")).unwrap();
        assert_layout(&dir);
        assert_eq!(dir.database_dir(), dir.root().join("database"));
        assert_eq!(
            dir.raft_identity(),
            dir.root().join("database/raft_identity.yaml")
        );
        assert_eq!(dir.control_socket(), dir.root().join("control.socket"));
        assert_eq!(dir.patch_global_sql(), dir.root().join("patch.global.sql"));
    }

    #[test]
    fn existing_directories_get_their_modes_fixed() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("state");
        fs::create_dir_all(root.join("truststore")).unwrap();
        fs::set_permissions(&root, Permissions::from_mode(0o777)).unwrap();
        fs::set_permissions(root.join("truststore"), Permissions::from_mode(0o755)).unwrap();
        assert_layout(&StateDir::open(&root).unwrap());
    }

    /// Runs [`umask_child`] in a child process with each umask, since the umask is per process
    /// and changing it here would disturb tests running in parallel.
    #[test]
    fn umask_does_not_matter() {
        let exe = std::env::current_exe().unwrap();
        for umask in ["077", "000", "777"] {
            let tmp = tempfile::tempdir().unwrap();
            let status = std::process::Command::new(&exe)
                .args([
                    "--exact",
                    "state_dir::tests::umask_child",
                    "--test-threads=1",
                ])
                .env("MC_TEST_UMASK", umask)
                .env("MC_TEST_DIR", tmp.path())
                .stdout(std::process::Stdio::null())
                .status()
                .unwrap();
            assert!(status.success(), "umask {umask}");
        }
    }

    #[test]
    fn umask_child() {
        let (Ok(umask), Ok(base)) = (std::env::var("MC_TEST_UMASK"), std::env::var("MC_TEST_DIR"))
        else {
            return;
        };
        let mask = u32::from_str_radix(&umask, 8).unwrap();
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(mask as _));
        let dir = StateDir::open(Path::new(&base).join("state")).unwrap();
        assert_layout(&dir);
        let file = dir.root().join("f");
        write_atomic(&file, b"x", 0o644).unwrap();
        assert_eq!(mode_of(&file), 0o644);
    }

    #[test]
    fn relative_path_is_made_absolute() {
        let tmp = tempfile::tempdir().unwrap();
        let cwd = std::env::current_dir().unwrap();
        let relative = pathdiff(tmp.path(), &cwd).join("rel-state");
        let dir = StateDir::open(&relative).unwrap();
        assert!(dir.root().is_absolute());
        assert_eq!(dir.root(), cwd.join(&relative));
        assert!(tmp.path().join("rel-state/truststore").is_dir());
        assert_eq!(
            StateDir::open("").unwrap_err().message(),
            "Missing state directory"
        );
    }

    /// A relative path from `base` to `target` made of `..` components.
    fn pathdiff(target: &Path, base: &Path) -> PathBuf {
        let mut rel = PathBuf::new();
        for _ in base.components().skip(1) {
            rel.push("..");
        }
        rel.join(target.strip_prefix("/").unwrap())
    }

    #[test]
    fn initialised_needs_both_files() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(tmp.path()).unwrap();
        assert!(!dir.is_initialised());
        fs::write(dir.daemon_yaml(), "name: c1\n").unwrap();
        assert!(!dir.is_initialised());
        fs::remove_file(dir.daemon_yaml()).unwrap();
        fs::write(dir.raft_identity(), "id: 1\n").unwrap();
        assert!(!dir.is_initialised());
        fs::write(dir.daemon_yaml(), "name: c1\n").unwrap();
        assert!(dir.is_initialised());
    }

    #[test]
    fn write_atomic_replaces_sets_mode_and_leaves_no_temp_files() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("daemon.yaml");
        write_atomic(&file, b"first", 0o600).unwrap();
        assert_eq!(fs::read(&file).unwrap(), b"first");
        assert_eq!(mode_of(&file), 0o600);
        write_atomic(&file, b"second", 0o644).unwrap();
        assert_eq!(fs::read(&file).unwrap(), b"second");
        assert_eq!(mode_of(&file), 0o644);
        let names: Vec<_> = fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["daemon.yaml"]);
    }

    #[test]
    fn write_atomic_failure_names_the_path_and_cleans_up() {
        let tmp = tempfile::tempdir().unwrap();
        // The target is a non-empty directory, so the rename fails after the temp file exists.
        let target = tmp.path().join("busy");
        fs::create_dir(&target).unwrap();
        fs::write(target.join("inner"), "x").unwrap();
        let err = write_atomic(&target, b"data", 0o644).unwrap_err();
        assert!(err.message().contains("busy"), "{err}");
        let names: Vec<_> = fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["busy"]);
        let missing = tmp.path().join("missing/file");
        let err = write_atomic(&missing, b"data", 0o644).unwrap_err();
        assert!(err.message().contains("missing"), "{err}");
    }
}
