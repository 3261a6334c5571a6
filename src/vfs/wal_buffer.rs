//! Write-behind of a committing transaction's WAL frames: the bytes SQLite writes to the `-wal`
//! file during a write transaction are kept in memory until the commit, then written to the file
//! while the Raft log fsyncs the same transaction.
//!
//! WHY
//!
//! Plain SQLite writes a transaction's frames and then fsyncs the WAL. This VFS fsyncs the Raft
//! log instead, so the WAL writes need not come before that fsync: they must only be in the file
//! (the OS cache) before SQLite publishes the transaction in the wal-index, which it does after
//! the commit `xSync` returns. Written through, every frame costs two `pwrite`s on the critical
//! path and capture then reads them all back (measured, 1000-row transactions of 28 pages: the
//! commit took about 150 µs longer than plain SQLite's at the median). Buffered, capture reads the
//! frames from memory, and one `pwrite` of the whole transaction runs while the log's fsync is
//! under way (`Database::commit`, `before_wait`).
//!
//! WHAT IS BUFFERED
//!
//! Only the writes of a replicated handle's own write transaction (not the applier's, not a
//! checkpoint's), at or after the end of the WAL header (offset 32), from the moment the handle
//! holds WAL_WRITE_LOCK until its commit `xSync`. Writes after that sync (the rest of a padding
//! frame and the padding frames after it, with `psow=0`) go to the file at once: SQLite publishes
//! them without another call into the VFS, and a reader must find them there.
//!
//! The buffer is one contiguous run of bytes `[start, start + len)` of the file, newer than what
//! the file holds there. A write inside it or right after it is copied in (SQLite rewrites frames
//! in place after a cache spill and `walRewriteChecksums` rewrites their headers); any other write,
//! and one that would take the buffer past WAL_BUFFER_BYTES, first writes the buffer to the file
//! and then starts a new one.
//!
//! INVARIANTS
//!
//! 1. Nothing buffered is published: the commit writes the buffer to the file before its `xSync`
//!    returns, and the handle writes it out before it releases WAL_WRITE_LOCK.
//! 2. Every other operation on the WAL file sees the file as if each write had gone through: a
//!    read wholly inside the buffer is served from it; a read that overlaps it, a size query, a
//!    truncate, a non-commit sync and a file control write the buffer out first.
//! 3. A failed write-out fails the operation that caused it, and the transaction with it: the
//!    buffer is then dropped (its bytes were never published). When Raft committed the
//!    transaction anyway, the node is poisoned (`Database::commit`): restart replays it.
//!
//! BOUND: WAL_BUFFER_BYTES per connection while it writes; a larger transaction reaches the file
//! in runs of at most that much, as the buffer fills. The capacity kept between transactions is
//! at most KEEP_CAPACITY.

/// Most bytes a connection buffers; at the bound the buffer is written out and starts again.
pub const WAL_BUFFER_BYTES: usize = 1 << 20;
/// Capacity kept after a write-out (larger capacity is released).
const KEEP_CAPACITY: usize = 256 << 10;

/// See the module comment.
#[derive(Default)]
pub struct WalBuffer {
    start: u64,
    bytes: Vec<u8>,
}

impl WalBuffer {
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    fn end(&self) -> u64 {
        self.start + self.bytes.len() as u64
    }

    /// Takes the write of `data` at `off` when it lands inside the buffered run or right after it
    /// (or the buffer is empty) and the run stays within WAL_BUFFER_BYTES. False: nothing changed;
    /// the caller writes the buffer out first (after which any write of at most WAL_BUFFER_BYTES
    /// is taken).
    pub fn absorb(&mut self, off: u64, data: &[u8]) -> bool {
        if self.bytes.is_empty() {
            if data.len() > WAL_BUFFER_BYTES {
                return false;
            }
            self.start = off;
            self.bytes.extend_from_slice(data);
            return true;
        }
        if off < self.start || off > self.end() {
            return false;
        }
        let at = (off - self.start) as usize;
        let end = at + data.len();
        if end > WAL_BUFFER_BYTES {
            return false;
        }
        if end > self.bytes.len() {
            self.bytes.resize(end, 0);
        }
        self.bytes[at..end].copy_from_slice(data);
        true
    }

    /// True when `[off, off + len)` shares a byte with the buffered run.
    pub fn overlaps(&self, off: u64, len: usize) -> bool {
        !self.bytes.is_empty() && off < self.end() && off.saturating_add(len as u64) > self.start
    }

    /// Copies `[off, off + out.len())` when the buffered run holds all of it.
    pub fn read(&self, off: u64, out: &mut [u8]) -> bool {
        if self.bytes.is_empty() || off < self.start || off.saturating_add(out.len() as u64) > self.end() {
            return false;
        }
        let at = (off - self.start) as usize;
        out.copy_from_slice(&self.bytes[at..at + out.len()]);
        true
    }

    /// Hands the buffered run to `write(offset, bytes)` (which writes it to the file) and empties
    /// the buffer whatever the outcome; Ok when there was nothing to write.
    pub fn write_out<E>(&mut self, write: impl FnOnce(u64, &[u8]) -> Result<(), E>) -> Result<(), E> {
        if self.bytes.is_empty() {
            return Ok(());
        }
        let r = write(self.start, &self.bytes);
        self.clear();
        r
    }

    /// Drops the buffered bytes.
    pub fn clear(&mut self) {
        self.bytes.clear();
        if self.bytes.capacity() > KEEP_CAPACITY {
            self.bytes.shrink_to(KEEP_CAPACITY);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (xorshift), so a failure replays.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    fn write_file(file: &mut Vec<u8>, off: u64, data: &[u8]) {
        let (off, end) = (off as usize, off as usize + data.len());
        if file.len() < end {
            file.resize(end, 0);
        }
        file[off..end].copy_from_slice(data);
    }

    /// Random writes (appends, rewrites in place, jumps back and ahead, some larger than the
    /// bound), reads and write-outs: the file plus the buffer always reads exactly like a file
    /// that took every write directly, and the buffer never exceeds its bound.
    #[test]
    fn the_buffer_and_the_file_together_read_like_a_file_written_through() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _round in 0..200 {
            let (mut direct, mut file, mut buf) = (Vec::new(), Vec::new(), WalBuffer::default());
            let mut pos = 32u64;
            for _ in 0..300 {
                match rng.below(10) {
                    0..=6 => {
                        let len = match rng.below(20) {
                            0 => WAL_BUFFER_BYTES + 1 + rng.below(100) as usize,
                            1..=9 => 24,
                            _ => 1 + rng.below(5000) as usize,
                        };
                        let off = match rng.below(8) {
                            0 => rng.below(pos + 1),
                            1 => pos + rng.below(3000),
                            _ => pos,
                        };
                        let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                        write_file(&mut direct, off, &data);
                        if !buf.absorb(off, &data) {
                            let out: Result<(), ()> = buf.write_out(|o, b| {
                                write_file(&mut file, o, b);
                                Ok(())
                            });
                            assert!(out.is_ok());
                            if !buf.absorb(off, &data) {
                                assert!(
                                    len > WAL_BUFFER_BYTES,
                                    "an empty buffer takes any write within the bound"
                                );
                                write_file(&mut file, off, &data);
                            }
                        }
                        assert!(buf.bytes.len() <= WAL_BUFFER_BYTES);
                        pos = pos.max(off + len as u64);
                    }
                    7 | 8 => {
                        let off = rng.below(pos + 10);
                        let mut got = vec![0u8; 1 + rng.below(9000) as usize];
                        if !buf.read(off, &mut got) {
                            if buf.overlaps(off, got.len()) {
                                let _: Result<(), ()> = buf.write_out(|o, b| {
                                    write_file(&mut file, o, b);
                                    Ok(())
                                });
                            }
                            for (i, g) in got.iter_mut().enumerate() {
                                *g = file.get(off as usize + i).copied().unwrap_or(0);
                            }
                        }
                        let want: Vec<u8> = (0..got.len())
                            .map(|i| direct.get(off as usize + i).copied().unwrap_or(0))
                            .collect();
                        assert!(got == want, "read at {off} of {} bytes differs", got.len());
                    }
                    _ => {
                        let _: Result<(), ()> = buf.write_out(|o, b| {
                            write_file(&mut file, o, b);
                            Ok(())
                        });
                        assert!(buf.is_empty());
                        assert!(file == direct);
                    }
                }
            }
        }
    }

    #[test]
    fn a_failed_write_out_empties_the_buffer_and_reports() {
        let mut buf = WalBuffer::default();
        assert!(buf.absorb(32, &[1; 100]));
        assert!(buf.overlaps(100, 1) && !buf.overlaps(132, 10) && !buf.overlaps(0, 32));
        assert_eq!(buf.write_out(|_, _| Err("disk")), Err("disk"));
        assert!(buf.is_empty() && !buf.overlaps(32, 1));
        assert_eq!(buf.write_out(|_, _| Err("never called")), Ok(()));
    }
}
