//! Per-handle wal-index lock tracking, and the rules derived from it.
//!
//! SQLite coordinates WAL readers and writers only through `xShmLock` slots (DESIGN §4, notes §6):
//! slot 0 WAL_WRITE_LOCK, 1 WAL_CKPT_LOCK, 2 WAL_RECOVER_LOCK, 3..=7 WAL_READ_LOCK(0..4). We mirror
//! what each database handle holds so that two questions can be answered exactly:
//! - *Is this the start of a write transaction?* An exclusive WRITE request from a handle that
//!   already holds a read mark and not CKPT. Recovery asks for WRITE with no read lock, and
//!   FULL/RESTART/TRUNCATE checkpoints ask after taking CKPT, so neither is mistaken for a writer.
//! - *Is this WAL sync the commit sync?* The handle holds WRITE, not CKPT, and a commit frame was
//!   written since WRITE was taken (tracked by the caller).

pub const WRITE: u8 = 1 << 0;
pub const CKPT: u8 = 1 << 1;
pub const READ_ANY: u8 = 0b1111_1000;

#[derive(Default, Debug, Clone, Copy)]
pub struct ShmLocks {
    pub shared: u8,
    pub excl: u8,
}

fn mask(offset: i32, n: i32) -> u8 {
    if !(0..8).contains(&offset) || n <= 0 || offset + n > 8 {
        return 0;
    }
    (((1u16 << (offset + n)) - 1) ^ ((1u16 << offset) - 1)) as u8
}

impl ShmLocks {
    /// Records the effect of a successful `xShmLock(offset, n, flags)`.
    pub fn record(&mut self, offset: i32, n: i32, lock: bool, exclusive: bool) {
        let m = mask(offset, n);
        match (lock, exclusive) {
            (true, true) => self.excl |= m,
            (true, false) => self.shared |= m,
            (false, true) => self.excl &= !m,
            (false, false) => self.shared &= !m,
        }
    }

    pub fn is_write_txn_start(&self, offset: i32, n: i32, lock: bool, exclusive: bool) -> bool {
        lock && exclusive && offset == 0 && n == 1 && self.shared & READ_ANY != 0 && self.excl & CKPT == 0
    }

    pub fn holds_write_not_ckpt(&self) -> bool {
        self.excl & WRITE != 0 && self.excl & CKPT == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writer_vs_recovery_vs_checkpoint() {
        let mut l = ShmLocks::default();
        assert!(!l.is_write_txn_start(0, 1, true, true), "recovery: no read lock");
        l.record(4, 1, true, false); // READ_LOCK(1) shared
        assert!(l.is_write_txn_start(0, 1, true, true));
        l.record(1, 1, true, true); // CKPT
        assert!(!l.is_write_txn_start(0, 1, true, true), "checkpoint holds CKPT");
        l.record(1, 1, false, true);
        l.record(0, 1, true, true);
        assert!(l.holds_write_not_ckpt());
        l.record(0, 1, false, true);
        l.record(4, 1, false, false);
        assert_eq!((l.shared, l.excl), (0, 0));
        assert_eq!(mask(3, 5), READ_ANY);
        assert_eq!(mask(7, 2), 0, "out of range is ignored");
    }
}
