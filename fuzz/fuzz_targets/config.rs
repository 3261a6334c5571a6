//! Fuzz target `config`: the input is text, the first line a database URI (or just its query
//! string) and the rest, when there is a newline, the TOML configuration file (seeds are real
//! URIs and files, written by examples/gen_seeds.rs).
//!
//! Drives `config::Config::parse` with the URI's key/value pairs (split and %-decoded as SQLite
//! does) and the TOML text, and `parse_peers` with every value. A file named by `secret_file` or
//! `tls_*` reads as its own path, unless the path contains "missing". Checks that what parses is
//! consistent (the invariants config.rs promises), and that every error has a message.

#![no_main]

use libfuzzer_sys::fuzz_target;
use replicated::config::{config_file_path, parse_peers, Config, Sources};
use std::path::Path;
// Linked for its allocation bound (a global allocator), though nothing else of it is used here.
use replicated_fuzz as _;

/// SQLite's URI %-decoding (`sqlite3ParseUri`): `%HH` is a byte, anything else is itself.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn uri_pairs(line: &str) -> Vec<(String, String)> {
    let query = line.split_once('?').map_or(line, |(_, q)| q);
    let query = query.split_once('#').map_or(query, |(q, _)| q);
    query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (unescape(k), unescape(v))
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (line, toml) = match text.split_once('\n') {
        Some((l, t)) => (l, Some(("/etc/replicated.toml".to_string(), t.to_string()))),
        None => (&*text, None),
    };
    let uri = uri_pairs(line);
    let _ = config_file_path(&uri, Some("/env.toml".into()));
    for (_, v) in &uri {
        if let Ok(peers) = parse_peers(v) {
            assert!(!peers.is_empty() && peers.iter().all(|p| p.id > 0 && !p.addr.is_empty()));
            for (i, p) in peers.iter().enumerate() {
                assert!(peers[..i].iter().all(|q| q.id != p.id && q.addr != p.addr));
            }
        }
    }
    let read = |p: &Path| -> Result<String, String> {
        let s = p.to_string_lossy();
        if s.contains("missing") {
            Err("No such file or directory".into())
        } else {
            Ok(format!("{s}\n"))
        }
    };
    let src = Sources {
        db_path: Path::new("/d/app.db"),
        uri,
        toml,
        read_file: &read,
    };
    match Config::parse(&src) {
        Ok(c) => {
            assert!(c.node > 0);
            assert!(c.timeout_ms > 0 && c.heartbeat_ms > 0 && c.election_ms >= 2 * c.heartbeat_ms);
            assert_eq!(c.own_peer().is_some(), c.peers.is_some(), "this node must be in peers");
            assert!(!c.data.as_os_str().is_empty());
        }
        Err(e) => assert!(!e.0.is_empty()),
    }
});
