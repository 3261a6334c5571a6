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
/// starting from the state the first transaction part was built on, and checks what comes out:
/// a transaction yielded whole must satisfy every shape promise `Txn::validate` makes, so that
/// applying it (`Txn::page`) cannot go out of bounds. A valid whole transaction is also split as
/// the leader splits a large one (`Txn::into_parts`) and must reassemble to itself.
pub fn apply_entries<'a>(entries: impl IntoIterator<Item = &'a Entry>) {
    let mut asm = Assembler::default();
    let mut last_txn = None;
    for e in entries {
        let EntryPayload::Normal(Request::Txn(t)) = &e.payload else {
            continue;
        };
        if t.part == 0 && t.last && t.validate().is_ok() {
            split_and_reassemble(t);
        }
        let last = *last_txn.get_or_insert(t.base_index);
        if let Fed::Complete(whole) = asm.feed(last, t.clone()) {
            if let Err(why) = whole.validate() {
                panic!("assembled transaction fails validation: {why}");
            }
            assert!(
                whole.last && whole.part == 0,
                "assembled transaction is not marked whole"
            );
            let bytes: usize = (0..whole.pgnos.len()).map(|i| whole.page(i).len()).sum();
            assert_eq!(bytes, whole.pages.len());
            last_txn = Some(e.log_id.index);
        }
    }
}

/// `Txn::into_parts` then the `Assembler`: the transaction comes back whole and unchanged.
pub fn split_and_reassemble(t: &Txn) {
    let mut asm = Assembler::default();
    let mut out = None;
    for part in t.clone().into_parts() {
        match asm.feed(t.base_index, part) {
            Fed::Complete(whole) => out = Some(whole),
            Fed::Staged => {}
            Fed::Stale => panic!("a part of a valid transaction was stale"),
        }
    }
    assert!(out.as_ref() == Some(t), "split and reassembled transaction differs");
}
