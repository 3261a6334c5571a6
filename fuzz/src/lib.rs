//! Shared by the fuzz targets: reading a buffer as if it were a file, the allocation bound every
//! target runs under, and the Raft apply loop's use of the `Assembler`.
//!
//! The allocation bound is a global allocator rather than only libFuzzer's `-malloc_limit_mb`,
//! which needs a sanitizer's malloc hooks: `scripts/fuzz.sh` builds without one (the code under
//! test is safe Rust), and an allocation sized by the input must still be caught. It aborts, which
//! libFuzzer reports as a crash and saves the input.

use openraft::EntryPayload;
use replicated::raft::types::{Assembler, Entry, Fed, Request, Txn};
use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{self, Write};

/// Largest single allocation a target may make (the inputs are at most tens of KiB).
pub const MAX_ALLOC: usize = 256 << 20;

pub struct BoundedAlloc;

impl BoundedAlloc {
    fn check(size: usize) {
        if size > MAX_ALLOC {
            // No formatting: this runs inside the allocator.
            let _ = io::stderr().write_all(b"fuzz: allocation above MAX_ALLOC (256 MiB)\n");
            std::process::abort();
        }
    }
}

// SAFETY: forwards to the system allocator unchanged; only refuses (by aborting) large requests.
unsafe impl GlobalAlloc for BoundedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        Self::check(layout.size());
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        Self::check(layout.size());
        System.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        Self::check(new_size);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOC: BoundedAlloc = BoundedAlloc;

/// `read_at(offset, buf) -> bool` over `data`, the shape the WAL readers take: false on a short
/// read, like a read past the end of a file.
pub fn read_exact(data: &[u8], off: u64, buf: &mut [u8]) -> bool {
    let Ok(start) = usize::try_from(off) else {
        return false;
    };
    match start.checked_add(buf.len()).and_then(|end| data.get(start..end)) {
        Some(s) => {
            buf.copy_from_slice(s);
            true
        }
        None => false,
    }
}

/// A read-only "file" over a buffer, for readers written against `FileExt` (the log store).
pub struct SliceFile<'a>(pub &'a [u8]);

impl std::os::unix::fs::FileExt for SliceFile<'_> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(self.0.len());
        let n = buf.len().min(self.0.len() - start);
        buf[..n].copy_from_slice(&self.0[start..start + n]);
        Ok(n)
    }

    fn write_at(&self, _buf: &[u8], _offset: u64) -> io::Result<usize> {
        Err(io::Error::other("read-only"))
    }
}

/// Feeds entries to an `Assembler` as the state machine's apply loop does (state_machine.rs),
/// starting from the state the first transaction part was built on, and checks what comes out: a
/// transaction completed by the Assembler is read back from the entries (`for_each_page`, as the
/// applier reads its earlier parts from the log) and must satisfy every shape promise
/// `Txn::validate` makes: page numbers ascending within the database size, full pages. A valid
/// whole transaction is also split as the leader splits a large one (`Txn::into_parts`) and must
/// reassemble to itself.
pub fn apply_entries<'a>(entries: impl IntoIterator<Item = &'a Entry>) {
    let entries: Vec<&Entry> = entries.into_iter().collect();
    let mut asm = Assembler::default();
    let mut last_txn = None;
    for e in &entries {
        let EntryPayload::Normal(Request::Txn(t)) = &e.payload else {
            continue;
        };
        if t.part == 0 && t.last && t.validate().is_ok() {
            split_and_reassemble(t);
        }
        let last = *last_txn.get_or_insert(t.base_index);
        if let Fed::Complete(whole) = asm.feed(last, e.log_id.index, t.clone()) {
            if let Err(why) = whole.last.validate() {
                panic!("completed transaction fails validation: {why}");
            }
            assert!(whole.last.last, "completed at a part that is not the last");
            let read = |lo: u64, hi: u64| {
                Ok(entries
                    .iter()
                    .filter(|e| (lo..=hi).contains(&e.log_id.index))
                    .map(|e| (*e).clone())
                    .collect())
            };
            let mut prev = 0u32;
            let read_back = whole.for_each_page(read, |pg, image, _| {
                assert!(
                    pg > prev && pg <= whole.db_size(),
                    "page {pg} out of order or beyond the size"
                );
                assert_eq!(image.len(), whole.page_size() as usize);
                prev = pg;
                Ok(())
            });
            // Entries may repeat an index (decoded input): reading back may refuse, never panic.
            let _ = read_back;
            last_txn = Some(e.log_id.index);
        }
    }
}

/// `Txn::into_parts` then the `Assembler`, reading the parts back as the applier does: the
/// transaction comes back whole and unchanged.
pub fn split_and_reassemble(t: &Txn) {
    let mut asm = Assembler::default();
    let log: Vec<Entry> = t
        .clone()
        .into_parts()
        .into_iter()
        .enumerate()
        .map(|(i, p)| Entry {
            log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), i as u64 + 1),
            payload: EntryPayload::Normal(Request::Txn(p)),
        })
        .collect();
    let mut out = None;
    for e in &log {
        let EntryPayload::Normal(Request::Txn(p)) = &e.payload else {
            continue;
        };
        match asm.feed(t.base_index, e.log_id.index, p.clone()) {
            Fed::Complete(whole) => out = Some(whole),
            Fed::Staged => {}
            Fed::Stale => panic!("a part of a valid transaction was stale"),
        }
    }
    let Some(whole) = out else {
        panic!("a split transaction never completed");
    };
    let mut back = Txn {
        part: 0,
        last: true,
        ..whole.last.clone_header()
    };
    let read = |lo: u64, hi: u64| Ok(log[(lo - 1) as usize..hi as usize].to_vec());
    whole
        .for_each_page(read, |pg, image, _| {
            back.pgnos.push(pg);
            back.pages.extend_from_slice(image);
            Ok(())
        })
        .unwrap_or_else(|e| panic!("reading a split transaction back failed: {e}"));
    assert!(&back == t, "split and reassembled transaction differs");
}
