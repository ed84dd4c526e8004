//! Quorum-loss recovery (SPEC §14.2) and the unpacking of a recovery tarball at start
//! (§14.3).
//!
//! `recover` runs on a stopped member that has the most up-to-date database. It rewrites the
//! local Raft membership to a list the operator edited (roles, addresses) and packs the result
//! into `recovery_db.tar.gz`; every other surviving member gets a copy of that file before it
//! starts, and [`unpack_at_start`] makes its `database/` that content.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use hyper::Method;
use serde_json::Value;

use super::local::{LocalMember, local_members};
use super::members::{SPARE, STAND_BY, VOTER};
use crate::client::Client;
use crate::db::identity;
use crate::db::raft::local_view::local_membership;
use crate::db::raft::recovery::rewrite_membership;
use crate::member_config::MemberConfig;
use crate::state_dir::{StateDir, sync_dir, write_atomic};
use crate::trust::Truststore;
use crate::{Error, Result, certs, validate};

/// The recovery bundle in the state directory.
const RECOVERY_TARBALL: &str = "recovery_db.tar.gz";
/// The directory the bundle is unpacked into at start.
const RECOVERY_DIR: &str = "recovery_db";
/// The new member list inside the bundle.
const RECOVERY_YAML: &str = "recovery.yaml";
/// Mode of the tarballs recovery writes.
const TARBALL_MODE: u32 = 0o644;
/// Mode of `recovery_db/`.
const RECOVERY_DIR_MODE: u32 = 0o755;
/// Mode of `database/`.
const DATABASE_DIR_MODE: u32 = 0o700;
/// How long the other members are probed, in total (SPEC §14.2 step 3).
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a daemon gets to answer on the control socket.
const SOCKET_PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest entry, and the largest total, a recovery tarball may unpack to.
const MAX_UNPACKED_BYTES: u64 = 16 << 30;

/// Quorum-loss recovery (SPEC §14.2) on the stopped member of `state_dir`: validates
/// `members` against the local view, makes sure no member runs, backs `database/` up, rewrites
/// the local Raft membership to exactly `members`, writes `recovery_db.tar.gz`, updates
/// `daemon.yaml`, the truststore and `patch.global.sql`, and returns the tarball's path.
pub async fn recover(state_dir: &StateDir, members: Vec<LocalMember>) -> Result<PathBuf> {
    let current = local_members(state_dir)?;
    validate_members(&current, &members)?;
    let own_id = identity::load(&state_dir.raft_identity())?;
    if !members.iter().any(|m| m.id == own_id) {
        return Err(Error::invalid(format!(
            "The local cluster member (Raft id {own_id}) is not in the cluster membership"
        )));
    }
    ensure_daemon_stopped(&state_dir.control_socket()).await?;
    probe_members(state_dir).await?;
    let backup_dir = state_dir.clone();
    let backup = tokio::task::spawn_blocking(move || backup_database(&backup_dir))
        .await
        .map_err(|err| Error::internal(format!("The database backup failed: {err}")))??;
    rewrite_and_pack(state_dir.clone(), own_id, members)
        .await
        .map_err(|err| {
            err.context(format!(
                "Recovery failed after the database was backed up to {backup:?}: "
            ))
        })
}

/// Steps 5 to 9 of SPEC §14.2, once `database/` is backed up.
async fn rewrite_and_pack(
    state_dir: StateDir,
    own_id: u64,
    members: Vec<LocalMember>,
) -> Result<PathBuf> {
    let dir = state_dir.database_dir();
    let nodes = local_membership(&dir)?;
    let mut raft_members = Vec::with_capacity(members.len());
    for member in &members {
        let (_, node, _) = nodes
            .iter()
            .find(|(id, _, _)| *id == member.id)
            .ok_or_else(|| {
                Error::invalid(format!("ID or name changed for member {}", member.name))
            })?;
        let mut node = node.clone();
        node.address = member.address.clone();
        raft_members.push((member.id, node, member.role == VOTER));
    }
    rewrite_membership(&dir, own_id, &raft_members, members_sql(&members)).await?;
    tokio::task::spawn_blocking(move || {
        let tarball = write_recovery_tarball(&state_dir, &members)?;
        update_daemon_yaml(&state_dir, &members, own_id)?;
        update_truststore(&state_dir, &members)?;
        append_patch(&state_dir, &members)?;
        Ok(tarball)
    })
    .await
    .map_err(|err| Error::internal(format!("Writing the recovery tarball failed: {err}")))?
}

/// SPEC §14.2 step 1: the new list against the current view.
fn validate_members(current: &[LocalMember], members: &[LocalMember]) -> Result<()> {
    if members.len() != current.len() {
        return Err(Error::invalid("members cannot be added or removed"));
    }
    let mut ids = HashSet::new();
    let mut addresses = HashSet::new();
    for member in members {
        if !current
            .iter()
            .any(|c| c.id == member.id && c.name == member.name)
        {
            return Err(Error::invalid(format!(
                "ID or name changed for member {}",
                member.name
            )));
        }
        if !ids.insert(member.id) {
            return Err(Error::invalid("members cannot be added or removed"));
        }
        validate::member_address(&member.address).map_err(|reason| {
            Error::invalid(format!("Invalid address {:?}: {reason}", member.address))
        })?;
        if !addresses.insert(member.address.as_str()) {
            return Err(Error::invalid(format!(
                "Duplicate address {:?}",
                member.address
            )));
        }
        if ![VOTER, STAND_BY, SPARE].contains(&member.role.as_str()) {
            return Err(Error::invalid(format!("Invalid role {:?}", member.role)));
        }
    }
    if !members.iter().any(|m| m.role == VOTER) {
        return Err(Error::invalid("At least one voter is required"));
    }
    Ok(())
}

/// SPEC §14.2 step 2: fails if a daemon answers on `socket`; removes a stale socket file.
async fn ensure_daemon_stopped(socket: &Path) -> Result<()> {
    if fs::symlink_metadata(socket).is_err() {
        return Ok(());
    }
    if crate::control_socket::answers(socket, SOCKET_PROBE_TIMEOUT).await {
        return Err(Error::invalid(format!(
            "Daemon is running (socket path exists: {socket:?})"
        )));
    }
    tracing::info!("Removing stale control socket {socket:?}");
    fs::remove_file(socket)
        .map_err(|err| Error::internal(format!("Failed to remove stale socket {socket:?}: {err}")))
}

/// SPEC §14.2 step 3: `GET /core/1.0` on every other member's truststore address, in
/// parallel, for at most [`PROBE_TIMEOUT`] in total.
async fn probe_members(state_dir: &StateDir) -> Result<()> {
    let own = MemberConfig::load(&state_dir.daemon_yaml())?;
    let identity = certs::load_pair(&state_dir.server_cert(), &state_dir.server_key())?;
    let cluster_cert = fs::read_to_string(state_dir.cluster_cert())
        .map_err(|err| Error::from(err).context("Failed to read the cluster certificate: "))?;
    let truststore = Truststore::open(state_dir.truststore_dir())?;
    let mut probes = Vec::new();
    for remote in truststore.list() {
        if remote.name == own.name {
            continue;
        }
        let client = Client::remote(&remote.address, &cluster_cert, Some(&identity))?
            .with_timeout(PROBE_TIMEOUT);
        probes.push(Box::pin(async move {
            match client.query::<Value>(Method::GET, "/core/1.0", None).await {
                Ok(_) => Some(remote.address),
                Err(_) => None,
            }
        }));
    }
    // The first member that answers ends the probe; silence ends it after the timeout.
    let answered = tokio::time::timeout(PROBE_TIMEOUT, async move {
        while !probes.is_empty() {
            let (address, _, rest) = futures::future::select_all(probes).await;
            if address.is_some() {
                return address;
            }
            probes = rest;
        }
        None
    })
    .await
    .ok()
    .flatten();
    match answered {
        Some(address) => Err(Error::invalid(format!(
            "Contacted cluster member at {address:?}; please shut down all cluster members"
        ))),
        None => Ok(()),
    }
}

/// The SQL that makes the members table match `members` (addresses and roles).
fn members_sql(members: &[LocalMember]) -> String {
    members
        .iter()
        .map(|m| {
            format!(
                "UPDATE core_cluster_members SET address = {}, role = {} WHERE name = {};\n",
                quote(&m.address),
                quote(&m.role),
                quote(&m.name)
            )
        })
        .collect()
}

/// A SQL string literal.
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// SPEC §14.2 step 8: one address update per member, appended to `patch.global.sql`.
fn append_patch(state_dir: &StateDir, members: &[LocalMember]) -> Result<()> {
    let path = state_dir.patch_global_sql();
    let lines: String = members
        .iter()
        .map(|m| {
            format!(
                "UPDATE core_cluster_members SET address = {} WHERE name = {};\n",
                quote(&m.address),
                quote(&m.name)
            )
        })
        .collect();
    let failed =
        |err: std::io::Error| Error::from(err).context(format!("Failed to write {path:?}: "));
    let mut file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(TARBALL_MODE)
        .open(&path)
        .map_err(failed)?;
    file.write_all(lines.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(failed)?;
    sync_dir(state_dir.root())
}

/// SPEC §14.2 step 7 and §14.3 step 3: the new addresses in the truststore. Certificates
/// stay as they are.
fn update_truststore(state_dir: &StateDir, members: &[LocalMember]) -> Result<()> {
    let truststore = Truststore::open(state_dir.truststore_dir())?;
    for mut remote in truststore.list() {
        if let Some(member) = members.iter().find(|m| m.name == remote.name)
            && member.address != remote.address
        {
            remote.address = member.address.clone();
            truststore.add(remote)?;
        }
    }
    Ok(())
}

/// SPEC §14.2 step 7 and §14.3 step 6: the new address of the member `own_id` in
/// `daemon.yaml`.
fn update_daemon_yaml(state_dir: &StateDir, members: &[LocalMember], own_id: u64) -> Result<()> {
    let own = members
        .iter()
        .find(|m| m.id == own_id)
        .ok_or_else(missing_local_member)?;
    let path = state_dir.daemon_yaml();
    let mut config = MemberConfig::load(&path)?;
    if config.address != own.address {
        config.address = own.address.clone();
        config.save(&path)?;
    }
    Ok(())
}

fn missing_local_member() -> Error {
    Error::invalid("Missing local cluster member in incoming recovery.yaml")
}

/// SPEC §14.2 step 6: `recovery_db.tar.gz` with the content of `database/` (without the
/// member's own Raft identity and SQLite's shared-memory files) and `recovery.yaml`.
fn write_recovery_tarball(state_dir: &StateDir, members: &[LocalMember]) -> Result<PathBuf> {
    let path = state_dir.root().join(RECOVERY_TARBALL);
    let yaml = serde_yaml_ng::to_string(members)
        .map_err(|err| Error::internal(format!("Failed to encode {RECOVERY_YAML}: {err}")))?;
    let identity = state_dir.raft_identity();
    write_tarball(&path, |builder| {
        let mut header = tar::Header::new_gnu();
        header.set_size(yaml.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(unix_now());
        header.set_entry_type(tar::EntryType::Regular);
        builder.append_data(&mut header, RECOVERY_YAML, yaml.as_bytes())?;
        append_tree(builder, &state_dir.database_dir(), Path::new(""), &|p| {
            p != identity && !p.to_string_lossy().ends_with("-shm")
        })
    })?;
    Ok(path)
}

/// SPEC §14.2 step 4 and §14.3 step 4: `db_backup.<timestamp>.tar.gz` with `database/…`
/// paths. A backup taken in the same second as an earlier one gets a counter before
/// `.tar.gz`, so no backup is ever overwritten.
fn backup_database(state_dir: &StateDir) -> Result<PathBuf> {
    let stamp = backup_timestamp(time::OffsetDateTime::now_utc());
    let mut path = state_dir.root().join(format!("db_backup.{stamp}.tar.gz"));
    let mut counter = 0;
    while fs::symlink_metadata(&path).is_ok() {
        counter += 1;
        path = state_dir
            .root()
            .join(format!("db_backup.{stamp}.{counter}.tar.gz"));
    }
    write_tarball(&path, |builder| {
        append_tree(
            builder,
            &state_dir.database_dir(),
            Path::new("database"),
            &|_| true,
        )
    })?;
    tracing::info!("Backed up the database to {path:?}");
    Ok(path)
}

/// `YYYY-MM-DDTHHMMSS+0000` (UTC).
fn backup_timestamp(now: time::OffsetDateTime) -> String {
    format!(
        "{:04}-{:02}-{:02}T{:02}{:02}{:02}+0000",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    )
}

fn unix_now() -> u64 {
    u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp()).unwrap_or(0)
}

/// Writes a gzipped tarball at `path` (mode 0644): built by `fill` into a temporary file that
/// is synced and then renamed into place.
fn write_tarball(
    path: &Path,
    fill: impl FnOnce(&mut tar::Builder<GzEncoder<File>>) -> std::io::Result<()>,
) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let temp = path.with_extension("gz.tmp");
    let failed =
        |err: std::io::Error| Error::from(err).context(format!("Failed to write {path:?}: "));
    let written = (|| -> std::io::Result<()> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(TARBALL_MODE)
            .open(&temp)?;
        file.set_permissions(fs::Permissions::from_mode(TARBALL_MODE))?;
        let mut builder = tar::Builder::new(GzEncoder::new(file, Compression::default()));
        builder.follow_symlinks(false);
        // Plain entries only (which is what the unpacking accepts): the Raft log's segments
        // have space allocated ahead that reads as zeros, which tar would store as holes.
        builder.sparse(false);
        fill(&mut builder)?;
        let file = builder.into_inner()?.finish()?;
        file.sync_all()?;
        fs::rename(&temp, path)
    })();
    if let Err(err) = written {
        let _ = fs::remove_file(&temp);
        return Err(failed(err));
    }
    sync_dir(dir)
}

/// Adds the directories and regular files under `dir` to `builder`, named under `prefix`,
/// skipping the paths `keep` refuses.
fn append_tree<W: Write>(
    builder: &mut tar::Builder<W>,
    dir: &Path,
    prefix: &Path,
    keep: &dyn Fn(&Path) -> bool,
) -> std::io::Result<()> {
    if !prefix.as_os_str().is_empty() {
        builder.append_dir(prefix, dir)?;
    }
    let mut entries: Vec<_> = fs::read_dir(dir)?.collect::<std::io::Result<_>>()?;
    entries.sort_by_key(|entry| entry.file_name());
    for entry in entries {
        let path = entry.path();
        if !keep(&path) {
            continue;
        }
        let name = prefix.join(entry.file_name());
        let kind = entry.file_type()?;
        if kind.is_dir() {
            append_tree(builder, &path, &name, keep)?;
        } else if kind.is_file() {
            builder.append_path_with_name(&path, &name)?;
        }
    }
    Ok(())
}

/// SPEC §14.3: if `recovery_db.tar.gz` is in `state_dir`, makes its content this member's
/// `database/` (keeping the member's own Raft identity) after backing the old one up, applies
/// the new addresses to the truststore and `daemon.yaml`, and deletes the tarball. The first
/// step of a start.
pub(crate) fn unpack_at_start(state_dir: &StateDir) -> Result<()> {
    let tarball = state_dir.root().join(RECOVERY_TARBALL);
    if !tarball.exists() {
        return Ok(());
    }
    tracing::info!("Found {tarball:?}: loading the recovered database");
    let unpacked = state_dir.root().join(RECOVERY_DIR);
    let result = unpack_and_install(state_dir, &tarball, &unpacked);
    if unpacked.exists()
        && let Err(err) = fs::remove_dir_all(&unpacked)
    {
        tracing::warn!("Failed to remove {unpacked:?}: {err}");
    }
    if let Err(err) = &result {
        tracing::error!("Failed to load the recovery tarball {tarball:?}: {err}");
    }
    result
}

/// Where `database/` is moved while the unpacked database takes its place.
const REPLACED_DIR: &str = "database.replaced";

fn unpack_and_install(state_dir: &StateDir, tarball: &Path, unpacked: &Path) -> Result<()> {
    let database = state_dir.database_dir();
    let old = state_dir.root().join(REPLACED_DIR);
    if old.exists() {
        if state_dir.raft_identity().exists() {
            fs::remove_dir_all(&old)
                .map_err(|err| Error::from(err).context(format!("Failed to remove {old:?}: ")))?;
        } else {
            // An earlier start stopped between moving database/ away and moving the unpacked
            // content in: the old database comes back, and the unpacking starts over.
            tracing::warn!("Restoring {old:?}, left by an interrupted recovery");
            if database.exists() {
                fs::remove_dir_all(&database).map_err(|err| {
                    Error::from(err).context(format!("Failed to remove {database:?}: "))
                })?;
            }
            fs::rename(&old, &database).map_err(|err| {
                Error::from(err).context(format!("Failed to move {old:?} to {database:?}: "))
            })?;
        }
    }
    // 1. Unpack (a leftover of an interrupted start is discarded first).
    if unpacked.exists() {
        fs::remove_dir_all(unpacked)
            .map_err(|err| Error::from(err).context(format!("Failed to remove {unpacked:?}: ")))?;
    }
    unpack(tarball, unpacked)?;
    // 2. The own entry of recovery.yaml.
    let yaml_path = unpacked.join(RECOVERY_YAML);
    let yaml = fs::read_to_string(&yaml_path)
        .map_err(|err| Error::from(err).context(format!("Failed to read {RECOVERY_YAML}: ")))?;
    let members: Vec<LocalMember> = serde_yaml_ng::from_str(&yaml)
        .map_err(|err| Error::invalid(format!("Invalid {RECOVERY_YAML}: {err}")))?;
    let identity_path = state_dir.raft_identity();
    let own_id = identity::load(&identity_path)?;
    if !members.iter().any(|m| m.id == own_id) {
        return Err(missing_local_member());
    }
    // 3. The truststore (daemon.yaml follows in step 6).
    update_truststore(state_dir, &members)?;
    // 4. Back up.
    backup_database(state_dir)?;
    // 5. Replace database/, keeping the own identity; recovery.yaml does not go with it.
    fs::remove_file(&yaml_path)
        .map_err(|err| Error::from(err).context(format!("Failed to remove {yaml_path:?}: ")))?;
    let identity = fs::read(&identity_path)
        .map_err(|err| Error::from(err).context(format!("Failed to read {identity_path:?}: ")))?;
    write_atomic(&unpacked.join("raft_identity.yaml"), &identity, 0o600)?;
    fs::set_permissions(unpacked, fs::Permissions::from_mode(DATABASE_DIR_MODE)).map_err(
        |err| Error::from(err).context(format!("Failed to set the mode of {unpacked:?}: ")),
    )?;
    let moved = |from: &Path, to: &Path| {
        fs::rename(from, to)
            .map_err(|err| Error::from(err).context(format!("Failed to move {from:?} to {to:?}: ")))
    };
    moved(&database, &old)?;
    moved(unpacked, &database)?;
    sync_dir(state_dir.root())?;
    if let Err(err) = fs::remove_dir_all(&old) {
        tracing::warn!("Failed to remove the replaced database {old:?}: {err}");
    }
    // 6. daemon.yaml gets the new address, then the tarball goes (a start interrupted before
    // that loads the same tarball again, with the same result).
    update_daemon_yaml(state_dir, &members, own_id)?;
    fs::remove_file(tarball)
        .map_err(|err| Error::from(err).context(format!("Failed to remove {tarball:?}: ")))?;
    sync_dir(state_dir.root())?;
    tracing::info!("Loaded the recovered database");
    Ok(())
}

/// Unpacks the gzipped tarball at `tarball` into the new directory `dest` (mode 0755). Only
/// directories and regular files are accepted, no name may contain `..` or be absolute, and
/// every entry and the total are limited to [`MAX_UNPACKED_BYTES`].
fn unpack(tarball: &Path, dest: &Path) -> Result<()> {
    let failed =
        |err: std::io::Error| Error::from(err).context(format!("Failed to unpack {tarball:?}: "));
    fs::DirBuilder::new()
        .mode(RECOVERY_DIR_MODE)
        .create(dest)
        .map_err(failed)?;
    fs::set_permissions(dest, fs::Permissions::from_mode(RECOVERY_DIR_MODE)).map_err(failed)?;
    let mut archive = tar::Archive::new(GzDecoder::new(File::open(tarball).map_err(failed)?));
    let mut total: u64 = 0;
    for entry in archive.entries().map_err(failed)? {
        let mut entry = entry.map_err(failed)?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        if name.contains("..") {
            return Err(Error::invalid(format!(
                "Invalid sequence `..` in recovery tarball entry {name:?}"
            )));
        }
        let relative = Path::new(&name);
        if relative
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(Error::invalid(format!(
                "Invalid path in recovery tarball entry {name:?}"
            )));
        }
        let size = entry.header().size().map_err(failed)?;
        total = total.saturating_add(size);
        if size > MAX_UNPACKED_BYTES || total > MAX_UNPACKED_BYTES {
            return Err(Error::invalid(format!(
                "Recovery tarball entry {name:?} is too large: the tarball may unpack to at most {MAX_UNPACKED_BYTES} bytes"
            )));
        }
        let target = dest.join(relative);
        match entry.header().entry_type() {
            tar::EntryType::Directory => {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(DATABASE_DIR_MODE)
                    .create(&target)
                    .map_err(failed)?;
            }
            tar::EntryType::Regular => {
                if let Some(parent) = target.parent() {
                    fs::DirBuilder::new()
                        .recursive(true)
                        .mode(DATABASE_DIR_MODE)
                        .create(parent)
                        .map_err(failed)?;
                }
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&target)
                    .map_err(failed)?;
                let copied =
                    std::io::copy(&mut (&mut entry).take(size), &mut file).map_err(failed)?;
                if copied != size {
                    return Err(Error::invalid(format!(
                        "Recovery tarball entry {name:?} is truncated"
                    )));
                }
                file.sync_all().map_err(failed)?;
            }
            other => {
                return Err(Error::invalid(format!(
                    "Unsupported type {other:?} of recovery tarball entry {name:?}"
                )));
            }
        }
    }
    sync_tree(dest)
}

/// Syncs `dir` and every directory under it, so the names of unpacked files are durable.
fn sync_tree(dir: &Path) -> Result<()> {
    for entry in fs::read_dir(dir)
        .map_err(|err| Error::from(err).context(format!("Failed to read {dir:?}: ")))?
    {
        let entry =
            entry.map_err(|err| Error::from(err).context(format!("Failed to read {dir:?}: ")))?;
        if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
            sync_tree(&entry.path())?;
        }
    }
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Membership, Vote};

    use super::*;
    use crate::certs::CertKeyPair;
    use crate::db::raft::log_store::LogStore;
    use crate::db::raft::state_machine::StateMachine;
    use crate::db::raft::{Command, MemberNode, TypeConfig};
    use crate::trust::Remote;

    /// A member of the seeded cluster.
    struct Seed {
        id: u64,
        name: &'static str,
        address: String,
        role: &'static str,
        pair: CertKeyPair,
    }

    use crate::test_support::free_address;

    /// c1 and c2 voters, c3 a stand-by, at free addresses nobody listens on.
    fn cluster() -> (Vec<Seed>, CertKeyPair) {
        let seeds = [(1, "c1", VOTER), (2, "c2", VOTER), (3, "c3", STAND_BY)]
            .into_iter()
            .map(|(id, name, role)| Seed {
                id,
                name,
                address: free_address(),
                role,
                pair: certs::generate(name).unwrap(),
            })
            .collect();
        (seeds, certs::generate("cluster").unwrap())
    }

    /// The state directory of `seeds[own]` in `root`: identity, daemon.yaml, certificates,
    /// truststore, and a database whose log holds the membership and the members table.
    async fn seed_member(
        root: &Path,
        own: usize,
        seeds: &[Seed],
        cluster: &CertKeyPair,
    ) -> StateDir {
        let dir = StateDir::open(root).unwrap();
        let me = &seeds[own];
        write_atomic(
            &dir.raft_identity(),
            format!("id: {}\n", me.id).as_bytes(),
            0o600,
        )
        .unwrap();
        let config = MemberConfig {
            name: me.name.into(),
            address: me.address.clone(),
            ..MemberConfig::default()
        };
        config.save(&dir.daemon_yaml()).unwrap();
        certs::write_pair(&dir.server_cert(), &dir.server_key(), &me.pair).unwrap();
        certs::write_pair(&dir.cluster_cert(), &dir.cluster_key(), cluster).unwrap();
        let truststore = Truststore::open(dir.truststore_dir()).unwrap();
        for seed in seeds {
            truststore
                .add(Remote {
                    name: seed.name.into(),
                    address: seed.address.clone(),
                    certificate: seed.pair.cert_pem.clone(),
                })
                .unwrap();
        }
        let db = dir.database_dir();
        let mut log = LogStore::open(&db).unwrap();
        let mut sm = StateMachine::open(&db).unwrap();
        let nodes: BTreeMap<u64, MemberNode> = seeds
            .iter()
            .map(|s| {
                let node = MemberNode {
                    name: s.name.into(),
                    address: s.address.clone(),
                    certificate: s.pair.cert_pem.clone(),
                    failure_domain: 0,
                };
                (s.id, node)
            })
            .collect();
        let voters: BTreeSet<u64> = seeds
            .iter()
            .filter(|s| s.role == VOTER)
            .map(|s| s.id)
            .collect();
        let mut sql = "CREATE TABLE core_cluster_members (id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, name TEXT NOT NULL, address TEXT NOT NULL, role TEXT NOT NULL, UNIQUE(name));".to_string();
        for s in seeds {
            sql += &format!(
                "INSERT INTO core_cluster_members (name, address, role) VALUES ('{}', '{}', '{}');",
                s.name, s.address, s.role
            );
        }
        let leader = CommittedLeaderId::new(2, 1);
        let entries: Vec<Entry<TypeConfig>> = [
            EntryPayload::Membership(Membership::new(vec![voters], nodes)),
            EntryPayload::Normal(Command::Sql { sql }),
        ]
        .into_iter()
        .enumerate()
        .map(|(i, payload)| Entry {
            log_id: LogId::new(leader, i as u64 + 1),
            payload,
        })
        .collect();
        log.save_vote(&Vote::new_committed(2, 1)).await.unwrap();
        log.blocking_append(entries.clone()).await.unwrap();
        sm.apply(entries.clone()).await.unwrap();
        log.save_committed(Some(entries[1].log_id)).await.unwrap();
        dir
    }

    /// The local view of `seeds`, sorted by name.
    fn view(seeds: &[Seed]) -> Vec<LocalMember> {
        seeds
            .iter()
            .map(|s| LocalMember {
                id: s.id,
                name: s.name.into(),
                address: s.address.clone(),
                role: s.role.into(),
            })
            .collect()
    }

    fn entry_names(tarball: &Path) -> Vec<String> {
        let mut archive = tar::Archive::new(GzDecoder::new(File::open(tarball).unwrap()));
        archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect()
    }

    fn backups(dir: &StateDir) -> Vec<PathBuf> {
        fs::read_dir(dir.root())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                name.starts_with("db_backup.") && name.ends_with(".tar.gz")
            })
            .collect()
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    fn invalid(current: &[LocalMember], edit: impl FnOnce(&mut Vec<LocalMember>)) -> String {
        let mut members = current.to_vec();
        edit(&mut members);
        validate_members(current, &members).unwrap_err().to_string()
    }

    #[test]
    fn validation_errors_are_exact() {
        let current = vec![
            LocalMember {
                id: 1,
                name: "c1".into(),
                address: "127.0.0.1:9001".into(),
                role: VOTER.into(),
            },
            LocalMember {
                id: 2,
                name: "c2".into(),
                address: "127.0.0.1:9002".into(),
                role: STAND_BY.into(),
            },
            LocalMember {
                id: 3,
                name: "c3".into(),
                address: "127.0.0.1:9003".into(),
                role: SPARE.into(),
            },
        ];
        assert!(validate_members(&current, &current).is_ok());
        let mut moved = current.clone();
        moved[0].address = "[::1]:8001".into();
        moved[2].role = VOTER.into();
        assert!(validate_members(&current, &moved).is_ok());

        let count = "members cannot be added or removed";
        assert_eq!(
            invalid(&current, |m| {
                m.pop();
            }),
            count
        );
        assert_eq!(invalid(&current, |m| m.push(m[0].clone())), count);
        assert_eq!(invalid(&current, |m| m[2] = m[1].clone()), count);
        assert_eq!(
            invalid(&current, |m| m[1].id = 7),
            "ID or name changed for member c2"
        );
        assert_eq!(
            invalid(&current, |m| m[1].name = "c9".into()),
            "ID or name changed for member c9"
        );
        assert_eq!(
            invalid(&current, |m| m[0].role = SPARE.into()),
            "At least one voter is required"
        );
        assert_eq!(
            invalid(&current, |m| m[1].address = "localhost:9002".into()),
            "Invalid address \"localhost:9002\": Address must be an IP address and a port, like 127.0.0.1:9001 or [::1]:9001"
        );
        assert_eq!(
            invalid(&current, |m| m[1].address = "0.0.0.0:9002".into()),
            "Invalid address \"0.0.0.0:9002\": Wildcard addresses cannot be member addresses"
        );
        assert_eq!(
            invalid(&current, |m| m[2].address = "127.0.0.1:9001".into()),
            "Duplicate address \"127.0.0.1:9001\""
        );
        assert_eq!(
            invalid(&current, |m| m[1].role = "standby".into()),
            "Invalid role \"standby\""
        );
        assert_eq!(
            invalid(&current, |m| m[1].role = "PENDING".into()),
            "Invalid role \"PENDING\""
        );
    }

    #[tokio::test]
    async fn a_running_daemon_is_refused_and_a_stale_socket_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let (seeds, cluster) = cluster();
        let dir = seed_member(&tmp.path().join("c1"), 0, &seeds, &cluster).await;
        let socket = dir.control_socket();
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let err = recover(&dir, view(&seeds)).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("Daemon is running (socket path exists: {socket:?})")
        );
        assert!(backups(&dir).is_empty());
        assert!(!dir.root().join(RECOVERY_TARBALL).exists());

        drop(listener); // The socket file stays behind: stale.
        assert!(socket.exists());
        ensure_daemon_stopped(&socket).await.unwrap();
        assert!(!socket.exists());
    }

    #[tokio::test]
    async fn recover_then_unpack_on_another_member() {
        let tmp = tempfile::tempdir().unwrap();
        let (seeds, cluster) = cluster();
        let c1 = seed_member(&tmp.path().join("c1"), 0, &seeds, &cluster).await;
        let c3 = seed_member(&tmp.path().join("c3"), 2, &seeds, &cluster).await;
        let mut members = view(&seeds);
        assert_eq!(local_members(&c1).unwrap(), members);
        members[0].address = free_address();
        members[1].role = SPARE.into();
        members[1].address = free_address();
        members[2].role = VOTER.into();
        members[2].address = free_address();

        let tarball = recover(&c1, members.clone()).await.unwrap();
        assert_eq!(tarball, c1.root().join("recovery_db.tar.gz"));
        assert_eq!(mode(&tarball), 0o644);
        assert_eq!(local_members(&c1).unwrap(), members);
        let names = entry_names(&tarball);
        assert!(names.contains(&"recovery.yaml".to_string()), "{names:?}");
        assert!(names.contains(&"log/meta".to_string()), "{names:?}");
        assert!(names.contains(&"db.sqlite3".to_string()), "{names:?}");
        assert!(
            !names.iter().any(|n| n.contains("raft_identity")),
            "{names:?}"
        );
        let backup = backups(&c1);
        assert_eq!(backup.len(), 1);
        assert_eq!(mode(&backup[0]), 0o644);
        let names = entry_names(&backup[0]);
        assert!(names.iter().all(|n| n.starts_with("database")), "{names:?}");
        assert!(
            names.contains(&"database/raft_identity.yaml".to_string()),
            "{names:?}"
        );
        let config = MemberConfig::load(&c1.daemon_yaml()).unwrap();
        assert_eq!(config.address, members[0].address);
        let truststore = Truststore::open(c1.truststore_dir()).unwrap();
        for member in &members {
            let remote = truststore.by_name(&member.name).unwrap();
            assert_eq!(remote.address, member.address);
            assert_eq!(
                remote.certificate,
                seeds[member.id as usize - 1].pair.cert_pem
            );
        }
        let patch = fs::read_to_string(c1.patch_global_sql()).unwrap();
        let expected: String = members
            .iter()
            .map(|m| {
                format!(
                    "UPDATE core_cluster_members SET address = '{}' WHERE name = '{}';\n",
                    m.address, m.name
                )
            })
            .collect();
        assert_eq!(patch, expected);

        // c3 gets the tarball and loads it at its next start.
        fs::copy(&tarball, c3.root().join(RECOVERY_TARBALL)).unwrap();
        unpack_at_start(&c3).unwrap();
        assert_eq!(local_members(&c3).unwrap(), members);
        assert_eq!(identity::load(&c3.raft_identity()).unwrap(), 3);
        assert_eq!(mode(&c3.database_dir()), 0o700);
        assert!(!c3.root().join(RECOVERY_TARBALL).exists());
        assert!(!c3.root().join(RECOVERY_DIR).exists());
        assert!(!c3.database_dir().join(RECOVERY_YAML).exists());
        assert_eq!(backups(&c3).len(), 1);
        let config = MemberConfig::load(&c3.daemon_yaml()).unwrap();
        assert_eq!(config.address, members[2].address);
        let truststore = Truststore::open(c3.truststore_dir()).unwrap();
        assert_eq!(
            truststore.by_name("c2").unwrap().address,
            members[1].address
        );
        // Without a tarball a start changes nothing.
        unpack_at_start(&c3).unwrap();
        assert_eq!(backups(&c3).len(), 1);
    }

    #[tokio::test]
    async fn a_member_missing_from_recovery_yaml_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let (seeds, cluster) = cluster();
        let c1 = seed_member(&tmp.path().join("c1"), 0, &seeds, &cluster).await;
        let tarball = recover(&c1, view(&seeds)).await.unwrap();
        let other = StateDir::open(tmp.path().join("other")).unwrap();
        write_atomic(&other.raft_identity(), b"id: 42\n", 0o600).unwrap();
        fs::write(other.database_dir().join("db.sqlite3"), b"old").unwrap();
        fs::copy(&tarball, other.root().join(RECOVERY_TARBALL)).unwrap();
        let err = unpack_at_start(&other).unwrap_err().to_string();
        assert_eq!(
            err,
            "Missing local cluster member in incoming recovery.yaml"
        );
        // Nothing changed, and the tarball is still there for another try.
        assert_eq!(
            fs::read(other.database_dir().join("db.sqlite3")).unwrap(),
            b"old"
        );
        assert!(other.root().join(RECOVERY_TARBALL).exists());
        assert!(!other.root().join(RECOVERY_DIR).exists());
    }

    #[tokio::test]
    async fn a_start_interrupted_while_replacing_the_database_is_resumed() {
        let tmp = tempfile::tempdir().unwrap();
        let (seeds, cluster) = cluster();
        let c1 = seed_member(&tmp.path().join("c1"), 0, &seeds, &cluster).await;
        let c2 = seed_member(&tmp.path().join("c2"), 1, &seeds, &cluster).await;
        let mut members = view(&seeds);
        members[1].address = free_address();
        let tarball = recover(&c1, members.clone()).await.unwrap();
        fs::copy(&tarball, c2.root().join(RECOVERY_TARBALL)).unwrap();
        // The crash came after database/ was moved away: the next start finds it empty.
        fs::rename(c2.database_dir(), c2.root().join(REPLACED_DIR)).unwrap();
        let c2 = StateDir::open(c2.root()).unwrap();
        unpack_at_start(&c2).unwrap();
        assert_eq!(identity::load(&c2.raft_identity()).unwrap(), 2);
        assert_eq!(local_members(&c2).unwrap(), members);
        assert!(!c2.root().join(REPLACED_DIR).exists());
        let config = MemberConfig::load(&c2.daemon_yaml()).unwrap();
        assert_eq!(config.address, members[1].address);
    }

    #[test]
    fn a_dot_dot_entry_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(tmp.path()).unwrap();
        write_atomic(&dir.raft_identity(), b"id: 1\n", 0o600).unwrap();
        let tarball = dir.root().join(RECOVERY_TARBALL);
        write_tarball(&tarball, |builder| {
            let data = b"evil";
            let mut header = tar::Header::new_old();
            let name = b"database/../../evil";
            header.as_old_mut().name[..name.len()].copy_from_slice(name);
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_entry_type(tar::EntryType::Regular);
            header.set_cksum();
            builder.append(&header, &data[..])
        })
        .unwrap();
        let err = unpack_at_start(&dir).unwrap_err().to_string();
        assert_eq!(
            err,
            "Invalid sequence `..` in recovery tarball entry \"database/../../evil\""
        );
        assert!(!tmp.path().parent().unwrap().join("evil").exists());
        assert!(!dir.root().join(RECOVERY_DIR).exists());
    }
}
