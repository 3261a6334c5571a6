//! Fuzz target `log_segment`: the input is `[first index: u64 LE][segment file bytes]`, a Raft log
//! segment as recovery finds it after a crash, a torn write or bit rot (seeds are real segments
//! written by the log store, from examples/gen_seeds.rs).
//!
//! Drives the log store's recovery scan (`raft::log_store::check_segment`: record framing, length
//! bound, crc32, postcard decoding of each openraft entry, index sequence). Besides "never panic,
//! never allocate what a length field asks", it checks recovery's promises: the valid records are
//! consecutive from `first` and end inside the file; what follows them is a defect, or zeros
//! (preallocated space); and after cutting the file at the valid end, as `open` does, a second scan
//! finds the same records and no defect.

#![no_main]

use libfuzzer_sys::fuzz_target;
use replicated::raft::log_store::check_segment;
use replicated_fuzz::SliceFile;
use std::io::ErrorKind;

fuzz_target!(|data: &[u8]| {
    let Some((first, seg)) = data.split_first_chunk::<8>() else {
        return;
    };
    let first = u64::from_le_bytes(*first);
    let len = seg.len() as u64;
    let (ids, end, defect) = match check_segment(&SliceFile(seg), len, first) {
        Ok(r) => r,
        Err(e) => {
            // Only corruption (a well-formed record with the wrong index) is an error.
            assert_eq!(e.kind(), ErrorKind::InvalidData, "{e}");
            return;
        }
    };
    assert!(end <= len);
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(
            Some(id.index),
            first.checked_add(i as u64),
            "records are not consecutive"
        );
    }
    match &defect {
        Some(why) => assert!(end < len && !why.is_empty()),
        None => assert!(
            seg[end as usize..].iter().all(|b| *b == 0),
            "a clean end followed by data"
        ),
    }
    let cut = &seg[..end as usize];
    match check_segment(&SliceFile(cut), end, first) {
        Ok((again, again_end, None)) => assert!(again == ids && again_end == end),
        other => panic!("the recovered prefix does not scan cleanly: {other:?}"),
    }
});
