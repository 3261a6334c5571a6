//! The durable Raft log: segment files of checksummed records, an in-memory offset index, and a
//! append that acknowledges its entries only after `fsync`.
//!
//! ON-DISK FORMAT
//!
//! Everything lives in one directory:
//!
//! ```text
//! log-<first index, 20 digits>.seg   segment files, consecutive in index order
//! vote.slots                         the last saved vote, in one of two slots (below)
//! vote                               the vote as older versions saved it (read, then replaced)
//! purged                             the last purged log id
//! committed                          the last committed log id (may lag, see invariant 6)
//! ```
//!
//! A segment has no header; it is a sequence of records:
//!
//! ```text
//! 0: u32 LE   payload length N, 1 ..= MAX_RECORD_BYTES
//! 4: u32 LE   crc32 (crc32fast, IEEE) of the payload
//! 8: N bytes  payload: one openraft::Entry<TypeConfig>, postcard-encoded
//! ```
//!
//! The first record of `log-F.seg` holds index F and every record holds the index after its
//! predecessor's. An append starts a new segment when the active one has reached the size limit
//! (64 MiB), so a segment exceeds the limit by at most one record. `purged` and `committed` each
//! hold one record of the same shape (postcard of LogId, Option<LogId>).
//!
//! `vote.slots` is two 4 KiB slots, each zeros or one record of postcard `(seq, Vote)` padded with
//! zeros. A vote is saved with sequence number `seq` into slot `seq % 2`, overwriting the older
//! of the two in place, and `fdatasync`ed: the other slot keeps the previous vote, so a torn
//! write loses only the vote being saved, which was never acknowledged. On open the valid slot
//! with the higher `seq` is the vote. Why not a new file renamed into place, as before: that took
//! two fsyncs and a directory update per vote (measured here: p50 340 µs, p99 4 ms, against
//! 70 µs and 0.1–0.9 ms in place), and every election waits for the candidate's and then a
//! voter's save (under disk load, 80–120 ms each were seen, longer than the vote RPC's timeout).
//! The file is created once, atomically (written, synced, renamed, directory synced), holding
//! the first vote; a `vote` file of an older version is read when there is no `vote.slots` and
//! removed once `vote.slots` exists.
//!
//! RECOVERY
//!
//! `open` reads every segment in order and checks every record: length bound, checksum, decoding
//! and index. The first invalid record of the LAST segment, and everything after it, is what an
//! append left whose fsync never completed, so it was never acknowledged: it is cut off (set_len,
//! fsync) with a warning. Any other defect -- an invalid record in an earlier segment, an index
//! that is not its predecessor's plus one, a segment that does not start where the previous one
//! ended, a hole after the purge point, an unreadable `vote` or `purged` -- is corruption and
//! `open` fails with `InvalidData` instead of guessing. Segments whose entries are all purged
//! (left by a purge that a crash interrupted) are deleted again.
//!
//! INVARIANTS
//!
//! 1. No holes: the entries are consecutive, and append accepts only the index after the last
//!    entry, or after the purge point when the log is empty (an empty log that was never purged
//!    may start at any index).
//! 2. An entry is acknowledged (`LogFlushed` called with Ok) only after `sync_data` on every
//!    segment its append wrote, and on the directory if the append created a segment. Before a new
//!    segment is created the previous one and the directory are synced inline (once per segment),
//!    so only the last segment can ever have an unsynced tail or name: this is what makes the
//!    "invalid record means torn tail" rule above sound.
//! 3. After a failed write or fsync the store refuses further writes until it is reopened: after a
//!    failed fsync the page cache is no longer trustworthy, and a retried fsync may "succeed".
//!    One exception, a full disk: space is reserved with `fallocate` before anything is written, so
//!    ENOSPC/EDQUOT arrive from `fallocate`, `create` or `write`, never from an fsync, and such a
//!    write is undone (the record's bytes cut off, the index not advanced). `append` and
//!    `save_vote` then wait for space (backoff up to 1 s, `stalled()` says why) and go on where
//!    they stopped: a node whose disk is full stalls like a paused one and resumes by itself.
//! 4. Purge never goes past what the caller asks: only entries <= its log id are hidden, and only
//!    segment files whose every entry is <= it are deleted, after `purged` is durable. With a
//!    `purge_guard` set (the node sets one), purge first waits, however long, until a durable
//!    local snapshot covers the purge point: openraft 0.9 purges as soon as it has *queued* the
//!    install of a received snapshot, and a crash before that install is durable would otherwise
//!    leave a node with neither the entries nor the snapshot that replaces them. The install
//!    takes as long as the database is large (the core waits meanwhile, as openraft runs the purge
//!    inline), so there is no time limit; the wait ends with an error only when the guard says
//!    the install failed.
//! 5. Truncate deletes the later segments and fsyncs the directory before it shortens the segment
//!    holding the truncation point, so a crash midway leaves a prefix of the old log, never a hole.
//! 6. `purged` is replaced atomically (tmp file, fsync, rename, fsync dir), the vote by its slot
//!    (above); an acknowledged vote is never lost: only the older slot is overwritten. `committed`
//!    is overwritten in place without fsync, at most every COMMITTED_EVERY (10 ms), as openraft
//!    allows it to lag: a lag only makes a restart replay fewer entries before Raft re-commits
//!    them. A torn one reads as None, and one beyond the recovered log is clamped to the last
//!    log id.
//!
//! PREALLOCATION
//!
//! A segment's file is extended with zeros in PREALLOC_STEP steps ahead of the records, so an
//! append overwrites allocated, initialised blocks and its fdatasync flushes data only (SQLite gets
//! the same effect by reusing its WAL file). A record header of eight zero bytes followed only by
//! zeros up to the end of the file is therefore the clean end of a segment, not a torn tail.
//!
//! The zeros are written by a thread of their own (`replicated-zero`) once fewer than ZERO_AHEAD
//! are left: written inline, 4 MiB of zeros and their flush by the next fsync made one commit in
//! about a thousand take milliseconds (about 13 µs per commit on average, measured here). It
//! pushes each ZERO_CHUNK to disk as it goes (so an append's fsync meanwhile finds at most one
//! chunk dirty), fsyncs, and only then raises the segment's `alloc`. Appends write records only
//! below `alloc`; when they outrun the thread they take the `zeroing` lock and zero inline, so
//! zeros and records never overlap. Truncate moves `alloc` back under the same lock, and a job
//! whose start is no longer `alloc` is dropped.
//!
//! EAGER REPLICATION (a leader's appends)
//!
//! openraft 0.9 awaits the leader's own fsync before it replicates an entry, so a commit paid two
//! fsyncs in a row: the leader's, then a follower's. With an `EagerSend` set (the node sets one),
//! an append made under this node's own committed vote -- a leader's: only the leader of a term
//! appends under a committed vote naming itself -- hands the batch, written but not yet synced, to
//! the followers as a genuine AppendEntries request (that vote, the log id before the batch, the
//! committed id), yields once so that the runtime puts it on the wire, and only then fsyncs. The
//! followers append it as they would openraft's own request, their fsync overlapping the
//! leader's. When openraft then sends its own request for exactly those entries, the follower's
//! Success to the eager one is its answer (raft/network.rs, `eager_answer`: the same request,
//! answered earlier), so the commit does not wait for another round trip after the leader's
//! fsync (measured, 3 nodes, single-row ack=commit: p50 842 -> 678 µs); without a Success
//! openraft's request goes out as usual. Safety is unchanged: openraft counts this node only
//! after its fsync and a follower only after it answered, after its own fsync, a request with
//! those entries under this vote, and Raft allows a leader to write its log in parallel with
//! replicating it -- provided a leader that restarts never leads the same term again: it may have
//! lost the unsynced tail its followers hold (power loss), and would then write other entries
//! under their log ids. openraft 0.9 restarts a node whose saved vote is committed and its own
//! as that term's leader, so at start a node with other members saves that vote again
//! uncommitted first (`give_up_own_term`). An eager request that
//! does not fit a follower's log (it lags, or a newer leader exists) is refused there like any
//! stale AppendEntries. Only batches of at most EAGER_BYTES go this way: for larger ones, sending
//! twice cost more than the overlap saved (measured: 1000-row transactions 15% slower).
//!
//! BOUNDS
//!
//! A record payload is at most MAX_RECORD_BYTES; a larger length field is corruption and append
//! refuses a larger entry. The index costs about 40 bytes of memory per entry (no entry bytes).
//! `append` syncs a batch of at most INLINE_FLUSH_BYTES inline before it calls the callback:
//! openraft 0.9 awaits that callback before it does anything else, so a flusher thread would add
//! two thread hand-offs per commit (measured with eager sends too: no faster than syncing inline
//! after the yield). A larger batch (the parts of a large transaction, a follower catching up) is
//! synced on a blocking thread while the append awaits it: its fsync takes milliseconds, and
//! under a busy disk hundreds of them, during which the runtime thread would serve nothing else.
//! Seen before the change: a follower fsyncing 2 MiB parts sent no QUIC flow-control credit, so
//! the leader's next 2 MiB AppendEntries stalled at the 1.25 MB stream window until its 50 ms
//! timeout, again and again, and a 256 MiB transaction went 3 s without a quorum.
//! `limited_get_log_entries` returns at most READ_BUDGET bytes of entries
//! (but always at least one). The last RECENT_ENTRIES entries appended (each at most
//! RECENT_ENTRY_BYTES encoded) are also kept decoded, so that applying and replicating an entry
//! just appended reads nothing back; truncate and purge drop what they remove from it.

use crate::raft::types::{Entry, LogId, NodeId, StorageError, TypeConfig, Vote};
use openraft::raft::AppendEntriesRequest;
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, OptionalSend, RaftLogReader};
use parking_lot::RwLock;
use serde::{de::DeserializeOwned, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::fmt::{Debug, Display};
use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Write};
use std::ops::{Bound, RangeBounds};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;

/// Largest record payload; a larger length field is corruption.
pub const MAX_RECORD_BYTES: u32 = 80 << 20;
/// An append starts a new segment once the active one has reached this size.
pub const SEGMENT_LIMIT: u64 = 64 << 20;
/// Bytes of entries `limited_get_log_entries` returns at most (at least one entry regardless).
const READ_BUDGET: usize = 32 << 20;
const HEADER: usize = 8;
/// Zeros written ahead of the write position, so that the per-commit fdatasync does not also have
/// to commit a new file size (measured here: 2–5x slower per fsync when the file grows).
const PREALLOC_STEP: u64 = 4 << 20;
/// The zeroing thread is asked for the next step when fewer zeros than this are left ahead.
const ZERO_AHEAD: u64 = 2 << 20;
/// Zeros are written (and, by the zeroing thread, pushed to disk) this much at a time.
const ZERO_CHUNK: usize = 256 << 10;
/// The entry cache holds at most this many entries, each of at most RECENT_ENTRY_BYTES encoded
/// (a larger one empties it): 8 MiB of memory at most. A transaction part (PART_BYTES of pages)
/// fits, so a large transaction's parts are read back from the file only once evicted.
const RECENT_ENTRIES: usize = 8;
const RECENT_ENTRY_BYTES: usize = 1 << 20;
/// Largest batch (encoded) an append hands to the followers before its own fsync.
pub const EAGER_BYTES: usize = 64 << 10;
/// Largest batch (encoded) whose fsync runs on the runtime thread; a larger one's runs on a
/// blocking thread (see BOUNDS).
const INLINE_FLUSH_BYTES: usize = 256 << 10;
/// `committed` is written at most this often (a pwrite on the commit path otherwise).
const COMMITTED_EVERY: std::time::Duration = std::time::Duration::from_millis(10);
/// The vote file of earlier versions (read only).
const VOTE: &str = "vote";
const VOTE_SLOTS: &str = "vote.slots";
/// Size of each of the two slots of `vote.slots` (one block each: writing one never rewrites the
/// block of the other).
const VOTE_SLOT: usize = 4096;
const PURGED: &str = "purged";
const COMMITTED: &str = "committed";

/// The Raft log store. Cloning is cheap; every clone is the same store.
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    segment_limit: u64,
    state: RwLock<State>,
    /// Set after any failed write or fsync (invariant 3).
    failed: Arc<AtomicBool>,
    /// Why appends are waiting (a full disk), for replicated_status().
    stalled: parking_lot::Mutex<Option<String>>,
    /// The last log index covered by a durable local snapshot (invariant 4).
    purge_guard: parking_lot::Mutex<Option<PurgeGuard>>,
    /// Held by whoever writes zeros ahead or moves a segment's `alloc` back (PREALLOCATION).
    zeroing: Arc<parking_lot::Mutex<()>>,
    /// The zeroing thread's queue (one job at most), started with the first job.
    zeroer: parking_lot::Mutex<Option<crossbeam_channel::Sender<ZeroJob>>>,
    /// This node's id and how to reach its followers (EAGER REPLICATION).
    eager: parking_lot::Mutex<Option<(NodeId, Arc<EagerSend>)>>,
}

/// Sends a leader's AppendEntries request for the batch starting at the given index to the
/// followers that can use it, without waiting for any answer; the request is built (by the
/// closure passed, None if the batch is too large) only if there is such a follower. Returns
/// whether it went to at least one (EAGER REPLICATION). Must not block.
pub type EagerSend =
    Box<dyn Fn(u64, &mut dyn FnMut() -> Option<AppendEntriesRequest<TypeConfig>>) -> bool + Send + Sync>;

/// Zeros to write ahead of a segment's records: `[from, to)`, if `alloc` is still `from`.
struct ZeroJob {
    file: Arc<File>,
    alloc: Arc<AtomicU64>,
    from: u64,
    to: u64,
    zeroing: Arc<parking_lot::Mutex<()>>,
    failed: Arc<AtomicBool>,
}

/// Tells the index up to which a durable local snapshot holds the state, if any; an error when
/// the install a purge would wait for has failed.
pub type PurgeGuard = Box<dyn Fn() -> Result<Option<u64>, String> + Send + Sync>;

/// How often a purge that waits for a snapshot install says so in the log.
const PURGE_WAIT_REPORT: std::time::Duration = std::time::Duration::from_secs(60);

struct State {
    /// Keyed by the index in the file name (that of the segment's first record).
    segments: BTreeMap<u64, Segment>,
    /// One location per present (unpurged) entry, consecutive indexes.
    index: VecDeque<Loc>,
    vote: Option<Vote>,
    /// Sequence number of the vote in `vote.slots`; None while that file does not exist.
    vote_seq: Option<u64>,
    purged: Option<LogId>,
    committed: Option<LogId>,
    /// Opened by the first `save_committed`.
    committed_file: Option<File>,
    /// When `committed` was last written to its file (invariant 6: it may lag by COMMITTED_EVERY).
    committed_written: Option<std::time::Instant>,
    /// The newest entries as appended (consecutive, the last is the last entry), so that applying
    /// and replicating what was just appended costs neither a read nor a decode (RECENT_*).
    recent: VecDeque<Entry>,
}

struct Segment {
    file: Arc<File>,
    /// Logical end: where the next record goes.
    len: u64,
    /// Physical length: bytes `len..alloc` are zeros written ahead (see PREALLOCATION). Raised
    /// by the appender or the zeroing thread, lowered by truncate, always under `zeroing`.
    alloc: Arc<AtomicU64>,
}

/// Where an entry is: segment (by first index), record offset, payload length, and its log id.
#[derive(Clone, Copy)]
struct Loc {
    seg: u64,
    off: u64,
    len: u32,
    log_id: LogId,
}

struct FlushJob {
    files: Vec<Arc<File>>,
    dir: Option<PathBuf>,
    callback: LogFlushed<TypeConfig>,
}

fn corrupt(what: impl Display, why: impl Display) -> io::Error {
    io::Error::new(ErrorKind::InvalidData, format!("raft log: {what}: {why}"))
}

/// A request the store turns down without touching the disk state (no failure, invariant 3).
#[derive(Debug)]
struct Refused(String);

impl Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "raft log: {}", self.0)
    }
}

impl std::error::Error for Refused {}

fn refuse(why: String) -> io::Error {
    io::Error::new(ErrorKind::InvalidInput, Refused(why))
}

/// A write that found the disk full and was undone: retryable (invariant 3's exception).
#[derive(Debug)]
struct NoSpace(String);

impl Display for NoSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "raft log: disk full: {}", self.0)
    }
}

impl std::error::Error for NoSpace {}

/// The error means the disk (or the quota) is full.
pub fn disk_full(e: &io::Error) -> bool {
    e.kind() == ErrorKind::StorageFull || e.raw_os_error() == Some(libc::EDQUOT)
}

/// Marks a full-disk error of a write (never of an fsync) as retryable.
fn space(e: io::Error) -> io::Error {
    if disk_full(&e) {
        io::Error::new(ErrorKind::StorageFull, NoSpace(e.to_string()))
    } else {
        e
    }
}

fn is_no_space(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|e| e.is::<NoSpace>())
}

/// Reserves the blocks of `[from, to)` so that later writes and fsyncs there cannot hit ENOSPC
/// (with delayed allocation, a plain write would only find out at writeback, inside an fsync).
fn reserve(file: &File, from: u64, to: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let (off, len) = (i64::try_from(from), i64::try_from(to.saturating_sub(from)));
    let (Ok(off), Ok(len)) = (off, len) else {
        return Err(io::Error::other("raft log: segment offset out of range"));
    };
    // SAFETY: plain syscall on a file descriptor we own.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, off, len) };
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        // Filesystems without fallocate: the zeros written next allocate the blocks.
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => Ok(()),
        _ => Err(e),
    }
}

fn storage_err(verb: ErrorVerb, e: io::Error) -> StorageError {
    StorageError::from_io_error(ErrorSubject::<NodeId>::Logs, verb, e)
}

fn segment_name(first: u64) -> String {
    format!("log-{first:020}.seg")
}

/// Frames `value` as one record: header, then the postcard payload.
fn encode_record<T: Serialize>(value: &T) -> io::Result<Vec<u8>> {
    let mut buf = postcard::to_extend(value, vec![0u8; HEADER]).map_err(|e| refuse(format!("encode: {e}")))?;
    let len = u32::try_from(buf.len() - HEADER).unwrap_or(u32::MAX);
    if len > MAX_RECORD_BYTES {
        return Err(refuse(format!("record of {len} bytes > MAX_RECORD_BYTES")));
    }
    let crc = crc32fast::hash(&buf[HEADER..]);
    buf[..4].copy_from_slice(&len.to_le_bytes());
    buf[4..HEADER].copy_from_slice(&crc.to_le_bytes());
    Ok(buf)
}

/// A record header: (payload length, payload crc).
fn header(h: [u8; HEADER]) -> (u32, u32) {
    let word = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    (word(0), word(4))
}

/// Checks the record at the start of `bytes` and returns its payload.
fn decode_record(bytes: &[u8]) -> Result<&[u8], String> {
    let head = bytes
        .get(..HEADER)
        .and_then(|h| h.try_into().ok())
        .ok_or("partial record header")?;
    let (len, crc) = header(head);
    if len == 0 || len > MAX_RECORD_BYTES {
        return Err(format!("bad record length {len}"));
    }
    let payload = bytes.get(HEADER..HEADER + len as usize).ok_or("record past the end")?;
    if crc32fast::hash(payload) != crc {
        return Err("checksum mismatch".into());
    }
    Ok(payload)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Replaces `dir/name` atomically and durably with one record holding `value`.
fn write_atomic<T: Serialize>(dir: &Path, name: &str, value: &T) -> io::Result<()> {
    write_bytes_atomic(dir, name, &encode_record(value)?)
}

/// Replaces `dir/name` atomically and durably with `bytes`.
fn write_bytes_atomic(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, dir.join(name))?;
    sync_dir(dir)
}

/// Slot `seq % 2` of `vote.slots` holding `(seq, vote)`, padded to VOTE_SLOT.
fn encode_vote_slot(seq: u64, vote: &Vote) -> io::Result<Vec<u8>> {
    let mut b = encode_record(&(seq, *vote))?;
    if b.len() > VOTE_SLOT {
        return Err(refuse(format!("a vote record of {} bytes", b.len())));
    }
    b.resize(VOTE_SLOT, 0);
    Ok(b)
}

/// Saves `vote` into the older slot of `vote.slots` (or creates the file holding it), durably.
fn store_vote(st: &mut State, inner: &Inner, vote: &Vote) -> io::Result<()> {
    let seq = st.vote_seq.map_or(1, |prev| prev + 1);
    let slot = encode_vote_slot(seq, vote)?;
    let at = (seq % 2) as usize * VOTE_SLOT;
    match st.vote_seq {
        Some(_) => {
            let f = OpenOptions::new().write(true).open(inner.dir.join(VOTE_SLOTS))?;
            f.write_all_at(&slot, at as u64).map_err(space)?;
            f.sync_data()?;
        }
        None => {
            let mut file = vec![0u8; 2 * VOTE_SLOT];
            file[at..at + VOTE_SLOT].copy_from_slice(&slot);
            write_bytes_atomic(&inner.dir, VOTE_SLOTS, &file).map_err(space)?;
            // The slots file is durable: the old-format vote is not read any more.
            match fs::remove_file(inner.dir.join(VOTE)) {
                Err(e) if e.kind() != ErrorKind::NotFound => {
                    tracing::warn!("replicated: cannot remove the old vote file: {e}")
                }
                _ => {}
            }
        }
    }
    st.vote_seq = Some(seq);
    st.vote = Some(*vote);
    Ok(())
}

/// The vote in `vote.slots` and its sequence number: the valid slot with the higher one. None
/// when the file does not exist. A slot of zeros was never written; a damaged slot is a write
/// that never completed, unless both are damaged (corruption: nothing is guessed).
fn read_vote_slots(path: &Path) -> io::Result<Option<(u64, Option<Vote>)>> {
    let bytes = match fs::read(path) {
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        r => r?,
    };
    let (mut best, mut damaged) = (None::<(u64, Vote)>, 0);
    for k in 0..2 {
        let slot = bytes.get(k * VOTE_SLOT..).unwrap_or(&[]);
        let slot = &slot[..slot.len().min(VOTE_SLOT)];
        if slot.iter().all(|b| *b == 0) {
            continue;
        }
        match decode_record(slot)
            .ok()
            .and_then(|p| postcard::from_bytes::<(u64, Vote)>(p).ok())
        {
            Some((seq, v)) if best.is_none_or(|(s, _)| seq > s) => best = Some((seq, v)),
            Some(_) => {}
            None => damaged += 1,
        }
    }
    match best {
        Some((seq, v)) => Ok(Some((seq, Some(v)))),
        None if damaged > 0 => Err(corrupt(path.display(), "no valid vote slot")),
        // Both slots zero: only a file created by hand looks like this.
        None => Ok(Some((0, None))),
    }
}

fn read_meta<T: DeserializeOwned>(path: &Path) -> io::Result<Option<T>> {
    let bytes = match fs::read(path) {
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        r => r?,
    };
    let payload = decode_record(&bytes).map_err(|why| corrupt(path.display(), why))?;
    postcard::from_bytes(payload)
        .map(Some)
        .map_err(|e| corrupt(path.display(), e))
}

/// Segment files in index order.
fn list_segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for de in fs::read_dir(dir)? {
        let (path, name) = de.map(|de| (de.path(), de.file_name()))?;
        let name = name.to_string_lossy();
        let Some(num) = name.strip_prefix("log-").and_then(|n| n.strip_suffix(".seg")) else {
            continue;
        };
        match num.parse::<u64>() {
            Ok(first) if num.len() == 20 && num.bytes().all(|b| b.is_ascii_digit()) => out.push((first, path)),
            _ => return Err(corrupt(path.display(), "not a segment file name")),
        }
    }
    out.sort_unstable_by_key(|(first, _)| *first);
    Ok(out)
}

/// True when `file[from..end]` is all zero bytes.
fn zeros_to_end(file: &impl FileExt, from: u64, end: u64) -> io::Result<bool> {
    let mut buf = vec![0u8; 64 << 10];
    let mut off = from;
    while off < end {
        let n = ((end - off) as usize).min(buf.len());
        file.read_exact_at(&mut buf[..n], off)?;
        if buf[..n].iter().any(|b| *b != 0) {
            return Ok(false);
        }
        off += n as u64;
    }
    Ok(true)
}

/// Scans a segment of `file_len` bytes whose first record holds index `first`: its valid records,
/// where they end, and the first invalid record, if any.
fn scan_segment(file: &impl FileExt, file_len: u64, first: u64) -> io::Result<(Vec<Loc>, u64, Option<String>)> {
    let (mut off, mut locs, mut buf) = (0u64, Vec::new(), Vec::new());
    while off < file_len {
        let Some(avail) = (file_len - off).checked_sub(HEADER as u64) else {
            return Ok((locs, off, Some("partial record header".into())));
        };
        let mut head = [0u8; HEADER];
        file.read_exact_at(&mut head, off)?;
        let (len, _) = header(head);
        if head == [0u8; HEADER] && zeros_to_end(file, off, file_len)? {
            break; // preallocated space: the clean end of this segment
        }
        if len == 0 || len > MAX_RECORD_BYTES || u64::from(len) > avail {
            return Ok((locs, off, Some(format!("bad record length {len}"))));
        }
        buf.resize(HEADER + len as usize, 0);
        file.read_exact_at(&mut buf, off)?;
        let entry: Entry = match decode_record(&buf).and_then(|p| postcard::from_bytes(p).map_err(|e| e.to_string())) {
            Ok(entry) => entry,
            Err(why) => return Ok((locs, off, Some(why))),
        };
        let expected = first.checked_add(locs.len() as u64);
        if Some(entry.log_id.index) != expected {
            // A valid checksum with a wrong index is no torn write: fail even in the last segment.
            let why = format!("holds index {}, expected {expected:?}", entry.log_id.index);
            return Err(corrupt(format!("record at offset {off}"), why));
        }
        locs.push(Loc {
            seg: first,
            off,
            len,
            log_id: entry.log_id,
        });
        off += (HEADER as u64) + u64::from(len);
    }
    Ok((locs, off, None))
}

/// What recovery makes of one segment: the log ids of its valid records, the offset where they
/// end, and the first invalid record (None: a clean end). An `Err` is corruption (or an I/O error)
/// that fails `open`. Reads only through `file`, so tools and the fuzz target can check a buffer.
pub fn check_segment(file: &impl FileExt, file_len: u64, first: u64) -> io::Result<(Vec<LogId>, u64, Option<String>)> {
    let (locs, end, defect) = scan_segment(file, file_len, first)?;
    Ok((locs.iter().map(|l| l.log_id).collect(), end, defect))
}

/// Writes zeros over `[from, to)`. With `push`, each chunk is written back to the disk at once,
/// so that an append's fsync meanwhile finds at most one chunk of them still dirty.
fn write_zeros(file: &File, from: u64, to: u64, push: bool) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let zero = vec![0u8; ZERO_CHUNK];
    let mut off = from;
    while off < to {
        let n = ((to - off) as usize).min(zero.len());
        file.write_all_at(&zero[..n], off)?;
        if push {
            let flags =
                libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER;
            // SAFETY: plain syscall on a file descriptor we own. A failure only leaves the chunk
            // to the fsync below (or to the kernel's writeback).
            unsafe { libc::sync_file_range(file.as_raw_fd(), off as i64, n as i64, flags) };
        }
        off += n as u64;
    }
    Ok(())
}

impl Inner {
    /// Hands `job` to the zeroing thread (starting it if needed); drops it when one is queued.
    fn zero_ahead(&self, job: ZeroJob) {
        let mut slot = self.zeroer.lock();
        if slot.is_none() {
            let (tx, rx) = crossbeam_channel::bounded::<ZeroJob>(1);
            let started = std::thread::Builder::new()
                .name("replicated-zero".into())
                .spawn(move || rx.iter().for_each(run_zero_job));
            if let Err(e) = started {
                // The appender zeroes inline instead, as it does when this thread is behind.
                tracing::warn!("raft log: cannot start the zeroing thread: {e}");
                return;
            }
            *slot = Some(tx);
        }
        if let Some(tx) = slot.as_ref() {
            let _ = tx.try_send(job); // full: a job is queued, the next append asks again
        }
    }
}

/// Zeros ahead and makes them durable before `alloc` moves (the appender writes only below it).
/// Failures leave `alloc` where it was, so the appender zeroes inline and meets the error there;
/// a failed fsync also marks the store failed (invariant 3).
fn run_zero_job(job: ZeroJob) {
    let _zeroing = job.zeroing.lock();
    if job.alloc.load(SeqCst) != job.from || job.failed.load(SeqCst) {
        return; // done already, or truncated meanwhile
    }
    let written = reserve(&job.file, job.from, job.to).and_then(|()| write_zeros(&job.file, job.from, job.to, true));
    if let Err(e) = written {
        tracing::warn!("raft log: writing zeros ahead: {e}");
        return;
    }
    if let Err(e) = job.file.sync_data() {
        tracing::error!("raft log: fsync of zeros ahead failed: {e}");
        job.failed.store(true, SeqCst);
        return;
    }
    job.alloc.store(job.to, SeqCst);
}

/// Makes `job`'s writes durable, then reports to openraft (exactly once, Ok or Err).
fn flush(job: FlushJob, failed: &AtomicBool) {
    let result = if failed.load(SeqCst) {
        Err(io::Error::other("raft log: an earlier write or fsync failed"))
    } else {
        let r = crate::failpoint::hit("log.before_fsync")
            .and_then(|()| job.files.iter().try_for_each(|f| f.sync_data()))
            .and_then(|()| job.dir.as_deref().map_or(Ok(()), sync_dir));
        failed.fetch_or(r.is_err(), SeqCst);
        r
    };
    let result = result.map_err(|e| io::Error::new(e.kind(), format!("raft log fsync: {e}")));
    if result.is_ok() {
        if let Err(e) = crate::failpoint::hit("log.after_fsync") {
            job.callback.log_io_completed(Err(e));
            return;
        }
    }
    job.callback.log_io_completed(result);
}

impl State {
    fn last_log_id(&self) -> Option<LogId> {
        self.index.back().map(|l| l.log_id).or(self.purged)
    }

    /// Reads the present entries in `[start, end)`, stopping after `budget` bytes (at least one).
    fn read(&self, start: u64, end: u64, budget: usize) -> io::Result<Vec<Entry>> {
        let Some(first) = self.index.front().map(|l| l.log_id.index) else {
            return Ok(Vec::new());
        };
        if let (Some(lo), Some(hi)) = (self.recent.front(), self.recent.back()) {
            let (lo, hi) = (lo.log_id.index, hi.log_id.index);
            if start >= lo.max(first) && start < end && end <= hi + 1 {
                let skip = usize::try_from(start - lo).unwrap_or(usize::MAX);
                let take = usize::try_from(end - start).unwrap_or(usize::MAX);
                return Ok(self.recent.iter().skip(skip).take(take).cloned().collect());
            }
        }
        let (mut out, mut bytes, mut buf) = (Vec::new(), 0usize, Vec::new());
        for loc in self
            .index
            .iter()
            .skip(usize::try_from(start.saturating_sub(first)).unwrap_or(usize::MAX))
        {
            bytes = bytes.saturating_add(loc.len as usize);
            if loc.log_id.index >= end || (!out.is_empty() && bytes > budget) {
                break;
            }
            let what = || format!("{} entry {}", segment_name(loc.seg), loc.log_id.index);
            let seg = self
                .segments
                .get(&loc.seg)
                .ok_or_else(|| corrupt(what(), "segment is gone"))?;
            buf.resize(HEADER + loc.len as usize, 0);
            seg.file.read_exact_at(&mut buf, loc.off)?;
            let payload = decode_record(&buf).map_err(|why| corrupt(what(), why))?;
            let entry: Entry = postcard::from_bytes(payload).map_err(|e| corrupt(what(), e))?;
            if entry.log_id != loc.log_id || payload.len() != loc.len as usize {
                return Err(corrupt(what(), format!("holds {}", entry.log_id)));
            }
            out.push(entry);
        }
        Ok(out)
    }

    /// Hides the entries <= `upto` and deletes the segment files holding only such entries,
    /// oldest first; returns whether any file was deleted.
    fn drop_upto(&mut self, dir: &Path, upto: u64) -> io::Result<bool> {
        while self.index.front().is_some_and(|l| l.log_id.index <= upto) {
            self.index.pop_front();
        }
        self.recent.retain(|e| e.log_id.index > upto);
        // Every segment before the one holding the first kept entry holds only purged entries.
        let keep = self.index.front().map(|l| l.seg);
        let doomed: Vec<u64> = self
            .segments
            .keys()
            .copied()
            .filter(|k| keep.is_none_or(|s| *k < s))
            .collect();
        for k in &doomed {
            fs::remove_file(dir.join(segment_name(*k)))?;
            self.segments.remove(k);
        }
        Ok(!doomed.is_empty())
    }
}

fn bounds(range: &impl RangeBounds<u64>) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e.saturating_add(1),
        Bound::Excluded(&e) => e,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl LogStore {
    /// Opens (creating if needed) the log in `dir`, recovering as described in the module header.
    pub fn open(dir: &Path) -> io::Result<LogStore> {
        Self::open_with_limit(dir, SEGMENT_LIMIT)
    }

    pub(crate) fn open_with_limit(dir: &Path, segment_limit: u64) -> io::Result<LogStore> {
        fs::create_dir_all(dir)?;
        let committed = read_meta::<Option<LogId>>(&dir.join(COMMITTED)).unwrap_or_else(|e| {
            tracing::warn!("{e}; ignoring the committed log id (it may lag)");
            None
        });
        let (vote, vote_seq) = match read_vote_slots(&dir.join(VOTE_SLOTS))? {
            Some((seq, vote)) => (vote, Some(seq)),
            None => (read_meta(&dir.join(VOTE))?, None),
        };
        let mut st = State {
            segments: BTreeMap::new(),
            index: VecDeque::new(),
            vote,
            vote_seq,
            purged: read_meta(&dir.join(PURGED))?,
            committed: committed.flatten(),
            committed_file: None,
            committed_written: None,
            recent: VecDeque::new(),
        };
        let names = list_segments(dir)?;
        let mut removed = false;
        for (i, (first, path)) in names.iter().enumerate() {
            let is_last = i + 1 == names.len();
            let file = OpenOptions::new().read(true).write(true).open(path)?;
            let (locs, valid_len, defect) = file
                .metadata()
                .and_then(|m| scan_segment(&file, m.len(), *first))
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
            if let Some(why) = defect {
                if !is_last {
                    return Err(corrupt(
                        path.display(),
                        format!("{why} at offset {valid_len} (not the last segment)"),
                    ));
                }
                let cut = file.metadata()?.len() - valid_len;
                let path = path.display();
                tracing::warn!("raft log: {path}: {why} at offset {valid_len}: cut {cut} bytes");
                file.set_len(valid_len)?;
                file.sync_data()?;
            }
            if locs.is_empty() {
                if !is_last {
                    return Err(corrupt(path.display(), "empty segment before the last one"));
                }
                fs::remove_file(path)?;
                removed = true;
                continue;
            }
            if let Some(prev) = st.index.back().map(|l| l.log_id.index) {
                if prev.checked_add(1) != Some(*first) {
                    return Err(corrupt(path.display(), format!("hole after index {prev}")));
                }
            }
            st.index.extend(locs);
            let alloc = file.metadata()?.len();
            st.segments.insert(
                *first,
                Segment {
                    file: Arc::new(file),
                    len: valid_len,
                    alloc: Arc::new(AtomicU64::new(alloc)),
                },
            );
        }
        if let Some(p) = st.purged {
            removed |= st.drop_upto(dir, p.index)?; // finishes a purge a crash interrupted
            if let Some(f) = st
                .index
                .front()
                .filter(|f| Some(f.log_id.index) != p.index.checked_add(1))
            {
                return Err(corrupt(
                    format!("purged {p}"),
                    format!("hole before index {}", f.log_id.index),
                ));
            }
        }
        if removed {
            sync_dir(dir)?;
        }
        let last = st.last_log_id();
        if st.committed.map(|c| c.index) > last.map(|l| l.index) {
            tracing::warn!(
                "raft log: committed {:?} is beyond the log; using {last:?}",
                st.committed
            );
            st.committed = last;
        }

        let failed = Arc::new(AtomicBool::new(false));
        let (dir, state) = (dir.to_path_buf(), RwLock::new(st));
        Ok(LogStore {
            inner: Arc::new(Inner {
                dir,
                segment_limit,
                state,
                failed,
                stalled: parking_lot::Mutex::new(None),
                purge_guard: parking_lot::Mutex::new(None),
                zeroing: Arc::new(parking_lot::Mutex::new(())),
                zeroer: parking_lot::Mutex::new(None),
                eager: parking_lot::Mutex::new(None),
            }),
        })
    }

    /// Lets appends under `node`'s own committed vote reach the followers before their fsync.
    pub fn set_eager(&self, node: NodeId, send: EagerSend) {
        *self.inner.eager.lock() = Some((node, Arc::new(send)));
    }

    /// Hands `batch`, just written after `prev`, to the followers if this is a leader's append
    /// and a sender is set (EAGER REPLICATION); true when it went to at least one.
    fn send_eagerly(&self, prev: Option<LogId>, batch: &[Entry]) -> bool {
        let Some((node, send)) = self.inner.eager.lock().clone() else {
            return false;
        };
        let (vote, committed) = {
            let st = self.inner.state.read();
            (st.vote, st.committed)
        };
        let Some(vote) = vote.filter(|v| v.committed && v.leader_id.node_id == node) else {
            return false; // not this node's own term: a follower's append
        };
        let Some(first) = batch.first().map(|e| e.log_id.index) else {
            return false;
        };
        if prev.map_or(0, |l| l.index.saturating_add(1)) != first {
            return false; // an empty log starting past 0: no predecessor to name
        }
        send(first, &mut || {
            let size = postcard::experimental::serialized_size(batch).ok()?;
            (size <= EAGER_BYTES).then(|| AppendEntriesRequest {
                vote,
                prev_log_id: prev,
                entries: batch.to_vec(),
                leader_commit: committed,
            })
        })
    }

    /// Makes purge wait for a durable snapshot covering the purge point (invariant 4).
    pub fn set_purge_guard(&self, guard: PurgeGuard) {
        *self.inner.purge_guard.lock() = Some(guard);
    }

    /// Waits until the purge guard (if any) reports a durable snapshot at or after `index`.
    async fn wait_for_snapshot_covering(&self, index: u64) -> io::Result<()> {
        let start = std::time::Instant::now();
        let mut report = start + PURGE_WAIT_REPORT;
        loop {
            let covered = match &*self.inner.purge_guard.lock() {
                None => return Ok(()),
                Some(guard) => guard(),
            };
            let covered = covered.map_err(|e| {
                io::Error::other(format!(
                    "raft log: not purging up to {index}: no snapshot will cover it: {e}"
                ))
            })?;
            if covered.is_some_and(|c| c >= index) {
                return Ok(());
            }
            if std::time::Instant::now() >= report {
                report += PURGE_WAIT_REPORT;
                tracing::warn!(
                    "replicated: purging the log up to {index} waits for the snapshot install to be durable \
                     ({:?} so far; latest durable: {covered:?})",
                    start.elapsed()
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// Why writes are waiting (a full disk), if they are.
    pub fn stalled(&self) -> Option<String> {
        self.inner.stalled.lock().clone()
    }

    /// Runs `attempt` until it does not fail for lack of space, waiting in between (invariant 3).
    async fn until_space<T>(&self, what: &str, mut attempt: impl FnMut() -> io::Result<T>) -> io::Result<T> {
        let mut wait = std::time::Duration::from_millis(10);
        let mut waited = false;
        loop {
            match attempt() {
                Err(e) if is_no_space(&e) => {
                    if !waited {
                        tracing::error!("replicated: {what} is waiting for disk space: {e}");
                        *self.inner.stalled.lock() = Some(format!("{what} is waiting for disk space: {e}"));
                        waited = true;
                    }
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(std::time::Duration::from_secs(1));
                }
                r => {
                    if waited {
                        tracing::warn!("replicated: {what} goes on: disk space is available again");
                        *self.inner.stalled.lock() = None;
                    }
                    return r;
                }
            }
        }
    }

    /// Called at start, before the Raft core reads the vote. If the saved vote is a committed
    /// one naming `me` (this node led when it stopped) and `has_other_members()` (node.rs: the
    /// only member sent its entries to nobody), saves it again uncommitted, so that openraft
    /// starts as a follower and this node can lead again only in a later term, won in an
    /// election. Returns the vote it replaced.
    ///
    /// Why (EAGER REPLICATION): a leader hands its batch to the followers before its own fsync.
    /// If it then loses that unsynced tail (power loss, or an fsync error, after which Linux
    /// drops the dirty pages), the followers hold entries of its term that its log no longer
    /// has, possibly committed by their answers alone. openraft 0.9 restarts a node whose vote
    /// is committed and its own as the leader of that same term: it would append different
    /// entries under the same log ids, which the followers take for the ones they hold (Raft
    /// matches entries by log id), and the logs would diverge. Restarted as a follower, it is
    /// behind those followers, cannot win their votes, and receives the lost entries back.
    pub fn give_up_own_term(&self, me: NodeId, has_other_members: impl FnOnce() -> bool) -> io::Result<Option<Vote>> {
        let saved = self.inner.state.read().vote;
        match saved {
            Some(v) if v.is_committed() && v.leader_id().node_id == me && has_other_members() => {
                let demoted = Vote::new(v.leader_id().term, me);
                self.write(|st, inner| store_vote(st, inner, &demoted))?;
                Ok(Some(v))
            }
            _ => Ok(None),
        }
    }

    /// The last log id present, or the purge point if the log is empty.
    pub fn last_log_id(&self) -> Option<LogId> {
        self.inner.state.read().last_log_id()
    }

    /// Bytes of the records after entry `index` (all present records when `index` is below
    /// them): the log that a snapshot at `index` would let a purge remove.
    pub fn bytes_after(&self, index: u64) -> u64 {
        let st = self.inner.state.read();
        let Some(first) = st.index.front().map(|l| l.log_id.index) else {
            return 0;
        };
        let pos = index.saturating_add(1).saturating_sub(first);
        let Some(at) = usize::try_from(pos).ok().and_then(|p| st.index.get(p)) else {
            return 0;
        };
        st.segments
            .range(at.seg..)
            .map(|(&k, s)| {
                if k == at.seg {
                    s.len.saturating_sub(at.off)
                } else {
                    s.len
                }
            })
            .sum()
    }

    pub fn read_committed_sync(&self) -> Option<LogId> {
        self.inner.state.read().committed
    }

    pub fn purged_sync(&self) -> Option<LogId> {
        self.inner.state.read().purged
    }

    /// The present entries with index in `start..=end_inclusive`.
    pub fn entries_sync(&self, start: u64, end_inclusive: u64) -> Result<Vec<Entry>, io::Error> {
        self.inner
            .state
            .read()
            .read(start, end_inclusive.saturating_add(1), usize::MAX)
    }

    /// Runs a write step under the state lock; an I/O failure marks the store failed (invariant 3).
    fn write<T>(&self, step: impl FnOnce(&mut State, &Inner) -> io::Result<T>) -> io::Result<T> {
        let mut st = self.inner.state.write();
        if self.inner.failed.load(SeqCst) {
            return Err(io::Error::other(
                "raft log: an earlier write or fsync failed; reopen required",
            ));
        }
        let r = step(&mut st, &self.inner);
        if r.as_ref()
            .is_err_and(|e| e.get_ref().is_none_or(|e| !e.is::<Refused>() && !e.is::<NoSpace>()))
        {
            self.inner.failed.store(true, SeqCst);
        }
        r
    }

    /// Writes `entries` to the page cache; returns what must be synced and the bytes written.
    fn write_entries<'a>(
        &self,
        entries: impl IntoIterator<Item = &'a Entry>,
    ) -> io::Result<(Vec<Arc<File>>, Option<PathBuf>, usize)> {
        self.write(|st, inner| {
            let (mut files, mut dir, mut bytes) = (Vec::<Arc<File>>::new(), None, 0usize);
            for entry in entries {
                let index = entry.log_id.index;
                // Invariant 1 (an empty log that was never purged may start anywhere).
                if let Some(expected) = st
                    .last_log_id()
                    .map(|l| l.index.saturating_add(1))
                    .filter(|x| *x != index)
                {
                    return Err(refuse(format!("append of index {index}, expected {expected}")));
                }
                let rec = encode_record(entry)?;
                if st
                    .segments
                    .last_key_value()
                    .is_none_or(|(_, s)| s.len >= inner.segment_limit)
                {
                    if let Some((_, prev)) = st.segments.last_key_value() {
                        prev.file.sync_data()?; // invariant 2, for the data and the file's name
                        sync_dir(&inner.dir)?;
                    }
                    let path = inner.dir.join(segment_name(index));
                    let file = OpenOptions::new()
                        .read(true)
                        .write(true)
                        .create_new(true)
                        .open(path)
                        .map_err(space)?;
                    st.segments.insert(
                        index,
                        Segment {
                            file: Arc::new(file),
                            len: 0,
                            alloc: Arc::new(AtomicU64::new(0)),
                        },
                    );
                    dir = Some(inner.dir.clone());
                }
                let Some((&seg, active)) = st.segments.iter_mut().next_back() else {
                    return Err(io::Error::other("raft log: no active segment"));
                };
                let off = active.len;
                let need = off + rec.len() as u64;
                if need > active.alloc.load(SeqCst) {
                    // The zeroing thread is behind (or idle): zero here, never beside it.
                    let _zeroing = inner.zeroing.lock();
                    let alloc = active.alloc.load(SeqCst);
                    if need > alloc {
                        let to = need.max(alloc + PREALLOC_STEP);
                        reserve(&active.file, alloc, to).map_err(space)?;
                        write_zeros(&active.file, alloc, to, false).map_err(space)?;
                        active.alloc.store(to, SeqCst);
                    }
                }
                if let Err(e) = active.file.write_all_at(&rec, off) {
                    let _zeroing = inner.zeroing.lock();
                    let _ = active.file.set_len(off); // best effort: drop the partial record
                    active.alloc.store(off, SeqCst);
                    return Err(space(e));
                }
                active.len += rec.len() as u64;
                bytes += rec.len();
                let alloc = active.alloc.load(SeqCst);
                if alloc.saturating_sub(active.len) < ZERO_AHEAD {
                    inner.zero_ahead(ZeroJob {
                        file: Arc::clone(&active.file),
                        alloc: Arc::clone(&active.alloc),
                        from: alloc,
                        to: alloc + PREALLOC_STEP,
                        zeroing: Arc::clone(&inner.zeroing),
                        failed: Arc::clone(&inner.failed),
                    });
                }
                if !files.iter().any(|f| Arc::ptr_eq(f, &active.file)) {
                    files.push(Arc::clone(&active.file));
                }
                let len = (rec.len() - HEADER) as u32; // <= MAX_RECORD_BYTES (encode_record)
                if rec.len() <= RECENT_ENTRY_BYTES {
                    if st.recent.len() == RECENT_ENTRIES {
                        st.recent.pop_front();
                    }
                    st.recent.push_back(entry.clone());
                } else {
                    st.recent.clear();
                }
                st.index.push_back(Loc {
                    seg,
                    off,
                    len,
                    log_id: entry.log_id,
                });
            }
            Ok((files, dir, bytes))
        })
    }

    fn truncate_sync(&self, since: u64) -> io::Result<()> {
        self.write(|st, inner| {
            if let Some(p) = st.purged.filter(|p| since <= p.index) {
                return Err(refuse(format!("truncate at {since}: purged up to {p}")));
            }
            let Some(first) = st.index.front().map(|l| l.log_id.index) else {
                return Ok(());
            };
            let pos = usize::try_from(since.saturating_sub(first)).unwrap_or(usize::MAX);
            let Some(loc) = st.index.get(pos).copied() else {
                return Ok(());
            };
            st.index.truncate(pos);
            st.recent.retain(|e| e.log_id.index < since);
            // Invariant 5: later segments go first, newest first, durably; then the shortening.
            let doomed: Vec<u64> = st.segments.range(loc.seg..).map(|(k, _)| *k).collect();
            for k in doomed.iter().rev().filter(|k| **k != loc.seg || loc.off == 0) {
                fs::remove_file(inner.dir.join(segment_name(*k)))?;
                st.segments.remove(k);
            }
            sync_dir(&inner.dir)?;
            if let Some(seg) = st.segments.get_mut(&loc.seg) {
                let _zeroing = inner.zeroing.lock();
                seg.file.set_len(loc.off)?;
                seg.file.sync_data()?;
                seg.len = loc.off;
                seg.alloc.store(loc.off, SeqCst);
            }
            Ok(())
        })
    }

    fn purge_sync(&self, upto: LogId) -> io::Result<()> {
        self.write(|st, inner| {
            if st.purged.is_some_and(|p| p.index >= upto.index) {
                return Ok(());
            }
            write_atomic(&inner.dir, PURGED, &upto)?; // invariant 4: durable before any deletion
            st.purged = Some(upto);
            st.drop_upto(&inner.dir, upto.index).map(|_| ())
        })
    }

    /// Reports a failed append to openraft both ways: through the callback and the result.
    fn fail_append(callback: LogFlushed<TypeConfig>, e: io::Error) -> StorageError {
        let err = storage_err(ErrorVerb::Write, io::Error::new(e.kind(), e.to_string()));
        callback.log_io_completed(Err(e));
        err
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let (start, end) = bounds(&range);
        let st = self.inner.state.read();
        st.read(start, end, usize::MAX)
            .map_err(|e| storage_err(ErrorVerb::Read, e))
    }

    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> Result<Vec<Entry>, StorageError> {
        let st = self.inner.state.read();
        st.read(start, end, READ_BUDGET)
            .map_err(|e| storage_err(ErrorVerb::Read, e))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let st = self.inner.state.read();
        Ok(LogState {
            last_purged_log_id: st.purged,
            last_log_id: st.last_log_id(),
        })
    }

    async fn get_log_reader(&mut self) -> LogStore {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        // Only the older slot is written (or, the first time, a new file renamed into place), so
        // a failed attempt leaves the saved vote intact: retrying on ENOSPC is safe.
        self.until_space("saving the vote", || {
            self.write(|st, inner| store_vote(st, inner, vote))
        })
        .await
        .map_err(|e| StorageError::from_io_error(ErrorSubject::Vote, ErrorVerb::Write, e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.inner.state.read().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let mut st = self.inner.state.write();
        st.committed = committed;
        // Invariant 6: it may lag, so it is written at most every COMMITTED_EVERY, in place,
        // without fsync: a lag only makes a restart replay less before Raft catches up.
        if st.committed_written.is_some_and(|t| t.elapsed() < COMMITTED_EVERY) {
            return Ok(());
        }
        st.committed_written = Some(std::time::Instant::now());
        let path = self.inner.dir.join(COMMITTED);
        let r = match &mut st.committed_file {
            Some(f) => Ok(f),
            slot => OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
                .map(|f| slot.insert(f)),
        };
        r.and_then(|f| f.write_all_at(&encode_record(&committed)?, 0))
            .map_err(|e| storage_err(ErrorVerb::Write, e))?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.inner.state.read().committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let batch: Vec<Entry> = entries.into_iter().collect();
        let prev = self.last_log_id();
        let mut retried = false;
        let r = self
            .until_space("appending to the Raft log", || {
                // After a full disk, go on after what the failed attempt did write.
                let done = self.last_log_id().map(|l| l.index);
                let rest = batch.iter().filter(|e| done.is_none_or(|d| e.log_id.index > d));
                let r = self.write_entries(rest);
                retried |= r.as_ref().is_err_and(is_no_space);
                r
            })
            .await;
        let (mut files, mut dir, bytes) = match r {
            Ok(sync) => sync,
            Err(e) => return Err(Self::fail_append(callback, e)),
        };
        if retried {
            // What the failed attempts wrote (maybe a new segment's name) is synced too.
            let st = self.inner.state.read();
            if let Some((_, seg)) = st.segments.last_key_value() {
                if !files.iter().any(|f| Arc::ptr_eq(f, &seg.file)) {
                    files.push(Arc::clone(&seg.file));
                }
            }
            dir = Some(self.inner.dir.clone());
        }
        let job = FlushJob { files, dir, callback };
        if !retried && self.send_eagerly(prev, &batch) {
            // Let the runtime put the sends on the wire before this thread blocks in the fsync.
            tokio::task::yield_now().await;
            let txn = |e: &Entry| matches!(e.payload, openraft::EntryPayload::Normal(_));
            if batch.iter().any(txn) {
                if let Err(e) = crate::failpoint::hit("log.eager_sent") {
                    return Err(Self::fail_append(job.callback, e));
                }
            }
        }
        if bytes <= INLINE_FLUSH_BYTES {
            flush(job, &self.inner.failed);
            return Ok(());
        }
        let failed = Arc::clone(&self.inner.failed);
        match tokio::task::spawn_blocking(move || flush(job, &failed)).await {
            Ok(()) => Ok(()),
            Err(e) => {
                // The callback went down with the thread: nothing is acknowledged, and after a
                // fsync of unknown outcome the store takes no more writes (invariant 3).
                self.inner.failed.store(true, SeqCst);
                Err(storage_err(
                    ErrorVerb::Write,
                    io::Error::other(format!("raft log fsync thread: {e}")),
                ))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.truncate_sync(log_id.index)
            .map_err(|e| storage_err(ErrorVerb::Delete, e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.wait_for_snapshot_covering(log_id.index)
            .await
            .map_err(|e| storage_err(ErrorVerb::Delete, e))?;
        self.purge_sync(log_id).map_err(|e| storage_err(ErrorVerb::Delete, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::types::{Request, Response, Txn};
    use openraft::storage::{RaftLogStorageExt, RaftStateMachine};
    use openraft::testing::{blank_ent, log_id, StoreBuilder, Suite};
    use openraft::{BasicNode, EntryPayload, RaftSnapshotBuilder, Snapshot, SnapshotMeta, StoredMembership};

    fn ent(term: u64, index: u64) -> Entry {
        blank_ent::<TypeConfig>(term, 1, index)
    }

    /// A transaction entry of about 540 bytes.
    fn txn(index: u64) -> Entry {
        let (pgnos, pages) = (vec![1], vec![index as u8; 512]);
        let t = Txn {
            origin: 1,
            txn_id: index,
            base_index: 0,
            page_size: 512,
            db_size: 1,
            pgnos,
            pages,
            part: 0,
            last: true,
        };
        Entry {
            log_id: log_id(1, 1, index),
            payload: EntryPayload::Normal(Request::Txn(t)),
        }
    }

    fn txns(r: std::ops::Range<u64>) -> Vec<Entry> {
        r.map(txn).collect()
    }

    /// Opens `dir` with 1000-byte segments (two transactions each) and appends `entries`.
    async fn store_with(dir: &Path, entries: Vec<Entry>) -> LogStore {
        let mut s = LogStore::open_with_limit(dir, 1000).unwrap();
        s.blocking_append(entries).await.unwrap();
        s
    }

    fn segs(dir: &Path) -> Vec<PathBuf> {
        list_segments(dir).unwrap().into_iter().map(|(_, p)| p).collect()
    }

    fn last_index(s: &LogStore) -> Option<u64> {
        s.last_log_id().map(|l| l.index)
    }

    #[tokio::test]
    async fn append_read_reopen() {
        let d = tempfile::tempdir().unwrap();
        let mut s = store_with(d.path(), txns(0..10)).await;
        assert_eq!(s.try_get_log_entries(3..6).await.unwrap(), txns(3..6));
        assert_eq!(s.try_get_log_entries(8..).await.unwrap(), txns(8..10));
        assert!(s.try_get_log_entries(10..20).await.unwrap().is_empty());
        assert!(s.blocking_append(vec![ent(1, 12)]).await.is_err(), "a hole");
        drop(s);
        let mut s = LogStore::open(d.path()).unwrap();
        assert_eq!(s.entries_sync(0, 9).unwrap(), txns(0..10));
        s.blocking_append(vec![ent(2, 10)]).await.unwrap();
        let st = s.get_log_state().await.unwrap();
        assert_eq!((st.last_purged_log_id, st.last_log_id), (None, Some(log_id(2, 1, 10))));
    }

    #[tokio::test]
    async fn a_large_batch_is_synced_off_the_runtime_thread_and_durable() {
        let d = tempfile::tempdir().unwrap();
        let big = |index: u64| {
            let mut e = txn(index);
            if let EntryPayload::Normal(Request::Txn(t)) = &mut e.payload {
                (t.pgnos, t.pages) = ((1..=64).collect(), vec![index as u8; 64 * 4096]);
                t.page_size = 4096;
            }
            e
        };
        let batch: Vec<Entry> = (0..3).map(big).collect();
        assert!(postcard::experimental::serialized_size(&batch).unwrap() > INLINE_FLUSH_BYTES);
        let mut s = LogStore::open(d.path()).unwrap();
        s.blocking_append(batch.clone()).await.unwrap();
        s.blocking_append(vec![txn(3)]).await.unwrap(); // small: inline
        drop(s);
        let s = LogStore::open(d.path()).unwrap();
        let mut all = batch;
        all.push(txn(3));
        assert_eq!(s.entries_sync(0, 3).unwrap(), all);
        // After a failed write or fsync, appends of either size are refused (invariant 3).
        let d = tempfile::tempdir().unwrap();
        let mut s = LogStore::open(d.path()).unwrap();
        s.inner.failed.store(true, SeqCst);
        assert!(s.blocking_append((0..3).map(big).collect::<Vec<_>>()).await.is_err());
        assert!(s.blocking_append(vec![txn(5)]).await.is_err());
    }

    #[tokio::test]
    async fn torn_tail_is_cut() {
        let d = tempfile::tempdir().unwrap();
        drop(store_with(d.path(), txns(0..6)).await); // segments [0,1] [2,3] [4,5]
        let last = segs(d.path()).pop().unwrap();
        // The logical end of the last segment; drop the preallocated zeros behind it.
        let f = File::open(&last).unwrap();
        let good = scan_segment(&f, f.metadata().unwrap().len(), 4).unwrap().1;
        OpenOptions::new()
            .write(true)
            .open(&last)
            .unwrap()
            .set_len(good)
            .unwrap();
        let tails: [&[u8]; 4] = [
            &[100, 0, 0, 0, 1, 2, 3, 4, 9, 9], // header promising 100 bytes, then 2
            &[3, 0, 0],                        // partial header
            &[0; 600],                         // zeros (allocated, never written)
            &[0xff; 16],                       // length beyond MAX_RECORD_BYTES
        ];
        for tail in tails {
            let mut f = OpenOptions::new().append(true).open(&last).unwrap();
            f.write_all(tail).unwrap();
            let s = LogStore::open_with_limit(d.path(), 1000).unwrap();
            let len = fs::metadata(&last).unwrap().len();
            // A zero tail is preallocated space, kept; anything else is cut.
            let expect = if tail.iter().all(|b| *b == 0) {
                good + tail.len() as u64
            } else {
                good
            };
            assert_eq!((len, last_index(&s)), (expect, Some(5)));
        }
        // A flipped byte in the last record: that record is cut, and the log goes on from there.
        let f = OpenOptions::new().write(true).open(&last).unwrap();
        f.write_all_at(&[0xff], good - 1).unwrap();
        let mut s = LogStore::open_with_limit(d.path(), 1000).unwrap();
        assert_eq!(s.entries_sync(0, 100).unwrap(), txns(0..5));
        s.blocking_append(txns(5..7)).await.unwrap(); // [4,5] [6]
        drop(s);
        // A last segment whose only record is torn is removed.
        let next = segs(d.path()).pop().unwrap();
        assert_ne!(next, last);
        let f = OpenOptions::new().write(true).open(&next).unwrap();
        f.set_len(100).unwrap();
        let mut s = LogStore::open_with_limit(d.path(), 1000).unwrap();
        assert_eq!(last_index(&s), Some(5));
        assert!(!segs(d.path()).contains(&next));
        s.blocking_append(txns(6..7)).await.unwrap();
        assert_eq!(s.entries_sync(0, 100).unwrap(), txns(0..7));
    }

    #[tokio::test]
    async fn defects_before_the_tail_fail_open() {
        let d = tempfile::tempdir().unwrap();
        drop(store_with(d.path(), txns(0..20)).await);
        let files = segs(d.path());
        assert!(files.len() >= 5);
        let f = OpenOptions::new().write(true).open(&files[0]).unwrap();
        f.write_all_at(&[0xee], 20).unwrap();
        let e = LogStore::open(d.path()).err().unwrap();
        assert_eq!(e.kind(), ErrorKind::InvalidData, "{e}");
        // A missing middle segment is a hole.
        let d = tempfile::tempdir().unwrap();
        drop(store_with(d.path(), txns(0..20)).await);
        fs::remove_file(&segs(d.path())[1]).unwrap();
        assert_eq!(LogStore::open(d.path()).err().unwrap().kind(), ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn rotation_truncate_then_append() {
        let d = tempfile::tempdir().unwrap();
        let mut s = store_with(d.path(), vec![]).await;
        for i in 0..30 {
            s.blocking_append(vec![txn(i)]).await.unwrap();
        }
        let firsts: Vec<u64> = list_segments(d.path()).unwrap().iter().map(|(f, _)| *f).collect();
        assert_eq!(firsts, (0..15).map(|i| i * 2).collect::<Vec<_>>());
        s.truncate(log_id(1, 1, 17)).await.unwrap(); // mid-segment
        assert_eq!((last_index(&s), segs(d.path()).len()), (Some(16), 9));
        s.truncate(log_id(1, 1, 14)).await.unwrap(); // at a segment boundary
        assert_eq!((last_index(&s), segs(d.path()).len()), (Some(13), 7));
        assert!(s.try_get_log_entries(14..).await.unwrap().is_empty());
        s.blocking_append((14..17).map(|i| ent(2, i))).await.unwrap();
        drop(s);
        let mut s = LogStore::open_with_limit(d.path(), 1000).unwrap();
        let all = s.try_get_log_entries(..).await.unwrap();
        let terms: Vec<(u64, u64)> = all.iter().map(|e| (e.log_id.leader_id.term, e.log_id.index)).collect();
        assert_eq!(terms[12..], [(1, 12), (1, 13), (2, 14), (2, 15), (2, 16)]);
        s.truncate(log_id(1, 1, 0)).await.unwrap();
        assert!(segs(d.path()).is_empty() && s.last_log_id().is_none());
    }

    #[tokio::test]
    async fn purge_waits_for_the_snapshot_that_covers_it() {
        use std::sync::atomic::AtomicU64;
        let d = tempfile::tempdir().unwrap();
        let mut s = store_with(d.path(), txns(0..30)).await;
        // 0: nothing durable; u64::MAX: the install failed.
        let covered = Arc::new(AtomicU64::new(0));
        let c = covered.clone();
        s.set_purge_guard(Box::new(move || match c.load(SeqCst) {
            0 => Ok(None),
            u64::MAX => Err("the install failed".into()),
            n => Ok(Some(n)),
        }));
        let mut waiting = s.clone();
        let purge = tokio::spawn(async move { waiting.purge(log_id(1, 1, 12)).await });
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(!purge.is_finished(), "purged before a snapshot covers it");
        covered.store(11, SeqCst);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(!purge.is_finished(), "purged past the snapshot");
        assert_eq!(list_segments(d.path()).unwrap()[0].0, 0);
        covered.store(12, SeqCst);
        purge.await.unwrap().unwrap();
        assert_eq!(list_segments(d.path()).unwrap()[0].0, 12);
        // A failed install ends the wait with an error, and nothing is purged.
        covered.store(u64::MAX, SeqCst);
        assert!(s.purge(log_id(1, 1, 20)).await.is_err());
        assert_eq!(list_segments(d.path()).unwrap()[0].0, 12);
    }

    #[tokio::test]
    async fn purge_then_reopen() {
        let d = tempfile::tempdir().unwrap();
        let mut s = store_with(d.path(), txns(0..30)).await;
        let record = s.bytes_after(28); // every record has the same size
        assert!(record > 0 && s.bytes_after(29) == 0 && s.bytes_after(99) == 0);
        assert_eq!(s.bytes_after(0), 29 * record); // across 15 segments
        s.purge(log_id(1, 1, 12)).await.unwrap();
        assert_eq!((s.bytes_after(3), s.bytes_after(20)), (17 * record, 9 * record));
        // Segments [0,1] .. [10,11] are gone; [12,13] stays, as it holds 13.
        assert_eq!(list_segments(d.path()).unwrap()[0].0, 12);
        assert!(s.try_get_log_entries(0..13).await.unwrap().is_empty());
        assert_eq!(s.try_get_log_entries(0..14).await.unwrap(), txns(13..14));
        drop(s);
        let mut s = LogStore::open_with_limit(d.path(), 1000).unwrap();
        let st = s.get_log_state().await.unwrap();
        assert_eq!(
            (st.last_purged_log_id, st.last_log_id),
            (Some(log_id(1, 1, 12)), Some(log_id(1, 1, 29)))
        );
        assert_eq!(s.entries_sync(0, 100).unwrap(), txns(13..30));
        // Past the end (as after a snapshot install): the log is empty and goes on after it.
        s.purge(log_id(3, 1, 40)).await.unwrap();
        assert!(segs(d.path()).is_empty());
        assert_eq!(s.last_log_id(), Some(log_id(3, 1, 40)));
        s.blocking_append(vec![ent(3, 41)]).await.unwrap();
        drop(s);
        let s = LogStore::open(d.path()).unwrap();
        assert_eq!((s.purged_sync(), last_index(&s)), (Some(log_id(3, 1, 40)), Some(41)));
    }

    /// Appends run past several zeroing steps (the zeroing thread works beside them), truncate
    /// into zeroed space and append again: reads, the reopened log and its clean end agree.
    #[tokio::test]
    async fn zeros_ahead_beside_appends() {
        let d = tempfile::tempdir().unwrap();
        let big = |term: u64, i: u64| {
            let mut e = txn(i);
            e.log_id = log_id(term, 1, i);
            if let EntryPayload::Normal(Request::Txn(t)) = &mut e.payload {
                t.pages = vec![i as u8; 60 << 10];
            }
            e
        };
        let mut s = LogStore::open(d.path()).unwrap();
        let mut want: Vec<Entry> = (0..200).map(|i| big(1, i)).collect();
        for chunk in want.chunks(10) {
            s.blocking_append(chunk.to_vec()).await.unwrap();
        }
        assert_eq!(s.entries_sync(0, 1000).unwrap(), want);
        s.truncate(log_id(1, 1, 150)).await.unwrap();
        want.truncate(150);
        want.extend((150..260).map(|i| big(2, i)));
        for chunk in want[150..].chunks(7) {
            s.blocking_append(chunk.to_vec()).await.unwrap();
        }
        assert_eq!(s.entries_sync(0, 1000).unwrap(), want);
        drop(s);
        let s = LogStore::open(d.path()).unwrap();
        assert_eq!(s.entries_sync(0, 1000).unwrap(), want);
        let seg = &segs(d.path())[0];
        let (ids, end, defect) = check_segment(&File::open(seg).unwrap(), fs::metadata(seg).unwrap().len(), 0).unwrap();
        assert_eq!((ids.len(), defect), (260, None));
        assert!(
            fs::metadata(seg).unwrap().len() > end,
            "zeros are kept ahead of the records"
        );
    }

    /// The entry cache never serves what truncate or purge removed, nor a stale term.
    #[tokio::test]
    async fn recent_entries_follow_truncate_and_purge() {
        let d = tempfile::tempdir().unwrap();
        let mut s = LogStore::open(d.path()).unwrap();
        s.blocking_append((0..6).map(|i| ent(1, i)).collect::<Vec<_>>())
            .await
            .unwrap();
        assert_eq!(
            s.try_get_log_entries(2..6).await.unwrap(),
            (2..6).map(|i| ent(1, i)).collect::<Vec<_>>()
        );
        s.truncate(log_id(1, 1, 3)).await.unwrap();
        assert_eq!(s.try_get_log_entries(2..6).await.unwrap(), vec![ent(1, 2)]);
        s.blocking_append((3..5).map(|i| ent(2, i)).collect::<Vec<_>>())
            .await
            .unwrap();
        let want: Vec<Entry> = [ent(1, 2), ent(2, 3), ent(2, 4)].into();
        assert_eq!(s.try_get_log_entries(2..9).await.unwrap(), want);
        s.purge(log_id(2, 1, 3)).await.unwrap();
        assert_eq!(s.try_get_log_entries(0..9).await.unwrap(), vec![ent(2, 4)]);
        // An entry too large for the cache empties it; reads come from the file, identical.
        let term2 = |mut e: Entry| {
            e.log_id = log_id(2, 1, e.log_id.index);
            e
        };
        let mut big = term2(txn(5));
        if let EntryPayload::Normal(Request::Txn(t)) = &mut big.payload {
            t.pages = vec![7; RECENT_ENTRY_BYTES];
        }
        let want = vec![ent(2, 4), big.clone(), term2(txn(6))];
        s.blocking_append(want[1..].to_vec()).await.unwrap();
        assert_eq!(s.try_get_log_entries(4..7).await.unwrap(), want);
        drop(s);
        let mut s = LogStore::open(d.path()).unwrap();
        assert_eq!(s.try_get_log_entries(4..7).await.unwrap(), want);
    }

    /// EAGER REPLICATION: only appends under this node's own committed vote are handed over,
    /// as an AppendEntries request naming the entry before them and the committed id, and only
    /// batches of at most EAGER_BYTES; the entries are durable once the append completes.
    #[tokio::test]
    async fn eager_send_only_for_own_committed_vote() {
        type Sent = Arc<parking_lot::Mutex<Vec<AppendEntriesRequest<TypeConfig>>>>;
        let d = tempfile::tempdir().unwrap();
        let mut s = store_with(d.path(), (0..3).map(|i| ent(1, i)).collect::<Vec<_>>()).await;
        let sent: Sent = Default::default();
        let (log, asked) = (sent.clone(), Arc::new(AtomicU64::new(0)));
        let asked2 = asked.clone();
        s.set_eager(
            1,
            Box::new(move |first, build| {
                asked2.fetch_add(1, SeqCst);
                assert!(first > 0);
                match build() {
                    Some(req) => {
                        log.lock().push(req);
                        true
                    }
                    None => false,
                }
            }),
        );
        // A follower's append: the vote names another node, or is not committed.
        s.save_vote(&Vote::new_committed(2, 2)).await.unwrap();
        s.blocking_append(vec![ent(2, 3)]).await.unwrap();
        s.save_vote(&Vote::new(3, 1)).await.unwrap();
        s.blocking_append(vec![ent(2, 4)]).await.unwrap();
        assert_eq!(asked.load(SeqCst), 0);
        // This node leads term 3.
        let vote = Vote::new_committed(3, 1);
        s.save_vote(&vote).await.unwrap();
        s.save_committed(Some(log_id(2, 1, 4))).await.unwrap();
        let batch: Vec<Entry> = (5..7).map(|i| ent(3, i)).collect();
        s.blocking_append(batch.clone()).await.unwrap();
        {
            let sent = sent.lock();
            assert_eq!(sent.len(), 1);
            assert_eq!(sent[0].vote, vote);
            assert_eq!(sent[0].prev_log_id, Some(log_id(2, 1, 4)));
            assert_eq!(sent[0].leader_commit, Some(log_id(2, 1, 4)));
            assert_eq!(sent[0].entries, batch);
        }
        // Too large: asked, not built, fsynced inline.
        let mut big = txn(7);
        big.log_id = log_id(3, 1, 7);
        if let EntryPayload::Normal(Request::Txn(t)) = &mut big.payload {
            t.pages = vec![7; EAGER_BYTES];
        }
        s.blocking_append(vec![big.clone()]).await.unwrap();
        assert_eq!((asked.load(SeqCst), sent.lock().len()), (2, 1));
        drop(s);
        let mut s = LogStore::open(d.path()).unwrap();
        assert_eq!(s.try_get_log_entries(5..8).await.unwrap(), [batch, vec![big]].concat());
    }

    #[tokio::test]
    async fn vote_and_committed_persist() {
        let d = tempfile::tempdir().unwrap();
        let mut s = store_with(d.path(), (0..5).map(|i| ent(1, i)).collect::<Vec<_>>()).await;
        assert_eq!(s.read_vote().await.unwrap(), None);
        s.save_vote(&Vote::new(3, 2)).await.unwrap();
        s.save_committed(Some(log_id(1, 1, 3))).await.unwrap();
        // Within COMMITTED_EVERY of the last write: kept in memory only (invariant 6: it lags).
        s.save_committed(Some(log_id(1, 1, 4))).await.unwrap();
        assert_eq!(s.read_committed().await.unwrap(), Some(log_id(1, 1, 4)));
        drop(s);
        let mut s = LogStore::open(d.path()).unwrap();
        assert_eq!(s.read_vote().await.unwrap(), Some(Vote::new(3, 2)));
        assert_eq!(s.read_committed().await.unwrap(), Some(log_id(1, 1, 3)));
        s.save_committed(Some(log_id(1, 1, 4))).await.unwrap();
        s.truncate(log_id(1, 1, 2)).await.unwrap();
        drop(s);
        // committed beyond the log is clamped; a torn committed file reads as None.
        assert_eq!(
            LogStore::open(d.path()).unwrap().read_committed_sync(),
            Some(log_id(1, 1, 1))
        );
        fs::write(d.path().join(COMMITTED), [7, 0, 0, 0, 1]).unwrap();
        assert_eq!(LogStore::open(d.path()).unwrap().read_committed_sync(), None);
        // A damaged vote is not guessed at: both slots damaged.
        fs::write(d.path().join(VOTE_SLOTS), [7u8; 2 * VOTE_SLOT]).unwrap();
        assert!(LogStore::open(d.path()).is_err());
    }

    #[tokio::test]
    async fn a_restarted_leader_gives_up_its_term() {
        let d = tempfile::tempdir().unwrap();
        let mut s = store_with(d.path(), txns(0..3)).await;
        // A vote naming another node, or not committed, is left as it is.
        s.save_vote(&Vote::new_committed(4, 2)).await.unwrap();
        assert_eq!(s.give_up_own_term(1, || true).unwrap(), None);
        s.save_vote(&Vote::new(5, 1)).await.unwrap();
        assert_eq!(s.give_up_own_term(1, || true).unwrap(), None);
        assert_eq!(s.read_vote().await.unwrap(), Some(Vote::new(5, 1)));
        // This node's committed vote (it led term 6) is saved again uncommitted, durably.
        s.save_vote(&Vote::new_committed(6, 1)).await.unwrap();
        drop(s);
        let mut s = LogStore::open(d.path()).unwrap();
        assert_eq!(s.give_up_own_term(1, || true).unwrap(), Some(Vote::new_committed(6, 1)));
        assert_eq!(s.read_vote().await.unwrap(), Some(Vote::new(6, 1)));
        drop(s);
        let mut s = LogStore::open(d.path()).unwrap();
        assert_eq!(s.read_vote().await.unwrap(), Some(Vote::new(6, 1)), "durable");
        assert_eq!(s.give_up_own_term(1, || true).unwrap(), None, "nothing left to give up");
        // The only member keeps its committed vote.
        s.save_vote(&Vote::new_committed(7, 1)).await.unwrap();
        assert_eq!(s.give_up_own_term(1, || false).unwrap(), None);
        assert_eq!(s.read_vote().await.unwrap(), Some(Vote::new_committed(7, 1)));
    }

    #[tokio::test]
    async fn a_torn_vote_write_keeps_the_previous_vote() {
        let d = tempfile::tempdir().unwrap();
        let mut s = store_with(d.path(), txns(0..3)).await;
        for term in 1..=5 {
            s.save_vote(&Vote::new(term, 2)).await.unwrap();
        }
        drop(s);
        let path = d.path().join(VOTE_SLOTS);
        assert_eq!(fs::metadata(&path).unwrap().len(), 2 * VOTE_SLOT as u64);
        let mut s = LogStore::open(d.path()).unwrap();
        assert_eq!(s.read_vote().await.unwrap(), Some(Vote::new(5, 2)));
        // Saving term 6 overwrites the slot of term 4 (seq 6 % 2 == 0); tear that write.
        s.save_vote(&Vote::new(6, 2)).await.unwrap();
        drop(s);
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&[0xab; 5], 6).unwrap(); // inside slot 0's payload
        let mut s = LogStore::open(d.path()).unwrap();
        assert_eq!(s.read_vote().await.unwrap(), Some(Vote::new(5, 2)), "the previous vote");
        // The next save (sequence 6 again) rewrites the damaged slot.
        s.save_vote(&Vote::new_committed(7, 3)).await.unwrap();
        drop(s);
        let mut s = LogStore::open(d.path()).unwrap();
        assert_eq!(s.read_vote().await.unwrap(), Some(Vote::new_committed(7, 3)));
        // Only zeros in one slot (the other never written since creation): the written one.
        let d2 = tempfile::tempdir().unwrap();
        let mut s2 = store_with(d2.path(), txns(0..1)).await;
        s2.save_vote(&Vote::new(9, 1)).await.unwrap();
        drop(s2);
        assert_eq!(
            LogStore::open(d2.path()).unwrap().read_vote().await.unwrap(),
            Some(Vote::new(9, 1))
        );
    }

    #[tokio::test]
    async fn a_vote_of_the_old_format_is_read_then_replaced() {
        let d = tempfile::tempdir().unwrap();
        drop(store_with(d.path(), txns(0..2)).await);
        write_atomic(d.path(), VOTE, &Vote::new_committed(4, 1)).unwrap();
        let mut s = LogStore::open(d.path()).unwrap();
        assert_eq!(s.read_vote().await.unwrap(), Some(Vote::new_committed(4, 1)));
        s.save_vote(&Vote::new(5, 2)).await.unwrap();
        assert!(!d.path().join(VOTE).exists() && d.path().join(VOTE_SLOTS).exists());
        drop(s);
        assert_eq!(
            LogStore::open(d.path()).unwrap().read_vote().await.unwrap(),
            Some(Vote::new(5, 2))
        );
        // A damaged old-format vote is not guessed at either.
        let d = tempfile::tempdir().unwrap();
        drop(store_with(d.path(), txns(0..2)).await);
        fs::write(d.path().join(VOTE), [7, 0, 0, 0, 1]).unwrap();
        assert!(LogStore::open(d.path()).is_err());
    }

    /// Minimal in-memory state machine, only to drive openraft's storage conformance suite.
    #[derive(Clone, Default)]
    struct Sm(Arc<parking_lot::Mutex<SmState>>);

    #[derive(Default)]
    struct SmState {
        applied: Option<LogId>,
        membership: StoredMembership<NodeId, BasicNode>,
        snapshot: Option<SnapshotMeta<NodeId, BasicNode>>,
    }

    impl RaftSnapshotBuilder<TypeConfig> for Sm {
        async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
            let mut s = self.0.lock();
            let snapshot_id = format!("{:?}", s.applied);
            let meta = SnapshotMeta {
                last_log_id: s.applied,
                last_membership: s.membership.clone(),
                snapshot_id,
            };
            s.snapshot = Some(meta.clone());
            Ok(Snapshot {
                meta,
                snapshot: Box::new(crate::raft::snapshot::SnapshotFile {
                    path: std::path::PathBuf::new(),
                }),
            })
        }
    }

    impl RaftStateMachine<TypeConfig> for Sm {
        type SnapshotBuilder = Sm;

        async fn applied_state(
            &mut self,
        ) -> Result<(Option<LogId>, StoredMembership<NodeId, BasicNode>), StorageError> {
            let s = self.0.lock();
            Ok((s.applied, s.membership.clone()))
        }

        async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
        where
            I: IntoIterator<Item = Entry> + OptionalSend,
            I::IntoIter: OptionalSend,
        {
            let mut s = self.0.lock();
            let mut out = Vec::new();
            for e in entries {
                s.applied = Some(e.log_id);
                if let EntryPayload::Membership(m) = e.payload {
                    s.membership = StoredMembership::new(Some(e.log_id), m);
                }
                out.push(Response::None);
            }
            Ok(out)
        }

        async fn get_snapshot_builder(&mut self) -> Sm {
            self.clone()
        }

        async fn begin_receiving_snapshot(&mut self) -> Result<Box<crate::raft::snapshot::SnapshotFile>, StorageError> {
            Ok(Box::new(crate::raft::snapshot::SnapshotFile {
                path: std::path::PathBuf::new(),
            }))
        }

        async fn install_snapshot(
            &mut self,
            meta: &SnapshotMeta<NodeId, BasicNode>,
            _: Box<crate::raft::snapshot::SnapshotFile>,
        ) -> Result<(), StorageError> {
            let mut s = self.0.lock();
            s.applied = meta.last_log_id;
            s.membership = meta.last_membership.clone();
            s.snapshot = Some(meta.clone());
            Ok(())
        }

        async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
            let s = self.0.lock();
            Ok(s.snapshot.clone().map(|meta| Snapshot {
                meta,
                snapshot: Box::new(crate::raft::snapshot::SnapshotFile {
                    path: std::path::PathBuf::new(),
                }),
            }))
        }
    }

    struct Builder;

    impl StoreBuilder<TypeConfig, LogStore, Sm, tempfile::TempDir> for Builder {
        async fn build(&self) -> Result<(tempfile::TempDir, LogStore, Sm), StorageError> {
            let open = || {
                let d = tempfile::tempdir()?;
                let s = LogStore::open_with_limit(d.path(), 300)?;
                Ok((d, s, Sm::default()))
            };
            open().map_err(|e| storage_err(ErrorVerb::Write, e))
        }
    }

    fn run_case<F: std::future::Future<Output = Result<(), StorageError>>>(
        name: &str,
        case: impl FnOnce(LogStore, Sm) -> F,
    ) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let r = rt.block_on(async {
            let (_dir, store, sm) = Builder.build().await?;
            case(store, sm).await
        });
        r.unwrap_or_else(|e| panic!("suite case {name}: {e}"));
    }

    /// openraft's conformance suite, case by case as `Suite::test_store` runs it, except
    /// `get_initial_state_membership_from_log_and_sm`: after `get_initial_state` has purged the
    /// log up to 2 it appends index 1, then index 3 after 1; this store refuses both (invariant 1).
    #[test]
    fn openraft_storage_suite() {
        type S = Suite<TypeConfig, LogStore, Sm, Builder, tempfile::TempDir>;
        macro_rules! cases { ($($c:ident)*) => { $(run_case(stringify!($c), S::$c);)* } }
        cases!(last_membership_in_log_initial last_membership_in_log
            last_membership_in_log_multi_step get_membership_initial
            get_membership_from_log_and_empty_sm get_membership_from_empty_log_and_sm
            get_membership_from_log_le_sm_last_applied get_membership_from_log_gt_sm_last_applied_1
            get_membership_from_log_gt_sm_last_applied_2 get_initial_state_without_init
            get_initial_state_with_state get_initial_state_last_log_gt_sm
            get_initial_state_last_log_lt_sm get_initial_state_log_ids
            get_initial_state_re_apply_committed save_vote get_log_entries limited_get_log_entries
            try_get_log_entry initial_logs get_log_state get_log_id last_id_in_log
            last_applied_state purge_logs_upto_0 purge_logs_upto_5 purge_logs_upto_20
            delete_logs_since_11 delete_logs_since_0 append_to_log snapshot_meta apply_single
            apply_multiple);
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(S::transfer_snapshot(&Builder)).unwrap();
    }
}
