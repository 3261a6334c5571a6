//! Writes the committed seed corpus, `fuzz/corpus/<target>/`, from the real producers of each
//! input: WAL files written by the `sqlite3` shell, requests and answers encoded by the transport
//! and the Raft glue, segments written by the log store, configuration as a user writes it.
//! Regenerate with `cd fuzz && cargo run --example gen_seeds` (a plain build: no sanitizer, no
//! libFuzzer). Files are overwritten by name; a seed that is no longer generated must be deleted
//! by hand. To drop seeds that add no coverage: `target/<triple>/release/<target> -merge=1 NEW
//! corpus/<target>`, then replace `corpus/<target>` with NEW.

use openraft::error::{Fatal, RaftError};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse};
use openraft::storage::RaftLogStorageExt;
use openraft::testing::log_id;
use openraft::{BasicNode, Entry, EntryPayload, Membership, SnapshotMeta, StoredMembership, Vote};
use replicated::net::codec::{self, Hello, MAX_MESSAGE, PROOF_LEN};
use replicated::raft::log_store::{check_segment, LogStore};
use replicated::raft::network::{self as net, encode, Chunk, Done};
use replicated::raft::types::{Request, Txn, TypeConfig};
use replicated::wal::frames::{encode_frame, WalHeader};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn main() -> Res<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    wal_seeds(&root.join("wal_frames"))?;
    wire_seeds(&root.join("wire"))?;
    config_seeds(&root.join("config"))?;
    log_seeds(&root.join("log_segment"))?;
    Ok(())
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> Res<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join(name), bytes)?;
    println!("{:>7} {}", bytes.len(), dir.join(name).display());
    Ok(())
}

// ---- wal_frames ----------------------------------------------------------------------------------

/// Runs `sql` in the sqlite3 shell on a fresh database in WAL mode with `page_size` (and the
/// pragmas `pre`, which must precede WAL mode), copies the `-wal` file while the connection still
/// has it open (closing would checkpoint and delete it).
fn sqlite_wal(page_size: u32, pre: &str, sql: &str) -> Res<Vec<u8>> {
    let dir = std::env::temp_dir().join(format!("replicated-seeds-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let db = dir.join("seed.db");
    let copy = dir.join("seed.wal");
    for p in [&db, &copy] {
        let _ = std::fs::remove_file(p);
    }
    let script = format!(
        "PRAGMA page_size={page_size};\n{pre}\nPRAGMA journal_mode=WAL;\nPRAGMA wal_autocheckpoint=0;\n\
         {sql}\n.shell cp '{db}-wal' '{copy}'\n",
        db = db.display(),
        copy = copy.display()
    );
    let mut child = Command::new("sqlite3")
        .arg(&db)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()?;
    child.stdin.take().ok_or("no stdin")?.write_all(script.as_bytes())?;
    if !child.wait()?.success() {
        return Err("sqlite3 failed".into());
    }
    let wal = std::fs::read(&copy)?;
    std::fs::remove_dir_all(&dir)?;
    Ok(wal)
}

fn wal_seeds(dir: &Path) -> Res<()> {
    let small = sqlite_wal(
        512,
        "",
        "CREATE TABLE t(k INTEGER PRIMARY KEY, v TEXT);\n\
         INSERT INTO t(v) VALUES ('one');\n\
         BEGIN; INSERT INTO t(v) VALUES ('two'); INSERT INTO t(v) VALUES (randomblob(300)); COMMIT;\n\
         UPDATE t SET v = 'uno' WHERE k = 1;",
    )?;
    write(dir, "sqlite-512-four-commits.wal", &small)?;
    // A transaction over several pages (a b-tree split), then one that frees most of them: with
    // auto-vacuum the database shrinks at that commit, below pages the transaction wrote.
    write(
        dir,
        "sqlite-1024-split-then-delete.wal",
        &sqlite_wal(
            1024,
            "PRAGMA auto_vacuum=FULL;",
            "CREATE TABLE b(x BLOB);\nINSERT INTO b SELECT randomblob(200) FROM generate_series(1, 60);\n\
             DELETE FROM b WHERE rowid > 2;",
        )?,
    )?;
    // After a RESTART checkpoint the next writer starts the WAL over with new salts: the frames of
    // the old generation behind the new ones are stale and must stop the scan.
    write(
        dir,
        "sqlite-512-restart-stale-tail.wal",
        &sqlite_wal(
            512,
            "",
            "CREATE TABLE t(v);\nINSERT INTO t VALUES (randomblob(400));\nINSERT INTO t VALUES (randomblob(400));\n\
             INSERT INTO t VALUES (randomblob(400));\nPRAGMA wal_checkpoint(RESTART);\nINSERT INTO t VALUES (1);",
        )?,
    )?;
    write(
        dir,
        "sqlite-4096-two-commits.wal",
        &sqlite_wal(4096, "", "CREATE TABLE t(v);\nINSERT INTO t VALUES ('x');")?,
    )?;
    // A torn last frame, and a flipped bit in the second frame's page.
    let fsize = 512 + 24;
    write(dir, "sqlite-512-torn.wal", &small[..small.len() - fsize / 2])?;
    let mut flipped = small.clone();
    flipped[32 + fsize + 24 + 100] ^= 0x10;
    write(dir, "sqlite-512-bitflip.wal", &flipped)?;
    // Big-endian checksums (magic 0x377f0683): SQLite writes these on big-endian hosts.
    let mut h = WalHeader::new(512, 7, *b"saltSALT");
    h.big_endian = true;
    let enc = h.encode();
    let h = WalHeader::parse(&enc).ok_or("big-endian header")?;
    let (mut out, mut run, mut fr) = (enc.to_vec(), h.cksum, Vec::new());
    for (pgno, commit) in [(1u32, 0u32), (2, 2), (2, 0), (3, 3)] {
        run = encode_frame(&h, run, pgno, commit, &[pgno as u8; 512], &mut fr);
        out.extend_from_slice(&fr);
    }
    write(dir, "synthetic-512-big-endian.wal", &out)?;
    write(dir, "header-only.wal", &small[..32])?;
    Ok(())
}

// ---- wire ----------------------------------------------------------------------------------------

fn txn(txn_id: u64, base_index: u64, pgnos: &[u32], part: u32, last: bool) -> Txn {
    Txn {
        origin: 1,
        txn_id,
        base_index,
        page_size: 512,
        db_size: 8,
        pgnos: pgnos.to_vec(),
        pages: pgnos.iter().flat_map(|p| [*p as u8; 512]).collect(),
        part,
        last,
    }
}

fn txn_entry(term: u64, index: u64, t: Txn) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(term, 1, index),
        payload: EntryPayload::Normal(Request::Txn(t)),
    }
}

fn membership() -> Membership<u64, BasicNode> {
    let nodes: BTreeMap<u64, BasicNode> = (1..=3)
        .map(|i| (i, BasicNode::new(format!("127.0.0.1:700{i}"))))
        .collect();
    Membership::new(vec![BTreeSet::from([1, 2, 3])], nodes)
}

fn membership_entry(term: u64, index: u64) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(term, 1, index),
        payload: EntryPayload::Membership(membership()),
    }
}

fn request(kind: u8, body: &[u8]) -> Res<Vec<u8>> {
    Ok(codec::encode_request(kind, body, MAX_MESSAGE)?)
}

fn ok_response(body: Result<Vec<u8>, String>) -> Res<Vec<u8>> {
    Ok(codec::encode_response(Ok(&body?), MAX_MESSAGE)?)
}

fn wire_seeds(dir: &Path) -> Res<()> {
    let vote = Vote::new_committed(3, 1);
    let heartbeat = AppendEntriesRequest::<TypeConfig> {
        vote,
        prev_log_id: Some(log_id(3, 1, 41)),
        entries: vec![],
        leader_commit: Some(log_id(3, 1, 41)),
    };
    write(
        dir,
        "req-append-heartbeat",
        &request(net::APPEND, &encode(&heartbeat)?)?,
    )?;
    let append = AppendEntriesRequest::<TypeConfig> {
        vote,
        prev_log_id: None,
        entries: vec![
            membership_entry(1, 0),
            Entry {
                log_id: log_id(1, 1, 1),
                payload: EntryPayload::Blank,
            },
            txn_entry(1, 2, txn(7, 0, &[1, 2], 0, true)),
            txn_entry(1, 3, txn(8, 2, &[2, 5], 0, true)),
        ],
        leader_commit: Some(log_id(1, 1, 1)),
    };
    write(dir, "req-append-entries", &request(net::APPEND, &encode(&append)?)?)?;
    // A transaction split over three entries, as `Txn::into_parts` cuts a large one.
    let parts = AppendEntriesRequest::<TypeConfig> {
        vote,
        prev_log_id: Some(log_id(3, 1, 9)),
        entries: vec![
            txn_entry(3, 10, txn(9, 4, &[1, 3], 0, false)),
            txn_entry(3, 11, txn(9, 4, &[4], 1, false)),
            txn_entry(3, 12, txn(9, 4, &[6, 7, 8], 2, true)),
        ],
        leader_commit: Some(log_id(3, 1, 9)),
    };
    write(dir, "req-append-split-txn", &request(net::APPEND, &encode(&parts)?)?)?;
    let vreq = VoteRequest::<u64>::new(Vote::new(4, 2), Some(log_id(3, 1, 12)));
    write(dir, "req-vote", &request(net::VOTE, &encode(&vreq)?)?)?;
    write(dir, "req-read-index", &request(net::READ_INDEX, &[])?)?;
    write(dir, "req-applied", &request(net::APPLIED, &encode(&12345u64)?)?)?;
    write(dir, "req-campaign", &request(net::CAMPAIGN, &[])?)?;
    write(dir, "req-unknown-kind", &request(3, b"?")?)?;
    let chunk = Chunk {
        id: "41-3-40".into(),
        offset: 1024,
        total: 4096,
        data: vec![0xa5; 64],
    };
    write(
        dir,
        "req-snapshot-chunk",
        &request(net::SNAPSHOT_CHUNK, &encode(&chunk)?)?,
    )?;
    let meta = SnapshotMeta {
        last_log_id: Some(log_id(3, 1, 41)),
        last_membership: StoredMembership::new(Some(log_id(1, 1, 0)), membership()),
        snapshot_id: "41-3-40".into(),
    };
    let done = Done {
        id: "41-3-40".into(),
        total: 4096,
        vote,
        meta,
    };
    write(dir, "req-snapshot-done", &request(net::SNAPSHOT_DONE, &encode(&done)?)?)?;

    type AppendAnswer = Result<AppendEntriesResponse<u64>, RaftError<u64>>;
    write(
        dir,
        "resp-append-success",
        &ok_response(encode(&AppendAnswer::Ok(AppendEntriesResponse::Success)))?,
    )?;
    let partial = AppendAnswer::Ok(AppendEntriesResponse::PartialSuccess(Some(log_id(3, 1, 11))));
    write(dir, "resp-append-partial", &ok_response(encode(&partial))?)?;
    let higher = AppendAnswer::Ok(AppendEntriesResponse::HigherVote(Vote::new(5, 3)));
    write(dir, "resp-append-higher-vote", &ok_response(encode(&higher))?)?;
    write(
        dir,
        "resp-append-stopped",
        &ok_response(encode(&AppendAnswer::Err(Fatal::Stopped.into())))?,
    )?;
    let granted: Result<VoteResponse<u64>, RaftError<u64>> = Ok(VoteResponse::new(Vote::new(4, 2), None, true));
    write(dir, "resp-vote-granted", &ok_response(encode(&granted))?)?;
    write(dir, "resp-read-index", &ok_response(encode(&41u64))?)?;
    write(dir, "resp-unit", &ok_response(encode(&()))?)?;
    let installed: Result<SnapshotResponse<u64>, String> = Ok(SnapshotResponse::new(vote));
    write(dir, "resp-snapshot-installed", &ok_response(encode(&installed))?)?;
    let remote = codec::encode_response(Err("node is starting"), MAX_MESSAGE)?;
    write(dir, "resp-remote-error", &remote)?;

    let secret = Hello {
        node_id: 2,
        proof: Some([0x5c; PROOF_LEN]),
    };
    write(dir, "hello-secret", &codec::encode_hello(&secret))?;
    let tls = Hello {
        node_id: 3,
        proof: None,
    };
    write(dir, "hello-tls", &codec::encode_hello(&tls))?;
    Ok(())
}

// ---- config --------------------------------------------------------------------------------------

fn config_seeds(dir: &Path) -> Res<()> {
    let peers = "1@127.0.0.1:7001,2@127.0.0.1:7002,3@127.0.0.1:7003";
    let secret = "0123456789abcdef-secret";
    let seeds: Vec<(&str, String)> = vec![
        (
            "uri-minimal",
            format!("file:app.db?vfs=replicated&node=1&peers={peers}&secret={secret}"),
        ),
        (
            "uri-all-keys",
            format!(
                "file:/srv/app.db?vfs=replicated&node=2&peers={peers}&listen=0.0.0.0:7002&secret={secret}\
                 &ack=commit&timeout_ms=2500&data=/srv/app-raft&election_ms=300&heartbeat_ms=60"
            ),
        ),
        (
            "uri-tls",
            format!(
                "file:app.db?vfs=replicated&node=3&peers={peers}&tls_ca=/pki/ca.pem\
                 &tls_cert=/pki/node-3.pem&tls_key=/pki/node-3.key"
            ),
        ),
        (
            "uri-tls-missing-key",
            "file:app.db?node=3&tls_ca=/pki/ca.pem&tls_cert=/pki/node-3.pem".into(),
        ),
        (
            "uri-secret-file",
            format!("file:app.db?node=1&peers={peers}&secret_file=/etc/replicated/cluster.key"),
        ),
        (
            "uri-go-driver",
            format!(
                "file:app.db?vfs=replicated&node=1&peers={peers}&secret={secret}&_sync=FULL\
                 &_busy_timeout=5000&mode=rwc&cache=shared&immutable=0&psow=1"
            ),
        ),
        (
            "uri-ipv6-dns",
            format!("node=2&peers=1@[::1]:7001,2@node-2.example.com:7002,3@10.0.0.3:7003&secret={secret}"),
        ),
        (
            "uri-escaped",
            "node=1&peers=1%40127.0.0.1%3A7001&secret=p%26ss%3Dword%25-0123456789".into(),
        ),
        (
            "uri-immutable",
            format!("node=1&peers={peers}&secret={secret}&immutable=1"),
        ),
        ("uri-typo", format!("node=1&peers={peers}&secret={secret}&timeout=5")),
        (
            "uri-bad-timing",
            format!("node=1&peers={peers}&secret={secret}&election_ms=100&heartbeat_ms=50"),
        ),
        (
            "uri-duplicate",
            format!("node=1&peers={peers}&secret={secret}&ack=apply&ack=commit"),
        ),
        (
            "toml-with-uri",
            format!(
                "file:app.db?vfs=replicated&config=/etc/replicated.toml&node=2\n\
                 node = 3\npeers = [\"1@127.0.0.1:7001\", \"2@127.0.0.1:7002\", \"3@127.0.0.1:7003\"]\n\
                 secret = \"{secret}\"\ntimeout_ms = 900\nack = \"commit\"\n"
            ),
        ),
        (
            "toml-only",
            format!(
                "\n# cluster configuration\nnode = 1\npeers = \"{peers}\"\nsecret_file = \"/etc/replicated/key\"\n\
                 data = \"/var/lib/app-raft\"\nelection_ms = 200\nheartbeat_ms = 50\n"
            ),
        ),
        (
            "toml-bad-type",
            "node=1\nnode = 1.5\npeers = [1, 2]\n[table]\nx = true\n".into(),
        ),
        ("toml-config-key", "\nconfig = \"/other.toml\"\n".into()),
    ];
    for (name, text) in seeds {
        write(dir, name, text.as_bytes())?;
    }
    Ok(())
}

// ---- log_segment ---------------------------------------------------------------------------------

/// Appends `entries` to a fresh log store and returns its one segment as the target reads it:
/// `[first index u64 LE]` then the file, its preallocated zeros cut to `zeros` bytes.
fn segment(entries: Vec<Entry<TypeConfig>>, zeros: usize) -> Res<Vec<u8>> {
    let first = entries.first().map(|e| e.log_id.index).ok_or("no entries")?;
    let dir = std::env::temp_dir().join(format!("replicated-seeds-log-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let rt = tokio::runtime::Builder::new_current_thread().build()?;
    rt.block_on(async {
        let mut store = LogStore::open(&dir)?;
        store.blocking_append(entries).await?;
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    let path: PathBuf = dir.join(format!("log-{first:020}.seg"));
    let mut file = std::fs::read(&path)?;
    std::fs::remove_dir_all(&dir)?;
    let (_, end, _) = check_segment(&replicated_fuzz::SliceFile(&file), file.len() as u64, first)?;
    file.truncate(end as usize + zeros);
    let mut out = first.to_le_bytes().to_vec();
    out.extend_from_slice(&file);
    Ok(out)
}

fn log_seeds(dir: &Path) -> Res<()> {
    let start = segment(
        vec![
            membership_entry(1, 0),
            Entry {
                log_id: log_id(1, 1, 1),
                payload: EntryPayload::Blank,
            },
            txn_entry(1, 2, txn(1, 0, &[1, 2], 0, true)),
            txn_entry(1, 3, txn(2, 2, &[3], 0, true)),
        ],
        64,
    )?;
    write(dir, "segment-from-0", &start)?;
    let later = segment(
        vec![
            txn_entry(4, 1000, txn(9, 998, &[1, 3], 0, false)),
            txn_entry(4, 1001, txn(9, 998, &[4, 6], 1, true)),
            Entry {
                log_id: log_id(5, 2, 1002),
                payload: EntryPayload::Blank,
            },
        ],
        0,
    )?;
    write(dir, "segment-from-1000-split-txn", &later)?;
    // What recovery meets after a crash: a torn last record, and a segment never written.
    write(dir, "segment-torn-tail", &start[..start.len() - 64 - 100])?;
    write(dir, "segment-zeros", &[0u8; 8 + 40])?;
    Ok(())
}
