//! Fuzz target `wal_frames`: the input is a `-wal` file (seeds are real ones written by sqlite3).
//!
//! Drives the WAL reader (`wal::frames`: header and frame-header parsing, checksum-chain
//! verification, `scan` for the committed frames) and the commit-time transaction reader
//! (`vfs::capture::capture_from`) over it, then splits and reassembles each captured transaction
//! (`Txn::into_parts`, `Assembler`). Besides "never panic", it checks that the two readers agree:
//! every commit `scan` accepts is exactly what `capture_from` yields when started after the
//! previous commit, as at the commit sync, and nothing is captured past the last one. A commit
//! hint (where the VFS saw the commit frame written), right or wrong, changes nothing.
//!
//! A mutated byte almost always breaks the checksum chain, which only exercises the refusal. So
//! each input is checked twice: as is, and with its checksums recomputed (header, then every
//! frame whose salts match), which lets the fuzzer explore page numbers, commit sizes, salts and
//! page sizes behind a valid chain.

#![no_main]

use libfuzzer_sys::fuzz_target;
use replicated::raft::types::Txn;
use replicated::vfs::capture::{capture_from, capture_with, CaptureError, ShmHeader, INLINE_BYTES};
use replicated::wal::frames::{be32, checksum, put_be32, scan, FrameHeader, WalHeader, FRAME_HDR, WAL_HDR};
use replicated_fuzz::read_exact;

/// `data` with its header checksum, and the checksum of every frame that carries the header's
/// salts, recomputed along the chain (a frame with other salts is left as it is).
fn repair(data: &[u8]) -> Vec<u8> {
    let mut b = data.to_vec();
    if b.len() < WAL_HDR {
        return b;
    }
    let big_endian = be32(&b, 0) & 1 == 1;
    let ck = checksum(&b[..24], (0, 0), big_endian);
    put_be32(&mut b, 24, ck.0);
    put_be32(&mut b, 28, ck.1);
    let Some(h) = WalHeader::parse(&b) else {
        return b;
    };
    let mut running = h.cksum;
    let size = h.frame_size() as usize;
    for frame in b[WAL_HDR..].chunks_exact_mut(size) {
        if frame[8..16] != h.salt {
            continue;
        }
        let ck = checksum(&frame[..8], running, big_endian);
        running = checksum(&frame[FRAME_HDR..], ck, big_endian);
        put_be32(frame, 16, running.0);
        put_be32(frame, 20, running.1);
    }
    b
}

/// Every part of a capture, concatenated (page numbers, images).
fn all_parts(
    cap: &mut replicated::vfs::capture::Captured,
    read: impl Fn(u64, &mut [u8]) -> bool,
) -> (Vec<u32>, Vec<u8>) {
    let (mut pgnos, mut pages) = (Vec::new(), Vec::new());
    for k in 0..cap.part_count() {
        let (p, i) = cap
            .take_part(k, &read)
            .unwrap_or_else(|e| panic!("part {k} of a capture unreadable: {e:?}"));
        pgnos.extend(p);
        pages.extend(i);
    }
    (pgnos, pages)
}

fuzz_target!(|data: &[u8]| {
    check(data);
    let repaired = repair(data);
    if repaired != data {
        check(&repaired);
    }
});

fn check(data: &[u8]) {
    let read = |off: u64, buf: &mut [u8]| read_exact(data, off, buf);
    let _ = FrameHeader::parse(data);
    let hdr = WalHeader::parse(data);
    if let Some(h) = hdr {
        // Every header field is checked or checksummed: a parsed header re-encodes to its bytes.
        assert_eq!(&h.encode()[..], &data[..WAL_HDR], "header does not round-trip");
        let first = data.get(WAL_HDR..WAL_HDR + h.frame_size() as usize);
        if let Some((fh, _)) = first.and_then(|f| FrameHeader::verify(&h, h.cksum, f)) {
            assert!(fh.pgno != 0 && fh.salt == h.salt);
        }
    }
    let Some((h, commits)) = scan(read) else {
        assert!(hdr.is_none(), "scan refused a header that parses");
        return;
    };
    assert_eq!(Some(h), hdr);
    let mut prev = (0u64, h.cksum);
    for c in &commits {
        assert!(c.frame > prev.0 && c.db_size > 0);
        assert!(h.frame_offset(c.frame) + h.frame_size() <= data.len() as u64);
        let Ok(mx_frame) = u32::try_from(prev.0) else {
            return;
        };
        let shm = ShmHeader {
            mx_frame,
            frame_cksum: prev.1,
            salt: h.salt,
        };
        let mut cap = match capture_from(&shm, read) {
            Ok(cap) => cap,
            Err(CaptureError::TooLarge(_)) => unreachable!("inputs are far below MAX_TXN_FRAMES"),
            Err(e) => panic!("scan accepted commit frame {} but capture refused it: {e:?}", c.frame),
        };
        assert_eq!(
            (
                cap.pos.first_frame,
                cap.pos.commit_frame,
                cap.pos.commit_cksum,
                cap.db_size
            ),
            (prev.0 + 1, c.frame, c.cksum, c.db_size)
        );
        assert_eq!((cap.page_size, cap.pos.salt), (h.page_size, h.salt));
        let (pgnos, pages) = all_parts(&mut cap, read);
        assert_eq!(pages.len(), pgnos.len() * h.page_size as usize);
        // Read again part by part from the WAL (as a large transaction is): the same pages.
        let Ok(mut streamed) = capture_with(&shm, 0, 1 << 20, None, read) else {
            panic!("capture refused a commit when streaming");
        };
        assert_eq!(all_parts(&mut streamed, read), (pgnos.clone(), pages.clone()));
        // With the commit frame's offset as the hint (what the VFS notes), or a wrong one.
        let hints = [
            h.frame_offset(c.frame),
            data.len() as u64,
            h.frame_offset(prev.0 + 1),
            h.frame_offset(c.frame + 1),
        ];
        for hint in hints {
            let Ok(mut hinted) = capture_with(&shm, INLINE_BYTES, 1 << 20, Some(hint), read) else {
                panic!("capture refused a commit with hint {hint}");
            };
            assert_eq!((hinted.pos, hinted.db_size), (cap.pos, cap.db_size), "hint {hint}");
            assert_eq!(all_parts(&mut hinted, read), (pgnos.clone(), pages.clone()), "hint {hint}");
        }
        let txn = Txn {
            origin: 1,
            txn_id: c.frame,
            base_index: prev.0,
            page_size: cap.page_size,
            db_size: cap.db_size,
            pgnos,
            pages,
            part: 0,
            last: true,
        };
        // A commit whose pages all lie beyond its new database size captures no page.
        assert_eq!(txn.validate().is_ok(), !txn.pgnos.is_empty(), "{:?}", txn.validate());
        if txn.validate().is_ok() {
            replicated_fuzz::split_and_reassemble(&txn);
        }
        prev = (c.frame, c.cksum);
    }
    // Past the last commit `scan` found there is no commit for capture to find.
    if let Ok(mx_frame) = u32::try_from(prev.0) {
        let shm = ShmHeader {
            mx_frame,
            frame_cksum: prev.1,
            salt: h.salt,
        };
        assert!(
            capture_from(&shm, read).is_err(),
            "capture found a commit past scan's last"
        );
        assert!(
            capture_with(&shm, INLINE_BYTES, 1 << 20, Some(data.len() as u64), read).is_err(),
            "capture found a commit past scan's last with a hint"
        );
    }
}
