//! Reading a committing transaction back from the WAL at the commit sync (DESIGN §4, notes §1.4).
//!
//! At the commit `xSync` the whole transaction, with final checksums, is in the `-wal` file and
//! nothing of it is published: the wal-index header (copy [0]) still shows the previous commit.
//! So the transaction is frames `mxFrame+1 ..= first commit frame`, read back through the wrapped
//! file (they are in the OS cache). We verify the salts and the checksum chain exactly as recovery
//! would, keep the last image of each page, and drop pages above the commit's database size.
//! Rebuilding the transaction from the `xWrite` stream would be fragile: cache spills rewrite
//! frames in place and `walRewriteChecksums` rewrites headers.
//!
//! Bound: a transaction whose distinct pages exceed `MAX_TXN_BYTES` is refused with an error (the
//! commit fails, nothing is replicated); splitting large transactions into bounded entries is the
//! next step (see README, "Limits").

use crate::wal::frames::{be32, FrameHeader, WalHeader, WAL_HDR};
use libsqlite3_sys as ffi;
use std::collections::BTreeMap;

/// Largest transaction (distinct page bytes) a commit may write. It is replicated in parts of
/// `PART_BYTES` (raft/types.rs), but held whole in memory on the leader while it commits and on
/// each node while its parts arrive, so it is capped.
pub const MAX_TXN_BYTES: usize = 64 << 20;

/// Where a captured transaction sits in this node's WAL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalPos {
    pub salt: [u8; 8],
    pub first_frame: u64,
    pub commit_frame: u64,
    pub commit_cksum: (u32, u32),
}

pub struct Captured {
    pub page_size: u32,
    pub db_size: u32,
    pub pgnos: Vec<u32>,
    pub pages: Vec<u8>,
    pub pos: WalPos,
}

#[derive(Debug)]
pub enum CaptureError {
    Io(i32, String),
    TooLarge(usize),
}

/// The published wal-index header (copy [0]) fields capture needs.
pub struct ShmHeader {
    pub mx_frame: u32,
    pub frame_cksum: (u32, u32),
    pub salt: [u8; 8],
}

/// Reads header copy [0] of the wal-index through the main file's (wrapped) shm mapping.
///
/// # Safety
/// `main` must be an open main-database file of the wrapped VFS whose WAL is open.
pub unsafe fn read_shm_header(main: *mut ffi::sqlite3_file) -> Result<ShmHeader, CaptureError> {
    let methods = &*(*main).pMethods;
    let Some(shm_map) = methods.xShmMap else {
        return Err(CaptureError::Io(ffi::SQLITE_IOERR_SHMMAP, "no shm".into()));
    };
    let mut p: *mut std::ffi::c_void = std::ptr::null_mut();
    let rc = shm_map(main, 0, 32768, 0, &mut p as *mut _);
    if rc != ffi::SQLITE_OK || p.is_null() {
        return Err(CaptureError::Io(
            ffi::SQLITE_IOERR_SHMMAP,
            format!("wal-index map failed ({rc})"),
        ));
    }
    let base = p as *const u32;
    let word = |i: usize| std::ptr::read_volatile(base.add(i));
    let mut salt = [0u8; 8];
    for (i, b) in salt.iter_mut().enumerate() {
        *b = std::ptr::read_volatile((p as *const u8).add(32 + i));
    }
    Ok(ShmHeader {
        mx_frame: word(4),
        frame_cksum: (word(6), word(7)),
        salt,
    })
}

/// Reads `buf.len()` bytes at `off` from a wrapped file; false on a short read or error.
///
/// # Safety
/// `f` must be an open file of the wrapped VFS.
pub unsafe fn read_at(f: *mut ffi::sqlite3_file, off: u64, buf: &mut [u8]) -> bool {
    let Some(read) = (*(*f).pMethods).xRead else {
        return false;
    };
    read(f, buf.as_mut_ptr() as *mut _, buf.len() as i32, off as i64) == ffi::SQLITE_OK
}

/// Captures the transaction being committed. `main` and `wal` are the wrapped OS files.
///
/// # Safety
/// Called at the commit sync, with the WAL write lock held by this connection.
pub unsafe fn capture(main: *mut ffi::sqlite3_file, wal: *mut ffi::sqlite3_file) -> Result<Captured, CaptureError> {
    let shm = read_shm_header(main)?;
    capture_from(&shm, |off, buf| read_at(wal, off, buf))
}

/// The pure part of `capture`: given the published wal-index header and a way to read the WAL
/// (`read_at(offset, buf) -> bool`, false on a short read), verifies and collects the frames after
/// `shm.mx_frame` up to the first commit frame. No SQLite call, so it is fuzzed over a buffer.
pub fn capture_from(
    shm: &ShmHeader,
    mut read_at: impl FnMut(u64, &mut [u8]) -> bool,
) -> Result<Captured, CaptureError> {
    let mut hb = [0u8; WAL_HDR];
    if !read_at(0, &mut hb) {
        return Err(CaptureError::Io(
            ffi::SQLITE_IOERR_READ,
            "cannot read the WAL header".into(),
        ));
    }
    let Some(hdr) = WalHeader::parse(&hb) else {
        return Err(CaptureError::Io(
            ffi::SQLITE_IOERR_READ,
            "invalid WAL header at commit".into(),
        ));
    };
    let first = shm.mx_frame as u64 + 1;
    let mut running = if shm.mx_frame == 0 { hdr.cksum } else { shm.frame_cksum };
    let mut frame = vec![0u8; hdr.frame_size() as usize];
    let mut pages: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
    let mut bytes = 0usize;
    let mut n = first;
    loop {
        if !read_at(hdr.frame_offset(n), &mut frame) {
            return Err(CaptureError::Io(
                ffi::SQLITE_IOERR_READ,
                format!("WAL frame {n} unreadable before the commit frame"),
            ));
        }
        let Some((fh, ck)) = FrameHeader::verify(&hdr, running, &frame) else {
            return Err(CaptureError::Io(
                ffi::SQLITE_IOERR_READ,
                format!("WAL frame {n} fails its checksum/salt check at commit"),
            ));
        };
        running = ck;
        let page = &frame[crate::wal::frames::FRAME_HDR..];
        match pages.get_mut(&fh.pgno) {
            Some(img) => img.copy_from_slice(page),
            None => {
                bytes += page.len();
                if bytes > MAX_TXN_BYTES {
                    return Err(CaptureError::TooLarge(bytes));
                }
                pages.insert(fh.pgno, page.to_vec());
            }
        }
        if fh.db_size != 0 {
            let db_size = fh.db_size;
            let mut pgnos = Vec::with_capacity(pages.len());
            let mut flat = Vec::with_capacity(pages.len() * hdr.page_size as usize);
            for (pg, img) in pages.range(..=db_size) {
                pgnos.push(*pg);
                flat.extend_from_slice(img);
            }
            debug_assert_eq!(be32(&frame, 4), db_size);
            return Ok(Captured {
                page_size: hdr.page_size,
                db_size,
                pgnos,
                pages: flat,
                pos: WalPos {
                    salt: hdr.salt,
                    first_frame: first,
                    commit_frame: n,
                    commit_cksum: ck,
                },
            });
        }
        n += 1;
    }
}

/// Makes a failed commit's frames invisible to recovery *before* the error is returned: zero the
/// header of its first frame (page number 0 stops recovery there) and sync. Without this, a crash
/// after the failure would let SQLite's recovery resurrect the transaction (notes §1.5).
///
/// # Safety
/// Called at the commit sync with the write lock held; `wal` is the wrapped WAL file.
pub unsafe fn invalidate_tail(wal: *mut ffi::sqlite3_file, page_size: u32, first_frame: u64) -> i32 {
    let methods = &*(*wal).pMethods;
    let (Some(write), Some(sync)) = (methods.xWrite, methods.xSync) else {
        return ffi::SQLITE_IOERR;
    };
    let off = WAL_HDR as u64 + (first_frame.saturating_sub(1)) * (page_size as u64 + 24);
    let zero = [0u8; 24];
    let rc = write(wal, zero.as_ptr() as *const _, 24, off as i64);
    if rc != ffi::SQLITE_OK {
        return rc;
    }
    sync(wal, ffi::SQLITE_SYNC_NORMAL)
}

/// Page size recorded in the WAL header (for invalidating when capture itself failed).
///
/// # Safety
/// `wal` is an open wrapped WAL file.
pub unsafe fn wal_page_size(wal: *mut ffi::sqlite3_file) -> Option<u32> {
    let mut hb = [0u8; WAL_HDR];
    if !read_at(wal, 0, &mut hb) {
        return None;
    }
    WalHeader::parse(&hb).map(|h| h.page_size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::frames::{encode_frame, scan, CommitPoint};

    /// A WAL of 512-byte pages, one frame per `(page number, commit size)`; each page image is
    /// filled with its frame number. Returns the file and its commit points.
    fn wal(frames: &[(u32, u32)]) -> (Vec<u8>, Vec<CommitPoint>) {
        let h = WalHeader::new(512, 0, *b"saltsalt");
        let (mut file, mut run, mut fr) = (h.encode().to_vec(), h.cksum, Vec::new());
        for (n, &(pgno, commit)) in frames.iter().enumerate() {
            run = encode_frame(&h, run, pgno, commit, &[n as u8 + 1; 512], &mut fr);
            file.extend_from_slice(&fr);
        }
        let commits = scan(|off, buf| read(&file, off, buf))
            .map(|(_, c)| c)
            .unwrap_or_default();
        (file, commits)
    }

    fn read(file: &[u8], off: u64, buf: &mut [u8]) -> bool {
        let o = off as usize;
        match file.get(o..o + buf.len()) {
            Some(s) => {
                buf.copy_from_slice(s);
                true
            }
            None => false,
        }
    }

    fn after(mx_frame: u32, frame_cksum: (u32, u32)) -> ShmHeader {
        ShmHeader {
            mx_frame,
            frame_cksum,
            salt: *b"saltsalt",
        }
    }

    #[test]
    fn capture_from_reads_the_transaction_after_the_published_frame() {
        // Transaction 1: frames 1-2 (pages 1, 2). Transaction 2: frames 3-5, page 1 twice, and a
        // page beyond its new database size of 3.
        let (file, commits) = wal(&[(1, 0), (2, 2), (3, 0), (1, 0), (4, 0), (1, 3)]);
        assert_eq!(commits.iter().map(|c| c.frame).collect::<Vec<_>>(), vec![2, 6]);
        let Ok(first) = capture_from(&after(0, (0, 0)), |o, b| read(&file, o, b)) else {
            panic!("first transaction not captured");
        };
        assert_eq!((first.pgnos, first.db_size, first.pos.commit_frame), (vec![1, 2], 2, 2));
        let Ok(second) = capture_from(&after(2, commits[0].cksum), |o, b| read(&file, o, b)) else {
            panic!("second transaction not captured");
        };
        assert_eq!((&second.pgnos[..], second.pos.first_frame), (&[1, 3][..], 3));
        assert_eq!(
            (second.pages[0], second.pages[512]),
            (6, 3),
            "the last image of each page"
        );
        assert_eq!(second.pos.commit_cksum, commits[1].cksum);
        // Nothing committed after frame 6; a wrong running checksum breaks the chain at once.
        assert!(capture_from(&after(6, commits[1].cksum), |o, b| read(&file, o, b)).is_err());
        assert!(capture_from(&after(2, (1, 2)), |o, b| read(&file, o, b)).is_err());
        assert!(capture_from(&after(0, (0, 0)), |o, b| read(&file[..100], o, b)).is_err());
    }
}
