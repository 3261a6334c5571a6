//! The process's async runtime: one tokio current-thread scheduler on its own OS thread, shared by
//! every replicated database in the process (Raft cores, state machines, QUIC endpoints).
//!
//! WHY ONE THREAD, AND WHY IT SPINS
//!
//! A commit's critical path crosses threads twice: the SQLite thread hands the entry to the
//! runtime, and the state machine wakes the SQLite thread once the entry is committed. Measured on
//! this class of machine (a VM), waking a sleeping thread costs about 20 µs, as much as a quarter
//! of an fsync, so the hand-offs, not the CPU work, were most of the overhead per commit:
//! - A multi-thread scheduler added a third hand-off per commit (the log append and the state
//!   machine ran on different workers), and its work stealing woke idle workers for nothing. One
//!   thread runs the core, the log append (which fsyncs inline, see log_store.rs) and the state
//!   machine back to back. Work that blocks for long (snapshot files, the applier) has its own
//!   threads already.
//! - While writes are flowing, neither side goes to sleep between commits. The runtime thread,
//!   instead of parking, keeps polling its queues for SPIN_AFTER_WRITE after the last commit
//!   activity ([`busy`]) of a database that is its cluster's only member (a commit that waits
//!   for other nodes outlasts the spin, and the spin would take the CPU they may need). A committing SQLite thread polls its outcome for up to COMMIT_SPIN
//!   before it blocks on the condition variable ([`await_decision`]), but only while commits in
//!   this process usually finish within that time (a moving average): a committer whose commits
//!   wait for the network sleeps at once. Both poll with the CPU's pause instruction: measured
//!   here, `sched_yield` in the loop slowed the fsync being waited for by about as much as the
//!   poll saved (a VM's I/O is served by host threads that compete with busy vCPUs).
//!   Both stop by themselves: an idle node sleeps as before.
//!
//! Measured on one node (single-row commits, the loop of `benches/bench.py`): from about 230 µs
//! per commit to about 150 µs, against about 110 µs for plain SQLite at synchronous=FULL.
//!
//! What one thread costs: the log append of a small batch fsyncs inline (the Raft core waits for
//! it either way), so the process's other tasks -- QUIC, heartbeats, other databases' cores --
//! wait up to one such fsync too, usually well under a millisecond (a busy disk can stall any
//! fsync for 100 ms or more: measured here with a concurrent `dd`). A large batch's fsync, which
//! takes milliseconds by itself, runs on a blocking thread (log_store.rs). Anything else that may
//! block for longer runs on its own thread (the applier, snapshot files, SQLite-side waits),
//! never on this one.
//!
//! Invariants: the spin is bounded in time after each commit event; the runtime is built lazily
//! at the first replicated open, never in the extension's entry point.

use crate::raft::state_machine::PendingCommit;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long the runtime thread keeps polling after the last commit event.
const SPIN_AFTER_WRITE: Duration = Duration::from_micros(300);
/// How long a committer polls before it sleeps, when commits usually take less than this.
const COMMIT_SPIN: Duration = Duration::from_micros(300);

fn epoch() -> Instant {
    static E: OnceLock<Instant> = OnceLock::new();
    *E.get_or_init(Instant::now)
}

fn now_ns() -> u64 {
    u64::try_from(epoch().elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Nanoseconds since `epoch()` until which the runtime thread keeps polling instead of parking.
static SPIN_UNTIL: AtomicU64 = AtomicU64::new(0);
/// Moving average (1/8 weight) of how long committers waited for their outcome, in nanoseconds.
static COMMIT_WAIT_NS: AtomicU64 = AtomicU64::new(0);
/// Wakes the future that drives the runtime thread (see `get`).
static WAKE: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// Commit activity: keep the runtime thread polling for a while. Only for a database that is
/// its cluster's only member: a commit that waits for other nodes takes longer than the spin, and
/// on a shared machine the spin would take the CPU those nodes need (measured: 3 nodes on 2
/// cores, each commit delayed by up to 300 µs).
pub fn busy() {
    let until = now_ns().saturating_add(SPIN_AFTER_WRITE.as_nanos() as u64);
    SPIN_UNTIL.fetch_max(until, Ordering::Relaxed);
}

fn commits_are_fast() -> bool {
    Duration::from_nanos(COMMIT_WAIT_NS.load(Ordering::Relaxed)) <= COMMIT_SPIN
}

fn spinning() -> bool {
    now_ns() < SPIN_UNTIL.load(Ordering::Relaxed)
}

/// Waits for the outcome of `p`: polls it for up to COMMIT_SPIN when commits usually take less
/// than that, then runs `block` (the caller's wait on the condition variable, immediate if
/// decided). Records how long the whole wait took.
pub fn await_decision<T>(p: &PendingCommit, block: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    if commits_are_fast() {
        while !p.is_decided.load(Ordering::Acquire) && start.elapsed() < COMMIT_SPIN {
            for _ in 0..64 {
                std::hint::spin_loop();
            }
        }
    }
    let out = block();
    let took = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
    let old = COMMIT_WAIT_NS.load(Ordering::Relaxed);
    COMMIT_WAIT_NS.store(old - old / 8 + took / 8, Ordering::Relaxed);
    out
}

/// The runtime, started on first use.
pub fn get() -> Result<&'static tokio::runtime::Runtime, String> {
    static RT: OnceLock<Result<&'static tokio::runtime::Runtime, String>> = OnceLock::new();
    RT.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            // Called before the thread would block in epoll: while commits are flowing, wake the
            // driving future instead, so the scheduler only polls (zero timeout) and comes back.
            .on_thread_park(|| {
                if spinning() {
                    for _ in 0..16 {
                        std::hint::spin_loop();
                    }
                    WAKE.notify_one();
                }
            })
            .build()
            .map_err(|e| format!("replicated: cannot start the runtime: {e}"))?;
        // Lives as long as the process: the extension is never unloaded (-z nodelete).
        let rt: &'static tokio::runtime::Runtime = Box::leak(Box::new(rt));
        std::thread::Builder::new()
            .name("replicated-rt".into())
            .spawn(move || {
                rt.block_on(async {
                    loop {
                        WAKE.notified().await;
                    }
                })
            })
            .map_err(|e| format!("replicated: cannot start the runtime thread: {e}"))?;
        Ok(rt)
    })
    .clone()
}
