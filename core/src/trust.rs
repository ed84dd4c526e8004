//! The truststore (SPEC §2.2, §4): one `<name>.yaml` per trusted member, indexed in memory by
//! name, certificate fingerprint and address, and reloaded when another writer changes it.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use serde::{Deserialize, Serialize};

use crate::certs;
use crate::error::{Error, Result, ResultExt};
use crate::state_dir::{sync_dir, write_atomic};
use crate::sync;
use crate::validate;

/// Mode of a truststore file.
const FILE_MODE: u32 = 0o644;

/// A trusted member: the content of one truststore file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Remote {
    /// The member's name (FQDN syntax); the file is `<name>.yaml`.
    pub name: String,
    /// The member's address, `IP:port`.
    pub address: String,
    /// The member's server certificate, PEM.
    pub certificate: String,
}

impl Remote {
    /// The fingerprint of the member's certificate (lowercase hex SHA-256 of its DER).
    pub fn fingerprint(&self) -> Result<String> {
        certs::fingerprint_pem(&self.certificate)
    }

    /// Checks name, address and certificate, and returns the fingerprint.
    fn validate(&self) -> Result<String> {
        validate::fqdn(&self.name)
            .map_err(|e| Error::invalid(format!("Invalid name {:?}: {}", self.name, e)))?;
        validate::member_address(&self.address)
            .map_err(|e| Error::invalid(format!("Invalid address {:?}: {}", self.address, e)))?;
        self.fingerprint()
            .context(format_args!("Truststore entry {:?}: ", self.name))
    }
}

/// What a file looked like when last read or written: inode, mtime in ns and length.
type FileStamp = (u64, i128, u64);

/// The in-memory state of the truststore.
#[derive(Default)]
struct Index {
    by_name: BTreeMap<String, Remote>,
    /// Fingerprint to name.
    by_fingerprint: HashMap<String, String>,
    /// Address to name.
    by_address: HashMap<String, String>,
    /// File name to stamp, for every `*.yaml` file of the directory.
    signature: BTreeMap<String, FileStamp>,
}

impl Index {
    fn insert(&mut self, remote: Remote, fingerprint: String) {
        self.remove(&remote.name);
        self.by_fingerprint.insert(fingerprint, remote.name.clone());
        self.by_address
            .insert(remote.address.clone(), remote.name.clone());
        self.by_name.insert(remote.name.clone(), remote);
    }

    fn remove(&mut self, name: &str) -> Option<Remote> {
        let old = self.by_name.remove(name)?;
        self.by_fingerprint.retain(|_, n| n != name);
        if self.by_address.get(&old.address).is_some_and(|n| n == name) {
            self.by_address.remove(&old.address);
        }
        Some(old)
    }
}

/// The truststore directory and its index. Safe to share between threads.
pub struct Truststore {
    dir: PathBuf,
    index: RwLock<Index>,
}

impl Truststore {
    /// Opens the truststore in `dir` (created with mode 0700 if missing) and loads every
    /// `*.yaml` file; other files are ignored and malformed ones are skipped with a warning.
    pub fn open(dir: PathBuf) -> Result<Truststore> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .context(format_args!("Failed to create truststore {dir:?}: "))?;
        let index = load(&dir)?;
        Ok(Truststore {
            dir,
            index: RwLock::new(index),
        })
    }

    /// Adds or replaces the entry named `remote.name` after validating it, writing
    /// `<name>.yaml` atomically with mode 0644.
    pub fn add(&self, remote: Remote) -> Result<()> {
        let fingerprint = remote.validate()?;
        let mut index = self.write();
        let file_name = file_name(&remote.name);
        let path = self.dir.join(&file_name);
        write_atomic(&path, serialize(&remote)?.as_bytes(), FILE_MODE)?;
        index.signature.insert(file_name, stamp(&path)?);
        index.insert(remote, fingerprint);
        Ok(())
    }

    /// Removes the entry `name` and its file.
    pub fn remove(&self, name: &str) -> Result<()> {
        let mut index = self.write();
        if !index.by_name.contains_key(name) {
            return Err(Error::not_found(format!(
                "No truststore entry found for node with name {name:?}"
            )));
        }
        let file_name = file_name(name);
        remove_file(&self.dir.join(&file_name))?;
        sync_dir(&self.dir)?;
        index.signature.remove(&file_name);
        index.remove(name);
        Ok(())
    }

    /// Makes the directory hold exactly `remotes`: writes the files whose content differs and
    /// deletes every other `*.yaml` file. Nothing is written if any entry is invalid.
    pub fn replace_all(&self, remotes: Vec<Remote>) -> Result<()> {
        let mut fresh = Index::default();
        for remote in remotes {
            let fingerprint = remote.validate()?;
            if fresh.by_name.contains_key(&remote.name) {
                return Err(Error::invalid(format!(
                    "Duplicate truststore entry {:?}",
                    remote.name
                )));
            }
            fresh.insert(remote, fingerprint);
        }
        let mut index = self.write();
        for remote in fresh.by_name.values() {
            let path = self.dir.join(file_name(&remote.name));
            let contents = serialize(remote)?;
            if fs::read(&path).ok().as_deref() != Some(contents.as_bytes()) {
                write_atomic(&path, contents.as_bytes(), FILE_MODE)?;
            }
        }
        let mut removed = false;
        for file in yaml_files(&self.dir)? {
            let keep = file
                .strip_suffix(".yaml")
                .is_some_and(|name| fresh.by_name.contains_key(name));
            if !keep {
                remove_file(&self.dir.join(&file))?;
                removed = true;
            }
        }
        if removed {
            sync_dir(&self.dir)?;
        }
        fresh.signature = signature(&self.dir)?;
        *index = fresh;
        Ok(())
    }

    /// All entries, sorted by name.
    pub fn list(&self) -> Vec<Remote> {
        self.read().by_name.values().cloned().collect()
    }

    /// The entry named `name`.
    pub fn by_name(&self, name: &str) -> Option<Remote> {
        self.read().by_name.get(name).cloned()
    }

    /// The entry whose address is exactly `address`.
    pub fn by_address(&self, address: &str) -> Option<Remote> {
        let index = self.read();
        index
            .by_address
            .get(address)
            .and_then(|n| index.by_name.get(n))
            .cloned()
    }

    /// The entry whose certificate has the fingerprint `fingerprint` (lowercase hex).
    pub fn by_fingerprint(&self, fingerprint: &str) -> Option<Remote> {
        let index = self.read();
        index
            .by_fingerprint
            .get(fingerprint)
            .and_then(|n| index.by_name.get(n))
            .cloned()
    }

    /// Re-reads the directory if its `*.yaml` files changed (listing, inode, mtime or length)
    /// since the last load or write of this truststore, and returns whether it did. When
    /// nothing changed, this costs one directory listing and one `stat` per file.
    pub fn reload_if_changed(&self) -> Result<bool> {
        let current = signature(&self.dir)?;
        if self.read().signature == current {
            return Ok(false);
        }
        let mut index = self.write();
        *index = load(&self.dir)?;
        Ok(true)
    }

    fn read(&self) -> RwLockReadGuard<'_, Index> {
        sync::read(&self.index)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Index> {
        sync::write(&self.index)
    }
}

/// The file name of the entry `name`.
fn file_name(name: &str) -> String {
    format!("{name}.yaml")
}

/// The YAML of a truststore file.
fn serialize(remote: &Remote) -> Result<String> {
    serde_yaml_ng::to_string(remote)
        .map_err(|e| Error::internal(format!("Failed to encode truststore entry: {e}")))
}

/// The names of the regular `*.yaml` files of `dir`, sorted.
fn yaml_files(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).context(format_args!("Failed to read truststore {dir:?}: "))? {
        let entry = entry.context(format_args!("Failed to read truststore {dir:?}: "))?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if name.ends_with(".yaml") && !name.starts_with('.') && entry.path().is_file() {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// The stamp of one file.
fn stamp(path: &Path) -> Result<FileStamp> {
    let meta = fs::metadata(path).context(format_args!("Failed to stat {path:?}: "))?;
    let mtime = i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec());
    Ok((meta.ino(), mtime, meta.len()))
}

/// The stamps of all `*.yaml` files of `dir`. A file deleted while listing is left out.
fn signature(dir: &Path) -> Result<BTreeMap<String, FileStamp>> {
    let mut stamps = BTreeMap::new();
    for name in yaml_files(dir)? {
        match stamp(&dir.join(&name)) {
            Ok(s) => {
                stamps.insert(name, s);
            }
            Err(err) if err.kind() == crate::ErrorKind::NotFound => {}
            Err(err) => return Err(err),
        }
    }
    Ok(stamps)
}

/// Reads every `*.yaml` file of `dir` into a new index, skipping malformed files with a warning.
fn load(dir: &Path) -> Result<Index> {
    let mut index = Index {
        signature: signature(dir)?,
        ..Index::default()
    };
    for file in index.signature.keys().cloned().collect::<Vec<_>>() {
        let path = dir.join(&file);
        match read_entry(&path, &file) {
            Ok((remote, fingerprint)) => index.insert(remote, fingerprint),
            Err(err) => tracing::warn!("Ignoring malformed truststore file {path:?}: {err}"),
        }
    }
    Ok(index)
}

/// Reads and validates the truststore file `path` (named `file`).
fn read_entry(path: &Path, file: &str) -> Result<(Remote, String)> {
    let text = fs::read_to_string(path).context("Failed to read: ")?;
    let remote: Remote = serde_yaml_ng::from_str(&text)
        .map_err(|e| Error::invalid(format!("Failed to parse: {e}")))?;
    if file_name(&remote.name) != file {
        return Err(Error::invalid(format!(
            "The name {:?} does not match the file name",
            remote.name
        )));
    }
    let fingerprint = remote.validate()?;
    Ok((remote, fingerprint))
}

/// Deletes `path`; a file that is already gone is fine.
fn remove_file(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            Err(Error::from(err).context(format_args!("Failed to delete {path:?}: ")))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;
    use std::os::unix::fs::PermissionsExt;

    fn entry(name: &str, address: &str, certificate: &str) -> Remote {
        let (name, address, certificate) = (name.into(), address.into(), certificate.into());
        Remote {
            name,
            address,
            certificate,
        }
    }

    fn remote(name: &str, address: &str) -> Remote {
        entry(name, address, &certs::generate(name).unwrap().cert_pem)
    }

    fn files(dir: &Path) -> Vec<String> {
        let names = fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name());
        let mut names: Vec<_> = names.map(|n| n.into_string().unwrap()).collect();
        names.sort();
        names
    }

    fn store() -> (tempfile::TempDir, Truststore) {
        fn shareable<T: Send + Sync>() {}
        shareable::<Truststore>();
        let tmp = tempfile::tempdir().unwrap();
        let store = Truststore::open(tmp.path().join("truststore")).unwrap();
        (tmp, store)
    }

    #[test]
    fn yaml_matches_the_spec_and_round_trips() {
        let (_tmp, store) = store();
        let c1 = remote("c1", "127.0.0.1:9001");
        store.add(c1.clone()).unwrap();
        let text = fs::read_to_string(store.dir.join("c1.yaml")).unwrap();
        let indented: String = c1.certificate.lines().map(|l| format!("  {l}\n")).collect();
        assert!(indented.starts_with("  -----BEGIN CERTIFICATE-----\n"));
        let want = format!("name: c1\naddress: 127.0.0.1:9001\ncertificate: |\n{indented}");
        assert_eq!(text, want);
        assert_eq!(serde_yaml_ng::from_str::<Remote>(&text).unwrap(), c1);
        let reopened = Truststore::open(store.dir.clone()).unwrap();
        assert_eq!(reopened.list(), [c1]);
    }

    #[test]
    fn writes_are_atomic_with_mode_0644_and_lookups_work() {
        let (_tmp, store) = store();
        let (c1, c2) = (remote("c1", "127.0.0.1:9011"), remote("c2", "[::1]:9002"));
        store.add(remote("c1", "127.0.0.1:9001")).unwrap();
        store.add(c2.clone()).unwrap();
        store.add(c1.clone()).unwrap();
        assert_eq!(files(&store.dir), ["c1.yaml", "c2.yaml"]);
        let meta = fs::metadata(store.dir.join("c1.yaml")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o644);
        assert!(
            !store.reload_if_changed().unwrap(),
            "own writes must not cause reloads"
        );

        assert_eq!(store.list(), [c1.clone(), c2.clone()]);
        assert_eq!(store.by_name("c2"), Some(c2.clone()));
        assert_eq!(store.by_address("[::1]:9002"), Some(c2.clone()));
        assert_eq!(store.by_address("127.0.0.1:9001"), None);
        let fingerprint = c1.fingerprint().unwrap();
        assert_eq!(store.by_fingerprint(&fingerprint), Some(c1.clone()));
        assert_eq!(store.by_fingerprint(&"0".repeat(64)), None);

        store.remove("c2").unwrap();
        assert!(!store.reload_if_changed().unwrap());
        assert_eq!(
            (store.by_name("c2"), store.by_address("[::1]:9002")),
            (None, None)
        );
        assert_eq!(files(&store.dir), ["c1.yaml"]);
        let err = store.remove("c2").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);
        let want = "No truststore entry found for node with name \"c2\"";
        assert_eq!(err.message(), want);
    }

    #[test]
    fn external_changes_are_reloaded() {
        let (_tmp, store) = store();
        let other = Truststore::open(store.dir.clone()).unwrap();
        assert!(!store.reload_if_changed().unwrap());

        let c1 = remote("c1", "127.0.0.1:9001");
        other.add(c1.clone()).unwrap();
        assert!(store.reload_if_changed().unwrap());
        assert_eq!(store.list(), std::slice::from_ref(&c1));
        assert!(!store.reload_if_changed().unwrap());

        let edited = remote("c1", "127.0.0.1:9099");
        other.add(edited.clone()).unwrap();
        assert!(store.reload_if_changed().unwrap());
        assert_eq!(store.by_address("127.0.0.1:9099"), Some(edited.clone()));
        let fingerprint = edited.fingerprint().unwrap();
        assert_eq!(store.by_fingerprint(&fingerprint), Some(edited));
        assert_eq!(store.by_fingerprint(&c1.fingerprint().unwrap()), None);

        fs::remove_file(store.dir.join("c1.yaml")).unwrap();
        assert!(store.reload_if_changed().unwrap());
        assert!(store.list().is_empty());
        assert!(!store.reload_if_changed().unwrap());
    }

    #[test]
    fn malformed_and_foreign_files_are_ignored() {
        let (_tmp, store) = store();
        let c1 = remote("c1", "127.0.0.1:9001");
        store.add(c1.clone()).unwrap();
        let dir = store.dir.clone();
        fs::write(dir.join("bad.yaml"), "name: [unclosed").unwrap();
        let no_cert = serialize(&entry("nocert", "127.0.0.1:1", "x")).unwrap();
        fs::write(dir.join("nocert.yaml"), no_cert).unwrap();
        let misnamed = serialize(&remote("c3", "127.0.0.1:9003")).unwrap();
        fs::write(dir.join("other.yaml"), &misnamed).unwrap();
        fs::write(dir.join("c3.yml"), &misnamed).unwrap();
        fs::write(dir.join("README"), "hello").unwrap();
        fs::create_dir(dir.join("dir.yaml")).unwrap();

        let reopened = Truststore::open(dir.clone()).unwrap();
        assert_eq!(reopened.list(), std::slice::from_ref(&c1));
        assert!(store.reload_if_changed().unwrap());
        assert_eq!(store.list(), std::slice::from_ref(&c1));

        // replace_all repairs the directory: only the wanted entries remain, foreign files stay.
        let c2 = remote("c2", "127.0.0.1:9002");
        store.replace_all(vec![c2.clone(), c1.clone()]).unwrap();
        let want = ["README", "c1.yaml", "c2.yaml", "c3.yml", "dir.yaml"];
        assert_eq!(files(&dir), want);
        assert_eq!(store.list(), [c1, c2]);
        assert!(!store.reload_if_changed().unwrap());
    }

    #[test]
    fn replace_all_writes_only_what_differs() {
        let (_tmp, store) = store();
        let (c1, c2) = (
            remote("c1", "127.0.0.1:9001"),
            remote("c2", "127.0.0.1:9002"),
        );
        store.add(c1.clone()).unwrap();
        store.add(c2.clone()).unwrap();
        let before = stamp(&store.dir.join("c1.yaml")).unwrap();
        let c3 = remote("c3", "127.0.0.1:9003");
        store.replace_all(vec![c1.clone(), c3.clone()]).unwrap();
        assert_eq!(stamp(&store.dir.join("c1.yaml")).unwrap(), before);
        assert_eq!(files(&store.dir), ["c1.yaml", "c3.yaml"]);
        assert_eq!(store.list(), [c1.clone(), c3.clone()]);
        assert!(store.by_fingerprint(&c2.fingerprint().unwrap()).is_none());

        let err = store.replace_all(vec![c1.clone(), c1.clone()]).unwrap_err();
        assert_eq!(err.message(), "Duplicate truststore entry \"c1\"");
        let bad = entry("bad_name", &c2.address, &c2.certificate);
        let err = store.replace_all(vec![c2, bad]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert_eq!(files(&store.dir), ["c1.yaml", "c3.yaml"]);
        assert_eq!(store.list(), [c1, c3]);
    }

    #[test]
    fn invalid_entries_are_rejected_and_nothing_is_written() {
        let (_tmp, store) = store();
        let (addr, cert) = ("127.0.0.1:9001", certs::generate("c1").unwrap().cert_pem);
        let cases = [
            (
                entry("c_1", addr, &cert),
                "Invalid name \"c_1\": Name can only contain alphanumeric and hyphen characters",
            ),
            (
                entry("c1", "localhost:9001", &cert),
                "Invalid address \"localhost:9001\": ",
            ),
            (
                entry("c1", addr, "junk"),
                "Truststore entry \"c1\": Invalid certificate: not PEM",
            ),
        ];
        for (remote, want) in cases {
            let err = store.add(remote).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidArgument);
            assert!(err.message().starts_with(want), "{err}");
        }
        assert!(files(&store.dir).is_empty());
        assert!(store.list().is_empty());
    }
}
