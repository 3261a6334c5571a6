//! Reading a committing transaction back from the WAL at the commit sync (DESIGN §4, notes §1.4).
//!
//! At the commit `xSync` the whole transaction, with final checksums, is in the `-wal` file and
//! nothing of it is published: the wal-index header (copy [0]) still shows the previous commit.
//! So the transaction is frames `mxFrame+1 ..= first commit frame`, read back as SQLite would read
//! the file: from the connection's write-behind buffer where it holds them (`wal_buffer.rs`: a
//! byte-exact image of what SQLite wrote, not yet in the file), else through the wrapped file (the
//! OS cache). We verify the salts and the checksum chain exactly as recovery would, keep the last
//! image of each page, and drop pages above the commit's database size. Rebuilding the
//! transaction from the sequence of `xWrite` calls would be fragile: cache spills rewrite frames
//! in place and `walRewriteChecksums` rewrites headers; reading the bytes they left is not.
//!
//! Reads: pass 1 reads up to READ_AHEAD_BYTES of frames per call when it knows where the commit
//! frame is (`commit_hint`: the VFS notes where SQLite wrote the commit frame's header), so a
//! transaction of a few hundred pages costs one `pread`, not one per frame. The hint only sizes
//! the reads: every frame is verified as before, and a wrong hint (beyond the end of the file, or
//! short of the commit) costs single-frame reads, never a different result (fuzzed).
//!
//! Memory: the frames are read twice for a large transaction, never held whole. The first pass
//! verifies the chain up to the commit frame and notes (page number, frame number) for every frame;
//! it also keeps the page images while they fit in one log entry (`INLINE_BYTES`), the common case,
//! which then needs no second read. Otherwise the notes are sorted and reduced to the last frame of
//! each page, and `take_part` reads one part's frames at a time while the parts are proposed
//! (node.rs), so the leader holds 8 bytes per frame plus a few parts, whatever the transaction size.
//! The frames cannot change between the passes: the committing connection holds WAL_WRITE_LOCK,
//! and checkpoints only read the WAL.
//!
//! Bound: a transaction of more than `MAX_TXN_FRAMES` frames is refused with an error (the commit
//! fails, nothing is replicated).

use crate::raft::types::PART_BYTES;
use crate::wal::frames::{be32, FrameHeader, WalHeader, FRAME_HDR, WAL_HDR};
use libsqlite3_sys as ffi;
use std::collections::BTreeMap;

/// Distinct page bytes up to which a captured transaction is kept in memory (one log entry).
pub const INLINE_BYTES: usize = PART_BYTES;
/// Most WAL frames one transaction may write: 2^23, 32 GiB of 4 KiB pages. The leader holds
/// 8 bytes per frame while it commits (at most 64 MiB).
pub const MAX_TXN_FRAMES: u64 = 1 << 23;
/// Most bytes of frames pass 1 reads with one call (a bound on its buffer).
pub const READ_AHEAD_BYTES: u64 = 256 << 10;

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
    pub pos: WalPos,
    hdr: WalHeader,
    body: Body,
}

enum Body {
    /// Page numbers (ascending) and their images, read in the first pass.
    Inline { pgnos: Vec<u32>, pages: Vec<u8> },
    /// (page number, frame number of its last image), ascending by page: read by `take_part`.
    Streamed { frames: Vec<(u32, u32)> },
    /// Every page of a database file (an existing database imported as a cluster's initial state).
    File { n_pages: u32 },
}

impl Captured {
    /// The whole database file as one transaction of pages 1..=`n_pages`, for `take_part` to read
    /// from the file itself (`read_at` at `(pgno - 1) * page_size`). It has no WAL position.
    pub fn whole_file(page_size: u32, n_pages: u32) -> Captured {
        Captured {
            page_size,
            db_size: n_pages,
            pos: WalPos {
                salt: [0; 8],
                first_frame: 0,
                commit_frame: 0,
                commit_cksum: (0, 0),
            },
            hdr: WalHeader::new(page_size, 0, [0; 8]),
            body: Body::File { n_pages },
        }
    }

    /// `take_part` reads this transaction's frames from the WAL again (it was too large to keep).
    pub fn reads_wal_again(&self) -> bool {
        matches!(self.body, Body::Streamed { .. })
    }

    /// Made by `whole_file` (not from the WAL).
    pub fn is_whole_file(&self) -> bool {
        matches!(self.body, Body::File { .. })
    }

    /// Distinct pages the transaction writes (at most the database size).
    pub fn page_count(&self) -> usize {
        match &self.body {
            Body::Inline { pgnos, .. } => pgnos.len(),
            Body::Streamed { frames } => frames.len(),
            Body::File { n_pages } => *n_pages as usize,
        }
    }

    fn pages_per_part(&self) -> usize {
        (PART_BYTES / self.page_size.max(1) as usize).max(1)
    }

    /// Log entries the transaction is replicated as (`raft/types.rs`, "parts").
    pub fn part_count(&self) -> usize {
        self.page_count().div_ceil(self.pages_per_part()).max(1)
    }

    /// Part `k`'s page numbers and images, read from the WAL with `read_at` when the first pass
    /// did not keep them. Each part is taken once (an inline part is moved out, not copied).
    pub fn take_part(
        &mut self,
        k: usize,
        mut read_at: impl FnMut(u64, &mut [u8]) -> bool,
    ) -> Result<(Vec<u32>, Vec<u8>), CaptureError> {
        let per = self.pages_per_part();
        let ps = self.page_size as usize;
        let range = |len: usize| (k * per).min(len)..((k + 1) * per).min(len);
        match &mut self.body {
            Body::Inline { pgnos, pages } if k == 0 && pgnos.len() <= per => {
                Ok((std::mem::take(pgnos), std::mem::take(pages)))
            }
            Body::Inline { pgnos, pages } => {
                let r = range(pgnos.len());
                Ok((pgnos[r.clone()].to_vec(), pages[r.start * ps..r.end * ps].to_vec()))
            }
            Body::Streamed { frames } => {
                let chunk = &frames[range(frames.len())];
                let mut pgnos = Vec::with_capacity(chunk.len());
                let mut pages = Vec::with_capacity(chunk.len() * ps);
                let mut frame = vec![0u8; self.hdr.frame_size() as usize];
                for &(pgno, n) in chunk {
                    let ok = read_at(self.hdr.frame_offset(n as u64), &mut frame)
                        && FrameHeader::parse(&frame).is_some_and(|f| f.pgno == pgno && f.salt == self.hdr.salt);
                    if !ok {
                        return Err(CaptureError::Io(
                            ffi::SQLITE_IOERR_READ,
                            format!("WAL frame {n} changed or became unreadable during its commit"),
                        ));
                    }
                    pgnos.push(pgno);
                    pages.extend_from_slice(&frame[FRAME_HDR..]);
                }
                Ok((pgnos, pages))
            }
            Body::File { n_pages } => {
                let r = range(*n_pages as usize);
                let mut pages = vec![0u8; r.len() * ps];
                for (i, page) in pages.chunks_exact_mut(ps).enumerate() {
                    let pgno = r.start + i + 1;
                    if !read_at((pgno as u64 - 1) * ps as u64, page) {
                        return Err(CaptureError::Io(
                            ffi::SQLITE_IOERR_READ,
                            format!("page {pgno} of the database file is unreadable"),
                        ));
                    }
                }
                Ok((r.map(|i| i as u32 + 1).collect(), pages))
            }
        }
    }
}

#[derive(Debug)]
pub enum CaptureError {
    Io(i32, String),
    /// More than `MAX_TXN_FRAMES` frames (the count so far).
    TooLarge(u64),
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

/// Captures the transaction being committed. `main` and `wal` are the wrapped OS files;
/// `commit_hint` is the offset at which SQLite wrote the commit frame's header, if noted.
///
/// # Safety
/// Called at the commit sync, with the WAL write lock held by this connection.
pub unsafe fn capture(
    main: *mut ffi::sqlite3_file,
    commit_hint: Option<u64>,
    read_wal: impl FnMut(u64, &mut [u8]) -> bool,
) -> Result<Captured, CaptureError> {
    let shm = read_shm_header(main)?;
    capture_with(&shm, INLINE_BYTES, MAX_TXN_FRAMES, commit_hint, read_wal)
}

/// The pure part of `capture`: given the published wal-index header and a way to read the WAL
/// (`read_at(offset, buf) -> bool`, false on a short read), verifies and collects the frames after
/// `shm.mx_frame` up to the first commit frame. No SQLite call, so it is fuzzed over a buffer.
pub fn capture_from(shm: &ShmHeader, read_at: impl FnMut(u64, &mut [u8]) -> bool) -> Result<Captured, CaptureError> {
    capture_with(shm, INLINE_BYTES, MAX_TXN_FRAMES, None, read_at)
}

/// `capture_from` with its limits as parameters: keep page images in memory up to `inline_bytes`
/// of distinct pages, refuse more than `max_frames` frames (tests and fuzzing use small ones);
/// `commit_hint` as for `capture`.
pub fn capture_with(
    shm: &ShmHeader,
    inline_bytes: usize,
    max_frames: u64,
    commit_hint: Option<u64>,
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
    let fs = hdr.frame_size();
    // The frame number the hint points at, if it is a frame header's offset at all.
    let hint = commit_hint
        .and_then(|o| o.checked_sub(WAL_HDR as u64))
        .filter(|o| o % fs == 0)
        .map(|o| o / fs + 1);
    let per_read = (READ_AHEAD_BYTES / fs).max(1);
    // Frames `buf_first ..` of the WAL, `buf.len() / fs` of them.
    let mut buf: Vec<u8> = Vec::new();
    let mut buf_first = 0u64;
    // Pass 1: every frame's page, and the images while they fit inline.
    let mut frames: Vec<(u32, u32)> = Vec::new();
    let mut inline: Option<BTreeMap<u32, Vec<u8>>> = Some(BTreeMap::new());
    let mut inline_len = 0usize;
    let mut n = first;
    let (db_size, commit_cksum) = loop {
        if n - first >= max_frames {
            return Err(CaptureError::TooLarge(n - first + 1));
        }
        let Ok(n32) = u32::try_from(n) else {
            return Err(CaptureError::TooLarge(n - first + 1));
        };
        let buffered = n >= buf_first && (n - buf_first) < buf.len() as u64 / fs;
        if !buffered {
            let want = match hint {
                Some(h) if h >= n => (h - n + 1).min(per_read),
                _ => 1,
            };
            buf.resize((want * fs) as usize, 0);
            let mut ok = read_at(hdr.frame_offset(n), &mut buf);
            if !ok && want > 1 {
                // The hint was wrong (the file ends sooner): read this one frame.
                buf.truncate(fs as usize);
                ok = read_at(hdr.frame_offset(n), &mut buf);
            }
            if !ok {
                return Err(CaptureError::Io(
                    ffi::SQLITE_IOERR_READ,
                    format!("WAL frame {n} unreadable before the commit frame"),
                ));
            }
            buf_first = n;
        }
        let at = ((n - buf_first) * fs) as usize;
        let frame = &buf[at..at + fs as usize];
        let Some((fh, ck)) = FrameHeader::verify(&hdr, running, frame) else {
            return Err(CaptureError::Io(
                ffi::SQLITE_IOERR_READ,
                format!("WAL frame {n} fails its checksum/salt check at commit"),
            ));
        };
        running = ck;
        frames.push((fh.pgno, n32));
        if let Some(map) = inline.as_mut() {
            let page = &frame[FRAME_HDR..];
            match map.get_mut(&fh.pgno) {
                Some(img) => img.copy_from_slice(page),
                None => {
                    inline_len += page.len();
                    map.insert(fh.pgno, page.to_vec());
                }
            }
            if inline_len > inline_bytes {
                inline = None; // too large to keep: read it again part by part
            }
        }
        if fh.db_size != 0 {
            debug_assert_eq!(be32(frame, 4), fh.db_size);
            break (fh.db_size, ck);
        }
        n += 1;
    };
    let body = match inline {
        Some(map) => {
            let mut pgnos = Vec::with_capacity(map.len());
            let mut flat = Vec::with_capacity(map.len() * hdr.page_size as usize);
            for (pg, img) in map.range(..=db_size) {
                pgnos.push(*pg);
                flat.extend_from_slice(img);
            }
            Body::Inline { pgnos, pages: flat }
        }
        None => {
            // The last frame of each page, pages beyond the new database size dropped.
            frames.sort_unstable();
            let mut last: Vec<(u32, u32)> = Vec::with_capacity(frames.len());
            for f in frames.into_iter().filter(|f| f.0 <= db_size) {
                match last.last_mut() {
                    Some(l) if l.0 == f.0 => *l = f,
                    _ => last.push(f),
                }
            }
            Body::Streamed { frames: last }
        }
    };
    Ok(Captured {
        page_size: hdr.page_size,
        db_size,
        pos: WalPos {
            salt: hdr.salt,
            first_frame: first,
            commit_frame: n,
            commit_cksum,
        },
        hdr,
        body,
    })
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

    /// Every part of `cap`, concatenated: (page numbers, images, part count).
    fn all(cap: &mut Captured, file: &[u8]) -> (Vec<u32>, Vec<u8>, usize) {
        let (mut pgnos, mut pages) = (Vec::new(), Vec::new());
        let parts = cap.part_count();
        for k in 0..parts {
            let (p, i) = cap.take_part(k, |o, b| read(file, o, b)).expect("part");
            assert!(!p.is_empty() && p.len() * 512 <= PART_BYTES);
            pgnos.extend(p);
            pages.extend(i);
        }
        (pgnos, pages, parts)
    }

    #[test]
    fn capture_from_reads_the_transaction_after_the_published_frame() {
        // Transaction 1: frames 1-2 (pages 1, 2). Transaction 2: frames 3-5, page 1 twice, and a
        // page beyond its new database size of 3.
        let (file, commits) = wal(&[(1, 0), (2, 2), (3, 0), (1, 0), (4, 0), (1, 3)]);
        assert_eq!(commits.iter().map(|c| c.frame).collect::<Vec<_>>(), vec![2, 6]);
        let Ok(mut first) = capture_from(&after(0, (0, 0)), |o, b| read(&file, o, b)) else {
            panic!("first transaction not captured");
        };
        assert_eq!((first.db_size, first.pos.commit_frame), (2, 2));
        assert_eq!(all(&mut first, &file).0, vec![1, 2]);
        for inline in [INLINE_BYTES, 0] {
            let Ok(mut second) = capture_with(&after(2, commits[0].cksum), inline, 100, None, |o, b| read(&file, o, b))
            else {
                panic!("second transaction not captured");
            };
            assert_eq!(second.pos.first_frame, 3);
            assert_eq!(second.pos.commit_cksum, commits[1].cksum);
            let (pgnos, pages, _) = all(&mut second, &file);
            assert_eq!(&pgnos[..], &[1, 3][..]);
            assert_eq!((pages[0], pages[512]), (6, 3), "the last image of each page");
        }
        // Nothing committed after frame 6; a wrong running checksum breaks the chain at once.
        assert!(capture_from(&after(6, commits[1].cksum), |o, b| read(&file, o, b)).is_err());
        assert!(capture_from(&after(2, (1, 2)), |o, b| read(&file, o, b)).is_err());
        assert!(capture_from(&after(0, (0, 0)), |o, b| read(&file[..100], o, b)).is_err());
        // More frames than the limit: refused.
        assert!(matches!(
            capture_with(&after(2, commits[0].cksum), INLINE_BYTES, 3, None, |o, b| read(
                &file, o, b
            )),
            Err(CaptureError::TooLarge(4))
        ));
        assert!(
            capture_with(&after(2, commits[0].cksum), INLINE_BYTES, 4, None, |o, b| read(
                &file, o, b
            ))
            .is_ok()
        );
    }

    #[test]
    fn the_commit_hint_sizes_reads_but_never_changes_the_result() {
        // Transaction 1: frames 1-3; transaction 2: frames 4-1203 (1200 pages, more than one
        // read ahead of 512-byte frames), then frames of an uncommitted tail.
        let mut frames = vec![(1, 0), (2, 0), (3, 3)];
        frames.extend((1..1200).map(|p| (p, 0)));
        frames.push((1200, 1200));
        frames.extend([(7, 0), (8, 0)]);
        let (file, commits) = wal(&frames);
        let fs = 512 + FRAME_HDR as u64;
        let offset = |frame: u64| WAL_HDR as u64 + (frame - 1) * fs;
        let run = |hint: Option<u64>| {
            let mut reads = 0;
            let cap = capture_with(&after(3, commits[0].cksum), INLINE_BYTES, 1 << 20, hint, |o, b| {
                reads += 1;
                read(&file, o, b)
            });
            let cap = cap.map(|mut c| (c.pos, c.db_size, all(&mut c, &file)));
            (cap.ok(), reads)
        };
        let (expected, unhinted) = run(None);
        assert!(expected.is_some());
        assert_eq!(unhinted, 1 + 1200, "the header, then one read per frame");
        let (got, reads) = run(Some(offset(1203)));
        assert_eq!(got, expected);
        let per_read = READ_AHEAD_BYTES / fs;
        assert_eq!(
            reads as u64,
            1 + 1200u64.div_ceil(per_read),
            "the header, then full read-aheads"
        );
        let wrong = [
            offset(1203) + 1,            // not a frame header
            offset(5000),                // beyond the end of the file
            offset(600),                 // short of the commit frame
            offset(1),                   // before the transaction
            offset(frames.len() as u64), // past the commit, inside the file
            0,
            u64::MAX,
        ];
        for hint in wrong {
            assert_eq!(run(Some(hint)).0, expected, "hint {hint}");
        }
    }

    #[test]
    fn a_large_transaction_is_streamed_part_by_part() {
        // 3000 pages written in order, then pages 5..=1500 written again (a cache spill), with a
        // commit size that drops the last 10 pages.
        let mut frames: Vec<(u32, u32)> = (1..=3000).map(|p| (p, 0)).collect();
        frames.extend((5..=1500).map(|p| (p, 0)));
        frames.push((1, 2990));
        let (file, commits) = wal(&frames);
        assert_eq!(commits.len(), 1);
        let mut cap = capture_from(&after(0, (0, 0)), |o, b| read(&file, o, b)).expect("captured");
        assert_eq!(cap.page_count(), 2990);
        let (pgnos, pages, parts) = all(&mut cap, &file);
        assert_eq!(parts, 2990usize.div_ceil(PART_BYTES / 512));
        assert_eq!(pgnos, (1..=2990).collect::<Vec<u32>>());
        // Each page's newest image: frame numbers (as bytes) of the rewrite for pages 5..=1500.
        let img = |pg: u32| pages[(pg as usize - 1) * 512];
        assert_eq!(img(1), frames.len() as u8, "page 1 from the commit frame");
        assert_eq!(img(4), 4u8);
        assert_eq!(img(5), (3000 + 1) as u8);
        assert_eq!(img(1500), (3000 + 1496) as u8);
        assert_eq!(img(1501), 1501u32 as u8);
        // A frame that changes between the passes is refused.
        let mut cap = capture_from(&after(0, (0, 0)), |o, b| read(&file, o, b)).expect("captured");
        let mut bad = file.clone();
        bad[WAL_HDR + 536 + 3] ^= 1; // frame 2's page number (page 2's only image)
        assert!(cap.take_part(0, |o, b| read(&bad, o, b)).is_err());
    }
}
