//! Elections with a pre-vote (Raft thesis §9.6), in place of openraft's own election timer.
//!
//! WHY
//!
//! openraft 0.9 has no pre-vote: a follower whose election timer fires campaigns at once, with a
//! higher term. A follower that was merely slow -- frozen by the scheduler or by SIGSTOP, stuck in
//! a long fsync on a saturated disk, cut off for a moment -- wakes up and campaigns. It loses (the
//! other voters heard from the leader within their lease and refuse), but its higher term reaches
//! the leader in its next AppendEntries response, and the leader steps down. Writes then stop for a
//! whole election although nothing was wrong with the leader. Measured before this module: a
//! follower frozen for 1 s deposed the leader 5 times out of 5, one frozen for 0.3 s 2 out of 5.
//!
//! HOW
//!
//! openraft's timer is off (`enable_elect: false`); the node's election task (node.rs,
//! `Database::run_elections`) runs this module's rules instead:
//! - Every node records when it last heard from a leader ([`Contact::heard`]): each AppendEntries
//!   the Raft core accepts (heartbeats and snapshot keep-alives included), each snapshot it
//!   installs, each CAMPAIGN request (the leader handing over to it), each vote it grants (as in
//!   Raft, that restarts the timer: the candidate is about to
//!   lead), and, while it is the leader, every tick of the election task (deposed, it then
//!   refuses pre-votes for the lease like the new leader's other followers).
//! - A voter that is not the leader and has heard nothing for [`timeout`] (a random part, plus the
//!   lease while it knows a leader: what openraft would wait) sends PRE_VOTE with its last log id to the other voters.
//!   Neither side changes any state: no term, no vote, nothing on disk.
//! - A voter grants ([`grant`]) when it is not the leader, has heard from no leader within the
//!   lease, and the candidate's log is at least as up to date as its own: the conditions under
//!   which openraft's real vote can succeed.
//! - With a majority of grants (its own included), the node starts openraft's election
//!   (`trigger().elect()`); otherwise it waits for another randomized timeout.
//! - A sole voter elects itself at once, as openraft does. `replicated_transfer_leader` (CAMPAIGN)
//!   bypasses the pre-vote: the leader asked for it.
//!
//! Invariants: the pre-vote never touches Raft state, so it cannot affect safety, only delay an
//! election; a node partitioned away never raises its term, so healing the partition does not
//! disturb the leader; every PRE_VOTE call is bounded by the election timeout.

use crate::raft::types::LogId;
use parking_lot::Mutex;
use std::time::{Duration, Instant};

/// Body of a PRE_VOTE request: the candidate's last log id.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreVote {
    pub last_log: Option<LogId>,
}

/// When this node last heard from a leader (`None` until it first does), and when it last
/// started an election (its own timer, or CAMPAIGN).
#[derive(Default)]
pub struct Contact {
    heard: Mutex<Option<Instant>>,
    campaigned: Mutex<Option<Instant>>,
}

impl Contact {
    pub fn heard(&self) {
        *self.heard.lock() = Some(Instant::now());
    }

    /// Time since the last contact; `None` if there was none.
    pub fn since(&self) -> Option<Duration> {
        self.heard.lock().map(|t| t.elapsed())
    }

    /// An election of this node starts now: its timer restarts, so it does not start another one
    /// over it (CAMPAIGN's election raced the timer's own, and the second raised the term again).
    pub fn campaigned(&self) {
        *self.campaigned.lock() = Some(Instant::now());
    }

    /// Time since the later of the last contact and the last campaign; `None` if neither happened.
    pub fn quiet(&self) -> Option<Duration> {
        let campaigned = self.campaigned.lock().map(|t| t.elapsed());
        match (self.since(), campaigned) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// The pre-vote rule of a voter asked by a candidate whose last log id is `theirs`.
/// `lease` is how long after a leader's message openraft's voters refuse any vote.
pub fn grant(
    is_leader: bool,
    since_contact: Option<Duration>,
    lease: Duration,
    mine: Option<LogId>,
    theirs: Option<LogId>,
) -> bool {
    !is_leader && since_contact.is_none_or(|s| s >= lease) && theirs >= mine
}

/// The random part of a voter's election timeout: uniform in `[min, max)`, drawn anew after
/// each attempt (as openraft draws its election timeout).
pub fn jitter(min: Duration, max: Duration) -> Duration {
    let mut b = [0u8; 8];
    // A failure of the system RNG only makes the timeout less random, never wrong.
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    let span = max.saturating_sub(min).as_nanos().max(1) as u64;
    min + Duration::from_nanos(u64::from_le_bytes(b) % span)
}

/// How long a voter waits without hearing from a leader before its pre-vote: the jitter, plus
/// the lease while it knows a leader (that leader's voters refuse votes until the lease expires,
/// so an earlier campaign cannot win) -- what openraft's own timer waits.
pub fn timeout(jitter: Duration, knows_a_leader: bool, lease: Duration) -> Duration {
    jitter + if knows_a_leader { lease } else { Duration::ZERO }
}

/// Whether `grants` (the candidate's own included) are a majority of `voters`.
pub fn is_majority(grants: usize, voters: usize) -> bool {
    grants * 2 > voters
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::testing::log_id;

    const LEASE: Duration = Duration::from_millis(200);

    #[test]
    fn grants_only_without_a_live_leader_and_to_an_up_to_date_log() {
        let (old, new) = (Some(log_id(1, 1, 9)), Some(log_id(2, 1, 3)));
        let long = Some(LEASE);
        assert!(
            grant(false, long, LEASE, old, new),
            "a higher term wins over a longer log"
        );
        assert!(grant(false, None, LEASE, old, old), "never heard a leader, equal logs");
        assert!(!grant(false, long, LEASE, new, old), "the candidate's log is behind");
        assert!(
            !grant(false, Some(LEASE / 2), LEASE, old, new),
            "heard a leader within the lease"
        );
        assert!(!grant(true, long, LEASE, old, new), "the leader itself");
        assert!(grant(false, long, LEASE, None, None) && !grant(false, long, LEASE, old, None));
    }

    #[test]
    fn timeouts_are_random_within_bounds() {
        let (min, max) = (Duration::from_millis(100), Duration::from_millis(200));
        let t: Vec<Duration> = (0..200).map(|_| jitter(min, max)).collect();
        assert!(t.iter().all(|t| *t >= min && *t < max));
        assert!(t.iter().any(|x| *x != t[0]), "not random");
        assert_eq!(timeout(min, true, LEASE), min + LEASE);
        assert_eq!(timeout(min, false, LEASE), min);
    }

    #[test]
    fn quiet_runs_from_the_later_of_contact_and_campaign() {
        let c = Contact::default();
        assert_eq!(c.quiet(), None);
        c.campaigned();
        std::thread::sleep(Duration::from_millis(20));
        c.heard();
        let q = c.quiet().unwrap_or(Duration::MAX);
        assert!(q < Duration::from_millis(20) && c.since().is_some_and(|s| s <= q + Duration::from_millis(5)));
        std::thread::sleep(Duration::from_millis(20));
        c.campaigned();
        assert!(c.quiet().is_some_and(|q| q < Duration::from_millis(20)));
    }

    #[test]
    fn majorities() {
        assert!(is_majority(1, 1) && is_majority(2, 3) && is_majority(3, 5));
        assert!(!is_majority(1, 2) && !is_majority(1, 3) && !is_majority(2, 4) && !is_majority(2, 5));
    }
}
