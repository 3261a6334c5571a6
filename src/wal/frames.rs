//! The `-wal` file format (SQLite `walformat.html`, `wal.c`), as this crate reads and writes it.
//!
//! ```text
//! WAL header, 32 bytes, big-endian u32 fields:
//!   0 magic 0x377f0682 (checksum words little-endian) or 0x377f0683 (big-endian)
//!   4 format version 3007000      8 page size        12 checkpoint sequence (nCkpt)
//!  16 salt-1   20 salt-2          24 checksum-1      28 checksum-2   (over bytes 0..24)
//! Frame n (1-based) at 32 + (n-1)*(page_size+24): a 24-byte header then the page:
//!   0 page number (> 0)   4 database size in pages after commit, 0 if not a commit frame
//!   8 salt-1   12 salt-2  16 checksum-1  20 checksum-2
//! ```
//! The checksum is cumulative: frame n continues from frame n-1 (frame 1 from the header's
//! checksum) over frame-header bytes 0..8 and the page. A frame is *valid* when its salts equal the
//! header's and the chain verifies from the header up to it; SQLite's recovery accepts exactly the
//! valid frames up to the last valid commit frame. Stale frames of older generations may carry
//! commit sizes, so validity, not the size field alone, decides what is committed.
//!
//! Everything here is bounds-checked: a short or hostile buffer gives `None`/`Err`, never a panic.

pub const WAL_HDR: usize = 32;
pub const FRAME_HDR: usize = 24;
pub const MAGIC_LE: u32 = 0x377f_0682;
pub const MAGIC_BE: u32 = 0x377f_0683;
pub const FORMAT_VERSION: u32 = 3_007_000;

pub fn be32(b: &[u8], off: usize) -> u32 {
    let mut w = [0u8; 4];
    if let Some(s) = b.get(off..off + 4) {
        w.copy_from_slice(s);
    }
    u32::from_be_bytes(w)
}

pub fn put_be32(b: &mut [u8], off: usize, v: u32) {
    if let Some(s) = b.get_mut(off..off + 4) {
        s.copy_from_slice(&v.to_be_bytes());
    }
}

/// SQLite's WAL checksum (`walChecksumBytes`): Fletcher-like over pairs of 32-bit words read in
/// the byte order the magic names. `data.len()` must be a multiple of 8 (true for 8-byte header
/// prefixes, 24-byte WAL headers and every legal page size); a trailing partial pair is ignored.
pub fn checksum(data: &[u8], seed: (u32, u32), big_endian: bool) -> (u32, u32) {
    let (mut s1, mut s2) = seed;
    for pair in data.chunks_exact(8) {
        let (x0, x1) = if big_endian {
            (
                u32::from_be_bytes([pair[0], pair[1], pair[2], pair[3]]),
                u32::from_be_bytes([pair[4], pair[5], pair[6], pair[7]]),
            )
        } else {
            (
                u32::from_le_bytes([pair[0], pair[1], pair[2], pair[3]]),
                u32::from_le_bytes([pair[4], pair[5], pair[6], pair[7]]),
            )
        };
        s1 = s1.wrapping_add(x0).wrapping_add(s2);
        s2 = s2.wrapping_add(x1).wrapping_add(s1);
    }
    (s1, s2)
}

/// A parsed, checksum-verified WAL header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalHeader {
    pub big_endian: bool,
    pub page_size: u32,
    pub ckpt_seq: u32,
    pub salt: [u8; 8],
    pub cksum: (u32, u32),
}

impl WalHeader {
    pub fn parse(b: &[u8]) -> Option<WalHeader> {
        if b.len() < WAL_HDR {
            return None;
        }
        let magic = be32(b, 0);
        if magic != MAGIC_LE && magic != MAGIC_BE {
            return None;
        }
        let big_endian = magic == MAGIC_BE;
        if be32(b, 4) != FORMAT_VERSION {
            return None;
        }
        let page_size = be32(b, 8);
        if !(512..=65536).contains(&page_size) || !page_size.is_power_of_two() {
            return None;
        }
        let ck = checksum(&b[..24], (0, 0), big_endian);
        if ck != (be32(b, 24), be32(b, 28)) {
            return None;
        }
        let mut salt = [0u8; 8];
        salt.copy_from_slice(&b[16..24]);
        Some(WalHeader {
            big_endian,
            page_size,
            ckpt_seq: be32(b, 12),
            salt,
            cksum: ck,
        })
    }

    /// A new header in this host's checksum byte order (what SQLite itself would write here).
    pub fn new(page_size: u32, ckpt_seq: u32, salt: [u8; 8]) -> WalHeader {
        let big_endian = cfg!(target_endian = "big");
        let mut h = WalHeader {
            big_endian,
            page_size,
            ckpt_seq,
            salt,
            cksum: (0, 0),
        };
        let b = h.encode();
        h.cksum = (be32(&b, 24), be32(&b, 28));
        h
    }

    pub fn encode(&self) -> [u8; WAL_HDR] {
        let mut b = [0u8; WAL_HDR];
        put_be32(&mut b, 0, if self.big_endian { MAGIC_BE } else { MAGIC_LE });
        put_be32(&mut b, 4, FORMAT_VERSION);
        put_be32(&mut b, 8, self.page_size);
        put_be32(&mut b, 12, self.ckpt_seq);
        b[16..24].copy_from_slice(&self.salt);
        let ck = checksum(&b[..24], (0, 0), self.big_endian);
        put_be32(&mut b, 24, ck.0);
        put_be32(&mut b, 28, ck.1);
        b
    }

    pub fn frame_size(&self) -> u64 {
        self.page_size as u64 + FRAME_HDR as u64
    }

    /// Byte offset of 1-based frame `n`.
    pub fn frame_offset(&self, n: u64) -> u64 {
        WAL_HDR as u64 + n.saturating_sub(1) * self.frame_size()
    }
}

/// The fields of one frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub pgno: u32,
    pub db_size: u32,
    pub salt: [u8; 8],
    pub cksum: (u32, u32),
}

impl FrameHeader {
    pub fn parse(b: &[u8]) -> Option<FrameHeader> {
        if b.len() < FRAME_HDR {
            return None;
        }
        let mut salt = [0u8; 8];
        salt.copy_from_slice(&b[8..16]);
        Some(FrameHeader {
            pgno: be32(b, 0),
            db_size: be32(b, 4),
            salt,
            cksum: (be32(b, 16), be32(b, 20)),
        })
    }

    /// Verifies `frame` (header + page) against the header's salts and the running checksum;
    /// returns the frame's cumulative checksum when valid.
    pub fn verify(hdr: &WalHeader, running: (u32, u32), frame: &[u8]) -> Option<(FrameHeader, (u32, u32))> {
        let fh = FrameHeader::parse(frame)?;
        if fh.pgno == 0 || fh.salt != hdr.salt || frame.len() != FRAME_HDR + hdr.page_size as usize {
            return None;
        }
        let ck = checksum(&frame[..8], running, hdr.big_endian);
        let ck = checksum(&frame[FRAME_HDR..], ck, hdr.big_endian);
        if ck != fh.cksum {
            return None;
        }
        Some((fh, ck))
    }
}

/// Builds a frame (header + page) continuing the chain from `running`; returns the new checksum.
pub fn encode_frame(
    hdr: &WalHeader,
    running: (u32, u32),
    pgno: u32,
    db_size: u32,
    page: &[u8],
    out: &mut Vec<u8>,
) -> (u32, u32) {
    out.clear();
    out.resize(FRAME_HDR, 0);
    put_be32(out, 0, pgno);
    put_be32(out, 4, db_size);
    out[8..16].copy_from_slice(&hdr.salt);
    let ck = checksum(&out[..8], running, hdr.big_endian);
    let ck = checksum(page, ck, hdr.big_endian);
    put_be32(out, 16, ck.0);
    put_be32(out, 20, ck.1);
    out.extend_from_slice(page);
    ck
}

/// A commit frame that SQLite's recovery would accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommitPoint {
    pub frame: u64,
    pub db_size: u32,
    pub cksum: (u32, u32),
}

/// Walks a WAL through `read_at(offset, buf) -> bool` (false = short read / end) and returns the
/// header and every valid commit frame, in order: exactly what recovery would accept.
pub fn scan(mut read_at: impl FnMut(u64, &mut [u8]) -> bool) -> Option<(WalHeader, Vec<CommitPoint>)> {
    let mut hb = [0u8; WAL_HDR];
    if !read_at(0, &mut hb) {
        return None;
    }
    let hdr = WalHeader::parse(&hb)?;
    let mut buf = vec![0u8; hdr.frame_size() as usize];
    let mut running = hdr.cksum;
    let mut commits = Vec::new();
    let mut n = 1u64;
    while read_at(hdr.frame_offset(n), &mut buf) {
        match FrameHeader::verify(&hdr, running, &buf) {
            Some((fh, ck)) => {
                running = ck;
                if fh.db_size != 0 {
                    commits.push(CommitPoint {
                        frame: n,
                        db_size: fh.db_size,
                        cksum: ck,
                    });
                }
            }
            None => break,
        }
        n += 1;
    }
    Some((hdr, commits))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_roundtrip_and_corruption() {
        let h = WalHeader::new(4096, 3, [1, 2, 3, 4, 5, 6, 7, 8]);
        let b = h.encode();
        assert_eq!(WalHeader::parse(&b), Some(h));
        for i in 0..WAL_HDR {
            let mut c = b;
            c[i] ^= 0x40;
            assert_ne!(WalHeader::parse(&c), Some(h), "byte {i} flip undetected");
        }
        assert_eq!(WalHeader::parse(&b[..31]), None);
    }

    #[test]
    fn scan_finds_commits_and_stops_at_break() {
        let h = WalHeader::new(512, 0, [9; 8]);
        let mut file = h.encode().to_vec();
        let mut run = h.cksum;
        let mut fr = Vec::new();
        for (i, commit) in [(1u32, 0u32), (2, 2), (3, 0), (1, 3)] {
            run = encode_frame(&h, run, i, commit, &[i as u8; 512], &mut fr);
            file.extend_from_slice(&fr);
        }
        let read = |f: &Vec<u8>| {
            let f = f.clone();
            move |off: u64, buf: &mut [u8]| {
                let o = off as usize;
                match f.get(o..o + buf.len()) {
                    Some(s) => {
                        buf.copy_from_slice(s);
                        true
                    }
                    None => false,
                }
            }
        };
        let (_, commits) = scan(read(&file)).unwrap_or_else(|| panic!("scan"));
        assert_eq!(
            commits.iter().map(|c| (c.frame, c.db_size)).collect::<Vec<_>>(),
            vec![(2, 2), (4, 3)]
        );
        // Corrupt frame 3's page: only the first commit survives.
        let off = h.frame_offset(3) as usize + FRAME_HDR + 7;
        file[off] ^= 1;
        let (_, commits) = scan(read(&file)).unwrap_or_else(|| panic!("scan"));
        assert_eq!(commits.len(), 1);
        // Truncated mid-frame: same.
        file.truncate(h.frame_offset(4) as usize + 10);
        let (_, commits) = scan(read(&file)).unwrap_or_else(|| panic!("scan"));
        assert_eq!(commits.len(), 1);
    }

    #[test]
    fn checksum_known_vector() {
        // Little-endian words (1,2) then (3,4): s1=1+0=1, s2=2+1=3; s1=1+3+3=7, s2=3+4+7=14.
        let d = [1u32, 2, 3, 4].iter().flat_map(|w| w.to_le_bytes()).collect::<Vec<_>>();
        assert_eq!(checksum(&d, (0, 0), false), (7, 14));
    }
}
