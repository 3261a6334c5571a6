//! The Raft state machine: the SQLite database itself.
//!
//! Applying a transaction entry means making its pages part of the database state, under the base
//! rule of `types.rs` (an entry built on another state than the last applied transaction is
//! skipped, identically on every node). Two ways an entry becomes part of the state:
//! - *Claimed by its committer.* On the node that captured it, the SQLite connection that is
//!   blocked at the commit sync still holds the WAL write lock, with the frames already in the WAL.
//!   The state machine claims the entry (nothing to write) and SQLite publishes the frames when
//!   the commit sync returns. `PendingCommit` arbitrates between the claim and a commit that gave
//!   up (timeout): exactly one of them wins, under its mutex.
//! - *Applied from the log* (followers, and a leader for entries of an earlier term or a proposal
//!   of its own that timed out but was committed later): the applier thread (`apply.rs`) writes
//!   the frames and publishes them through the wal-index as SQLite's writer would. If that fails,
//!   the node is poisoned: writes are refused with a message, reads keep the last consistent
//!   state, and a restart replays the entry from the log (reconcile.rs). Nothing diverges.
//!
//! A poisoned node still stores and acknowledges log entries (that needs no apply), and openraft
//! still counts the entries after the failed one as applied; nothing may take that for
//! progress. So it reports nothing more to the leader for `ack=apply`, `replicated_sync()` fails
//! on it, and it does not lead: a poisoned leader stops its heartbeats so that the others elect
//! another, and a poisoned follower neither campaigns nor accepts CAMPAIGN (node.rs). A snapshot
//! install replaces the whole state and clears the poison.

use crate::apply::ApplierHandle;
use crate::raft::applied::AppliedStore;
use crate::raft::snapshot::{self, SnapshotFile};
use crate::raft::types::{
    Assembled, Assembler, Entry, Fed, LogId, NodeId, Request, Response, StorageError, TypeConfig,
};
use openraft::storage::RaftStateMachine;
use openraft::{BasicNode, EntryPayload, OptionalSend, RaftSnapshotBuilder, Snapshot, SnapshotMeta, StoredMembership};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PendingState {
    Waiting,
    /// The state machine took the entry as part of the state: the committer must publish it.
    Claimed {
        log_id: LogId,
    },
    /// Raft answered with an error, or applied the entry as stale: (SQLite code, message).
    Failed(i32, String),
    /// The committer gave up (timeout); if Raft commits the entry later, it is applied from the log.
    Abandoned,
}

/// The one transaction of this node that is waiting at its commit sync (there is at most one per
/// database: the WAL write lock is held throughout). The claim wakes the waiting SQLite thread
/// directly from the state machine, rather than through openraft's response path (two fewer
/// thread hand-offs per commit).
pub struct PendingCommit {
    pub txn_id: u64,
    /// When the committer gives up: `timeout_ms` after the commit began or after the cluster last
    /// acknowledged one of its parts, whichever is later (a large transaction may take longer than
    /// `timeout_ms` in all, but never waits longer than that for progress).
    deadline: Mutex<std::time::Instant>,
    pub state: Mutex<PendingState>,
    pub decided: parking_lot::Condvar,
    /// Set with the state leaving Waiting, for a committer that polls before it sleeps.
    pub is_decided: std::sync::atomic::AtomicBool,
    /// The database is its cluster's only member: the decision marks the runtime busy (runtime.rs).
    alone: bool,
}

impl PendingCommit {
    pub fn new(txn_id: u64, deadline: std::time::Instant, alone: bool) -> Arc<PendingCommit> {
        Arc::new(PendingCommit {
            txn_id,
            deadline: Mutex::new(deadline),
            state: Mutex::new(PendingState::Waiting),
            decided: parking_lot::Condvar::new(),
            is_decided: std::sync::atomic::AtomicBool::new(false),
            alone,
        })
    }

    pub fn deadline(&self) -> std::time::Instant {
        *self.deadline.lock()
    }

    /// A part was acknowledged: the committer waits up to `timeout` more.
    pub fn progressed(&self, timeout: std::time::Duration) {
        let mut d = self.deadline.lock();
        *d = (*d).max(std::time::Instant::now() + timeout);
    }

    /// Moves Waiting to `to` (and wakes the committer); false when already decided.
    pub fn decide(&self, to: PendingState) -> bool {
        let mut s = self.state.lock();
        if *s != PendingState::Waiting {
            return false;
        }
        *s = to;
        self.is_decided.store(true, std::sync::atomic::Ordering::Release);
        self.decided.notify_all();
        if self.alone {
            crate::runtime::busy();
        }
        true
    }
}

pub struct SmShared {
    pub node_id: NodeId,
    pub applier: ApplierHandle,
    service: crate::raft::network::RaftService,
    /// `ack=apply`: a commit is claimed only once a majority (leader included) has applied it.
    ack_apply: bool,
    pub store: AppliedStore,
    state: Mutex<SmState>,
    /// Index of the last transaction entry that is part of the state (the base for new ones).
    pub last_txn: AtomicU64,
    pub pending: Mutex<Option<Arc<PendingCommit>>>,
    /// What the database files show readers now: the log id and last transaction of the newest
    /// published transaction (set under WAL_WRITE_LOCK by whoever publishes). Snapshots copy this.
    pub published: Mutex<(Option<LogId>, u64)>,
    /// Why the last snapshot install failed (None once one succeeds): a purge that waits for
    /// that install gives up (log_store.rs, invariant 4).
    pub install_failed: Mutex<Option<String>>,
    /// The node's data directory (snapshots live there).
    pub data: std::path::PathBuf,
    /// Set when this node can no longer serve writes correctly until it restarts.
    pub poisoned: Mutex<Option<String>>,
}

struct SmState {
    /// Memberships applied recently, oldest first (a snapshot needs the one at its index).
    memberships: Vec<StoredMembership<NodeId, BasicNode>>,
    applied: Option<LogId>,
    membership: StoredMembership<NodeId, BasicNode>,
    /// Parts of a split transaction received so far.
    assembler: Assembler,
}

impl SmShared {
    pub fn new(
        node_id: NodeId,
        store: AppliedStore,
        start: crate::reconcile::Reconciled,
        applier: ApplierHandle,
        service: crate::raft::network::RaftService,
        ack_apply: bool,
        data: std::path::PathBuf,
    ) -> Arc<SmShared> {
        let crate::reconcile::Reconciled {
            applied,
            last_txn,
            published,
            membership,
            assembler,
            ..
        } = start;
        Arc::new(SmShared {
            applier,
            service,
            ack_apply,
            data,
            node_id,
            store,
            published: Mutex::new((published, last_txn)),
            install_failed: Mutex::new(None),
            state: Mutex::new(SmState {
                memberships: vec![membership.clone()],
                applied,
                membership,
                assembler,
            }),
            last_txn: AtomicU64::new(last_txn),
            pending: Mutex::new(None),
            poisoned: Mutex::new(None),
        })
    }

    pub fn applied(&self) -> Option<LogId> {
        self.state.lock().applied
    }

    /// `ack=apply`: before claiming this node's own pending transaction, wait (bounded by the
    /// committer's deadline) until enough followers report having applied it that, with the
    /// leader, a majority of voters has. If the wait times out the committer gives up (IOERR,
    /// outcome unknown) and the entry is applied from the log like any other.
    async fn wait_for_majority_applied(&self, e: &Entry) {
        let EntryPayload::Normal(Request::Txn(t)) = &e.payload else {
            return;
        };
        if !self.ack_apply || t.origin != self.node_id || !t.last {
            return;
        }
        let Some(pending) = self.pending.lock().as_ref().filter(|p| p.txn_id == t.txn_id).cloned() else {
            return;
        };
        let voters: Vec<NodeId> = self.state.lock().membership.membership().voter_ids().collect();
        let need = voters.len() / 2; // followers needed besides the leader for a majority
        let index = e.log_id.index;
        loop {
            let notified = self.service.applied_notify.notified();
            let have = {
                let m = self.service.applied.lock();
                voters
                    .iter()
                    .filter(|v| **v != self.node_id && m.get(v).is_some_and(|a| *a >= index))
                    .count()
            };
            if have >= need {
                return;
            }
            let now = std::time::Instant::now();
            let deadline = pending.deadline();
            if now >= deadline {
                return;
            }
            let _ = tokio::time::timeout(deadline - now, notified).await;
        }
    }

    /// The newest applied membership whose log id is at or below `index`; None when it was
    /// forgotten (MAX_MEMBERSHIPS).
    pub fn membership_at(&self, index: u64) -> Option<StoredMembership<NodeId, BasicNode>> {
        let st = self.state.lock();
        st.memberships
            .iter()
            .rev()
            .find(|m| m.log_id().is_none_or(|l| l.index <= index))
            .cloned()
    }

    pub fn poison(&self, why: String) {
        let mut p = self.poisoned.lock();
        if p.is_none() {
            tracing::error!("replicated: node {} stops accepting writes: {why}", self.node_id);
            crate::ffi::sqlite_log(libsqlite3_sys::SQLITE_IOERR, &format!("replicated: {why}"));
            *p = Some(why);
            self.service.poisoned.store(true, Ordering::Release);
        }
    }

    /// A snapshot install replaced the whole state: the node applies again.
    fn clear_poison(&self) {
        let mut p = self.poisoned.lock();
        *p = None;
        self.service.poisoned.store(false, Ordering::Release);
    }

    /// Read on every apply: the flag the service mirrors, set and cleared under `poisoned`.
    pub fn is_poisoned(&self) -> bool {
        self.service.is_poisoned()
    }

    /// Decides what entry `e` does to the state (identically on every node) and returns the
    /// response plus, when the pages must be written from the log, the transaction to apply.
    fn decide(&self, e: Entry) -> (Response, Option<(Assembled, LogId)>) {
        let mut st = self.state.lock();
        let mut job = None;
        let resp = match e.payload {
            EntryPayload::Blank => Response::None,
            EntryPayload::Membership(m) => {
                st.membership = StoredMembership::new(Some(e.log_id), m);
                let m = st.membership.clone();
                st.memberships.push(m);
                // A snapshot asks for the membership at a published index, never below the one
                // published now: only memberships older than the newest at or below it are done
                // with. (Dropping the oldest beyond a count lost that one after many membership
                // changes without a write, and the next snapshot carried an empty membership.)
                let published = self.published.lock().0.map_or(0, |l| l.index);
                while st
                    .memberships
                    .get(1)
                    .and_then(|m| m.log_id().as_ref())
                    .is_some_and(|l| l.index <= published)
                {
                    st.memberships.remove(0);
                }
                if st.memberships.len() > MAX_MEMBERSHIPS {
                    // Only after thousands of membership changes without one write: the snapshot
                    // of that write is then refused (membership_at), never built with a guess.
                    st.memberships.remove(0);
                }
                if let Err(err) = self.store.save_membership(&st.membership) {
                    self.poison(format!("cannot persist membership: {err}"));
                }
                Response::None
            }
            EntryPayload::Normal(Request::Txn(t)) => {
                let last = self.last_txn.load(Ordering::Acquire);
                let index = e.log_id.index;
                let base_index = t.base_index;
                match st.assembler.feed(last, index, t) {
                    Fed::Stale => Response::Stale {
                        index,
                        base_index,
                        last_txn_index: last,
                    },
                    Fed::Staged => Response::Staged { index },
                    Fed::Complete(a) => {
                        // Failpoint `sm.claim`: decline the claim, as when the committer already gave up.
                        let claimed = a.last.origin == self.node_id
                            && crate::failpoint::hit("sm.claim").is_ok()
                            && match self.pending.lock().as_ref() {
                                Some(p) if p.txn_id == a.last.txn_id => {
                                    p.decide(PendingState::Claimed { log_id: e.log_id })
                                }
                                _ => false,
                            };
                        if !claimed {
                            job = Some((a, e.log_id));
                        }
                        self.last_txn.store(index, Ordering::Release);
                        Response::Applied { index }
                    }
                }
            }
        };
        st.applied = Some(e.log_id);
        (resp, job)
    }
}

/// Memberships kept after the newest one at or below the published index: one per membership
/// change since the last write. At the bound the oldest goes (see `decide`).
const MAX_MEMBERSHIPS: usize = 4096;

#[derive(Clone)]
pub struct StateMachine(pub Arc<SmShared>);

pub struct Builder(Arc<SmShared>);

impl RaftSnapshotBuilder<TypeConfig> for Builder {
    /// A failed build is no storage failure: openraft 0.9 stops the Raft core on any error from
    /// here, while a snapshot that could not be built (nothing published yet, the WAL write lock
    /// held by a long transaction, a full disk) only leaves the log unpurged until the next try.
    /// It answers with the current snapshot's meta instead (or none), which openraft ignores as
    /// not newer than what it has.
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        match self.0.applier.build_snapshot().await {
            Ok((path, stored)) => {
                tracing::info!("replicated: built snapshot {}", stored.meta.snapshot_id);
                Ok(Snapshot {
                    meta: stored.meta,
                    snapshot: Box::new(SnapshotFile { path }),
                })
            }
            Err(e) => {
                tracing::warn!("replicated: no snapshot this time: {e}");
                let current = snapshot::latest(&self.0.data);
                Ok(Snapshot {
                    meta: current.as_ref().map(|(_, s)| s.meta.clone()).unwrap_or_default(),
                    snapshot: Box::new(SnapshotFile {
                        path: current.map(|(p, _)| p).unwrap_or_default(),
                    }),
                })
            }
        }
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Builder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership<NodeId, BasicNode>), StorageError> {
        let st = self.0.state.lock();
        Ok((st.applied, st.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut out = Vec::new();
        for e in entries {
            self.0.wait_for_majority_applied(&e).await;
            let (resp, job) = self.0.decide(e);
            if let Some((txn, log_id)) = job {
                if !self.0.is_poisoned() {
                    // Failpoint `apply.own`: applying one of this node's own transactions from
                    // the log fails (with `sm.claim`, the way to poison a leader in a test).
                    let own = txn.last.origin == self.0.node_id;
                    let r = match own.then(|| crate::failpoint::hit("apply.own")) {
                        Some(Err(e)) => Err(e.to_string()),
                        _ => self.0.applier.apply(txn, log_id).await,
                    };
                    if let Err(err) = r {
                        self.0
                            .poison(format!("applying log entry {} failed: {err}", log_id.index));
                    }
                }
            }
            out.push(resp);
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        Builder(self.0.clone())
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotFile>, StorageError> {
        let id = format!("local-{}", u64::from_le_bytes(crate::reconcile::random_salt()));
        let path = snapshot::incoming(&self.0.data, &id)
            .map_err(|e| StorageError::from_io_error(openraft::ErrorSubject::None, openraft::ErrorVerb::Write, e))?;
        Ok(Box::new(SnapshotFile { path }))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        data: Box<SnapshotFile>,
    ) -> Result<(), StorageError> {
        let failed = &self.0.install_failed;
        *failed.lock() = None;
        let io = |e: String| {
            *failed.lock() = Some(e.clone());
            StorageError::from_io_error(
                openraft::ErrorSubject::None,
                openraft::ErrorVerb::Write,
                std::io::Error::other(e),
            )
        };
        let last_txn =
            snapshot::last_txn_of(meta).ok_or_else(|| io(format!("bad snapshot id {}", meta.snapshot_id)))?;
        let stored = snapshot::StoredMeta {
            meta: meta.clone(),
            last_txn,
        };
        tracing::info!("replicated: installing snapshot {}", meta.snapshot_id);
        crate::failpoint::hit("snapshot.install.before").map_err(|e| io(e.to_string()))?;
        self.0
            .applier
            .install_snapshot(data.path.clone(), stored.clone())
            .await
            .map_err(io)?;
        crate::failpoint::hit("snapshot.install.after_publish").map_err(|e| io(e.to_string()))?;
        {
            let mut st = self.0.state.lock();
            st.applied = meta.last_log_id;
            st.membership = meta.last_membership.clone();
            st.memberships = vec![meta.last_membership.clone()];
            st.assembler = Assembler::default();
            self.0.last_txn.store(last_txn, Ordering::Release);
        }
        self.0
            .store
            .save_membership(&meta.last_membership)
            .map_err(|e| io(e.to_string()))?;
        // The fsync of the whole received image takes as long as the database is large: not on
        // the runtime thread, which carries every database's heartbeats and QUIC traffic.
        let (dir, image, meta2) = (self.0.data.clone(), data.path.clone(), stored.clone());
        tokio::task::spawn_blocking(move || snapshot::commit(&dir, &image, &meta2))
            .await
            .map_err(|e| io(e.to_string()))?
            .map_err(|e| io(e.to_string()))?;
        crate::failpoint::hit("snapshot.install.after_commit").map_err(|e| io(e.to_string()))?;
        self.0.clear_poison();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        Ok(snapshot::latest(&self.0.data).map(|(path, stored)| Snapshot {
            meta: stored.meta,
            snapshot: Box::new(SnapshotFile { path }),
        }))
    }
}
