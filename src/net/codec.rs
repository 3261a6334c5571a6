//! Bounded framing for the transport: pure functions, no I/O.
//!
//! This module owns the byte layout of everything the transport puts on a QUIC stream, and the
//! checks that make every read bounded. It never allocates a buffer whose size came from the
//! wire before that size has been compared with the limit.
//!
//! WIRE FORMAT (all integers little-endian)
//!
//! One RPC uses one bidirectional stream. The caller writes one request and finishes its side;
//! the server writes one response and finishes its side:
//!
//! ```text
//!     request:   [kind u8][len u32][body: len bytes]
//!     response:  [status u8][len u32][body: len bytes]     status 0 = ok, 1 = remote error
//! ```
//!
//! `kind` is opaque to the transport (the Raft glue numbers its RPCs). A remote-error body is a
//! UTF-8 message (decoded lossily). Nothing may follow `body`: a stream that carries more bytes
//! than its header announced, or fewer, is malformed.
//!
//! The first bidirectional stream of every connection carries the hello, not an RPC (see auth.rs
//! for what it proves):
//!
//! ```text
//!     hello:     [version u8 = 1][mode u8][node_id u64][proof: 32 bytes, present iff mode = 1]
//!                mode 1 = shared-secret proof, mode 2 = mutual TLS (the certificate is the proof)
//! ```
//!
//! BOUNDS
//!
//! * A length above the limit (`NetConfig::max_message`, [`MAX_MESSAGE`] by default) is
//!   [`CodecError::TooLarge`], reported from the 5-byte header alone, before any allocation. The
//!   sender applies the same check before writing anything.
//! * Lengths travel as u32, so a limit above `u32::MAX` is clamped to it ([`clamp_limit`]).
//! * A hello is at most [`HELLO_MAX`] bytes; anything else in its place is [`CodecError::BadHello`].

use std::fmt;

/// Default bound on one request or response body: 96 MiB (Raft entries are split far below this;
/// a snapshot travels on its own streams in chunks).
pub const MAX_MESSAGE: usize = 96 << 20;
/// Bytes in a request or response header.
pub const HEADER_LEN: usize = 5;
/// Response status: the handler succeeded; the body is its answer.
pub const STATUS_OK: u8 = 0;
/// Response status: the handler failed; the body is its message.
pub const STATUS_ERR: u8 = 1;

/// Version byte of the hello.
pub const HELLO_VERSION: u8 = 1;
/// Hello mode: the shared-secret proof follows the node id.
pub const HELLO_MODE_SECRET: u8 = 1;
/// Hello mode: mutual TLS; no proof field.
pub const HELLO_MODE_TLS: u8 = 2;
/// Length of an HMAC-SHA256 proof.
pub const PROOF_LEN: usize = 32;
/// Largest well-formed hello (the secret-mode one).
pub const HELLO_MAX: usize = 2 + 8 + PROOF_LEN;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CodecError {
    /// A length above the limit, refused before allocating.
    TooLarge { size: usize, limit: usize },
    /// The stream ended before the announced number of bytes.
    Truncated { expected: usize, got: usize },
    /// Bytes after the announced body.
    Trailing { extra: usize },
    /// A response status other than 0 or 1.
    BadStatus(u8),
    /// A hello that is not exactly one of the two accepted shapes.
    BadHello(String),
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CodecError::TooLarge { size, limit } => {
                write!(f, "message of {size} bytes exceeds the limit of {limit} bytes")
            }
            CodecError::Truncated { expected, got } => {
                write!(f, "message truncated: {got} of {expected} bytes")
            }
            CodecError::Trailing { extra } => write!(f, "{extra} unexpected bytes after the message"),
            CodecError::BadStatus(s) => write!(f, "unknown response status {s}"),
            CodecError::BadHello(why) => write!(f, "malformed hello: {why}"),
        }
    }
}

impl std::error::Error for CodecError {}

/// The limit actually enforced: lengths are u32 on the wire.
pub fn clamp_limit(limit: usize) -> usize {
    limit.min(u32::MAX as usize)
}

fn check_len(len: usize, limit: usize) -> Result<u32, CodecError> {
    let limit = clamp_limit(limit);
    if len > limit {
        return Err(CodecError::TooLarge { size: len, limit });
    }
    // len <= limit <= u32::MAX, so this cannot fail; keep it checked anyway.
    u32::try_from(len).map_err(|_| CodecError::TooLarge { size: len, limit })
}

fn header(tag: u8, len: usize, limit: usize) -> Result<[u8; HEADER_LEN], CodecError> {
    let len = check_len(len, limit)?;
    let mut h = [0u8; HEADER_LEN];
    h[0] = tag;
    h[1..].copy_from_slice(&len.to_le_bytes());
    Ok(h)
}

fn parse_header(h: &[u8; HEADER_LEN], limit: usize) -> Result<(u8, usize), CodecError> {
    let len = u32::from_le_bytes([h[1], h[2], h[3], h[4]]) as usize;
    check_len(len, limit)?;
    Ok((h[0], len))
}

/// Header of a request whose body is `len` bytes; TooLarge above `limit`.
pub fn request_header(kind: u8, len: usize, limit: usize) -> Result<[u8; HEADER_LEN], CodecError> {
    header(kind, len, limit)
}

/// `(kind, body length)` of a request header; TooLarge above `limit`.
pub fn parse_request_header(h: &[u8; HEADER_LEN], limit: usize) -> Result<(u8, usize), CodecError> {
    parse_header(h, limit)
}

/// Header of a response; `ok` selects the status.
pub fn response_header(ok: bool, len: usize, limit: usize) -> Result<[u8; HEADER_LEN], CodecError> {
    header(if ok { STATUS_OK } else { STATUS_ERR }, len, limit)
}

/// `(ok, body length)` of a response header; BadStatus for a status other than 0/1, TooLarge
/// above `limit` (the status is checked first: a garbage header is reported as such).
pub fn parse_response_header(h: &[u8; HEADER_LEN], limit: usize) -> Result<(bool, usize), CodecError> {
    let ok = match h[0] {
        STATUS_OK => true,
        STATUS_ERR => false,
        s => return Err(CodecError::BadStatus(s)),
    };
    let (_, len) = parse_header(h, limit)?;
    Ok((ok, len))
}

/// After a header announced `expected` body bytes, check what the stream actually carried.
pub fn check_body(expected: usize, got: usize) -> Result<(), CodecError> {
    match got.cmp(&expected) {
        std::cmp::Ordering::Less => Err(CodecError::Truncated { expected, got }),
        std::cmp::Ordering::Greater => Err(CodecError::Trailing { extra: got - expected }),
        std::cmp::Ordering::Equal => Ok(()),
    }
}

fn split_header(buf: &[u8]) -> Result<(&[u8; HEADER_LEN], &[u8]), CodecError> {
    match buf.split_first_chunk::<HEADER_LEN>() {
        Some((h, rest)) => Ok((h, rest)),
        None => Err(CodecError::Truncated {
            expected: HEADER_LEN,
            got: buf.len(),
        }),
    }
}

/// A whole request in one buffer (used by tests and tools; the transport streams header and body
/// separately so a large body is never copied).
pub fn encode_request(kind: u8, body: &[u8], limit: usize) -> Result<Vec<u8>, CodecError> {
    let h = request_header(kind, body.len(), limit)?;
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&h);
    out.extend_from_slice(body);
    Ok(out)
}

/// Decode a whole request; every malformation is an error.
pub fn decode_request(buf: &[u8], limit: usize) -> Result<(u8, &[u8]), CodecError> {
    let (h, rest) = split_header(buf)?;
    let (kind, len) = parse_request_header(h, limit)?;
    check_body(len, rest.len())?;
    Ok((kind, rest))
}

/// A whole response in one buffer.
pub fn encode_response(result: Result<&[u8], &str>, limit: usize) -> Result<Vec<u8>, CodecError> {
    let (ok, body) = match result {
        Ok(b) => (true, b),
        Err(m) => (false, m.as_bytes()),
    };
    let h = response_header(ok, body.len(), limit)?;
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&h);
    out.extend_from_slice(body);
    Ok(out)
}

/// Decode a whole response into `Ok(body)` or `Err(remote message)`.
pub fn decode_response(buf: &[u8], limit: usize) -> Result<Result<Vec<u8>, String>, CodecError> {
    let (h, rest) = split_header(buf)?;
    let (ok, len) = parse_response_header(h, limit)?;
    check_body(len, rest.len())?;
    Ok(response_from_parts(ok, rest.to_vec()))
}

/// Turn a decoded status and body into the caller's result.
pub fn response_from_parts(ok: bool, body: Vec<u8>) -> Result<Vec<u8>, String> {
    if ok {
        Ok(body)
    } else {
        Err(String::from_utf8_lossy(&body).into_owned())
    }
}

/// The first message each side sends on a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    pub node_id: u64,
    /// The HMAC proof in shared-secret mode; `None` in mutual-TLS mode.
    pub proof: Option<[u8; PROOF_LEN]>,
}

pub fn encode_hello(h: &Hello) -> Vec<u8> {
    let mut out = Vec::with_capacity(HELLO_MAX);
    out.push(HELLO_VERSION);
    out.push(if h.proof.is_some() {
        HELLO_MODE_SECRET
    } else {
        HELLO_MODE_TLS
    });
    out.extend_from_slice(&h.node_id.to_le_bytes());
    if let Some(p) = &h.proof {
        out.extend_from_slice(p);
    }
    out
}

/// Decode a hello, requiring the mode this node runs (`secret` true: a proof must be present).
/// Node id 0 is never valid (ids are > 0 everywhere in the configuration).
pub fn decode_hello(buf: &[u8], secret: bool) -> Result<Hello, CodecError> {
    let bad = |why: &str| Err(CodecError::BadHello(why.to_string()));
    if buf.len() < 2 {
        return bad("too short");
    }
    if buf[0] != HELLO_VERSION {
        return bad(&format!("unsupported version {}", buf[0]));
    }
    let want_mode = if secret { HELLO_MODE_SECRET } else { HELLO_MODE_TLS };
    if buf[1] != want_mode {
        return bad(&format!(
            "authentication mode {} where {} was expected",
            buf[1], want_mode
        ));
    }
    let want_len = if secret { HELLO_MAX } else { 2 + 8 };
    if buf.len() != want_len {
        return bad(&format!("{} bytes where {} were expected", buf.len(), want_len));
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(&buf[2..10]);
    let node_id = u64::from_le_bytes(id);
    if node_id == 0 {
        return bad("node id 0");
    }
    let proof = if secret {
        let mut p = [0u8; PROOF_LEN];
        p.copy_from_slice(&buf[10..]);
        Some(p)
    } else {
        None
    };
    Ok(Hello { node_id, proof })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_roundtrip() {
        let m = encode_request(7, b"hello", 100).unwrap();
        assert_eq!(m, [7, 5, 0, 0, 0, b'h', b'e', b'l', b'l', b'o']);
        assert_eq!(decode_request(&m, 100).unwrap(), (7, &b"hello"[..]));
        let empty = encode_request(0, b"", 0).unwrap();
        assert_eq!(decode_request(&empty, 0).unwrap(), (0, &b""[..]));
    }

    #[test]
    fn response_roundtrip() {
        let ok = encode_response(Ok(b"abc"), 10).unwrap();
        assert_eq!(ok[0], STATUS_OK);
        assert_eq!(decode_response(&ok, 10).unwrap(), Ok(b"abc".to_vec()));
        let err = encode_response(Err("no leader"), 10).unwrap();
        assert_eq!(err[0], STATUS_ERR);
        assert_eq!(decode_response(&err, 10).unwrap(), Err("no leader".to_string()));
        // A non-UTF-8 error body is shown, not refused.
        let raw = [STATUS_ERR, 2, 0, 0, 0, 0xff, b'x'];
        assert_eq!(decode_response(&raw, 10).unwrap(), Err("\u{fffd}x".to_string()));
    }

    #[test]
    fn sender_refuses_above_limit() {
        assert_eq!(
            encode_request(1, &[0u8; 11], 10),
            Err(CodecError::TooLarge { size: 11, limit: 10 })
        );
        assert!(encode_request(1, &[0u8; 10], 10).is_ok());
        assert_eq!(
            response_header(true, 11, 10),
            Err(CodecError::TooLarge { size: 11, limit: 10 })
        );
    }

    #[test]
    fn receiver_refuses_large_length_from_header_alone() {
        // Header announces 4 GiB - 1 with no body: refused as TooLarge, not Truncated, so the
        // reader never waits for (or allocates) the body.
        let h = [3, 0xff, 0xff, 0xff, 0xff];
        assert_eq!(
            parse_request_header(&h, MAX_MESSAGE),
            Err(CodecError::TooLarge {
                size: u32::MAX as usize,
                limit: MAX_MESSAGE
            })
        );
        assert_eq!(
            decode_request(&h, MAX_MESSAGE),
            Err(CodecError::TooLarge {
                size: u32::MAX as usize,
                limit: MAX_MESSAGE
            })
        );
        let r = [STATUS_OK, 0, 0, 0, 0x10];
        assert_eq!(
            parse_response_header(&r, 1024),
            Err(CodecError::TooLarge {
                size: 0x1000_0000,
                limit: 1024
            })
        );
    }

    #[test]
    fn malformed_messages() {
        assert_eq!(
            decode_request(&[], 10),
            Err(CodecError::Truncated { expected: 5, got: 0 })
        );
        assert_eq!(
            decode_request(&[1, 2, 0], 10),
            Err(CodecError::Truncated { expected: 5, got: 3 })
        );
        assert_eq!(
            decode_request(&[1, 4, 0, 0, 0, 9], 10),
            Err(CodecError::Truncated { expected: 4, got: 1 })
        );
        assert_eq!(
            decode_request(&[1, 1, 0, 0, 0, 9, 9, 9], 10),
            Err(CodecError::Trailing { extra: 2 })
        );
        assert_eq!(decode_response(&[2, 0, 0, 0, 0], 10), Err(CodecError::BadStatus(2)));
        assert_eq!(
            decode_response(&[0xff, 0xff, 0xff, 0xff, 0xff], 10),
            Err(CodecError::BadStatus(0xff))
        );
        assert_eq!(
            decode_response(&[0, 3, 0, 0, 0, 1], 10),
            Err(CodecError::Truncated { expected: 3, got: 1 })
        );
    }

    #[test]
    fn limit_is_clamped_to_u32() {
        assert_eq!(clamp_limit(usize::MAX), u32::MAX as usize);
        assert!(request_header(0, u32::MAX as usize, usize::MAX).is_ok());
        if usize::BITS > 32 {
            assert!(matches!(
                request_header(0, u32::MAX as usize + 1, usize::MAX),
                Err(CodecError::TooLarge { .. })
            ));
        }
    }

    #[test]
    fn hello_roundtrip_and_malformed() {
        let s = Hello {
            node_id: 3,
            proof: Some([7u8; PROOF_LEN]),
        };
        let b = encode_hello(&s);
        assert_eq!(b.len(), HELLO_MAX);
        assert_eq!(decode_hello(&b, true).unwrap(), s);
        let t = Hello {
            node_id: u64::MAX,
            proof: None,
        };
        let bt = encode_hello(&t);
        assert_eq!(bt.len(), 10);
        assert_eq!(decode_hello(&bt, false).unwrap(), t);

        // Mode mismatch both ways.
        assert!(matches!(decode_hello(&b, false), Err(CodecError::BadHello(_))));
        assert!(matches!(decode_hello(&bt, true), Err(CodecError::BadHello(_))));
        // Wrong version, short, long, id 0.
        let mut v = b.clone();
        v[0] = 2;
        assert!(matches!(decode_hello(&v, true), Err(CodecError::BadHello(_))));
        assert!(matches!(
            decode_hello(&b[..HELLO_MAX - 1], true),
            Err(CodecError::BadHello(_))
        ));
        let mut long = b.clone();
        long.push(0);
        assert!(matches!(decode_hello(&long, true), Err(CodecError::BadHello(_))));
        assert!(matches!(decode_hello(&[], true), Err(CodecError::BadHello(_))));
        assert!(matches!(decode_hello(&[1], false), Err(CodecError::BadHello(_))));
        let zero = encode_hello(&Hello {
            node_id: 0,
            proof: None,
        });
        assert!(matches!(decode_hello(&zero, false), Err(CodecError::BadHello(_))));
    }

    #[test]
    fn every_short_prefix_of_a_valid_message_is_rejected() {
        let m = encode_request(9, b"0123456789", 100).unwrap();
        for n in 0..m.len() {
            assert!(decode_request(&m[..n], 100).is_err(), "prefix {n}");
        }
        let r = encode_response(Ok(b"xyz"), 100).unwrap();
        for n in 0..r.len() {
            assert!(decode_response(&r[..n], 100).is_err(), "prefix {n}");
        }
        let h = encode_hello(&Hello {
            node_id: 5,
            proof: Some([1; PROOF_LEN]),
        });
        for n in 0..h.len() {
            assert!(decode_hello(&h[..n], true).is_err(), "prefix {n}");
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A small deterministic fuzz: xorshift bytes of every length up to 64.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for len in 0..64 {
            for _ in 0..50 {
                let buf: Vec<u8> = (0..len)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x as u8
                    })
                    .collect();
                let _ = decode_request(&buf, 32);
                let _ = decode_response(&buf, 32);
                let _ = decode_hello(&buf, true);
                let _ = decode_hello(&buf, false);
            }
        }
    }
}
