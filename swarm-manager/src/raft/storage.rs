//! Raft log and state machine storage: one redb database (`<dir>/raft.redb`) and the latest
//! snapshot's data in a file beside it (`<dir>/snapshot-<id>.sealed`).
//!
//! - The log (`raft_log`: index → bincode of `Entry`) and the vote are written with redb's
//!   immediate durability: a commit returns after fsync, and only then is an append
//!   acknowledged to openraft.
//! - The committed log id is written without an fsync of its own: the next durable commit
//!   (the next append, vote, truncate or purge) or the close of the store persists it. After
//!   a crash it may lag a little; it is an optimization that lets a restarted manager
//!   re-apply the committed entries at once, so an older value is always safe.
//! - The state machine is the in-memory [`Shared`] state. It is not persisted on apply; the
//!   latest snapshot is, and on start the state is loaded from it, then openraft re-applies
//!   the log from the snapshot's last log id up to the committed id.
//! - **A snapshot's data is a file of its own, not a value in the database.** redb has one
//!   write transaction at a time, and openraft's core awaits every log append: a snapshot of
//!   tens of MiB written inside the database held every append (and with them the core, its
//!   heartbeats and its answers) for as long as it took to write and fsync, up to 2.5 s at
//!   5 000 nodes, long enough for an election. Now the data is written to a temporary file,
//!   fsynced and renamed ([`write_snapshot`]); only then does a small durable transaction
//!   point `raft_snapshot` (its metadata and the file's name) at it. Other snapshot files
//!   are removed after that commit and when the storage is opened, so a crash leaves at most
//!   an orphan file, never a database pointing at a missing one. A database of an older
//!   version, with the data inline (`raft_snapshot`'s `data`), is read as it is until the
//!   next snapshot replaces it.
//! - Encryption at rest (`encryption.rs`): every log entry and the snapshot's data are
//!   sealed with the manager's data key (the entry's index, or the snapshot file's name,
//!   authenticated with them). The vote, the committed and purged log ids and the snapshot's metadata
//!   (its last log id and membership: ids and addresses of the managers) stay in the clear.
//!   A database written before encryption (no `encryption` marker in `raft_meta`) is sealed
//!   in place, in one transaction, when it is opened, then compacted.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogReader,
    RaftSnapshotBuilder, SnapshotMeta, StorageIOError, StoredMembership, Vote,
};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{de::DeserializeOwned, Serialize};

use super::encryption::{CipherError, DataKey};
use super::TypeConfig;
use crate::metrics::METRICS;
use crate::store::{Response, Shared, State};

/// openraft's storage error, as the storage traits return it.
type RaftStorageError = openraft::StorageError<u64>;
type Membership = StoredMembership<u64, openraft::BasicNode>;
type Meta = SnapshotMeta<u64, openraft::BasicNode>;

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_snapshot");

const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_LAST_PURGED: &str = "last_purged";
const KEY_SNAPSHOT_META: &str = "meta";
/// The data of a snapshot written by an older version, inline in the database.
const KEY_SNAPSHOT_DATA: &str = "data";
/// The name of the file in the Raft directory that holds the snapshot's data.
const KEY_SNAPSHOT_FILE: &str = "file";
/// Snapshot data files: `snapshot-<snapshot id>.sealed` (and `.tmp` while written).
const SNAPSHOT_FILE_PREFIX: &str = "snapshot-";
const SNAPSHOT_FILE_SUFFIX: &str = ".sealed";
/// Set (to [`ENCRYPTION_V1`]) once every entry and snapshot in the database is sealed.
const KEY_ENCRYPTION: &str = "encryption";
const ENCRYPTION_V1: &[u8] = b"chacha20poly1305-v1";
const AAD_SNAPSHOT: &[u8] = b"swarm raft snapshot";

/// How the log, the vote and the other durable writes are committed: `Immediate`, after
/// fsync. Only a build with the test feature `test-unsafe-no-raft-fsync` (the power-loss
/// test's proof that it can fail, `cargo xtask powerloss --without-raft-fsync`) commits them
/// without fsync; [`open`] logs an error when that build runs.
#[cfg(not(feature = "test-unsafe-no-raft-fsync"))]
const DURABLE: Durability = Durability::Immediate;
#[cfg(feature = "test-unsafe-no-raft-fsync")]
const DURABLE: Durability = Durability::None;

/// Starts a write transaction committed with [`DURABLE`].
fn begin_durable(db: &Database) -> Result<redb::WriteTransaction, DbError> {
    let mut txn = db.begin_write().db()?;
    txn.set_durability(DURABLE).db()?;
    Ok(txn)
}

/// File name of the Raft database inside the manager's state directory.
pub const DB_FILE: &str = "raft.redb";

/// Why the Raft storage could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("cannot create the Raft state directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open the Raft database {path}: {source} (is another manager process using this state directory?)")]
    Open {
        path: PathBuf,
        source: redb::DatabaseError,
    },
    #[error("the Raft database {path} is unreadable: {source}; restore the state directory from a backup, or remove it and join the cluster again")]
    Corrupt { path: PathBuf, source: DbError },
}

/// A failure of one storage operation (redb or decoding).
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("redb: {0}")]
    Redb(#[from] redb::Error),
    #[error("bincode: {0}")]
    Codec(#[from] bincode::Error),
    #[error("storage task failed: {0}")]
    Task(String),
    #[error("an encrypted Raft record: {0}")]
    Cipher(#[from] CipherError),
    #[error("the Raft snapshot file {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the Raft database names the snapshot file {0:?}, which is not a snapshot file name")]
    SnapshotName(String),
}

trait DbResult<T> {
    fn db(self) -> Result<T, DbError>;
}

impl<T, E: Into<redb::Error>> DbResult<T> for Result<T, E> {
    fn db(self) -> Result<T, DbError> {
        self.map_err(|e| DbError::Redb(e.into()))
    }
}

fn raft_err(subject: ErrorSubject<u64>, verb: ErrorVerb, e: DbError) -> RaftStorageError {
    StorageIOError::new(subject, verb, AnyError::new(&e)).into()
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, DbError> {
    Ok(bincode::serialize(v)?)
}

fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, DbError> {
    Ok(bincode::deserialize(b)?)
}

/// One log entry's bytes before sealing (what a restarted manager reads back from disk, once
/// opened with the data key).
/// Public for the fuzz target `raft_entry`; the snapshot's state is read by
/// [`State::from_bytes`].
pub fn decode_entry(bytes: &[u8]) -> Result<Entry<TypeConfig>, DbError> {
    decode(bytes)
}

/// The stored bytes of a log entry ([`decode_entry`] reads them back).
pub fn encode_entry(entry: &Entry<TypeConfig>) -> Result<Vec<u8>, DbError> {
    encode(entry)
}

/// The authenticated data of the entry at `index`: a sealed entry opens only there.
fn log_aad(index: u64) -> [u8; 16] {
    let mut aad = [0u8; 16];
    aad[..8].copy_from_slice(b"raft log");
    aad[8..].copy_from_slice(&index.to_be_bytes());
    aad
}

/// An entry as stored: bincode, sealed with the data key. Returns the plaintext length too
/// (what the snapshot trigger counts).
fn seal_entry(dek: &DataKey, e: &Entry<TypeConfig>) -> Result<(u64, Vec<u8>), DbError> {
    let plain = encode_entry(e)?;
    Ok((
        plain.len() as u64,
        dek.seal(&log_aad(e.log_id.index), &plain),
    ))
}

fn open_entry(dek: &DataKey, index: u64, stored: &[u8]) -> Result<Entry<TypeConfig>, DbError> {
    decode_entry(&dek.open(&log_aad(index), stored)?)
}

/// Runs blocking redb I/O off the async runtime's worker threads.
async fn blocking<T, F>(f: F) -> Result<T, DbError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, DbError> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| DbError::Task(e.to_string()))?
}

fn read_meta<T: DeserializeOwned>(db: &Database, key: &str) -> Result<Option<T>, DbError> {
    let txn = db.begin_read().db()?;
    let table = txn.open_table(META).db()?;
    match table.get(key).db()? {
        Some(v) => Ok(Some(decode(v.value())?)),
        None => Ok(None),
    }
}

fn write_meta<T: Serialize>(
    db: &Database,
    key: &str,
    value: &T,
    durability: Durability,
) -> Result<(), DbError> {
    let bytes = encode(value)?;
    let mut txn = db.begin_write().db()?;
    txn.set_durability(durability).db()?;
    {
        let mut table = txn.open_table(META).db()?;
        table.insert(key, bytes.as_slice()).db()?;
    }
    txn.commit().db()?;
    Ok(())
}

/// The file name of a snapshot's data: its id, with anything but ASCII letters, digits and
/// `-` replaced by `_`.
fn snapshot_file_name(meta: &Meta) -> String {
    let id: String = meta
        .snapshot_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{SNAPSHOT_FILE_PREFIX}{id}{SNAPSHOT_FILE_SUFFIX}")
}

/// Whether `name` is one this module gives a snapshot file (no path separators, no `..`).
fn is_snapshot_file_name(name: &str) -> bool {
    name.strip_prefix(SNAPSHOT_FILE_PREFIX)
        .and_then(|r| r.strip_suffix(SNAPSHOT_FILE_SUFFIX))
        .is_some_and(|id| {
            !id.is_empty()
                && id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

/// The authenticated data of a snapshot file: sealed data opens only under its own name, so
/// another snapshot's file put in its place does not read.
fn snapshot_file_aad(name: &str) -> Vec<u8> {
    let mut aad = AAD_SNAPSHOT.to_vec();
    aad.push(b' ');
    aad.extend_from_slice(name.as_bytes());
    aad
}

/// The latest snapshot: its metadata and its data (from its file, or inline as an older
/// version wrote it).
fn read_snapshot(
    db: &Database,
    dir: &Path,
    dek: &DataKey,
) -> Result<Option<(Meta, Vec<u8>)>, DbError> {
    let txn = db.begin_read().db()?;
    let table = txn.open_table(SNAPSHOT).db()?;
    let Some(meta) = table.get(KEY_SNAPSHOT_META).db()? else {
        return Ok(None);
    };
    let meta: Meta = decode(meta.value())?;
    if let Some(name) = table.get(KEY_SNAPSHOT_FILE).db()? {
        let name = String::from_utf8_lossy(name.value()).into_owned();
        if !is_snapshot_file_name(&name) {
            return Err(DbError::SnapshotName(name));
        }
        let path = dir.join(&name);
        let sealed = std::fs::read(&path).map_err(|source| DbError::File { path, source })?;
        return Ok(Some((meta, dek.open(&snapshot_file_aad(&name), &sealed)?)));
    }
    let data = match table.get(KEY_SNAPSHOT_DATA).db()? {
        Some(d) => dek.open(AAD_SNAPSHOT, d.value())?,
        None => Vec::new(),
    };
    Ok(Some((meta, data)))
}

/// Writes `bytes` to `dir/name` durably ([`swarm_common::fs::write_durably`], 0600).
fn write_file_durably(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), DbError> {
    swarm_common::fs::write_durably(&dir.join(name), bytes, 0o600).map_err(|e| DbError::File {
        path: e.path,
        source: e.source,
    })
}

/// Removes the snapshot files of `dir` other than `keep` (older snapshots, and files a
/// crash left before their snapshot was committed), and puts `keep`'s mode right (0600).
/// Best effort: a file that cannot be removed is logged and left.
fn tidy_snapshot_files(dir: &Path, keep: Option<&str>) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with(SNAPSHOT_FILE_PREFIX) {
            continue;
        }
        let path = entry.path();
        if Some(name) == keep {
            let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
        } else if let Err(e) = std::fs::remove_file(&path) {
            tracing::warn!(path = %path.display(), error = %e, "removing an old Raft snapshot file");
        }
    }
}

/// The name of the snapshot file the database points at, if any.
fn current_snapshot_file(db: &Database) -> Result<Option<String>, DbError> {
    let txn = db.begin_read().db()?;
    let table = txn.open_table(SNAPSHOT).db()?;
    Ok(table
        .get(KEY_SNAPSHOT_FILE)
        .db()?
        .map(|v| String::from_utf8_lossy(v.value()).into_owned()))
}

/// Saves a snapshot: its data sealed in a file of its own (written and fsynced with no
/// database transaction open, so log appends go on meanwhile), then one small durable
/// transaction that makes it the current snapshot, then the older files removed. Callers
/// hold the store's snapshot lock (see [`StateMachine`]).
fn write_snapshot(
    db: &Database,
    dir: &Path,
    dek: &DataKey,
    meta: &Meta,
    data: &[u8],
) -> Result<(), DbError> {
    let name = snapshot_file_name(meta);
    let sealed = dek.seal(&snapshot_file_aad(&name), data);
    write_file_durably(dir, &name, &sealed)?;
    let meta = encode(meta)?;
    let txn = begin_durable(db)?;
    {
        let mut table = txn.open_table(SNAPSHOT).db()?;
        point_at_snapshot_file(&mut table, &meta, &name)?;
    }
    txn.commit().db()?;
    tidy_snapshot_files(dir, Some(&name));
    METRICS.raft_snapshot_bytes.set(sealed.len() as i64);
    Ok(())
}

/// The openraft error of a snapshot that could not be saved.
fn snapshot_write_error(meta: &Meta) -> impl FnOnce(DbError) -> RaftStorageError + '_ {
    move |e| {
        raft_err(
            ErrorSubject::Snapshot(Some(meta.signature())),
            ErrorVerb::Write,
            e,
        )
    }
}

/// Inside a write transaction: the snapshot's metadata and file name, and no inline data.
fn point_at_snapshot_file(
    table: &mut redb::Table<&str, &[u8]>,
    meta: &[u8],
    name: &str,
) -> Result<(), DbError> {
    table.insert(KEY_SNAPSHOT_META, meta).db()?;
    table.insert(KEY_SNAPSHOT_FILE, name.as_bytes()).db()?;
    table.remove(KEY_SNAPSHOT_DATA).db()?;
    Ok(())
}

/// Opens (or creates) the Raft storage in `dir` and loads the latest snapshot, if any, into
/// `shared`. Blocking: call it at start, before the async runtime serves requests, or
/// from `spawn_blocking`.
/// The database holds the root CA key and both join tokens: the directory is 0700 and the
/// file 0600, from creation on, and put right when an older version left them open.
fn private_files(dir: &Path, db: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(db)?;
    std::fs::set_permissions(db, std::fs::Permissions::from_mode(0o600))?;
    // redb fsyncs the file, not the directory entries that lead to it: without these a power
    // cut right after the first commits could lose the whole database.
    for d in [Some(dir), dir.parent()].into_iter().flatten() {
        if !d.as_os_str().is_empty() {
            std::fs::File::open(d)?.sync_all()?;
        }
    }
    Ok(())
}

/// Seals, in one transaction, every entry and the snapshot of a database written before
/// encryption at rest, and marks it encrypted; a database already marked is left alone.
/// Returns whether anything was rewritten (the caller then compacts the file, so that no
/// page of it keeps the old bytes).
fn seal_in_place(db: &Database, dek: &DataKey) -> Result<bool, DbError> {
    {
        let txn = db.begin_read().db()?;
        if txn
            .open_table(META)
            .db()?
            .get(KEY_ENCRYPTION)
            .db()?
            .is_some()
        {
            return Ok(false);
        }
    }
    let txn = db.begin_write().db()?;
    let rewritten;
    {
        let mut meta = txn.open_table(META).db()?;
        let mut log = txn.open_table(LOG).db()?;
        let mut entries = Vec::new();
        for item in log.iter().db()? {
            let (k, v) = item.db()?;
            entries.push((k.value(), dek.seal(&log_aad(k.value()), v.value())));
        }
        for (index, sealed) in &entries {
            log.insert(*index, sealed.as_slice()).db()?;
        }
        let mut snap = txn.open_table(SNAPSHOT).db()?;
        let data = snap
            .get(KEY_SNAPSHOT_DATA)
            .db()?
            .map(|d| dek.seal(AAD_SNAPSHOT, d.value()));
        if let Some(d) = &data {
            snap.insert(KEY_SNAPSHOT_DATA, d.as_slice()).db()?;
        }
        rewritten = !entries.is_empty() || data.is_some();
        meta.insert(KEY_ENCRYPTION, ENCRYPTION_V1).db()?;
    }
    txn.commit().db()?;
    Ok(rewritten)
}

/// Opens (or creates) the Raft storage in `dir`, every record sealed with `dek` (a
/// database of an older version is sealed first), and loads the latest snapshot, if any,
/// into `shared`. Blocking.
pub fn open(
    dir: &Path,
    shared: Arc<Shared>,
    dek: DataKey,
) -> Result<(LogStore, StateMachine), StorageError> {
    if cfg!(feature = "test-unsafe-no-raft-fsync") {
        tracing::error!("this build commits the Raft log WITHOUT fsync (test feature test-unsafe-no-raft-fsync): acknowledged writes are lost on a power cut");
    }
    let path = dir.join(DB_FILE);
    private_files(dir, &path).map_err(|source| StorageError::CreateDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut db = Database::create(&path).map_err(|source| StorageError::Open {
        path: path.clone(),
        source,
    })?;
    let corrupt = |source: DbError| StorageError::Corrupt {
        path: path.clone(),
        source,
    };
    // Create the tables so that read transactions can open them; a database with nothing
    // in it yet is marked encrypted at once.
    (|| -> Result<(), DbError> {
        let txn = begin_durable(&db)?;
        {
            let log = txn.open_table(LOG).db()?;
            let mut meta = txn.open_table(META).db()?;
            let snap = txn.open_table(SNAPSHOT).db()?;
            let empty = log.first().db()?.is_none() && snap.first().db()?.is_none();
            if empty && meta.get(KEY_ENCRYPTION).db()?.is_none() {
                meta.insert(KEY_ENCRYPTION, ENCRYPTION_V1).db()?;
            }
        }
        txn.commit().db()?;
        Ok(())
    })()
    .map_err(corrupt)?;
    if seal_in_place(&db, &dek).map_err(corrupt)? {
        tracing::info!(path = %path.display(), "encrypted the Raft data written before encryption at rest");
        if let Err(e) = db.compact() {
            tracing::warn!(error = %e, "compacting the Raft database after encrypting it");
        }
    }

    let current = current_snapshot_file(&db).map_err(corrupt)?;
    tidy_snapshot_files(dir, current.as_deref());

    let log_bytes = LogBytes::default();
    let mut sm = StateMachine {
        files: SnapshotFiles {
            db: Arc::new(db),
            dir: dir.into(),
            lock: Arc::default(),
            dek: dek.clone(),
        },
        log_bytes: log_bytes.clone(),
        shared,
        last_applied: None,
        last_membership: Membership::default(),
    };
    if let Some((meta, data)) = read_snapshot(&sm.files.db, dir, &dek).map_err(corrupt)? {
        let state = State::from_bytes(&data).map_err(|e| corrupt(e.into()))?;
        let index = meta.last_log_id.map(|l| l.index).unwrap_or(0);
        sm.shared.replace(state, index);
        sm.last_applied = meta.last_log_id;
        sm.last_membership = meta.last_membership;
        METRICS.raft_applied_index.set(index as i64);
        tracing::info!(snapshot = %meta.snapshot_id, index, "loaded the Raft snapshot");
    }
    let log = LogStore {
        inner: Arc::new(LogInner {
            db: sm.files.db.clone(),
            unflushed_committed: Mutex::new(None),
            log_bytes,
            dek,
        }),
    };
    Ok((log, sm))
}

/// Bytes of log entries appended since the last snapshot was built (shared by the log, which
/// counts, and the snapshot builder, which resets): the size trigger of snapshots
/// (`raft/snapshot.rs`), next to openraft's count of entries.
#[derive(Clone, Default, Debug)]
pub struct LogBytes(Arc<std::sync::atomic::AtomicU64>);

impl LogBytes {
    pub fn get(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn add(&self, n: u64) {
        let now = self.0.fetch_add(n, std::sync::atomic::Ordering::Relaxed) + n;
        METRICS.raft_log_bytes.set(now as i64);
    }

    fn reset(&self) {
        self.0.store(0, std::sync::atomic::Ordering::Relaxed);
        METRICS.raft_log_bytes.set(0);
    }
}

/// What [`force_new_cluster`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForcedCluster {
    /// The last log entry of the old cluster in this manager's log: the new cluster goes on
    /// from there, so object versions (Raft indexes) keep growing.
    pub last_log_id: Option<LogId<u64>>,
    /// The voters of the old membership, this manager included.
    pub old_voters: BTreeSet<u64>,
    /// The node ids of the other old managers, now on the cluster's removed list.
    pub removed: Vec<String>,
}

/// Why [`force_new_cluster`] could not rewrite the Raft state.
#[derive(Debug, thiserror::Error)]
pub enum ForceNewClusterError {
    #[error("this node has no Raft state in {0} to start a new cluster from")]
    NoState(PathBuf),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// `swarm init --force-new-cluster`: rewrites the Raft state in `dir`, before Raft starts,
/// into a one-manager cluster of `raft_id` (reached at `addr`) holding everything this
/// manager has: the latest snapshot with every entry of the log after it applied
/// (committed or not: the stored commit index may lag behind acknowledged writes, so
/// nothing of the log is dropped), saved as a snapshot whose membership is this manager
/// alone, with the log purged up to it. The vote is kept: the lone voter elects itself in
/// a later term. Blocking.
pub fn force_new_cluster(
    dir: &Path,
    raft_id: u64,
    addr: &str,
    dek: &DataKey,
) -> Result<ForcedCluster, ForceNewClusterError> {
    let path = dir.join(DB_FILE);
    if !path.exists() {
        return Err(ForceNewClusterError::NoState(dir.to_path_buf()));
    }
    // The manager this node ran until now may still be closing the database.
    let mut attempts = 0;
    let db = loop {
        match Database::create(&path) {
            Err(redb::DatabaseError::DatabaseAlreadyOpen) if attempts < 50 => {
                attempts += 1;
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            r => {
                break r.map_err(|source| StorageError::Open {
                    path: path.clone(),
                    source,
                })?
            }
        }
    };
    let corrupt = |source: DbError| StorageError::Corrupt {
        path: path.clone(),
        source,
    };
    let shared = Shared::default();
    let mut last: Option<LogId<u64>> = None;
    let mut membership = openraft::Membership::<u64, openraft::BasicNode>::default();
    if seal_in_place(&db, dek).map_err(corrupt)? {
        tracing::info!(path = %path.display(), "encrypted the Raft data written before encryption at rest");
    }
    if let Some((meta, data)) = read_snapshot(&db, dir, dek).map_err(corrupt)? {
        let state = State::from_bytes(&data).map_err(|e| corrupt(e.into()))?;
        shared.replace(state, meta.last_log_id.map(|l| l.index).unwrap_or(0));
        last = meta.last_log_id;
        membership = meta.last_membership.membership().clone();
    }
    let after = last.map(|l| l.index + 1).unwrap_or(0);
    let entries = (|| -> Result<Vec<Entry<TypeConfig>>, DbError> {
        let txn = db.begin_read().db()?;
        let table = txn.open_table(LOG).db()?;
        let mut out = Vec::new();
        for item in table.range(after..).db()? {
            let (k, v) = item.db()?;
            out.push(open_entry(dek, k.value(), v.value())?);
        }
        Ok(out)
    })()
    .map_err(corrupt)?;
    for entry in entries {
        let index = entry.log_id.index;
        match entry.payload {
            EntryPayload::Normal(req) => {
                shared.apply(index, req);
            }
            EntryPayload::Blank => shared.mark_applied(index),
            EntryPayload::Membership(m) => {
                membership = m;
                shared.mark_applied(index);
            }
        }
        last = Some(entry.log_id);
    }
    if last.is_none() {
        return Err(ForceNewClusterError::NoState(dir.to_path_buf()));
    }
    let old_voters: BTreeSet<u64> = membership.voter_ids().collect();
    let alone = openraft::Membership::new(
        vec![BTreeSet::from([raft_id])],
        std::collections::BTreeMap::from([(
            raft_id,
            openraft::BasicNode {
                addr: addr.to_string(),
            },
        )]),
    );
    let meta = Meta {
        last_log_id: last,
        last_membership: StoredMembership::new(last, alone),
        snapshot_id: format!(
            "force-new-cluster-{}-{}",
            last.map(|l| l.index).unwrap_or(0),
            swarm_common::clock::now_ms()
        ),
    };
    let mut state = shared.read().clone();
    let removed = state.remove_old_managers(
        last.map(|l| l.index).unwrap_or(0),
        swarm_common::clock::now_ms(),
        &old_voters,
        raft_id,
    );
    let name = snapshot_file_name(&meta);
    let data = dek.seal(&snapshot_file_aad(&name), &state.to_bytes());
    (|| -> Result<(), DbError> {
        write_file_durably(dir, &name, &data)?;
        let meta_bytes = encode(&meta)?;
        let purged = encode(&last)?;
        let txn = begin_durable(&db)?;
        {
            let mut snap = txn.open_table(SNAPSHOT).db()?;
            point_at_snapshot_file(&mut snap, &meta_bytes, &name)?;
            let mut m = txn.open_table(META).db()?;
            m.insert(KEY_LAST_PURGED, purged.as_slice()).db()?;
            m.insert(KEY_COMMITTED, purged.as_slice()).db()?;
            let mut log = txn.open_table(LOG).db()?;
            log.retain(|_, _| false).db()?;
        }
        txn.commit().db()?;
        tidy_snapshot_files(dir, Some(&name));
        Ok(())
    })()
    .map_err(corrupt)?;
    tracing::warn!(
        last_index = last.map(|l| l.index).unwrap_or(0),
        ?old_voters,
        ?removed,
        raft_id,
        "forced a new cluster: this manager is now the only member of the Raft membership"
    );
    Ok(ForcedCluster {
        last_log_id: last,
        old_voters,
        removed,
    })
}

// ------------------------------------------------------------------ log

/// The Raft log and vote. Cloning gives another handle (openraft's log readers).
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<LogInner>,
}

struct LogInner {
    db: Arc<Database>,
    /// A committed log id written without fsync, to persist when the store closes.
    unflushed_committed: Mutex<Option<Option<LogId<u64>>>>,
    log_bytes: LogBytes,
    dek: DataKey,
}

impl Drop for LogInner {
    fn drop(&mut self) {
        let pending = self
            .unflushed_committed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(committed) = pending {
            if let Err(e) = write_meta(&self.db, KEY_COMMITTED, &committed, DURABLE) {
                tracing::warn!(error = %e, "cannot persist the committed Raft log id at close");
            }
        }
    }
}

impl LogStore {
    fn db(&self) -> Arc<Database> {
        self.inner.db.clone()
    }

    fn dek(&self) -> DataKey {
        self.inner.dek.clone()
    }

    /// The counter of bytes appended since the last snapshot.
    pub fn log_bytes(&self) -> LogBytes {
        self.inner.log_bytes.clone()
    }
}

fn last_log_id(db: &Database, dek: &DataKey) -> Result<Option<LogId<u64>>, DbError> {
    let txn = db.begin_read().db()?;
    let table = txn.open_table(LOG).db()?;
    let last = match table.last().db()? {
        Some((k, v)) => Some(open_entry(dek, k.value(), v.value())?.log_id),
        None => None,
    };
    Ok(last)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, RaftStorageError> {
        let bounds: (Bound<u64>, Bound<u64>) =
            (range.start_bound().cloned(), range.end_bound().cloned());
        let db = self.db();
        let dek = self.dek();
        blocking(move || {
            let txn = db.begin_read().db()?;
            let table = txn.open_table(LOG).db()?;
            let mut out = Vec::new();
            for item in table.range::<u64>(bounds).db()? {
                let (k, v) = item.db()?;
                out.push(open_entry(&dek, k.value(), v.value())?);
            }
            Ok(out)
        })
        .await
        .map_err(|e| raft_err(ErrorSubject::Logs, ErrorVerb::Read, e))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, RaftStorageError> {
        let db = self.db();
        let dek = self.dek();
        blocking(move || {
            let last_purged: Option<LogId<u64>> =
                read_meta::<Option<LogId<u64>>>(&db, KEY_LAST_PURGED)?.flatten();
            let last = last_log_id(&db, &dek)?.or(last_purged);
            Ok(LogState {
                last_purged_log_id: last_purged,
                last_log_id: last,
            })
        })
        .await
        .map_err(|e| raft_err(ErrorSubject::Logs, ErrorVerb::Read, e))
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), RaftStorageError> {
        let db = self.db();
        let vote = *vote;
        blocking(move || write_meta(&db, KEY_VOTE, &vote, DURABLE))
            .await
            .map_err(|e| raft_err(ErrorSubject::Vote, ErrorVerb::Write, e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, RaftStorageError> {
        let db = self.db();
        blocking(move || read_meta::<Vote<u64>>(&db, KEY_VOTE))
            .await
            .map_err(|e| raft_err(ErrorSubject::Vote, ErrorVerb::Read, e))
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<u64>>,
    ) -> Result<(), RaftStorageError> {
        let db = self.db();
        blocking(move || write_meta(&db, KEY_COMMITTED, &committed, Durability::None))
            .await
            .map_err(|e| raft_err(ErrorSubject::Store, ErrorVerb::Write, e))?;
        *self
            .inner
            .unflushed_committed
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(committed);
        if let Some(c) = committed {
            crate::metrics::METRICS
                .raft_commit_index
                .set(c.index as i64);
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>, RaftStorageError> {
        let db = self.db();
        blocking(move || Ok(read_meta::<Option<LogId<u64>>>(&db, KEY_COMMITTED)?.flatten()))
            .await
            .map_err(|e| raft_err(ErrorSubject::Store, ErrorVerb::Read, e))
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), RaftStorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let db = self.db();
        let dek = self.dek();
        let res = blocking(move || {
            let txn = begin_durable(&db)?;
            let mut size = 0u64;
            {
                let mut table = txn.open_table(LOG).db()?;
                for e in &entries {
                    let (plain, sealed) = seal_entry(&dek, e)?;
                    size += plain;
                    table.insert(e.log_id.index, sealed.as_slice()).db()?;
                }
            }
            // Immediate durability: returns after fsync.
            txn.commit().db()?;
            Ok(size)
        })
        .await;
        match res {
            Ok(size) => {
                self.inner.log_bytes.add(size);
                // Any earlier unflushed committed id is durable now too.
                self.inner
                    .unflushed_committed
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take();
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(raft_err(ErrorSubject::Logs, ErrorVerb::Write, e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), RaftStorageError> {
        let db = self.db();
        blocking(move || {
            let txn = begin_durable(&db)?;
            {
                let mut table = txn.open_table(LOG).db()?;
                table.retain_in(log_id.index.., |_, _| false).db()?;
            }
            txn.commit().db()?;
            Ok(())
        })
        .await
        .map_err(|e| raft_err(ErrorSubject::Log(log_id), ErrorVerb::Delete, e))
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), RaftStorageError> {
        let db = self.db();
        blocking(move || {
            let purged = encode(&Some(log_id))?;
            let txn = begin_durable(&db)?;
            {
                let mut meta = txn.open_table(META).db()?;
                meta.insert(KEY_LAST_PURGED, purged.as_slice()).db()?;
                let mut table = txn.open_table(LOG).db()?;
                table.retain_in(..=log_id.index, |_, _| false).db()?;
            }
            txn.commit().db()?;
            Ok(())
        })
        .await
        .map_err(|e| raft_err(ErrorSubject::Log(log_id), ErrorVerb::Delete, e))
    }
}

// ---------------------------------------------------------- state machine

/// The state machine: applies committed entries to [`Shared`], builds and installs
/// snapshots.
pub struct StateMachine {
    files: SnapshotFiles,
    log_bytes: LogBytes,
    shared: Arc<Shared>,
    last_applied: Option<LogId<u64>>,
    last_membership: Membership,
}

/// Where the snapshots are kept (the database's `raft_snapshot` and the file beside it),
/// shared by the state machine and its builders.
#[derive(Clone)]
struct SnapshotFiles {
    db: Arc<Database>,
    /// The Raft directory: the database and the snapshot file.
    dir: Arc<Path>,
    /// Held while a snapshot is written or read: a snapshot built and one installed at the
    /// same time must not remove each other's file, nor a reader lose the file it is about
    /// to read.
    lock: Arc<Mutex<()>>,
    dek: DataKey,
}

impl SnapshotFiles {
    /// Runs `f` on the blocking pool with the snapshot lock held.
    async fn locked<T, F>(&self, f: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&SnapshotFiles) -> Result<T, DbError> + Send + 'static,
    {
        let files = self.clone();
        blocking(move || {
            let _held = files.lock.lock().unwrap_or_else(|e| e.into_inner());
            f(&files)
        })
        .await
    }

    /// [`write_snapshot`], off the runtime and under the lock; gives `data` back.
    async fn save(&self, meta: Meta, data: Vec<u8>) -> Result<Vec<u8>, DbError> {
        self.locked(move |f| {
            write_snapshot(&f.db, &f.dir, &f.dek, &meta, &data)?;
            Ok(data)
        })
        .await
    }
}

impl StateMachine {
    /// The shared state this state machine applies to.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}

/// A consistent view of the state taken when openraft asks for a snapshot builder.
pub struct SnapshotBuilder {
    files: SnapshotFiles,
    log_bytes: LogBytes,
    last_applied: Option<LogId<u64>>,
    last_membership: Membership,
    data: Result<Vec<u8>, String>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, RaftStorageError> {
        // Moved, never copied: this runs on the Raft thread, and two copies of a 70 MiB
        // state there (one to save, one to return) kept it from its heartbeats. openraft
        // builds once per builder.
        let taken = std::mem::replace(
            &mut self.data,
            Err("this snapshot builder's data was already used".to_string()),
        );
        let data = match taken {
            Ok(d) => d,
            Err(e) => {
                return Err(raft_err(
                    ErrorSubject::StateMachine,
                    ErrorVerb::Read,
                    DbError::Task(e),
                ))
            }
        };
        let snapshot_id = match self.last_applied {
            Some(l) => format!(
                "{}-{}-{}",
                l.leader_id.term,
                l.index,
                swarm_common::clock::now_ms()
            ),
            None => format!("0-0-{}", swarm_common::clock::now_ms()),
        };
        let meta = Meta {
            last_log_id: self.last_applied,
            last_membership: self.last_membership.clone(),
            snapshot_id,
        };
        let started = Instant::now();
        let data = self
            .files
            .save(meta.clone(), data)
            .await
            .map_err(snapshot_write_error(&meta))?;
        self.log_bytes.reset();
        tracing::info!(snapshot = %meta.snapshot_id, bytes = data.len(), write_seconds = started.elapsed().as_secs_f64(), "built a Raft snapshot");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, Membership), RaftStorageError> {
        Ok((self.last_applied, self.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, RaftStorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let start = Instant::now();
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let Some(last) = entries.last().map(|e| e.log_id) else {
            return Ok(Vec::new());
        };
        let membership = entries.iter().rev().find_map(|e| match &e.payload {
            EntryPayload::Membership(m) => Some(Membership::new(Some(e.log_id), m.clone())),
            _ => None,
        });
        // Applied off the Raft runtime: applying takes the store's write lock, which waits
        // for every reader (a stream round building a view, an orchestrator's pass). On the
        // Raft thread that wait stalled the heartbeats and AppendEntries of the leader (and a
        // follower's answers) beyond their timeout (the heartbeat interval): at 5 000 nodes
        // replication stopped and elections followed. Entries still apply one batch at a
        // time, in order: openraft awaits each call before the next.
        let shared = self.shared.clone();
        let out = tokio::task::spawn_blocking(move || {
            entries
                .into_iter()
                .map(|entry| {
                    let index = entry.log_id.index;
                    match entry.payload {
                        EntryPayload::Normal(req) => shared.apply(index, req),
                        EntryPayload::Blank | EntryPayload::Membership(_) => {
                            shared.mark_applied(index);
                            Response::default()
                        }
                    }
                })
                .collect::<Vec<_>>()
        })
        .await
        .map_err(|e| {
            RaftStorageError::from_io_error(
                ErrorSubject::StateMachine,
                ErrorVerb::Write,
                std::io::Error::other(format!("applying committed entries: {e}")),
            )
        })?;
        self.last_applied = Some(last);
        if let Some(m) = membership {
            self.last_membership = m;
        }
        METRICS.raft_applied_index.set(last.index as i64);
        METRICS
            .raft_apply_seconds
            .observe(start.elapsed().as_secs_f64());
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // Serialized here, not in `build_snapshot`: openraft runs the builder in another
        // task, concurrently with later applies; this call is serialized with them.
        let shared = self.shared.clone();
        let data = tokio::task::spawn_blocking(move || shared.read().to_bytes())
            .await
            .map_err(|e| format!("serializing the state for a snapshot: {e}"));
        SnapshotBuilder {
            files: self.files.clone(),
            log_bytes: self.log_bytes.clone(),
            last_applied: self.last_applied,
            last_membership: self.last_membership.clone(),
            data,
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, RaftStorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), RaftStorageError> {
        let data = snapshot.into_inner();
        let m = meta.clone();
        self.log_bytes.reset();
        let state = self
            .files
            .locked(move |f| {
                let state = State::from_bytes(&data)?;
                write_snapshot(&f.db, &f.dir, &f.dek, &m, &data)?;
                Ok(state)
            })
            .await
            .map_err(snapshot_write_error(meta))?;
        let index = meta.last_log_id.map(|l| l.index).unwrap_or(0);
        self.shared.replace(state, index);
        self.last_applied = meta.last_log_id;
        self.last_membership = meta.last_membership.clone();
        METRICS.raft_applied_index.set(index as i64);
        tracing::info!(snapshot = %meta.snapshot_id, index, "installed a Raft snapshot");
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, RaftStorageError> {
        let snap = self
            .files
            .locked(|f| read_snapshot(&f.db, &f.dir, &f.dek))
            .await
            .map_err(|e| raft_err(ErrorSubject::Snapshot(None), ErrorVerb::Read, e))?;
        Ok(snap.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use openraft::storage::RaftLogStorageExt;
    use openraft::testing::{log_id, StoreBuilder, Suite};
    use openraft::{CommittedLeaderId, Membership as RaftMembership};
    use proto::{Service, ServiceSpec};

    use crate::store::Standing;
    use tempfile::TempDir;

    use super::*;
    use crate::store::{Object, Op, Request};

    fn service(name: &str) -> Object {
        Object::Service(Service {
            id: format!("id-{name}"),
            spec: Some(ServiceSpec {
                name: name.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    fn create(term: u64, index: u64, name: &str) -> Entry<TypeConfig> {
        Entry {
            log_id: log_id(term, 1, index),
            payload: EntryPayload::Normal(Request::atomic(vec![Op::Create(service(name))])),
        }
    }

    fn membership(term: u64, index: u64) -> Entry<TypeConfig> {
        let voters: BTreeSet<u64> = [1, 2, 3].into_iter().collect();
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Membership(RaftMembership::new(vec![voters], None)),
        }
    }

    /// The data key of `dir` (made on first use, wrapped by `raft.kek`).
    fn dek(dir: &Path) -> DataKey {
        std::fs::create_dir_all(dir).unwrap();
        crate::raft::encryption::load_or_create(dir, None).expect("the data key")
    }

    fn open_new(dir: &Path) -> (LogStore, StateMachine) {
        open(dir, Arc::new(Shared::default()), dek(dir)).expect("open the raft storage")
    }

    async fn indexes(
        log: &mut LogStore,
        range: impl RangeBounds<u64> + Clone + Debug + Send,
    ) -> Vec<u64> {
        log.try_get_log_entries(range)
            .await
            .unwrap()
            .iter()
            .map(|e| e.log_id.index)
            .collect()
    }

    struct Builder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for Builder {
        async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), RaftStorageError> {
            let dir = tempfile::tempdir().map_err(|e| {
                RaftStorageError::from_io_error(ErrorSubject::Store, ErrorVerb::Write, e)
            })?;
            let (log, sm) = open(dir.path(), Arc::new(Shared::default()), dek(dir.path()))
                .map_err(|e| {
                    raft_err(
                        ErrorSubject::Store,
                        ErrorVerb::Read,
                        DbError::Task(e.to_string()),
                    )
                })?;
            Ok((dir, log, sm))
        }
    }

    #[test]
    fn the_database_is_private_from_creation_and_put_right_on_open() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("raft");
        drop(open_new(&dir));
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(DB_FILE)), 0o600);

        // An older version's modes are fixed, the data kept.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let db = dir.join(DB_FILE);
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
        let len = std::fs::metadata(&db).unwrap().len();
        drop(open_new(&dir));
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&db), 0o600);
        assert_eq!(std::fs::metadata(&db).unwrap().len(), len);
    }

    #[test]
    fn passes_openraft_storage_suite() {
        Suite::test_all(Builder).expect("openraft storage suite");
    }

    /// The snapshot files of `dir`, by name.
    fn snapshot_files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.unwrap().file_name().into_string().ok())
            .filter(|n| n.starts_with(SNAPSHOT_FILE_PREFIX))
            .collect();
        names.sort();
        names
    }

    fn inline_snapshot_data(db: &Database) -> bool {
        let txn = db.begin_read().unwrap();
        let t = txn.open_table(SNAPSHOT).unwrap();
        t.get(KEY_SNAPSHOT_DATA).unwrap().is_some()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn appends_commit_while_a_snapshot_file_is_being_written() {
        // The snapshot's data is written with no database transaction open. A FIFO in place
        // of the temporary file holds the writer inside its write for as long as the test
        // reads nothing more, so the appends below run while it is stuck there.
        let dir = tempfile::tempdir().unwrap();
        let (mut log, sm) = open_new(dir.path());
        log.blocking_append([membership(1, 1)]).await.unwrap();
        let meta = Meta {
            last_log_id: Some(log_id(1, 1, 1)),
            last_membership: Membership::default(),
            snapshot_id: "held-1".into(),
        };
        let tmp = dir
            .path()
            .join(format!("{}.tmp", snapshot_file_name(&meta)));
        let made = std::process::Command::new("mkfifo")
            .arg(&tmp)
            .status()
            .unwrap();
        assert!(made.success(), "mkfifo {}", tmp.display());

        let (writing_tx, writing_rx) = std::sync::mpsc::channel();
        let (drain_tx, drain_rx) = std::sync::mpsc::channel::<()>();
        let reader = std::thread::spawn({
            let tmp = tmp.clone();
            move || {
                use std::io::Read;
                let mut f = std::fs::File::open(&tmp).unwrap();
                let mut first = [0u8; 4096];
                f.read_exact(&mut first).unwrap();
                writing_tx.send(()).unwrap();
                drain_rx.recv().unwrap();
                std::io::copy(&mut f, &mut std::io::sink()).unwrap();
            }
        });
        let (db, d, key) = (
            sm.files.db.clone(),
            sm.files.dir.clone(),
            sm.files.dek.clone(),
        );
        let data = vec![7u8; 1 << 20];
        let writer = std::thread::spawn(move || write_snapshot(&db, &d, &key, &meta, &data));
        writing_rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the snapshot writer started writing its data");

        // 1 MiB does not fit in the pipe: the writer is inside its write now.
        let appended = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            log.blocking_append((2..=20).map(|i| create(1, i, &format!("during-{i}")))),
        )
        .await;
        assert!(
            matches!(appended, Ok(Ok(()))),
            "an append waited for the snapshot's data to be written: {appended:?}"
        );
        assert!(
            !writer.is_finished(),
            "the snapshot writer must still be writing when the appends committed"
        );
        assert_eq!(indexes(&mut log, 0..).await, (1..=20).collect::<Vec<_>>());
        drain_tx.send(()).unwrap();
        reader.join().unwrap();
        // fsync of a FIFO fails (EINVAL): this snapshot is not committed, and that is fine.
        let _ = writer.join().unwrap();
    }

    #[tokio::test]
    async fn one_snapshot_file_is_kept_and_a_crash_s_leftovers_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let first_data;
        let second = {
            let (mut log, mut sm) = open_new(dir.path());
            let entries = vec![membership(1, 1), create(1, 2, "a")];
            log.blocking_append(entries.clone()).await.unwrap();
            sm.apply(entries).await.unwrap();
            let first = sm
                .get_snapshot_builder()
                .await
                .build_snapshot()
                .await
                .unwrap();
            first_data = first.snapshot.into_inner();
            assert_eq!(
                snapshot_files(dir.path()),
                vec![snapshot_file_name(&first.meta)]
            );
            log.blocking_append([create(1, 3, "b")]).await.unwrap();
            sm.apply([create(1, 3, "b")]).await.unwrap();
            let second = sm
                .get_snapshot_builder()
                .await
                .build_snapshot()
                .await
                .unwrap();
            // The older file is gone; the database holds no snapshot data of its own.
            assert_eq!(
                snapshot_files(dir.path()),
                vec![snapshot_file_name(&second.meta)]
            );
            assert!(!inline_snapshot_data(&sm.files.db));
            second.meta
        };
        // What a crash between writing a file and committing it leaves.
        let current = snapshot_file_name(&second);
        std::fs::write(dir.path().join("snapshot-orphan.sealed"), b"x").unwrap();
        std::fs::write(dir.path().join(format!("{current}.tmp")), b"x").unwrap();

        let shared = Arc::new(Shared::default());
        let (_log, mut sm) = open(dir.path(), shared.clone(), dek(dir.path())).unwrap();
        assert_eq!(snapshot_files(dir.path()), vec![current.clone()]);
        assert!(shared.read().service_by_name("a").is_some());
        assert!(shared.read().service_by_name("b").is_some());
        let cur = sm
            .get_current_snapshot()
            .await
            .unwrap()
            .expect("a snapshot");
        assert_eq!(cur.meta, second);
        drop((_log, sm));

        // Another snapshot's data put in the current file's place does not open.
        let other = dek(dir.path()).seal(&snapshot_file_aad("snapshot-other.sealed"), &first_data);
        std::fs::write(dir.path().join(&current), other).unwrap();
        let err = match open(dir.path(), Arc::new(Shared::default()), dek(dir.path())) {
            Err(e) => e,
            Ok(_) => panic!("another snapshot's data must not open as the current one"),
        };
        assert!(err.to_string().contains("unreadable"), "{err}");

        // A missing file is an error that names it.
        std::fs::remove_file(dir.path().join(&current)).unwrap();
        let err = match open(dir.path(), Arc::new(Shared::default()), dek(dir.path())) {
            Err(e) => e,
            Ok(_) => panic!("a missing snapshot file must not open"),
        };
        assert!(err.to_string().contains(&current), "{err}");
    }

    #[test]
    fn snapshot_file_names_are_plain_names() {
        let meta = |id: &str| Meta {
            last_log_id: None,
            last_membership: Membership::default(),
            snapshot_id: id.into(),
        };
        assert_eq!(
            snapshot_file_name(&meta("2-40310-179")),
            "snapshot-2-40310-179.sealed"
        );
        assert_eq!(
            snapshot_file_name(&meta("../x/y")),
            "snapshot-___x_y.sealed"
        );
        for id in ["1-2-3", "force-new-cluster-9-1", "../../etc", "a/b", ""] {
            let name = snapshot_file_name(&meta(id));
            assert!(!name.contains('/'), "{name}");
            assert_eq!(is_snapshot_file_name(&name), !id.is_empty(), "{name}");
        }
        for bad in [
            "snapshot-../x.sealed",
            "raft.redb",
            "snapshot-.sealed",
            "snapshot-a/b.sealed",
        ] {
            assert!(!is_snapshot_file_name(bad), "{bad}");
        }
    }

    #[tokio::test]
    async fn log_append_read_truncate_purge() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _sm) = open_new(dir.path());
        let st = log.get_log_state().await.unwrap();
        assert_eq!(st.last_log_id, None);
        assert_eq!(st.last_purged_log_id, None);

        let mut entries = vec![membership(1, 1)];
        entries.extend((2..=10).map(|i| create(1, i, &format!("s{i}"))));
        log.blocking_append(entries).await.unwrap();
        assert_eq!(indexes(&mut log, 3..6).await, vec![3, 4, 5]);
        assert_eq!(indexes(&mut log, 9..).await, vec![9, 10]);
        assert_eq!(indexes(&mut log, ..=2).await, vec![1, 2]);
        let st = log.get_log_state().await.unwrap();
        assert_eq!(st.last_log_id, Some(log_id(1, 1, 10)));

        // A conflicting leader overwrote the tail: entries from 8 on are deleted.
        log.truncate(log_id(1, 1, 8)).await.unwrap();
        assert_eq!(indexes(&mut log, 0..100).await, (1..=7).collect::<Vec<_>>());
        log.blocking_append([create(2, 8, "new8")]).await.unwrap();
        let e = log.try_get_log_entries(8..9).await.unwrap();
        assert_eq!(e[0].log_id, log_id(2, 1, 8));

        log.purge(log_id(1, 1, 3)).await.unwrap();
        assert_eq!(indexes(&mut log, 0..100).await, vec![4, 5, 6, 7, 8]);
        let st = log.get_log_state().await.unwrap();
        assert_eq!(st.last_purged_log_id, Some(log_id(1, 1, 3)));
        assert_eq!(st.last_log_id, Some(log_id(2, 1, 8)));

        // Everything purged: the last log id is the last purged one.
        log.purge(log_id(2, 1, 8)).await.unwrap();
        let st = log.get_log_state().await.unwrap();
        assert_eq!(st.last_log_id, Some(log_id(2, 1, 8)));
        assert!(log.try_get_log_entries(0..100).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn appended_bytes_are_counted_until_a_snapshot_is_built() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, mut sm) = open_new(dir.path());
        let bytes = log.log_bytes();
        assert_eq!(bytes.get(), 0);
        let entries: Vec<_> = (1..=10).map(|i| create(1, i, &"n".repeat(1000))).collect();
        let encoded: u64 = entries
            .iter()
            .map(|e| encode(e).unwrap().len() as u64)
            .sum();
        log.blocking_append(entries.clone()).await.unwrap();
        assert_eq!(bytes.get(), encoded);
        sm.apply(entries).await.unwrap();
        sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        assert_eq!(bytes.get(), 0, "a snapshot resets the count");
    }

    /// Applying takes the store's write lock, so it waits for the store's readers. The
    /// Raft runtime (one thread, like this test's) must go on meanwhile: the leader's
    /// heartbeats and AppendEntries run there, with the heartbeat interval as their timeout.
    #[tokio::test]
    async fn an_apply_waiting_for_a_reader_leaves_the_raft_runtime_running() {
        let dir = tempfile::tempdir().unwrap();
        let (_log, mut sm) = open_new(dir.path());
        let shared = sm.shared().clone();
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        // A reader that holds the state until told, or 10 s if nobody can tell it.
        let reader = std::thread::spawn(move || {
            let _guard = shared.read();
            held_tx.send(()).unwrap();
            release_rx
                .recv_timeout(std::time::Duration::from_secs(10))
                .is_ok()
        });
        held_rx.recv().unwrap();
        let apply = tokio::spawn(async move {
            let out = sm.apply([create(1, 1, "web")]).await.unwrap();
            (out.len(), sm)
        });
        // Other work of this runtime still runs while the apply waits.
        for _ in 0..5 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(!apply.is_finished(), "the apply waits for the reader");
        release_tx.send(()).unwrap();
        assert!(
            reader.join().unwrap(),
            "the runtime stood still while the apply waited: the reader was never released"
        );
        let (applied, sm) = apply.await.unwrap();
        assert_eq!(applied, 1);
        assert!(sm.shared().read().service_by_name("web").is_some());
        assert_eq!(sm.shared().applied_index(), 1);
    }

    #[tokio::test]
    async fn apply_answers_and_snapshot_install() {
        let dir = tempfile::tempdir().unwrap();
        let (_log, mut sm) = open_new(dir.path());
        let out = sm
            .apply([membership(1, 1), create(1, 2, "web"), create(1, 3, "web")])
            .await
            .unwrap();
        assert_eq!(out.len(), 3);
        assert!(
            out[0].result.is_none(),
            "membership entries answer a default response"
        );
        assert!(matches!(out[1].result, Some(Ok(_))));
        assert!(
            matches!(out[2].result, Some(Err(_))),
            "duplicate name is refused"
        );
        let (applied, mem) = sm.applied_state().await.unwrap();
        assert_eq!(applied, Some(log_id(1, 1, 3)));
        assert_eq!(mem.log_id(), &Some(log_id(1, 1, 1)));
        assert_eq!(sm.shared().applied_index(), 3);

        let snap = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        assert_eq!(snap.meta.last_log_id, Some(log_id(1, 1, 3)));
        let cur = sm
            .get_current_snapshot()
            .await
            .unwrap()
            .expect("a current snapshot");
        assert_eq!(cur.meta, snap.meta);

        // Install on another state machine.
        let dir2 = tempfile::tempdir().unwrap();
        let (_log2, mut sm2) = open_new(dir2.path());
        let mut data = sm2.begin_receiving_snapshot().await.unwrap();
        *data = *cur.snapshot;
        sm2.install_snapshot(&cur.meta, data).await.unwrap();
        assert_eq!(sm2.applied_state().await.unwrap(), (applied, mem));
        assert!(sm2.shared().read().service_by_name("web").is_some());
        assert_eq!(sm2.shared().applied_index(), 3);
        let cur2 = sm2
            .get_current_snapshot()
            .await
            .unwrap()
            .expect("installed snapshot");
        assert_eq!(cur2.meta, snap.meta);
    }

    #[tokio::test]
    async fn reopen_finds_log_vote_committed_and_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let snap_meta = {
            let (mut log, mut sm) = open_new(dir.path());
            let mut entries = vec![membership(1, 1)];
            entries.extend((2..=6).map(|i| create(1, i, &format!("s{i}"))));
            log.blocking_append(entries.clone()).await.unwrap();
            log.save_vote(&Vote::new_committed(3, 2)).await.unwrap();
            log.save_committed(Some(log_id(1, 1, 5))).await.unwrap();
            sm.apply(entries.into_iter().take(4)).await.unwrap();
            let snap = sm
                .get_snapshot_builder()
                .await
                .build_snapshot()
                .await
                .unwrap();
            log.purge(log_id(1, 1, 2)).await.unwrap();
            snap.meta
        };

        let shared = Arc::new(Shared::default());
        let (mut log, mut sm) = open(dir.path(), shared.clone(), dek(dir.path())).unwrap();
        assert_eq!(
            log.read_vote().await.unwrap(),
            Some(Vote::new_committed(3, 2))
        );
        assert_eq!(log.read_committed().await.unwrap(), Some(log_id(1, 1, 5)));
        let st = log.get_log_state().await.unwrap();
        assert_eq!(st.last_purged_log_id, Some(log_id(1, 1, 2)));
        assert_eq!(st.last_log_id, Some(log_id(1, 1, 6)));
        assert_eq!(indexes(&mut log, 0..).await, vec![3, 4, 5, 6]);

        // The state machine starts from the snapshot (entries up to 4).
        let cur = sm
            .get_current_snapshot()
            .await
            .unwrap()
            .expect("snapshot kept");
        assert_eq!(cur.meta, snap_meta);
        let (applied, mem) = sm.applied_state().await.unwrap();
        assert_eq!(applied, Some(log_id(1, 1, 4)));
        assert_eq!(mem.log_id(), &Some(log_id(1, 1, 1)));
        assert_eq!(shared.applied_index(), 4);
        let st = shared.read();
        assert!(st.service_by_name("s3").is_some() && st.service_by_name("s4").is_some());
        assert!(st.service_by_name("s5").is_none());
    }

    #[tokio::test]
    async fn force_new_cluster_keeps_every_entry_and_leaves_this_manager_alone() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut log, mut sm) = open_new(dir.path());
            let mut entries = vec![membership(1, 1)];
            entries.extend((2..=6).map(|i| create(1, i, &format!("s{i}"))));
            log.blocking_append(entries.clone()).await.unwrap();
            // A snapshot up to 4, then 5 and 6 only in the log, and the stored commit
            // index behind them (it is written without fsync).
            sm.apply(entries.into_iter().take(4)).await.unwrap();
            sm.get_snapshot_builder()
                .await
                .build_snapshot()
                .await
                .unwrap();
            log.save_committed(Some(log_id(1, 1, 4))).await.unwrap();
        }
        let forced = force_new_cluster(dir.path(), 2, "127.0.0.2:2377", &dek(dir.path())).unwrap();
        assert_eq!(forced.last_log_id, Some(log_id(1, 1, 6)));
        assert_eq!(forced.old_voters, BTreeSet::from([1, 2, 3]));

        let shared = Arc::new(Shared::default());
        let (mut log, mut sm) = open(dir.path(), shared.clone(), dek(dir.path())).unwrap();
        let st = log.get_log_state().await.unwrap();
        assert_eq!(st.last_purged_log_id, Some(log_id(1, 1, 6)));
        assert_eq!(st.last_log_id, Some(log_id(1, 1, 6)));
        assert!(log.try_get_log_entries(0..).await.unwrap().is_empty());
        let (applied, mem) = sm.applied_state().await.unwrap();
        assert_eq!(applied, Some(log_id(1, 1, 6)));
        assert_eq!(mem.voter_ids().collect::<Vec<_>>(), vec![2]);
        assert_eq!(
            mem.membership().get_node(&2).map(|n| n.addr.as_str()),
            Some("127.0.0.2:2377")
        );
        // Every entry is in the state, the ones after the commit index too.
        assert_eq!(shared.applied_index(), 6);
        let state = shared.read();
        assert!((2..=6).all(|i| state.service_by_name(&format!("s{i}")).is_some()));

        let empty = tempfile::tempdir().unwrap();
        let err = force_new_cluster(empty.path(), 2, "a", &DataKey::generate()).unwrap_err();
        assert!(err.to_string().contains("no Raft state"), "{err}");
    }

    #[tokio::test]
    async fn force_new_cluster_puts_the_other_old_managers_on_the_removed_list() {
        // Regression (fault suite): the old managers' Raft calls were served by the forced
        // cluster, whose lone leader a vote request of a higher term could depose.
        let dir = tempfile::tempdir().unwrap();
        let node = |id: &str, raft_id: u64| {
            Op::Create(Object::Node(proto::Node {
                id: id.into(),
                role: proto::NodeRole::Manager as i32,
                manager_status: Some(proto::ManagerStatus {
                    raft_id,
                    ..Default::default()
                }),
                ..Default::default()
            }))
        };
        {
            let (mut log, _sm) = open_new(dir.path());
            let objects = Entry {
                log_id: log_id(1, 1, 2),
                payload: EntryPayload::Normal(Request::atomic(vec![
                    Op::Create(Object::Cluster(proto::Cluster {
                        id: "cluster".into(),
                        ..Default::default()
                    })),
                    node("n1", 1),
                    node("n2", 2),
                    node("n3", 3),
                ])),
            };
            log.blocking_append(vec![membership(1, 1), objects])
                .await
                .unwrap();
        }
        let forced = force_new_cluster(dir.path(), 2, "127.0.0.2:2377", &dek(dir.path())).unwrap();
        let mut removed = forced.removed.clone();
        removed.sort();
        assert_eq!(removed, vec!["n1".to_string(), "n3".to_string()]);

        let shared = Arc::new(Shared::default());
        let _opened = open(dir.path(), shared.clone(), dek(dir.path())).unwrap();
        let st = shared.read();
        assert_eq!(st.standing("n1"), Standing::Removed);
        assert_eq!(st.standing("n3"), Standing::Removed);
        assert_eq!(
            st.standing("n2"),
            Standing::Member(proto::NodeRole::Manager)
        );
        // Their node objects stay (down and unreachable until `node rm`).
        assert!(st.node("n1").is_some() && st.node("n3").is_some());
    }

    #[test]
    fn second_open_of_the_same_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = open_new(dir.path());
        let err = match open(dir.path(), Arc::new(Shared::default()), dek(dir.path())) {
            Err(e) => e,
            Ok(_) => panic!("a second open must fail"),
        };
        assert!(err.to_string().contains("another manager"), "{err}");
    }

    /// Whether `needle` occurs anywhere in the files of `dir`.
    fn found_in(dir: &Path, needle: &[u8]) -> bool {
        std::fs::read_dir(dir).unwrap().any(|e| {
            let bytes = std::fs::read(e.unwrap().path()).unwrap_or_default();
            bytes.windows(needle.len()).any(|w| w == needle)
        })
    }

    #[tokio::test]
    async fn entries_and_snapshots_are_sealed_on_disk_and_need_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let name = "plaintext-canary-4c1f";
        {
            let (mut log, mut sm) = open_new(dir.path());
            let entries = vec![membership(1, 1), create(1, 2, name)];
            log.blocking_append(entries.clone()).await.unwrap();
            sm.apply(entries).await.unwrap();
            sm.get_snapshot_builder()
                .await
                .build_snapshot()
                .await
                .unwrap();
        }
        assert!(
            !found_in(dir.path(), name.as_bytes()),
            "a name in the clear"
        );

        // Opened with another data key, nothing reads.
        let err = match open(dir.path(), Arc::new(Shared::default()), DataKey::generate()) {
            Err(e) => e,
            Ok(_) => panic!("a wrong data key must not open the snapshot"),
        };
        assert!(err.to_string().contains("unreadable"), "{err}");

        let shared = Arc::new(Shared::default());
        let (mut log, _sm) = open(dir.path(), shared.clone(), dek(dir.path())).unwrap();
        assert!(shared.read().service_by_name(name).is_some());
        assert_eq!(indexes(&mut log, 0..).await, vec![1, 2]);
    }

    #[tokio::test]
    async fn a_database_written_before_encryption_is_sealed_when_opened() {
        let dir = tempfile::tempdir().unwrap();
        let name = "written-in-the-clear-9e2a";
        // As an older version wrote it: bincode entries and snapshot data as they are.
        {
            std::fs::create_dir_all(dir.path()).unwrap();
            let db = Database::create(dir.path().join(DB_FILE)).unwrap();
            let entries = [membership(1, 1), create(1, 2, name), create(1, 3, "later")];
            let state = Shared::default();
            if let EntryPayload::Normal(req) = &entries[1].payload {
                state.apply(2, req.clone());
            }
            let meta = Meta {
                last_log_id: Some(log_id(1, 1, 2)),
                last_membership: Membership::new(
                    Some(log_id(1, 1, 1)),
                    RaftMembership::new(vec![BTreeSet::from([1, 2, 3])], None),
                ),
                snapshot_id: "old".into(),
            };
            let txn = db.begin_write().unwrap();
            {
                let mut t = txn.open_table(LOG).unwrap();
                for e in &entries {
                    t.insert(e.log_id.index, encode(e).unwrap().as_slice())
                        .unwrap();
                }
                let mut s = txn.open_table(SNAPSHOT).unwrap();
                s.insert(KEY_SNAPSHOT_META, encode(&meta).unwrap().as_slice())
                    .unwrap();
                s.insert(KEY_SNAPSHOT_DATA, state.read().to_bytes().as_slice())
                    .unwrap();
            }
            txn.commit().unwrap();
        }
        assert!(found_in(dir.path(), name.as_bytes()));

        let shared = Arc::new(Shared::default());
        let (mut log, _sm) = open(dir.path(), shared.clone(), dek(dir.path())).unwrap();
        assert!(shared.read().service_by_name(name).is_some());
        assert_eq!(indexes(&mut log, 0..).await, vec![1, 2, 3]);
        drop((log, _sm));
        assert!(!found_in(dir.path(), name.as_bytes()), "left in the clear");
        assert!(!found_in(dir.path(), b"later"), "left in the clear");

        // A second open finds it encrypted and leaves it so.
        let shared = Arc::new(Shared::default());
        let (mut log, mut sm) = open(dir.path(), shared.clone(), dek(dir.path())).unwrap();
        assert_eq!(indexes(&mut log, 0..).await, vec![1, 2, 3]);
        assert!(shared.read().service_by_name(name).is_some());
        assert!(
            inline_snapshot_data(&sm.files.db),
            "the old inline snapshot, read as it is"
        );

        // The next snapshot moves the data to a file and drops the inline copy.
        let snap = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        assert!(!inline_snapshot_data(&sm.files.db));
        assert_eq!(
            snapshot_files(dir.path()),
            vec![snapshot_file_name(&snap.meta)]
        );
        drop((log, sm));
        let shared = Arc::new(Shared::default());
        let _reopened = open(dir.path(), shared.clone(), dek(dir.path())).unwrap();
        assert!(shared.read().service_by_name(name).is_some());
    }
}
