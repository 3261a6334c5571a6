//! One Raft group per replicated database: start, write gating, the blocking commit, status.
//!
//! This is the hub `vfs/` and `sql/` call; it is the only module that drives openraft's `Raft`.
//! Threads: SQLite threads never enter the tokio runtime (runtime.rs: one thread). They hand work
//! to it and wait with a deadline (`timeout_ms`).
//!
//! Invariants:
//! - At most one node per database path per process (registry; a path's start holds that path's
//!   lock in `starting`, not the registry's), and per data directory across
//!   processes (an exclusive `flock` on `<data>/lock`). A forked child never writes.
//! - Before `open_database` returns, the database files agree with the Raft log (reconcile.rs).
//! - A write transaction starts only on the leader, once it has applied everything in its log, and
//!   is built on `last_txn` (the base rule of `raft/types.rs`).
//! - `commit` returns Ok only when the entry is committed and claimed for publication by the
//!   waiting connection; any other outcome is an error *after* which the caller invalidates the
//!   WAL tail.

use crate::config::{Config, Sources};
use crate::failpoint;
use crate::raft::applied::{AppliedStore, Marker, Record};
use crate::raft::log_store::LogStore;
use crate::raft::network::{QuicNetwork, RaftService};
use crate::raft::state_machine::{PendingCommit, PendingState, SmShared, StateMachine};
use crate::raft::types::{NodeId, Request, Response, Txn, TypeConfig};
use crate::reconcile;
use crate::vfs::capture::Captured;
use libsqlite3_sys as ffi;
use openraft::{BasicNode, Raft, ServerState};
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Private extended result codes (SQLite's own IOERR extended codes stop below 64).
pub const IOERR_TIMEOUT: i32 = ffi::SQLITE_IOERR | (101 << 8);
pub const IOERR_LEADERSHIP_LOST: i32 = ffi::SQLITE_IOERR | (102 << 8);
pub const IOERR_REPLICATION: i32 = ffi::SQLITE_IOERR | (103 << 8);
pub const IOERR_TOO_LARGE: i32 = ffi::SQLITE_IOERR | (104 << 8);
pub const IOERR_NO_LEADER: i32 = ffi::SQLITE_IOERR | (105 << 8);

#[derive(Debug)]
pub struct WriteError {
    pub code: i32,
    pub msg: String,
}

impl WriteError {
    fn new(code: i32, msg: impl Into<String>) -> WriteError {
        WriteError {
            code,
            msg: format!("replicated: {}", msg.into()),
        }
    }
    pub fn too_large(frames: u64) -> WriteError {
        WriteError::new(
            IOERR_TOO_LARGE,
            format!(
                "transaction too large: more than {} WAL frames ({frames} so far), the limit of one replicated transaction",
                crate::vfs::capture::MAX_TXN_FRAMES
            ),
        )
    }
    pub fn io(code: i32, msg: String) -> WriteError {
        WriteError::new(code, format!("commit capture failed: {msg}"))
    }
}

/// Parts of one transaction queued for proposal or proposed and not yet answered (`commit`): at
/// most this many times `PART_BYTES` of pages are in flight for one commit on the leader.
const PROPOSE_WINDOW: usize = 8;

/// Eager AppendEntries (log_store.rs, EAGER REPLICATION) unanswered at once, over all followers:
/// at this bound further batches go only through openraft's replication (a slow follower cannot
/// pile up sends; memory stays under EAGER_IN_FLIGHT * EAGER_BYTES).
const EAGER_IN_FLIGHT: usize = 8;
/// A follower whose matched index (openraft's metrics, which may lag a little) is further than this
/// behind the batch cannot use it: it gets only openraft's replication.
const EAGER_LAG: u64 = 4;
/// How long an eager send may take (openraft's own request waits for its answer for at most half
/// its own timeout, then goes out itself).
const EAGER_TIMEOUT: Duration = Duration::from_secs(2);

/// What an answer to one proposed part says about the commit: None = go on.
fn part_failure(
    r: Result<
        Result<openraft::raft::ClientWriteResponse<TypeConfig>, openraft::error::ClientWriteError<NodeId, BasicNode>>,
        impl Sized,
    >,
) -> Option<(i32, String)> {
    match r {
        Ok(Ok(resp)) => match resp.data {
            Response::Applied { .. } | Response::Staged { .. } => None,
            Response::Stale {
                index,
                base_index,
                last_txn_index,
            } => Some((
                IOERR_REPLICATION,
                format!(
                    "transaction at log index {index} was built on index {base_index} but the state \
                     had moved to {last_txn_index}; it was discarded on every node: retry"
                ),
            )),
            other => Some((IOERR_REPLICATION, format!("unexpected apply result {other:?}"))),
        },
        Ok(Err(openraft::error::ClientWriteError::ForwardToLeader(f))) => {
            let who = f.leader_id.map(|l| l.to_string()).unwrap_or_else(|| "unknown".into());
            let msg = format!("leadership lost before the commit; the leader is now node {who}");
            Some((ffi::SQLITE_READONLY, msg))
        }
        Ok(Err(e)) => Some((IOERR_LEADERSHIP_LOST, format!("commit failed: {e}"))),
        Err(_) => Some((IOERR_LEADERSHIP_LOST, "the Raft node stopped".to_string())),
    }
}

/// Where this node's last publication left the wal-index (`Database::check_wal_end`).
#[derive(Default)]
struct WalEnd {
    /// `(salt, mxFrame)`; None until the first check after a start.
    end: Option<([u8; 8], u32)>,
    /// Between a claim (or an apply's publish) and its note: the wal-index may be ahead of `end`.
    publishing: bool,
}

impl WalEnd {
    fn check(&mut self, salt: [u8; 8], mx: u32, adopt: bool) -> Result<(), String> {
        if self.publishing {
            return Ok(());
        }
        if let Some((s, m)) = self.end {
            if mx != 0 && (s, m) != (salt, mx) {
                let place = if s == salt {
                    format!("it ends at frame {mx}, this node's last transaction at frame {m}")
                } else {
                    format!("a WAL generation of {mx} frames that this node did not write")
                };
                return Err(format!(
                    "the WAL holds frames this node did not write ({place}): another process wrote to \
                     the database without vfs=replicated, and those writes are on no other node. This \
                     node writes nothing more and checkpoints nothing; restart it to discard them"
                ));
            }
        }
        if adopt || self.end.is_none() {
            self.end = Some((salt, mx));
        }
        Ok(())
    }
}

#[cfg(test)]
mod wal_end_tests {
    use super::WalEnd;

    #[test]
    fn only_frames_this_node_published_pass() {
        let (a, b) = ([1u8; 8], [2u8; 8]);
        let mut w = WalEnd::default();
        assert!(
            w.check(a, 7, false).is_ok(),
            "the first check after a start adopts the end"
        );
        assert_eq!(w.end, Some((a, 7)));
        assert!(w.check(a, 7, true).is_ok());
        let e = w.check(a, 9, true).unwrap_err();
        assert!(
            e.contains("ends at frame 9, this node's last transaction at frame 7"),
            "{e}"
        );
        assert!(w.check(b, 3, false).unwrap_err().contains("WAL generation of 3 frames"));
        assert_eq!(w.end, Some((a, 7)), "a refused end is not adopted");
        assert!(w.check(b, 0, false).is_ok(), "a restarted (empty) WAL");
        assert_eq!(w.end, Some((a, 7)), "a checkpoint's check adopts nothing");
        assert!(w.check(b, 0, true).is_ok());
        assert_eq!(w.end, Some((b, 0)), "a writer's check adopts the empty WAL");
        assert!(w.check(b, 2, true).is_err(), "a generation written by someone else");
        w.publishing = true;
        assert!(w.check(b, 2, false).is_ok(), "undecidable while this node publishes");
        w.publishing = false;
        w.end = Some((b, 2));
        assert!(w.check(b, 2, false).is_ok());
    }
}

/// The latest role/term/leader seen in openraft's metrics.
#[derive(Clone, Debug, Default)]
pub struct View {
    pub state: Option<ServerState>,
    pub term: u64,
    pub leader: Option<NodeId>,
    pub last_log: u64,
    pub applied: u64,
    pub members: Vec<(NodeId, String, bool)>,
    pub matched: BTreeMap<NodeId, u64>,
    pub shutdown: bool,
    pub snapshot: Option<u64>,
    pub purged: Option<u64>,
}

/// How long the log must stay unchanged before a leader transfer lets the leases expire.
const HANDOVER_QUIET: Duration = Duration::from_millis(40);

pub struct Database {
    transport: crate::net::Transport,
    pub path: PathBuf,
    pub cfg: Config,
    raft: Raft<TypeConfig>,
    sm: Arc<SmShared>,
    log: LogStore,
    metrics: tokio::sync::watch::Receiver<openraft::RaftMetrics<NodeId, BasicNode>>,
    next_txn_id: AtomicU64,
    pid: u32,
    /// Set while replicated_transfer_leader hands leadership over: new write transactions wait
    /// (their appends would renew the followers' leases and keep this node leader).
    handover: std::sync::atomic::AtomicBool,
    /// Set while an imported database's cluster is being formed (add_configured_peers): writes wait.
    forming: std::sync::atomic::AtomicBool,
    /// Snapshots being sent and received (for replicated_status()).
    sending: crate::raft::network::Transfers,
    receiving: crate::raft::network::Transfers,
    /// The highest commit index a leader has sent this node (raft/network.rs).
    leader_commit: Arc<AtomicU64>,
    /// When this node last heard from a leader (raft/election.rs).
    contact: Arc<crate::raft::election::Contact>,
    /// Eager AppendEntries sent to each follower (raft/network.rs uses their answers).
    eager_calls: crate::raft::network::EagerCalls,
    /// Where this node's last publication left the wal-index: see `check_wal_end`.
    wal_end: Mutex<WalEnd>,
    _lock: std::fs::File,
}

// ---- process-wide state -------------------------------------------------------------------------

fn runtime() -> Result<&'static tokio::runtime::Runtime, String> {
    crate::runtime::get()
}

fn init_logging() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_env("REPLICATED_LOG")
            // openraft logs every failed RPC to a down peer (several a second): noise by default.
            // The network logs a peer going down and coming back once each (raft/network.rs).
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,openraft=error,openraft::replication=off"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_target(false)
            // When stderr cannot be written (a full disk), the default reports that with
            // eprintln!, which panics: in whatever thread logged, the Raft core's included.
            .log_internal_errors(false)
            .try_init();
    });
}

fn registry() -> &'static Mutex<HashMap<String, Arc<Database>>> {
    static R: OnceLock<Mutex<HashMap<String, Arc<Database>>>> = OnceLock::new();
    R.get_or_init(|| Mutex::new(HashMap::new()))
}

/// One lock per database path whose node is being started: a start takes seconds (reconcile,
/// joining the cluster, up to 30 s), and only opens of the same path need to wait for it, not
/// every other replicated open or `-wal` delete in the process. An entry exists while some open
/// of that path holds or waits for its lock; entries are cloned and removed only under the
/// map's own lock, so two starts of one path never run at once.
fn starting() -> &'static Mutex<HashMap<String, Arc<Mutex<()>>>> {
    static S: OnceLock<Mutex<HashMap<String, Arc<Mutex<()>>>>> = OnceLock::new();
    S.get_or_init(|| Mutex::new(HashMap::new()))
}

pub fn registry_get(path: &str) -> Option<Arc<Database>> {
    registry().lock().get(path).cloned()
}

pub fn registry_all() -> Vec<Arc<Database>> {
    registry().lock().values().cloned().collect()
}

/// Runs `fut` on the runtime and waits for it on this (non-runtime) thread, up to `timeout`.
fn run_blocking<T: Send + 'static>(
    fut: impl std::future::Future<Output = T> + Send + 'static,
    timeout: Duration,
) -> Result<T, String> {
    let rt = runtime()?;
    let (tx, rx) = crossbeam_channel::bounded(1);
    rt.spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv_timeout(timeout).map_err(|_| "timed out".to_string())
}

/// Opens (or finds) the node for the database at `path`. Called from the VFS's xOpen.
pub fn open_database(path: &str, uri: Vec<(String, String)>, _readonly: bool) -> Result<Arc<Database>, String> {
    init_logging();
    let env = std::env::var("REPLICATED_CONFIG").ok();
    let toml = match crate::config::config_file_path(&uri, env) {
        Some(p) => match std::fs::read_to_string(&p) {
            Ok(t) => Some((p, t)),
            Err(e) => return Err(format!("replicated: bad value for 'config': cannot read {p}: {e}")),
        },
        None => None,
    };
    let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| e.to_string());
    let cfg = Config::parse(&Sources {
        db_path: Path::new(path),
        uri,
        toml,
        read_file: &read,
    })
    .map_err(|e| e.to_string())?;
    let start_lock = Arc::clone(starting().lock().entry(path.to_string()).or_default());
    let result = {
        let _starting = start_lock.lock();
        find_or_start(path, cfg)
    };
    let mut s = starting().lock();
    // The map's entry and ours: nobody else holds or waits for this path's lock. Ours is dropped
    // while the map is locked, so that of two opens ending together the last one removes the
    // entry (dropped after the map's lock, both could count 3 and leave it behind).
    if Arc::strong_count(&start_lock) == 2 {
        s.remove(path);
    }
    drop(start_lock);
    drop(s);
    result
}

/// `open_database` with this path's start lock held.
fn find_or_start(path: &str, cfg: Config) -> Result<Arc<Database>, String> {
    if let Some(db) = registry_get(path) {
        if db.cfg.node != cfg.node || db.cfg.data != cfg.data {
            return Err(format!(
                "replicated: {path} is already open in this process as node {} (data {}); \
                 one node per database per process",
                db.cfg.node,
                db.cfg.data.display()
            ));
        }
        if db.pid != std::process::id() {
            return Err("replicated: this process was forked after opening the database; \
                        the child cannot run the same node"
                .into());
        }
        return Ok(db.clone());
    }
    let db = Database::start(PathBuf::from(path), cfg)?;
    registry().lock().insert(path.to_string(), db.clone());
    Ok(db)
}

// ---- genesis ------------------------------------------------------------------------------------

/// The canonical empty database every node of a new cluster starts from: one 4096-byte page, WAL
/// mode (header bytes 18–19 = 2), UTF-8, an empty schema. Written out of band because switching a
/// database to WAL mode writes through a rollback journal, which would never be replicated.
fn genesis_page() -> Vec<u8> {
    let mut p = vec![0u8; 4096];
    p[..16].copy_from_slice(b"SQLite format 3\0");
    p[16..18].copy_from_slice(&4096u16.to_be_bytes());
    p[18] = 2; // write version: WAL
    p[19] = 2; // read version: WAL
    p[20] = 0; // reserved bytes per page
    p[21] = 64;
    p[22] = 32;
    p[23] = 32;
    p[24..28].copy_from_slice(&1u32.to_be_bytes()); // file change counter
    p[28..32].copy_from_slice(&1u32.to_be_bytes()); // database size in pages
    p[44..48].copy_from_slice(&4u32.to_be_bytes()); // schema format
    p[56..60].copy_from_slice(&1u32.to_be_bytes()); // text encoding UTF-8
    p[92..96].copy_from_slice(&1u32.to_be_bytes()); // version-valid-for
    p[96..100].copy_from_slice(&3_040_001u32.to_be_bytes()); // SQLITE_VERSION_NUMBER (fixed)
    p[100] = 0x0d; // leaf table b-tree page (sqlite_schema)
    p[105..107].copy_from_slice(&4096u16.to_be_bytes()); // cell content area start
    p
}

/// In the data directory while an existing database is being imported (see import_existing).
const IMPORT_MARKER: &str = "import";

/// The database file is the empty database every cluster starts from.
fn is_genesis(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.len() == 4096) && std::fs::read(path).is_ok_and(|b| b == genesis_page())
}

/// The page size in a database file's header.
fn page_size_of(path: &Path) -> Result<u32, String> {
    let mut hdr = [0u8; 18];
    std::fs::File::open(path)
        .and_then(|f| std::os::unix::fs::FileExt::read_exact_at(&f, &mut hdr, 0))
        .map_err(|e| format!("replicated: {}: reading the header: {e}", path.display()))?;
    Ok(match u16::from_be_bytes([hdr[16], hdr[17]]) {
        1 => 65536,
        n => n as u32,
    })
}

/// Writes a small file and makes it and its name durable.
fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// A node without Raft history may be given an existing WAL-mode database whose `-wal` still holds
/// committed transactions (its last user crashed, or kept the WAL). Reconciliation trusts only
/// what the Raft log vouches for and would drop them, so first let SQLite itself (a plain
/// connection through the default VFS, nobody else has the file open) recover the WAL and
/// checkpoint it into the database file.
fn absorb_existing_wal(path: &Path) -> Result<(), String> {
    let wal = crate::reconcile::sibling(path, "-wal");
    if std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0) == 0 || !path.exists() {
        return Ok(());
    }
    let e = |what: &str| format!("replicated: {}: checkpointing its existing WAL: {what}", path.display());
    let p = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| e("bad path"))?;
    let mut h: *mut ffi::sqlite3 = std::ptr::null_mut();
    // SAFETY: plain API calls on a connection this function owns and closes.
    unsafe {
        let rc = ffi::sqlite3_open_v2(p.as_ptr(), &mut h, ffi::SQLITE_OPEN_READWRITE, std::ptr::null());
        let result = if rc != ffi::SQLITE_OK {
            Err(e(&format!("open failed ({rc})")))
        } else {
            // A read first: it opens the WAL and recovers it (a checkpoint on a connection that has
            // not read yet does nothing).
            let rc = ffi::sqlite3_exec(
                h,
                c"SELECT count(*) FROM sqlite_schema".as_ptr(),
                None,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            );
            if rc != ffi::SQLITE_OK {
                ffi::sqlite3_close(h);
                return Err(e(&format!("reading failed ({rc})")));
            }
            let (mut log, mut ckpt) = (0, 0);
            let rc = ffi::sqlite3_wal_checkpoint_v2(
                h,
                std::ptr::null(),
                ffi::SQLITE_CHECKPOINT_TRUNCATE,
                &mut log,
                &mut ckpt,
            );
            if rc != ffi::SQLITE_OK || log != ckpt {
                Err(e(&format!("checkpoint failed ({rc}, {ckpt} of {log} frames)")))
            } else {
                Ok(())
            }
        };
        ffi::sqlite3_close(h);
        result
    }
}

/// Makes sure the database file exists and is in WAL mode before SQLite opens it.
fn prepare_db_file(path: &Path, has_history: bool, may_seed: bool) -> Result<(), String> {
    use std::io::{Read, Seek, Write};
    let e = |what: &str, err: std::io::Error| format!("replicated: {}: {what}: {err}", path.display());
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|x| e("cannot open the database file", x))?;
    let len = f.metadata().map_err(|x| e("stat", x))?.len();
    if len == 0 {
        if has_history && crate::reconcile::sibling(path, "-wal").exists() {
            // The WAL holds the history on top of genesis: recreate genesis below it.
        }
        f.write_all(&genesis_page())
            .map_err(|x| e("writing the initial page", x))?;
        f.sync_all().map_err(|x| e("syncing", x))?;
        if let Some(dir) = path.parent() {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|x| e("syncing the directory", x))?;
        }
        return Ok(());
    }
    if !may_seed {
        let mut page = vec![0u8; 4096];
        let is_genesis = len == 4096 && f.read_exact(&mut page).is_ok() && page == genesis_page();
        if !is_genesis {
            return Err(format!(
                "replicated: {}: only the node with the lowest id in 'peers' may start with an existing \
                 database (it becomes the cluster's initial state); the other nodes start from an empty file",
                path.display()
            ));
        }
        f.seek(std::io::SeekFrom::Start(0)).map_err(|x| e("seek", x))?;
    }
    let mut hdr = [0u8; 100];
    f.read_exact(&mut hdr)
        .map_err(|x| e("not a SQLite database (short header)", x))?;
    if &hdr[..16] != b"SQLite format 3\0" {
        return Err(format!("replicated: {}: file is not a SQLite database", path.display()));
    }
    if hdr[18] != 2 || hdr[19] != 2 {
        if crate::reconcile::sibling(path, "-journal").exists() {
            return Err(format!(
                "replicated: {}: has a hot rollback journal; open it once with plain sqlite3 to recover it first",
                path.display()
            ));
        }
        // An existing rollback-mode database becomes this cluster's initial state, in WAL mode.
        f.seek(std::io::SeekFrom::Start(18)).map_err(|x| e("seek", x))?;
        f.write_all(&[2, 2]).map_err(|x| e("switching to WAL mode", x))?;
        f.sync_all().map_err(|x| e("syncing", x))?;
    }
    Ok(())
}

/// The UDP address to bind: `listen`, else this node's entry in `peers`, else (a restart without
/// `peers`) this node's address in the stored membership.
fn resolve_listen(cfg: &Config) -> Result<std::net::SocketAddr, String> {
    use std::net::ToSocketAddrs;
    let addr = match (&cfg.listen, cfg.own_peer()) {
        (Some(l), _) => l.clone(),
        (None, Some(p)) => p.addr.clone(),
        (None, None) => {
            let m: Option<openraft::StoredMembership<NodeId, BasicNode>> = std::fs::read(cfg.data.join("membership"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            match m.and_then(|m| m.membership().get_node(&cfg.node).map(|n| n.addr.clone())) {
                Some(a) => a,
                None => return Err("replicated: missing 'listen' (and 'peers' does not name this node)".into()),
            }
        }
    };
    addr.to_socket_addrs()
        .map_err(|e| format!("replicated: bad value for 'listen': cannot resolve {addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("replicated: bad value for 'listen': {addr} resolves to nothing"))
}

/// Stops the Raft core and the transport when `Database::start` fails after starting them. They
/// keep each other alive (the core sends through the transport, whose handler serves the core),
/// so dropping them is not enough: the core would run on after the data directory's lock is
/// released, and an open retried in the same process would run a second core on the same log.
struct StartGuard {
    /// None once the start succeeded.
    raft: Option<Raft<TypeConfig>>,
    transport: crate::net::Transport,
}

impl Drop for StartGuard {
    fn drop(&mut self) {
        let Some(raft) = self.raft.take() else { return };
        let transport = self.transport.clone();
        let stopped = run_blocking(
            async move {
                let _ = raft.shutdown().await;
                transport.shutdown().await;
            },
            Duration::from_secs(10),
        );
        if let Err(e) = stopped {
            tracing::error!("replicated: stopping a node whose start failed: {e}");
        }
    }
}

/// When a node snapshots its database and purges its log behind the snapshot.
///
/// By default (`LogBytes`) a node snapshots when the log between its last snapshot and what it has
/// published holds at least `SNAPSHOT_LOG_BYTES`, or the database's size if that is larger: the log on disk then stays
/// within about twice that bound (a segment is deleted once all of it is behind a snapshot), and
/// each byte written to the database costs at most about one more byte of snapshot copying.
/// `REPLICATED_SNAPSHOT_EVERY=N` (N > 0) snapshots every N log entries instead (tests and the
/// nemesis use small N to exercise snapshots often); `REPLICATED_SNAPSHOT_EVERY=0` turns snapshots
/// and log compaction off (the log is then kept whole).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SnapshotPolicy {
    Off,
    EveryEntries(u64),
    LogBytes,
}

/// The log size after the last snapshot that makes a node snapshot, unless its database is larger.
const SNAPSHOT_LOG_BYTES: u64 = 64 << 20;
/// A node further behind its leader's commit index than this many entries is catching up.
const CATCHING_UP: u64 = 64;
/// How often a node compares its log with that bound.
const SNAPSHOT_CHECK: Duration = Duration::from_secs(1);

fn snapshot_policy() -> Result<SnapshotPolicy, String> {
    match std::env::var("REPLICATED_SNAPSHOT_EVERY") {
        Err(_) => Ok(SnapshotPolicy::LogBytes),
        Ok(v) => match v.trim().parse::<u64>() {
            Ok(0) => Ok(SnapshotPolicy::Off),
            Ok(n) => Ok(SnapshotPolicy::EveryEntries(n)),
            Err(_) => Err(format!(
                "replicated: bad value for REPLICATED_SNAPSHOT_EVERY: {v:?} (a number of log entries; 0 turns snapshots off)"
            )),
        },
    }
}

/// The pid of another process that has the database open (SQLite's unix VFS holds a read lock on
/// the SHARED byte range of the database file for as long as a connection is open in WAL mode).
fn other_process_with_db_open(path: &Path) -> Option<i32> {
    const SHARED_FIRST: i64 = 0x4000_0000 + 2;
    const SHARED_SIZE: i64 = 510;
    let f = std::fs::File::open(path).ok()?;
    // SAFETY: F_GETLK on a descriptor we own, with a zero-initialised struct flock.
    unsafe {
        let mut fl: libc::flock = std::mem::zeroed();
        fl.l_type = libc::F_WRLCK as i16;
        fl.l_whence = libc::SEEK_SET as i16;
        fl.l_start = SHARED_FIRST;
        fl.l_len = SHARED_SIZE;
        if libc::fcntl(f.as_raw_fd(), libc::F_GETLK, &mut fl) == 0 && fl.l_type != libc::F_UNLCK as i16 {
            return Some(fl.l_pid);
        }
    }
    None
}

fn lock_data_dir(dir: &Path, node: NodeId) -> Result<std::fs::File, String> {
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("replicated: cannot create data directory {}: {e}", dir.display()))?;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("lock"))
        .map_err(|e| format!("replicated: cannot open {}/lock: {e}", dir.display()))?;
    // SAFETY: flock on a file descriptor we own.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(format!(
            "replicated: node {node}'s data directory {} is in use by another process (one process per node)",
            dir.display()
        ));
    }
    Ok(f)
}

/// Whether `me` is certainly its cluster's only member (voter or learner): the newest membership
/// in the log after what was applied, or else the applied one, names only `me`. Unknown (no
/// membership found, an unreadable log) counts as not alone.
fn only_member(log: &LogStore, loaded: &crate::raft::applied::Loaded, me: NodeId) -> bool {
    let from = loaded.marker.applied.map_or(0, |l| l.index + 1);
    let newest_in_log = match log.last_log_id() {
        Some(last) if last.index >= from => match log.entries_sync(from, last.index) {
            Ok(entries) => entries.into_iter().rev().find_map(|e| match e.payload {
                openraft::EntryPayload::Membership(m) => Some(m),
                _ => None,
            }),
            Err(_) => return false,
        },
        _ => None,
    };
    let membership = match (newest_in_log, &loaded.membership) {
        (Some(m), _) => m,
        (None, Some(stored)) => stored.membership().clone(),
        (None, None) => return false,
    };
    membership.nodes().map(|(id, _)| *id).eq(std::iter::once(me))
}

impl Database {
    fn start(path: PathBuf, cfg: Config) -> Result<Arc<Database>, String> {
        let snap_policy = snapshot_policy()?;
        if cfg.peers.is_none() && !cfg.data.join("log").exists() {
            return Err("replicated: missing required parameter 'peers' (required on a node's first start)".into());
        }
        let lock = lock_data_dir(&cfg.data, cfg.node)?;
        let log = LogStore::open(&cfg.data.join("log"))
            .map_err(|e| format!("replicated: cannot open the Raft log in {}: {e}", cfg.data.display()))?;
        let (store, loaded) = AppliedStore::open(&cfg.data).map_err(|e| {
            format!(
                "replicated: cannot open the applied-state record in {}: {e}",
                cfg.data.display()
            )
        })?;
        // Anything applied, received or voted makes a node a member that restarts, never a new
        // one (a joiner killed while its first snapshot install was being saved has only records).
        let fresh = log.last_log_id().is_none()
            && log.purged_sync().is_none()
            && loaded.marker.applied.is_none()
            && loaded.records.is_empty()
            && loaded.membership.is_none()
            && crate::raft::snapshot::latest(&cfg.data).is_none();
        // A node that led when it stopped leads again only after winning a new term (log_store.rs,
        // `give_up_own_term`): other members may hold entries it sent them before its own fsync
        // and then lost. The only member of its cluster sent entries to nobody: it resumes at once.
        match log.give_up_own_term(cfg.node, || !only_member(&log, &loaded, cfg.node)) {
            Ok(Some(v)) => tracing::info!(
                "replicated: node {} led term {} when it stopped; it starts as a follower",
                cfg.node,
                v.leader_id().term
            ),
            Ok(None) => {}
            Err(e) => {
                return Err(format!(
                    "replicated: cannot save the vote in {}: {e}",
                    cfg.data.display()
                ))
            }
        }
        if fresh && cfg.peers.is_none() {
            return Err("replicated: missing required parameter 'peers' (required on a node's first start)".into());
        }
        // Reconciliation rewrites the WAL and deletes -shm: another process reading the files now
        // would be left on a stale wal-index. Refuse instead.
        if let Some(pid) = other_process_with_db_open(&path) {
            return Err(format!(
                "replicated: {} is open in another process (pid {pid}); a node starts only when no other \
                 process has its database open (close readers, then open again)",
                path.display()
            ));
        }
        // Only the lowest id in `peers` initializes a new cluster (see below), and only it may
        // start with an existing database, which it imports as the cluster's initial state.
        let bootstrapper = cfg.peers.iter().flatten().map(|p| p.id).min() == Some(cfg.node);
        if fresh {
            absorb_existing_wal(&path)?;
        }
        prepare_db_file(&path, !fresh, !fresh || bootstrapper)?;
        let import_marker = cfg.data.join(IMPORT_MARKER);
        if fresh && bootstrapper && !is_genesis(&path) {
            // Every node starts from the empty database, whose page size is 4096 (SQLite cannot
            // change the page size of a WAL-mode database).
            let ps = page_size_of(&path)?;
            if ps != 4096 {
                return Err(format!(
                    "replicated: {}: its page size is {ps}; a replicated database uses 4096. Convert it first \
                     with plain sqlite3: PRAGMA journal_mode=DELETE; PRAGMA page_size=4096; VACUUM;",
                    path.display()
                ));
            }
            write_durably(
                &import_marker,
                b"an existing database is being imported as the initial state\n",
            )
            .map_err(|e| format!("replicated: writing {}: {e}", import_marker.display()))?;
        }
        let importing = import_marker.exists();
        let listen = resolve_listen(&cfg)?;
        let initial: Vec<NodeId> = cfg.peers.iter().flatten().map(|p| p.id).collect();
        // From here until the files agree with the log, other processes' readers are kept out
        // (reconcile.rs, ReaderLock); the lock goes before anything in this process reads.
        let mut readers_out = reconcile::ReaderLock::take(&path).map_err(|e| match e {
            None => format!(
                "replicated: {} is open in {}; a node starts only when no other connection has its \
                 database open (close readers, then open again)",
                path.display(),
                other_process_with_db_open(&path)
                    .filter(|p| *p > 0)
                    .map_or("this process, through another VFS".into(), |p| format!(
                        "another process (pid {p})"
                    ))
            ),
            Some(e) => format!("replicated: locking {}: {e}", path.display()),
        })?;
        let rec = reconcile::reconcile(
            &path,
            &log,
            &store,
            loaded,
            cfg.node,
            &initial,
            &cfg.data,
            &mut readers_out,
        )?;
        drop(readers_out);
        if rec.replayed > 0 {
            tracing::info!(
                "replicated: replayed {} transaction(s) from the Raft log into {}",
                rec.replayed,
                path.display()
            );
        }
        // The log may be purged behind a durable local snapshot, or behind what reconciliation
        // left durable in the database files (it syncs the WAL and the applied-state records):
        // openraft purges up to the applied index at start when the log ends before it, as after a
        // crash between a snapshot install and its commit.
        let leftovers = crate::raft::snapshot::remove_leftovers(&cfg.data);
        if leftovers > 0 {
            tracing::info!("replicated: removed {leftovers} partial snapshot file(s) left by a crash");
        }
        let snapshots = cfg.data.clone();
        let durable_at_start = rec.applied.map(|l| l.index);
        let applier = crate::apply::ApplierHandle::spawn(path.display().to_string())?;
        let service = RaftService::new();
        let sm = SmShared::new(
            cfg.node,
            store,
            rec,
            applier.clone(),
            service.clone(),
            cfg.ack == crate::config::Ack::Apply,
            cfg.data.clone(),
        );
        let installs = sm.clone();
        log.set_purge_guard(Box::new(move || {
            if let Some(e) = installs.install_failed.lock().clone() {
                return Err(e);
            }
            // A commit under way: not covered yet (the purge asks again shortly).
            let snap = crate::raft::snapshot::latest_durable(&snapshots)
                .flatten()
                .and_then(|(_, m)| m.meta.last_log_id.map(|l| l.index));
            Ok(snap.max(durable_at_start))
        }));
        let net_cfg = crate::net::NetConfig {
            node_id: cfg.node,
            listen,
            auth: cfg.auth.clone(),
            max_message: crate::net::MAX_MESSAGE,
            keep_alive: Duration::from_millis(500),
            idle_timeout: Duration::from_secs(10),
        };
        let handler: Arc<dyn crate::net::Handler> = Arc::new(service.clone());
        let transport = run_blocking(
            async move { crate::net::Transport::start(net_cfg, handler) },
            Duration::from_secs(10),
        )
        .map_err(|e| format!("replicated: starting the transport: {e}"))?
        .map_err(|e| format!("replicated: cannot listen on {listen} (UDP): {e}"))?;

        let raft_cfg = openraft::Config {
            cluster_name: "replicated".into(),
            heartbeat_interval: cfg.heartbeat_ms,
            election_timeout_min: cfg.election_ms,
            election_timeout_max: cfg.election_max_ms(),
            // openraft counts only entries; the default, log-size policy triggers snapshots itself
            // (Database::schedule_snapshots).
            snapshot_policy: match snap_policy {
                SnapshotPolicy::EveryEntries(n) => openraft::SnapshotPolicy::LogsSinceLast(n),
                SnapshotPolicy::Off | SnapshotPolicy::LogBytes => openraft::SnapshotPolicy::Never,
            },
            // Keep nothing behind a snapshot: openraft 0.9 otherwise looks up a log id below the
            // start of a log that begins at an installed snapshot, a fatal error. Restart needs no
            // entry at or below the snapshot (it ends at a complete transaction).
            max_in_snapshot_log_to_keep: 0,
            // openraft purges only once `purge_batch_size` entries lie behind the snapshot. The
            // log-size policy counts bytes, not entries (a few large entries may be 64 MiB): purge
            // behind every snapshot.
            purge_batch_size: match snap_policy {
                SnapshotPolicy::EveryEntries(n) => n.min(256),
                SnapshotPolicy::LogBytes | SnapshotPolicy::Off => 1,
            },
            max_payload_entries: 64,
            // Elections start only after a pre-vote (raft/election.rs, Database::run_elections).
            enable_elect: false,
            ..Default::default()
        }
        .validate()
        .map_err(|e| format!("replicated: bad Raft timing: {e}"))?;
        let (id, log2, sm2) = (cfg.node, log.clone(), StateMachine(sm.clone()));
        let sending = crate::raft::network::Transfers::default();
        let receiving = service.receiving.clone();
        let leader_commit = service.leader_commit.clone();
        let contact = service.contact.clone();
        let _ = service
            .election
            .set((log.clone(), Duration::from_millis(cfg.election_max_ms())));
        let eager_calls = crate::raft::network::EagerCalls::default();
        let net = QuicNetwork {
            transport: transport.clone(),
            sending: sending.clone(),
            retry: Duration::from_millis(cfg.heartbeat_ms.clamp(10, 100)),
            heartbeat: Duration::from_millis(cfg.heartbeat_ms),
            eager: eager_calls.clone(),
        };
        let raft = run_blocking(
            async move { Raft::new(id, Arc::new(raft_cfg), net, log2, sm2).await },
            Duration::from_secs(30),
        )
        .map_err(|e| format!("replicated: starting Raft: {e}"))?
        .map_err(|e| format!("replicated: starting Raft: {e}"))?;
        // Declared after the data directory's lock, so dropped (on a failed start) before it.
        let mut started = StartGuard {
            raft: Some(raft.clone()),
            transport: transport.clone(),
        };
        let _ = service.raft.set(raft.clone());
        let _ = service.data.set(cfg.data.clone());

        // Bootstrap: only the lowest id in `peers` initializes the cluster (with all of `peers` as
        // voters); the others start pristine and receive that membership from the first leader.
        // A node started later to join (see replicated_add_node) is then never able to create a
        // membership of its own that conflicts with the cluster's at log index 0.
        // A node importing an existing database starts as a one-node cluster and adds the other
        // peers once the import is committed (import_existing), so no other node can be elected
        // and accept writes on the empty database meanwhile.
        if fresh && bootstrapper {
            let members: BTreeMap<NodeId, BasicNode> = cfg
                .peers
                .iter()
                .flatten()
                .filter(|p| !importing || p.id == cfg.node)
                .map(|p| (p.id, BasicNode::new(p.addr.clone())))
                .collect();
            let r = raft.clone();
            match run_blocking(async move { r.initialize(members).await }, Duration::from_secs(30)) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::info!("replicated: initialize: {e} (already initialized is fine)")
                }
                Err(e) => return Err(format!("replicated: initializing the cluster: {e}")),
            }
        }
        let metrics = raft.metrics();
        let db = Arc::new(Database {
            path,
            cfg,
            raft,
            sm,
            log,
            metrics,
            transport,
            next_txn_id: AtomicU64::new(u64::from_le_bytes(reconcile::random_salt()) >> 16),
            pid: std::process::id(),
            wal_end: Mutex::new(WalEnd::default()),
            handover: std::sync::atomic::AtomicBool::new(false),
            forming: std::sync::atomic::AtomicBool::new(importing),
            sending,
            receiving,
            leader_commit,
            contact,
            eager_calls,
            _lock: lock,
        });
        // The Raft core runs already: entries it commits meanwhile wait in the applier (apply.rs).
        crate::failpoint::hit("start.before_attach").map_err(|e| format!("replicated: {e}"))?;
        applier.attach(Arc::downgrade(&db));
        db.log
            .set_eager(db.cfg.node, Database::eager_sender(Arc::downgrade(&db)));
        Database::run_elections(&db)?;
        if db.cfg.ack == crate::config::Ack::Apply {
            Database::report_applied_to_leader(&db)?;
        }
        if snap_policy == SnapshotPolicy::LogBytes {
            Database::schedule_snapshots(&db)?;
        }
        if importing {
            db.import_existing()?;
            Database::add_configured_peers(&db)?;
        }
        started.raft = None; // started: the node lives as long as the process
        Ok(db)
    }

    /// Proposes the database file, as it is, as the cluster's first transaction (base 0: on every
    /// other node it replaces the empty database), so that every node that ever joins rebuilds the
    /// same content from the log. Runs at start on the node that holds `IMPORT_MARKER`, a one-node
    /// cluster then; nothing else can write before it. After a crash the marker is still there:
    /// the import is proposed again unless one was applied (then the next is skipped by the base
    /// rule anyway).
    fn import_existing(&self) -> Result<(), String> {
        if self.sm.last_txn.load(Ordering::Acquire) > 0 {
            // Imported before a restart (reconcile replayed it, or the marker says so); the peers
            // may have joined since, and another node may lead.
            return Ok(());
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let v = self.view();
            if v.state == Some(ServerState::Leader) && v.applied >= v.last_log {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "replicated: importing {}: this node did not become the leader of its one-node cluster \
                     (role {:?})",
                    self.path.display(),
                    v.state
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let e = |what: &str, err: String| format!("replicated: importing {}: {what}: {err}", self.path.display());
        let ps = page_size_of(&self.path)?;
        let file = std::fs::File::open(&self.path).map_err(|x| e("opening", x.to_string()))?;
        let len = file.metadata().map_err(|x| e("stat", x.to_string()))?.len();
        if !(512..=65536).contains(&ps) || !ps.is_power_of_two() || len % ps as u64 != 0 {
            return Err(e("bad file", format!("{len} bytes with page size {ps}")));
        }
        let n_pages = u32::try_from(len / ps as u64).map_err(|_| e("bad file", "too many pages".into()))?;
        tracing::warn!(
            "replicated: importing {} ({n_pages} pages) as the initial state of the cluster",
            self.path.display()
        );
        let cap = crate::vfs::capture::Captured::whole_file(ps, n_pages);
        let read = |off: u64, buf: &mut [u8]| std::os::unix::fs::FileExt::read_exact_at(&file, buf, off).is_ok();
        let (log_id, _) = self.commit(cap, read, || Ok(())).map_err(|w| e("committing", w.msg))?;
        // The database file holds exactly this state (there is no WAL: absorb_existing_wal).
        self.sm
            .store
            .set_marker(Marker {
                applied: Some(log_id),
                last_txn: log_id.index,
            })
            .map_err(|x| e("recording", x.to_string()))?;
        self.set_published(log_id, log_id.index);
        Ok(())
    }

    /// After an import: adds the other configured peers (learners first, voters once they have
    /// caught up), in the background since they may not be up yet. Writes wait meanwhile (see
    /// `begin_write`): the cluster the application configured is not formed until then.
    fn add_configured_peers(db: &Arc<Database>) -> Result<(), String> {
        let others: Vec<(NodeId, String)> = db
            .cfg
            .peers
            .iter()
            .flatten()
            .filter(|p| p.id != db.cfg.node)
            .map(|p| (p.id, p.addr.clone()))
            .collect();
        let weak = Arc::downgrade(db);
        let marker = db.cfg.data.join(IMPORT_MARKER);
        let done = move |db: &Database| -> Result<(), String> {
            std::fs::remove_file(&marker).map_err(|e| format!("removing {}: {e}", marker.display()))?;
            db.forming.store(false, Ordering::Release);
            tracing::warn!("replicated: the cluster is formed: node {} and its peers", db.cfg.node);
            Ok(())
        };
        if others.is_empty() {
            return done(db);
        }
        std::thread::Builder::new()
            .name("replicated-form".into())
            .spawn(move || {
                let mut logged = Instant::now();
                loop {
                    let Some(db) = weak.upgrade() else { return };
                    match db.form_once(&others) {
                        Ok(true) => {
                            if let Err(e) = done(&db) {
                                tracing::error!("replicated: {e}");
                            }
                            return;
                        }
                        Ok(false) => {}
                        Err(e) if logged.elapsed() > Duration::from_secs(10) => {
                            tracing::warn!("replicated: forming the cluster: {e}");
                            logged = Instant::now();
                        }
                        Err(_) => {}
                    }
                    drop(db);
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
            .map_err(|e| format!("replicated: cannot start the thread that adds peers: {e}"))?;
        Ok(())
    }

    /// One step of forming: Ok(true) once every peer is a voter.
    fn form_once(&self, others: &[(NodeId, String)]) -> Result<bool, String> {
        let v = self.view();
        if others.iter().all(|(id, _)| v.members.iter().any(|m| m.0 == *id && m.2)) {
            return Ok(true);
        }
        if v.state != Some(ServerState::Leader) {
            return Ok(false);
        }
        for (id, addr) in others {
            if !v.members.iter().any(|m| m.0 == *id) {
                let (r, node, id) = (self.raft.clone(), BasicNode::new(addr.clone()), *id);
                run_blocking(
                    async move { r.add_learner(id, node, false).await },
                    Duration::from_secs(10),
                )?
                .map_err(|e| format!("adding node {id}: {e}"))?;
            }
        }
        let v = self.view();
        let behind: Vec<NodeId> = others
            .iter()
            .map(|(id, _)| *id)
            .filter(|id| v.matched.get(id).is_none_or(|m| *m < v.last_log))
            .collect();
        if !behind.is_empty() {
            return Err(format!("waiting for node(s) {behind:?} to start and catch up"));
        }
        let r = self.raft.clone();
        let change = openraft::ChangeMembers::AddVoterIds(others.iter().map(|(id, _)| *id).collect());
        run_blocking(
            async move { r.change_membership(change, false).await },
            Duration::from_secs(10),
        )?
        .map_err(|e| format!("promoting the peers: {e}"))?;
        Ok(false)
    }

    /// The current role, term, leader and progress, read synchronously from openraft's metrics
    /// (a watch channel: no runtime involved, the borrow is held only while copying).
    pub fn view(&self) -> View {
        let m = self.metrics.borrow();
        let mem = m.membership_config.membership();
        let voters: std::collections::BTreeSet<NodeId> = mem.voter_ids().collect();
        View {
            state: Some(m.state),
            term: m.current_term,
            leader: m.current_leader,
            last_log: m.last_log_index.unwrap_or(0),
            applied: m.last_applied.map(|l| l.index).unwrap_or(0),
            members: mem
                .nodes()
                .map(|(id, n)| (*id, n.addr.clone(), voters.contains(id)))
                .collect(),
            matched: m
                .replication
                .as_ref()
                .map(|r| r.iter().map(|(id, l)| (*id, l.map(|l| l.index).unwrap_or(0))).collect())
                .unwrap_or_default(),
            shutdown: m.running_state.is_err(),
            snapshot: m.snapshot.map(|l| l.index),
            purged: m.purged.map(|l| l.index),
        }
    }

    pub fn poison(&self, why: String) {
        self.sm.poison(why);
    }

    /// The commit path panicked (caught in vfs `commit_sync`, which then invalidates the WAL
    /// tail). A commit still waiting is given up like a timeout: if Raft commits its entry, the
    /// state machine applies it from the log. Otherwise it may have been claimed, and claimed
    /// pages that were never published leave this node's state behind what it reported: poison.
    pub fn commit_panicked(&self) -> WriteError {
        let given_up = self.sm.pending.lock().take().is_some_and(|p| {
            let mut s = p.state.lock();
            let waiting = *s == PendingState::Waiting;
            if waiting {
                *s = PendingState::Abandoned;
            }
            waiting
        });
        if !given_up {
            self.poison("a commit failed with an internal error after its entry may have been claimed".into());
        }
        WriteError::new(
            IOERR_REPLICATION,
            "replicated: internal error in the commit path (see the log); the outcome in the cluster is unknown",
        )
    }

    fn leader_addr(&self, v: &View) -> Option<String> {
        let id = v.leader?;
        v.members
            .iter()
            .find(|(i, _, _)| *i == id)
            .map(|(_, a, _)| format!("{id}@{a}"))
    }

    /// `id@host:port` of the current leader, if known.
    pub fn leader(&self) -> Option<String> {
        let v = self.view();
        self.leader_addr(&v)
    }

    /// Gate at the start of a write transaction: waits (bounded) until this node is a leader that
    /// has applied its whole log; refuses with READONLY when another node leads.
    pub fn begin_write(&self) -> Result<(), WriteError> {
        if let Some(p) = self.sm.poisoned.lock().clone() {
            return Err(WriteError::new(IOERR_REPLICATION, p));
        }
        if std::process::id() != self.pid {
            return Err(WriteError::new(
                ffi::SQLITE_READONLY,
                "this process was forked: the child cannot write",
            ));
        }
        let deadline = Instant::now() + Duration::from_millis(self.cfg.timeout_ms);
        // The usual wait is short: with ack=commit the previous commit returned before this
        // leader applied it, a moment later (starting at 1 ms, every fifth single-row commit on
        // 3 nodes waited a whole millisecond here, as long as the commit itself).
        let mut pause = Duration::from_micros(50);
        loop {
            if self.handover.load(Ordering::Acquire) && Instant::now() < deadline {
                // A leader transfer is under way: after it, this node is most likely a follower.
                std::thread::sleep(Duration::from_millis(2));
                continue;
            }
            if self.forming.load(Ordering::Acquire) {
                if Instant::now() >= deadline {
                    return Err(WriteError::new(
                        IOERR_NO_LEADER,
                        "the cluster is being formed: this node's existing database was imported and the \
                         other peers in 'peers' have not all joined yet (start them; writes wait until they have)",
                    ));
                }
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            let v = self.view();
            if v.shutdown {
                return Err(WriteError::new(IOERR_REPLICATION, "the Raft node has shut down"));
            }
            match (v.state, v.leader) {
                (Some(ServerState::Leader), Some(l)) if l == self.cfg.node && v.applied >= v.last_log => {
                    return Ok(());
                }
                (_, Some(l)) if l != self.cfg.node => {
                    let addr = self.leader_addr(&v).unwrap_or_else(|| l.to_string());
                    return Err(WriteError::new(
                        ffi::SQLITE_READONLY,
                        format!(
                            "node {} is not the leader; writes go to the leader, node {addr}",
                            self.cfg.node
                        ),
                    ));
                }
                _ => {}
            }
            // Not ready (election under way, or the new leader still applying): wait, bounded.
            let now = Instant::now();
            if now >= deadline {
                return Err(WriteError::new(
                    IOERR_NO_LEADER,
                    format!(
                        "no leader within timeout_ms={} (role {:?}, term {})",
                        self.cfg.timeout_ms, v.state, v.term
                    ),
                ));
            }
            std::thread::sleep(pause.min(deadline - now));
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    /// Replicates a captured transaction and blocks until it is committed and claimed (see the
    /// module comment). On Ok the WAL frames are this node's to publish. `read_at` reads the WAL
    /// (for the parts of a large transaction, which are read one at a time as they are proposed).
    ///
    /// A transaction of several parts is proposed as a pipeline: this thread reads part k + 1 while
    /// the runtime proposes part k, with at most `PROPOSE_WINDOW` parts queued or unanswered (the
    /// bound on the leader's memory for one commit). The commit waits up to `timeout_ms` for
    /// progress: every acknowledged part extends the deadline.
    pub fn commit(
        &self,
        mut cap: Captured,
        mut read_at: impl FnMut(u64, &mut [u8]) -> bool,
        before_wait: impl FnOnce() -> Result<(), String>,
    ) -> Result<(crate::raft::types::LogId, u64), WriteError> {
        let fail = |e: std::io::Error| WriteError::new(IOERR_REPLICATION, e.to_string());
        failpoint::hit("commit.before_propose").map_err(fail)?;
        let txn_id = self.next_txn_id.fetch_add(1, Ordering::Relaxed);
        let header = Txn {
            origin: self.cfg.node,
            txn_id,
            base_index: self.sm.last_txn.load(Ordering::Acquire),
            page_size: cap.page_size,
            db_size: cap.db_size,
            pgnos: Vec::new(),
            pages: Vec::new(),
            part: 0,
            last: true,
        };
        let n_parts = cap.part_count();
        let mut part = |k: usize, cap: &mut Captured| -> Result<Txn, WriteError> {
            let (pgnos, pages) = cap.take_part(k, &mut read_at).map_err(|e| match e {
                crate::vfs::capture::CaptureError::Io(code, msg) => WriteError::io(code, msg),
                crate::vfs::capture::CaptureError::TooLarge(n) => WriteError::too_large(n),
            })?;
            Ok(Txn {
                pgnos,
                pages,
                part: k as u32,
                last: k + 1 == n_parts,
                ..header.clone_header()
            })
        };
        let alone = self.metrics.borrow().membership_config.membership().nodes().count() <= 1;
        if alone {
            crate::runtime::busy();
        }
        let first = part(0, &mut cap)?;
        let timeout = Duration::from_millis(self.cfg.timeout_ms);
        let pending = PendingCommit::new(txn_id, Instant::now() + timeout, alone);
        *self.sm.pending.lock() = Some(pending.clone());
        let (raft, answer) = (self.raft.clone(), pending.clone());
        let (more, mut queued) = tokio::sync::mpsc::channel::<Txn>(PROPOSE_WINDOW);
        // The state machine's claim wakes us; this task proposes the parts in order (openraft keeps
        // their order) and turns Raft's errors into a decision: an error on any part decides the
        // commit. A committed prefix without its last part is discarded on every node by the next
        // transaction's first part. The task ends when the commit is decided or stops progressing;
        // then `more` refuses further parts.
        let spawned = runtime().map(|rt| {
            rt.spawn(async move {
                let mut next = Some(first);
                let mut answers = std::collections::VecDeque::new();
                loop {
                    let part = match next.take() {
                        Some(p) => Some(p),
                        None if answers.len() < PROPOSE_WINDOW => queued.recv().await,
                        None => None,
                    };
                    match part {
                        Some(p) => match raft.client_write_ff(Request::Txn(p)).await {
                            Ok(rx) => answers.push_back(rx),
                            Err(e) => {
                                answer.decide(PendingState::Failed(
                                    IOERR_LEADERSHIP_LOST,
                                    format!("commit failed: {e}"),
                                ));
                                return;
                            }
                        },
                        None => {
                            // The window is full, or every part is proposed: wait for the oldest.
                            let Some(rx) = answers.pop_front() else { return };
                            let deadline = tokio::time::Instant::from_std(answer.deadline());
                            let Ok(r) = tokio::time::timeout_at(deadline, rx).await else {
                                return; // no progress within timeout_ms: the committer gives up
                            };
                            if let Some((code, msg)) = part_failure(r) {
                                answer.decide(PendingState::Failed(code, msg));
                                return;
                            }
                            answer.progressed(timeout);
                        }
                    }
                }
            })
        });
        if let Err(e) = spawned {
            *self.sm.pending.lock() = None;
            return Err(WriteError::new(IOERR_REPLICATION, e));
        }
        for k in 1..n_parts {
            let p = match part(k, &mut cap) {
                Ok(p) => p,
                Err(e) => {
                    // Parts already proposed are never completed: harmless everywhere.
                    pending.decide(PendingState::Failed(
                        e.code,
                        e.msg.trim_start_matches("replicated: ").into(),
                    ));
                    break;
                }
            };
            // Blocks while PROPOSE_WINDOW parts are queued (this thread is not a runtime thread);
            // fails once the task has ended.
            if more.blocking_send(p).is_err() {
                break;
            }
        }
        drop(more);
        // The caller's share of the commit, done while Raft makes the entries durable (the VFS
        // writes the frames to the WAL file: vfs/wal_buffer.rs).
        let overlapped = before_wait();
        // While a one-part commit is fast, polling costs less than being woken (runtime.rs).
        let decided = crate::runtime::await_decision(&pending, || {
            let mut s = pending.state.lock();
            while *s == PendingState::Waiting {
                let deadline = pending.deadline();
                if pending.decided.wait_until(&mut s, deadline).timed_out() && pending.deadline() <= deadline {
                    break;
                }
            }
            if *s == PendingState::Waiting {
                // Give up under the lock: a late claim now fails, and the state machine applies
                // the entry from the log instead if Raft commits it anyway.
                *s = PendingState::Abandoned;
            }
            s.clone()
        });
        *self.sm.pending.lock() = None;
        let (index, term, log_id) = match decided {
            PendingState::Claimed { log_id } => (log_id.index, log_id.leader_id.term, log_id),
            PendingState::Failed(code, msg) => return Err(WriteError::new(code, msg)),
            _ => {
                return Err(WriteError::new(
                    IOERR_TIMEOUT,
                    format!(
                        "no quorum within timeout_ms={}; the outcome in the cluster is unknown",
                        self.cfg.timeout_ms
                    ),
                ))
            }
        };
        if let Err(e) = overlapped {
            // Raft committed it, but SQLite cannot publish it here: restart replays it.
            self.poison(format!(
                "log entry {index} was committed in the cluster, but {e}; restart this node to replay it"
            ));
            return Err(WriteError::new(IOERR_REPLICATION, format!("replicated: {e}")));
        }
        failpoint::hit("commit.after_quorum").map_err(fail)?;
        if cap.is_whole_file() {
            // Nothing in the WAL: the caller (import_existing) records where the state is.
            return Ok((log_id, 0));
        }
        let rec = Record {
            index,
            term,
            leader: log_id.leader_id.node_id,
            salt: cap.pos.salt,
            commit_frame: cap.pos.commit_frame,
            cksum: cap.pos.commit_cksum,
            db_size: cap.db_size,
            last_txn: index,
        };
        self.record_applied(&rec);
        failpoint::hit("commit.after_record").map_err(fail)?;
        Ok((log_id, cap.pos.commit_frame))
    }

    /// Sends a leader's batch to the followers that are caught up, before its fsync (see
    /// log_store.rs, EAGER REPLICATION). Runs inside the Raft core's append, on the runtime
    /// thread: it only spawns the sends. A Success answers openraft's own request for the same
    /// entries when it comes (raft/network.rs, `eager_answer`); otherwise that request goes out
    /// as usual and the follower answers it from what it then holds.
    fn eager_sender(weak: std::sync::Weak<Database>) -> crate::raft::log_store::EagerSend {
        let in_flight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        Box::new(move |first, build| {
            let Some(db) = weak.upgrade() else { return false };
            let targets: Vec<(NodeId, String)> = {
                let m = db.metrics.borrow();
                let Some(repl) = m.replication.as_ref() else {
                    return false;
                };
                let mem = m.membership_config.membership();
                // openraft's progress lists the leader itself too.
                repl.iter()
                    .filter(|(id, _)| **id != db.cfg.node)
                    .filter(|(_, matched)| matched.map_or(0, |l| l.index).saturating_add(EAGER_LAG) >= first)
                    .filter_map(|(id, _)| mem.get_node(id).map(|n| (*id, n.addr.clone())))
                    .collect()
            };
            if targets.is_empty() {
                return false;
            }
            let Some(req) = build() else { return false };
            let Some(last) = req.entries.last().map(|e| e.log_id) else {
                return false;
            };
            let Ok(rt) = runtime() else { return false };
            let Ok(body) = crate::raft::network::encode(&req) else {
                return false;
            };
            let body: Arc<[u8]> = body.into();
            let mut sent = false;
            for (id, addr) in targets {
                if in_flight.fetch_add(1, Ordering::AcqRel) >= EAGER_IN_FLIGHT {
                    in_flight.fetch_sub(1, Ordering::AcqRel);
                    break;
                }
                let (answer, answered) = tokio::sync::watch::channel(None);
                let call = crate::raft::network::EagerCall {
                    vote: req.vote,
                    prev: req.prev_log_id,
                    last,
                    answer: answered,
                };
                db.eager_calls.lock().insert(id, call);
                let (t, body, in_flight) = (db.transport.clone(), body.clone(), in_flight.clone());
                rt.spawn(async move {
                    let r = t
                        .call(id, &addr, crate::raft::network::APPEND, &body, EAGER_TIMEOUT)
                        .await;
                    let _ = answer.send(Some(r.is_ok_and(|b| crate::raft::network::is_append_success(&b))));
                    in_flight.fetch_sub(1, Ordering::AcqRel);
                });
                sent = true;
            }
            sent
        })
    }

    /// The election timer (raft/election.rs): a voter that has heard from no leader for a
    /// randomized election timeout asks the other voters first, and starts openraft's election
    /// only when a majority would vote for it.
    fn run_elections(db: &Arc<Database>) -> Result<(), String> {
        use crate::raft::election::{self, PreVote};
        let min = Duration::from_millis(db.cfg.election_ms);
        // The election timeout's upper bound is also the lease (Config::election_max_ms).
        let max = Duration::from_millis(db.cfg.election_max_ms());
        let lease = max;
        let tick = (min / 4).clamp(Duration::from_millis(5), Duration::from_millis(50));
        let weak = Arc::downgrade(db);
        runtime()?.spawn(async move {
            // The timer runs from the later of the last leader contact and the last campaign
            // (`Contact::quiet`), and from the task's start.
            let start = Instant::now();
            let mut jitter = election::jitter(min, max);
            // This task stopped the heartbeats of a poisoned leader (state_machine.rs).
            let mut quieted = false;
            loop {
                tokio::time::sleep(tick).await;
                let Some(db) = weak.upgrade() else { return };
                let v = db.view();
                let me = db.cfg.node;
                if v.shutdown {
                    return;
                }
                let poisoned = db.sm.is_poisoned();
                let alone = !v.members.iter().any(|m| m.0 != me && m.2);
                let step_down = poisoned && v.state == Some(ServerState::Leader) && !alone;
                if step_down && !db.handover.load(Ordering::Acquire) {
                    // The followers' leases run out and they elect another leader; this node
                    // votes for it like any follower (openraft's lease on its vote lapses too).
                    if !quieted {
                        tracing::warn!("replicated: node {me} cannot apply the log: stepping down as leader");
                    }
                    db.raft.runtime_config().heartbeat(false);
                    quieted = true;
                    continue;
                }
                if quieted && !step_down {
                    db.raft.runtime_config().heartbeat(true);
                    quieted = false;
                }
                if v.state == Some(ServerState::Leader) {
                    // A leader hears itself: once deposed, it refuses pre-votes for the lease like
                    // any follower of the new leader would.
                    db.contact.heard();
                    continue;
                }
                if poisoned {
                    db.contact.campaigned(); // it must not lead; its timer restarts when cured
                    continue;
                }
                if !v.members.iter().any(|m| m.0 == me && m.2) {
                    db.contact.campaigned(); // a new voter's timer starts when it becomes one
                    continue;
                }
                let quiet = db.contact.quiet().map_or(start.elapsed(), |q| q.min(start.elapsed()));
                if quiet < election::timeout(jitter, v.leader.is_some(), lease) {
                    continue;
                }
                tracing::debug!(
                    "replicated: no leader heard for {quiet:?} (leader {:?}); pre-vote",
                    v.leader
                );
                db.contact.campaigned();
                jitter = election::jitter(min, max);
                let raft = db.raft.clone();
                let voters = v.members.iter().filter(|m| m.2).count();
                let others: Vec<(NodeId, String)> = v
                    .members
                    .iter()
                    .filter(|m| m.2 && m.0 != me)
                    .map(|m| (m.0, m.1.clone()))
                    .collect();
                let mut grants = 1;
                if !others.is_empty() {
                    let body = match crate::raft::network::encode(&PreVote {
                        last_log: db.log.last_log_id(),
                    }) {
                        Ok(b) => b,
                        Err(e) => {
                            tracing::warn!("replicated: pre-vote: {e}");
                            continue;
                        }
                    };
                    let mut calls = tokio::task::JoinSet::new();
                    for (id, addr) in others {
                        let (t, body) = (db.transport.clone(), body.clone());
                        calls.spawn(async move {
                            let r = t.call(id, &addr, crate::raft::network::PRE_VOTE, &body, min).await;
                            r.ok().and_then(|b| crate::raft::network::decode::<bool>(&b).ok()) == Some(true)
                        });
                    }
                    drop(db);
                    while let Some(r) = calls.join_next().await {
                        grants += usize::from(matches!(r, Ok(true)));
                        if election::is_majority(grants, voters) {
                            break; // dropping `calls` cancels the calls still out
                        }
                    }
                } else {
                    drop(db);
                }
                if election::is_majority(grants, voters) {
                    tracing::debug!("replicated: pre-vote won ({grants} of {voters}); campaigning");
                    if raft.trigger().elect().await.is_err() {
                        return; // the Raft core has stopped
                    }
                }
            }
        });
        Ok(())
    }

    /// The default snapshot policy (see SnapshotPolicy): every SNAPSHOT_CHECK, snapshot when the
    /// log between the last snapshot and what is published holds max(SNAPSHOT_LOG_BYTES, database
    /// size) bytes. openraft ignores a trigger while a snapshot is being built, and purges the log
    /// behind each snapshot once it is durable (the purge guard). Every node decides for itself.
    fn schedule_snapshots(db: &Arc<Database>) -> Result<(), String> {
        let weak = Arc::downgrade(db);
        runtime()?.spawn(async move {
            // The first check runs at once: a node that starts with its log purged past its newest
            // snapshot cannot serve a lagging follower until it has one.
            let mut tick = tokio::time::interval(SNAPSHOT_CHECK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(db) = weak.upgrade() else { return };
                let since = db.raft.metrics().borrow().snapshot.map(|l| l.index);
                // A log purged past the newest snapshot (a crash between an install and its
                // snapshot file, or a start that cleaned a hole) needs one covering it at once:
                // a follower lagging behind the purge point can only be sent a snapshot.
                let purged = db.log.purged_sync().map(|p| p.index);
                let published = db.published().0.map(|l| l.index);
                if purged > since && published >= purged {
                    tracing::info!("replicated: the log is purged past the newest snapshot: snapshotting");
                    if db.raft.trigger().snapshot().await.is_err() {
                        return; // Raft has stopped
                    }
                    continue;
                }
                // A snapshot holds what is published, which stops before a transaction whose
                // parts are still arriving: nothing published past the last snapshot, nothing to do.
                let Some(published) = published.filter(|p| Some(*p) > since) else {
                    continue;
                };
                // A node catching up waits until it has: the copy would take the disk from the
                // catching up (measured: 100 MB caught up at ~27 MB/s instead of ~100). It is
                // catching up when leaders have committed more than CATCHING_UP entries past what
                // it published, or its own log holds a snapshot's worth it has not published.
                let unpublished = db.log.bytes_after(published);
                if db.leader_commit.load(Ordering::Relaxed) > published + CATCHING_UP
                    || unpublished >= SNAPSHOT_LOG_BYTES
                {
                    continue;
                }
                // What a snapshot now would let the purge remove: the log up to the published
                // index. (Parts of a transaction still arriving stay, however large.)
                let reclaimable = db.log.bytes_after(since.unwrap_or(0)).saturating_sub(unpublished);
                let db_bytes = std::fs::metadata(&db.path).map(|m| m.len()).unwrap_or(0);
                if reclaimable >= SNAPSHOT_LOG_BYTES.max(db_bytes) {
                    tracing::info!(
                        "replicated: {reclaimable} bytes of log up to index {published} would be purged behind a \
                         snapshot (database {db_bytes} bytes): snapshotting"
                    );
                    if db.raft.trigger().snapshot().await.is_err() {
                        return; // Raft has stopped
                    }
                }
            }
        });
        Ok(())
    }

    /// Followers tell the leader how far they have applied (for `ack=apply`; every node of a
    /// cluster is expected to use the same `ack`), whenever it moves. One notice is in flight at a
    /// time; it is abandoned when the leader changes (a notice to a leader that just died would
    /// otherwise hold up the one to its successor, and every `ack=apply` commit there, until the
    /// notice timed out), and a notice that failed is sent again after NOTICE_RETRY.
    fn report_applied_to_leader(db: &Arc<Database>) -> Result<(), String> {
        const NOTICE_TIMEOUT: Duration = Duration::from_secs(1);
        const NOTICE_RETRY: Duration = Duration::from_millis(20);
        let weak = Arc::downgrade(db);
        let mut rx = db.raft.metrics();
        runtime()?.spawn(async move {
            let mut sent: (Option<NodeId>, u64) = (None, 0);
            loop {
                let (leader, applied) = {
                    let m = rx.borrow_and_update();
                    (m.current_leader, m.last_applied.map(|l| l.index).unwrap_or(0))
                };
                let Some(db) = weak.upgrade() else { return };
                // A poisoned node's applied index moves past what it could not publish: it reports
                // nothing until a snapshot install clears the poison (the next metrics change).
                let target = leader
                    .filter(|l| *l != db.cfg.node && (Some(*l), applied) != sent && !db.sm.is_poisoned())
                    .and_then(|l| db.view().members.iter().find(|m| m.0 == l).map(|m| (l, m.1.clone())));
                let t = db.transport.clone();
                drop(db);
                let Some((l, addr)) = target else {
                    if rx.changed().await.is_err() {
                        return;
                    }
                    continue;
                };
                let body = postcard::to_allocvec(&applied).unwrap_or_default();
                let call = t.call(l, &addr, crate::raft::network::APPLIED, &body, NOTICE_TIMEOUT);
                tokio::pin!(call);
                let delivered = loop {
                    tokio::select! {
                        r = &mut call => break Some(r.is_ok()),
                        changed = rx.changed() => {
                            if changed.is_err() {
                                return;
                            }
                            if rx.borrow().current_leader != Some(l) {
                                break None; // abandoned: the next notice goes to the new leader
                            }
                        }
                    }
                };
                match delivered {
                    Some(true) => sent = (Some(l), applied),
                    Some(false) => tokio::time::sleep(NOTICE_RETRY).await,
                    None => {}
                }
            }
        });
        Ok(())
    }

    /// `replicated_sync()`: a linearizable read barrier. Asks the leader (this node, or over the
    /// network) for a read index confirmed by a quorum, then waits until this node has applied it.
    pub fn sync(&self, timeout: Duration) -> Result<u64, String> {
        let deadline = Instant::now() + timeout;
        // A poisoned node's applied index counts entries it could not publish (state_machine.rs).
        let poisoned = || {
            self.sm.poisoned.lock().clone().map(|p| {
                format!("replicated: this node cannot apply the log, so it cannot serve a linearizable read: {p}")
            })
        };
        if let Some(e) = poisoned() {
            return Err(e);
        }
        // Elections and restarts make the first answer transient; retry until the deadline.
        let read_index = loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match self.read_index(remaining) {
                Ok(i) => break i,
                Err(e) if Instant::now() + Duration::from_millis(20) < deadline => {
                    tracing::debug!("replicated_sync: {e}; retrying");
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(e),
            }
        };
        loop {
            let applied = self.view().applied;
            if let Some(e) = poisoned() {
                return Err(e);
            }
            if applied >= read_index {
                return Ok(applied);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "replicated: timed out waiting to apply up to index {read_index} (applied {applied})"
                ));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// One attempt at a read index confirmed by a quorum: asked of the leader's Raft locally, or
    /// of the leader over the network.
    fn read_index(&self, timeout: Duration) -> Result<u64, String> {
        let v = self.view();
        match (v.state, v.leader) {
            (Some(ServerState::Leader), Some(l)) if l == self.cfg.node => {
                let r = self.raft.clone();
                Ok(run_blocking(async move { r.get_read_log_id().await }, timeout)?
                    .map_err(|e| format!("replicated: read barrier failed: {e}"))?
                    .0
                    .map(|l| l.index)
                    .unwrap_or(0))
            }
            (_, Some(l)) if l != self.cfg.node => {
                let addr = v
                    .members
                    .iter()
                    .find(|m| m.0 == l)
                    .map(|m| m.1.clone())
                    .unwrap_or_default();
                let t = self.transport.clone();
                let out = run_blocking(
                    async move { t.call(l, &addr, crate::raft::network::READ_INDEX, &[], timeout).await },
                    timeout + Duration::from_millis(100),
                )?
                .map_err(|e| format!("replicated: asking leader {l} for a read index: {e}"))?;
                postcard::from_bytes::<u64>(&out).map_err(|e| format!("replicated: bad read index answer: {e}"))
            }
            _ => Err("replicated: no leader is known; cannot establish a read barrier".into()),
        }
    }

    /// Fails unless this node is the leader, naming the leader.
    fn require_leader(&self, what: &str) -> Result<(), String> {
        let v = self.view();
        if v.state == Some(ServerState::Leader) && v.leader == Some(self.cfg.node) {
            return Ok(());
        }
        let leader = self
            .leader_addr(&v)
            .unwrap_or_else(|| "unknown (election under way)".into());
        Err(format!(
            "replicated: {what} must run on the leader; the leader is node {leader}"
        ))
    }

    /// `replicated_add_node`: adds `id` at `addr` as a learner, waits until it has caught up with
    /// the log, then (when `voter`) promotes it to voter. Returns the membership log index.
    pub fn add_node(&self, id: NodeId, addr: &str, voter: bool, timeout: Duration) -> Result<u64, String> {
        self.require_leader("replicated_add_node")?;
        if id == 0 {
            return Err("replicated_add_node: node id must be > 0".into());
        }
        crate::config::parse_peers(&format!("{id}@{addr}")).map_err(|e| format!("replicated_add_node: {}", e.0))?;
        if self.view().members.iter().any(|m| m.0 == id && m.2) {
            return Err(format!("replicated_add_node: node {id} is already a voter"));
        }
        let (r, node) = (self.raft.clone(), BasicNode::new(addr.to_string()));
        let resp = run_blocking(async move { r.add_learner(id, node, true).await }, timeout)
            .map_err(|e| format!("replicated_add_node: node {id} did not catch up within {timeout:?}: {e}"))?
            .map_err(|e| format!("replicated_add_node: {e}"))?;
        if !voter {
            return Ok(resp.log_id.index);
        }
        let r = self.raft.clone();
        let change = openraft::ChangeMembers::AddVoterIds([id].into_iter().collect());
        let resp = run_blocking(async move { r.change_membership(change, false).await }, timeout)
            .map_err(|e| format!("replicated_add_node: promoting node {id}: {e}"))?
            .map_err(|e| format!("replicated_add_node: promoting node {id}: {e}"))?;
        Ok(resp.log_id.index)
    }

    /// `replicated_transfer_leader`: hands leadership to voter `target`. openraft 0.9 has no
    /// transfer, and followers refuse to vote while the leader's lease holds, so new write
    /// transactions are held back (they wait in begin_write, then find the new leader and get
    /// SQLITE_READONLY naming it) while `hand_over_once` lets the leases expire and the target
    /// campaign; an attempt spoiled by a write already under way is repeated until `timeout`.
    pub fn transfer_leader(&self, target: NodeId, timeout: Duration) -> Result<NodeId, String> {
        self.require_leader("replicated_transfer_leader")?;
        if target == self.cfg.node {
            return Ok(target);
        }
        let deadline = Instant::now() + timeout;
        let addr = match self.view().members.iter().find(|m| m.0 == target) {
            Some((_, addr, true)) => addr.clone(),
            Some(_) => return Err(format!("replicated_transfer_leader: node {target} is not a voter")),
            None => return Err(format!("replicated_transfer_leader: node {target} is not a member")),
        };
        self.handover.store(true, Ordering::Release);
        let mut result = Err(format!(
            "replicated_transfer_leader: node {target} did not take over in time"
        ));
        // A write that was already under way when new ones were held back may still renew the
        // leases during the first attempt; later attempts find the log quiet.
        while Instant::now() < deadline && self.view().leader == Some(self.cfg.node) {
            result = self.hand_over_once(target, &addr, deadline);
            // A target that cannot apply refuses every time: stop pausing the heartbeats for it.
            match &result {
                Err(e) if !e.contains(crate::raft::network::WILL_NOT_LEAD) => {}
                _ => break,
            }
        }
        self.handover.store(false, Ordering::Release);
        result
    }

    /// One attempt of replicated_transfer_leader: wait until `target` has the whole log, stop
    /// heartbeats until the followers' leases have expired, ask the target to campaign (its log is
    /// the freshest, so it wins), then resume heartbeats whatever happened.
    fn hand_over_once(&self, target: NodeId, addr: &str, deadline: Instant) -> Result<NodeId, String> {
        // The target has the whole log, and the log has been quiet for a moment: writes that
        // were under way when new ones were held back have committed.
        let mut quiet = (self.view().last_log, Instant::now());
        loop {
            let v = self.view();
            if v.last_log != quiet.0 {
                quiet = (v.last_log, Instant::now());
            }
            let caught_up = v.matched.get(&target).copied().unwrap_or(0) >= v.last_log;
            if caught_up && quiet.1.elapsed() >= HANDOVER_QUIET {
                break;
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "replicated_transfer_leader: node {target} did not catch up in time"
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let last_log = self.view().last_log;
        self.raft.runtime_config().heartbeat(false);
        let result = (|| {
            // Followers refuse votes for the lease (election_timeout_max) after the last heartbeat.
            std::thread::sleep(Duration::from_millis(self.cfg.election_max_ms() + 20));
            let now_last = self.view().last_log;
            if now_last != last_log {
                return Err(format!(
                    "replicated_transfer_leader: writes renewed the leases (log {last_log} -> {now_last})"
                ));
            }
            let t = self.transport.clone();
            let addr = addr.to_string();
            run_blocking(
                async move {
                    t.call(
                        target,
                        &addr,
                        crate::raft::network::CAMPAIGN,
                        &[],
                        Duration::from_secs(2),
                    )
                    .await
                },
                Duration::from_secs(3),
            )?
            .map_err(|e| format!("replicated_transfer_leader: asking node {target} to campaign: {e}"))?;
            let settle = Instant::now() + Duration::from_millis(self.cfg.election_ms * 4 + 200);
            loop {
                let v = self.view();
                if v.leader == Some(target) {
                    return Ok(target);
                }
                if Instant::now() >= deadline.min(settle) {
                    return Err(format!(
                        "replicated_transfer_leader: node {target} did not take over (leader is {:?})",
                        v.leader
                    ));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })();
        self.raft.runtime_config().heartbeat(true);
        result
    }

    /// `replicated_remove_node`: removes a voter or learner from the cluster.
    pub fn remove_node(&self, id: NodeId, timeout: Duration) -> Result<u64, String> {
        self.require_leader("replicated_remove_node")?;
        let v = self.view();
        let Some(&(_, _, is_voter)) = v.members.iter().find(|m| m.0 == id) else {
            return Err(format!("replicated_remove_node: node {id} is not a member"));
        };
        let ids: std::collections::BTreeSet<NodeId> = [id].into_iter().collect();
        let change = if is_voter {
            if v.members.iter().filter(|m| m.2).count() <= 1 {
                return Err("replicated_remove_node: cannot remove the last voter".into());
            }
            openraft::ChangeMembers::RemoveVoters(ids)
        } else {
            openraft::ChangeMembers::RemoveNodes(ids)
        };
        let r = self.raft.clone();
        let resp = run_blocking(async move { r.change_membership(change, false).await }, timeout)
            .map_err(|e| format!("replicated_remove_node: {e}"))?
            .map_err(|e| format!("replicated_remove_node: {e}"))?;
        Ok(resp.log_id.index)
    }

    /// A WAL generation ended (header rewritten, truncated, or deleted): every published frame is
    /// in the database file, which SQLite has synced.
    ///
    /// The marker is what is *published*, never what the state machine has applied: the applier
    /// rewrites the WAL header as the first step of writing an entry the state machine already
    /// counts as applied, so that entry is not in the database file yet. (Marking it there lost
    /// it on a follower killed before its record was written: reconciliation found no record,
    /// trusted the marker and replayed from the entry after it.) Every caller holds
    /// WAL_WRITE_LOCK or is the last connection, so `published` cannot move meanwhile.
    pub fn on_wal_reset(&self) -> Result<(), String> {
        let (applied, last_txn) = self.published();
        let m = Marker { applied, last_txn };
        crate::failpoint::hit("checkpoint.before_marker").map_err(|e| e.to_string())?;
        self.sm
            .store
            .set_marker(m)
            .map_err(|e| format!("replicated: cannot record the checkpoint marker: {e}"))?;
        crate::failpoint::hit("checkpoint.after_marker").map_err(|e| e.to_string())
    }

    /// A transaction of this node is about to be published (claimed by its committer, or
    /// applied): until `note_wal_end`, the wal-index may be ahead of the noted end.
    pub fn begin_publication(&self) {
        self.wal_end.lock().publishing = true;
    }

    /// This node published its wal-index at `(salt, mx)` (a commit of its own or an apply), or
    /// with None gave up a publication that did not happen; noted while WAL_WRITE_LOCK is held.
    pub fn note_wal_end(&self, end: Option<([u8; 8], u32)>) {
        let mut w = self.wal_end.lock();
        if end.is_some() {
            w.end = end;
        }
        w.publishing = false;
    }

    /// Checked before this node writes frames (under WAL_WRITE_LOCK: a transaction of its own on
    /// the leader, an apply) and before a checkpoint copies frames into the database file: the
    /// wal-index must still end where this node's last publication left it. Frames past that end
    /// were written by a process that opened the database without the replicated VFS. They are
    /// on no other node; a page image built on them would carry part of them to the followers,
    /// and a checkpoint would make them permanent. Err(reason): this check has poisoned the node
    /// and the caller writes nothing; a restart's reconciliation cuts the WAL back to the last
    /// replicated transaction. Always fine: an empty WAL (a checkpoint restarted it after
    /// backfilling everything), the first check after a start (reconciliation made the WAL agree
    /// with the log), and a check while this node is publishing (the end is moving; the next
    /// check decides). `adopt`: a writer's check, whose end becomes the noted one.
    ///
    /// `read` reads the wal-index's `(salt, mxFrame)`, or None when there is no header to check
    /// (SQLite's own read fails or recovers it). It runs under the same mutex as
    /// `begin_publication` and `note_wal_end`: a checkpoint holds no write lock, and a header read
    /// before a publication compared with the end noted after it would look foreign.
    pub fn check_wal_end(&self, read: impl FnOnce() -> Option<([u8; 8], u32)>, adopt: bool) -> Result<(), String> {
        let checked = {
            let mut w = self.wal_end.lock();
            match read() {
                Some((salt, mx)) => w.check(salt, mx, adopt),
                None => Ok(()),
            }
        };
        checked.inspect_err(|why| self.poison(why.clone()))
    }

    pub fn is_poisoned(&self) -> bool {
        self.sm.is_poisoned()
    }

    /// Whoever publishes a transaction (the applier, or a committer at its write-lock release)
    /// records it here, under WAL_WRITE_LOCK.
    pub fn set_published(&self, log_id: crate::raft::types::LogId, last_txn: u64) {
        *self.sm.published.lock() = (Some(log_id), last_txn);
    }

    pub fn published(&self) -> (Option<crate::raft::types::LogId>, u64) {
        *self.sm.published.lock()
    }

    /// The Raft log (the applier reads the earlier parts of a split transaction from it).
    pub fn log(&self) -> &LogStore {
        &self.log
    }

    pub fn membership_at(&self, index: u64) -> Option<openraft::StoredMembership<NodeId, BasicNode>> {
        self.sm.membership_at(index)
    }

    pub fn sync_records(&self) -> Result<(), String> {
        self.sm
            .store
            .sync()
            .map_err(|e| format!("syncing applied-state records: {e}"))
    }

    /// Where an applied transaction sits in the WAL (written before it is published).
    pub fn record_applied(&self, rec: &Record) {
        if let Err(e) = self.sm.store.append(rec) {
            // The entry is committed; the record only lets a restart keep the WAL. Replay covers it.
            tracing::warn!("replicated: cannot write the applied-state record: {e}");
        }
    }

    pub fn on_checkpoint_start(&self) -> Result<(), String> {
        crate::failpoint::hit("checkpoint.start").map_err(|e| e.to_string())?;
        self.sm
            .store
            .sync()
            .map_err(|e| format!("replicated: cannot sync applied-state records: {e}"))
    }

    pub fn last_error_of_node(&self) -> Option<String> {
        let poisoned = self.sm.poisoned.lock().clone();
        poisoned
            .or_else(|| self.log.stalled())
            .or_else(|| self.sm.applier.stalled())
    }

    pub fn committed_index(&self) -> u64 {
        self.log
            .read_committed_sync()
            .map(|c| c.index)
            .unwrap_or(0)
            .max(self.view().applied)
    }

    /// `replicated_status()` as JSON.
    pub fn status_json(&self) -> String {
        let v = self.view();
        let role = match v.state {
            _ if v.shutdown => "shutdown",
            Some(ServerState::Leader) => "leader",
            Some(ServerState::Candidate) => "candidate",
            Some(ServerState::Learner) => "learner",
            Some(ServerState::Shutdown) => "shutdown",
            Some(ServerState::Follower) | None => "follower",
        };
        let members: Vec<serde_json::Value> = v
            .members
            .iter()
            .map(|(id, addr, voter)| {
                let matched = if Some(*id) == v.leader && *id == self.cfg.node {
                    Some(v.last_log)
                } else {
                    v.matched.get(id).copied()
                };
                serde_json::json!({"id": id, "addr": addr, "voter": voter, "matched_index": matched})
            })
            .collect();
        let transfers = {
            let mut receiving = self.receiving.lock();
            crate::raft::network::drop_abandoned(&mut receiving, Instant::now());
            let sending = self.sending.lock();
            sending.values().chain(receiving.values()).cloned().collect::<Vec<_>>()
        };
        serde_json::json!({
            "node_id": self.cfg.node,
            "role": role,
            "term": v.term,
            "leader_id": v.leader,
            "leader_addr": self.leader_addr(&v),
            "commit_index": self.committed_index(),
            "applied_index": v.applied,
            "last_log_index": v.last_log,
            "members": members,
            "db": self.path.display().to_string(),
            "data": self.cfg.data.display().to_string(),
            "snapshot_index": v.snapshot,
            "purged_index": v.purged,
            "snapshot_transfers": transfers,
            "error": self.last_error_of_node(),
        })
        .to_string()
    }
}
