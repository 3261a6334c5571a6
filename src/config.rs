//! Configuration: URI parameters (and an optional TOML file) → a validated [`Config`].
//!
//! Sources, highest priority first: the database URI's query parameters; the TOML file named by the
//! URI's `config=PATH` or else by the `REPLICATED_CONFIG` environment variable. Keys are the same in
//! both (DESIGN §3.1). Parsing is pure: the caller reads files and the environment and hands their
//! text in, so every rule here is unit-tested without touching the disk.
//!
//! Invariants: a `Config` that exists is complete and consistent (this node's id > 0, an
//! authentication mode, sane timings). Unknown keys, bad values and missing required keys are
//! errors whose message names the key; nothing is silently defaulted past a typo.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// URI parameters that belong to SQLite itself and are passed through untouched.
const SQLITE_KEYS: &[&str] = &["vfs", "mode", "cache", "psow", "modeof"];
/// SQLite URI flags that would bypass the locking the replicated VFS depends on.
const REFUSED_SQLITE_KEYS: &[&str] = &["immutable", "nolock"];
/// Our keys.
const KEYS: &[&str] = &[
    "node",
    "peers",
    "listen",
    "secret",
    "secret_file",
    "tls_ca",
    "tls_cert",
    "tls_key",
    "ack",
    "timeout_ms",
    "data",
    "election_ms",
    "heartbeat_ms",
    "config",
];

pub const DEFAULT_TIMEOUT_MS: u64 = 5000;
/// Tuned for a LAN: fail-over (detection + election) well under a second.
pub const DEFAULT_HEARTBEAT_MS: u64 = 50;
pub const DEFAULT_ELECTION_MS: u64 = 100;
pub const MIN_SECRET_LEN: usize = 16;
const MAX_TIMEOUT_MS: u64 = 3_600_000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "replicated: {}", self.0)
    }
}

fn err<T>(msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(msg.into()))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ack {
    /// A majority (leader included) has applied the transaction.
    Apply,
    /// A majority has it durable in its Raft log.
    Commit,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub id: u64,
    /// `host:port` as written (resolved by the transport).
    pub addr: String,
}

#[derive(Clone, PartialEq, Eq)]
pub enum Auth {
    /// The shared secret itself (read from `secret_file` when that was given).
    Secret(String),
    Tls {
        ca: PathBuf,
        cert: PathBuf,
        key: PathBuf,
    },
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::Secret(_) => f.write_str("Secret(<redacted>)"),
            Auth::Tls { ca, cert, key } => f
                .debug_struct("Tls")
                .field("ca", ca)
                .field("cert", cert)
                .field("key", key)
                .finish(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub node: u64,
    /// Initial voters; `None` when not given (allowed once the node has Raft state).
    pub peers: Option<Vec<Peer>>,
    pub listen: Option<String>,
    pub auth: Auth,
    pub ack: Ack,
    pub timeout_ms: u64,
    pub data: PathBuf,
    pub election_ms: u64,
    pub heartbeat_ms: u64,
}

impl Config {
    /// openraft's `election_timeout_max` (the election timeout is random in
    /// [election_ms, 2 × election_ms)), which is also its leader lease: voters refuse any vote for
    /// that long after a leader's last message.
    pub fn election_max_ms(&self) -> u64 {
        self.election_ms * 2
    }
}

/// What the caller gathered: URI pairs in order, the TOML file's text, and a way to read a
/// `secret_file` (kept as a closure so parsing stays pure in tests).
pub struct Sources<'a> {
    pub db_path: &'a Path,
    pub uri: Vec<(String, String)>,
    /// `(path, text)` of the TOML file, when there is one.
    pub toml: Option<(String, String)>,
    pub read_file: &'a dyn Fn(&Path) -> Result<String, String>,
}

/// Name of the TOML file the URI or environment points at, if any.
pub fn config_file_path(uri: &[(String, String)], env: Option<String>) -> Option<String> {
    uri.iter()
        .find(|(k, _)| k == "config")
        .map(|(_, v)| v.clone())
        .or(env)
        .filter(|s| !s.is_empty())
}

fn toml_to_map(path: &str, text: &str) -> Result<BTreeMap<String, String>, ConfigError> {
    let table: toml::Table = match text.parse() {
        Ok(t) => t,
        Err(e) => return err(format!("config file {path}: {}", e.message())),
    };
    let mut out = BTreeMap::new();
    for (k, v) in table {
        let s = match v {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Array(a) => {
                let mut parts = Vec::new();
                for item in a {
                    match item {
                        toml::Value::String(s) => parts.push(s),
                        _ => return err(format!("config file {path}: key '{k}': array items must be strings")),
                    }
                }
                parts.join(",")
            }
            _ => return err(format!("config file {path}: key '{k}': unsupported value type")),
        };
        if k == "config" {
            return err(format!("config file {path}: key 'config' is only allowed in the URI"));
        }
        out.insert(k, s);
    }
    Ok(out)
}

fn parse_u64(key: &str, v: &str, min: u64, max: u64) -> Result<u64, ConfigError> {
    match v.trim().parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        Ok(n) => err(format!("bad value for '{key}': {n} is outside {min}..={max}")),
        Err(_) => err(format!("bad value for '{key}': '{v}' is not a whole number")),
    }
}

/// Checks `host:port` (host: IPv4, bracketed IPv6, or a DNS name).
fn check_addr(key: &str, addr: &str) -> Result<(), ConfigError> {
    if let Ok(sa) = addr.parse::<std::net::SocketAddr>() {
        if sa.port() == 0 {
            return err(format!("bad value for '{key}': '{addr}' has no valid port"));
        }
        return Ok(());
    }
    let Some((host, port)) = addr.rsplit_once(':') else {
        return err(format!("bad value for '{key}': '{addr}' is not host:port"));
    };
    if port.parse::<u16>().map(|p| p == 0).unwrap_or(true) {
        return err(format!("bad value for '{key}': '{addr}' has no valid port"));
    }
    let ok_host = !host.is_empty()
        && host.len() <= 253
        && host.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if !ok_host {
        return err(format!("bad value for '{key}': '{addr}' has an invalid host"));
    }
    Ok(())
}

pub fn parse_peers(v: &str) -> Result<Vec<Peer>, ConfigError> {
    let mut peers: Vec<Peer> = Vec::new();
    for item in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let Some((id, addr)) = item.split_once('@') else {
            return err(format!("bad value for 'peers': '{item}' is not id@host:port"));
        };
        let id = parse_u64("peers", id, 1, u64::MAX)?;
        check_addr("peers", addr)?;
        if peers.iter().any(|p| p.id == id) {
            return err(format!("bad value for 'peers': node id {id} appears twice"));
        }
        if peers.iter().any(|p| p.addr == addr) {
            return err(format!("bad value for 'peers': address {addr} appears twice"));
        }
        peers.push(Peer {
            id,
            addr: addr.to_string(),
        });
    }
    if peers.is_empty() {
        return err("bad value for 'peers': empty list");
    }
    Ok(peers)
}

fn truthy(v: &str) -> bool {
    !matches!(v.trim().to_ascii_lowercase().as_str(), "0" | "no" | "false" | "off")
}

impl Config {
    pub fn parse(src: &Sources<'_>) -> Result<Config, ConfigError> {
        let mut map: BTreeMap<String, String> = BTreeMap::new();
        if let Some((path, text)) = &src.toml {
            map = toml_to_map(path, text)?;
            for k in map.keys() {
                if !KEYS.contains(&k.as_str()) {
                    return err(format!("config file {path}: unknown key '{k}'"));
                }
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for (k, v) in &src.uri {
            if REFUSED_SQLITE_KEYS.contains(&k.as_str()) {
                if truthy(v) {
                    return err(format!("URI flag '{k}' is not allowed on a replicated database"));
                }
                continue;
            }
            // SQLite's own keys, and `_`-prefixed keys, which belong to drivers (go-sqlite3's
            // `_sync`, `_busy_timeout`, `_txlock`, ...) that pass the whole URI on to SQLite.
            if SQLITE_KEYS.contains(&k.as_str()) || k.starts_with('_') {
                continue;
            }
            if !KEYS.contains(&k.as_str()) {
                return err(format!("unknown URI parameter '{k}'"));
            }
            if !seen.insert(k.clone()) {
                return err(format!("URI parameter '{k}' given twice"));
            }
            map.insert(k.clone(), v.clone());
        }
        let get = |k: &str| map.get(k).map(String::as_str);

        let node = match get("node") {
            Some(v) => parse_u64("node", v, 1, u64::MAX)?,
            None => return err("missing required parameter 'node' (this node's id, a number > 0)"),
        };
        let peers = match get("peers") {
            Some(v) => {
                let peers = parse_peers(v)?;
                if !peers.iter().any(|p| p.id == node) {
                    return err(format!("bad value for 'peers': this node ({node}) is not in the list"));
                }
                Some(peers)
            }
            None => None,
        };
        let listen = match get("listen") {
            Some(v) => {
                check_addr("listen", v)?;
                Some(v.to_string())
            }
            None => None,
        };
        let auth = match (
            get("secret"),
            get("secret_file"),
            get("tls_ca"),
            get("tls_cert"),
            get("tls_key"),
        ) {
            (Some(_), Some(_), _, _, _) => return err("give only one of 'secret' and 'secret_file'"),
            (s, f, None, None, None) if s.is_some() || f.is_some() => {
                let secret = match (s, f) {
                    (Some(s), _) => s.to_string(),
                    (None, Some(f)) => match (src.read_file)(Path::new(f)) {
                        Ok(t) => t.trim_end_matches(['\n', '\r']).to_string(),
                        Err(e) => return err(format!("bad value for 'secret_file': cannot read {f}: {e}")),
                    },
                    (None, None) => return err("missing 'secret'"),
                };
                if secret.len() < MIN_SECRET_LEN {
                    let key = if s.is_some() { "secret" } else { "secret_file" };
                    return err(format!(
                        "bad value for '{key}': the secret must be at least {MIN_SECRET_LEN} bytes"
                    ));
                }
                Auth::Secret(secret)
            }
            (None, None, Some(ca), Some(cert), Some(key)) => {
                for (k, p) in [("tls_ca", ca), ("tls_cert", cert), ("tls_key", key)] {
                    if let Err(e) = (src.read_file)(Path::new(p)) {
                        return err(format!("bad value for '{k}': cannot read {p}: {e}"));
                    }
                }
                Auth::Tls {
                    ca: ca.into(),
                    cert: cert.into(),
                    key: key.into(),
                }
            }
            (_, _, ca, cert, key) if ca.is_some() || cert.is_some() || key.is_some() => {
                if get("secret").is_some() || get("secret_file").is_some() {
                    return err("give either 'secret'/'secret_file' or 'tls_ca'+'tls_cert'+'tls_key', not both");
                }
                let missing: Vec<&str> = [("tls_ca", ca), ("tls_cert", cert), ("tls_key", key)]
                    .iter()
                    .filter(|(_, v)| v.is_none())
                    .map(|(k, _)| *k)
                    .collect();
                return err(format!(
                    "missing required parameter '{}' (mutual TLS needs all three)",
                    missing.join("', '")
                ));
            }
            _ => {
                return err(
                    "missing required parameter 'secret' (or 'secret_file', or 'tls_ca'+'tls_cert'+'tls_key'): \
                     there is no unauthenticated mode",
                )
            }
        };
        let ack = match get("ack") {
            None | Some("apply") => Ack::Apply,
            Some("commit") => Ack::Commit,
            Some(v) => return err(format!("bad value for 'ack': '{v}' (expected 'apply' or 'commit')")),
        };
        let timeout_ms = match get("timeout_ms") {
            Some(v) => parse_u64("timeout_ms", v, 1, MAX_TIMEOUT_MS)?,
            None => DEFAULT_TIMEOUT_MS,
        };
        let heartbeat_ms = match get("heartbeat_ms") {
            Some(v) => parse_u64("heartbeat_ms", v, 5, 60_000)?,
            None => DEFAULT_HEARTBEAT_MS,
        };
        let election_ms = match get("election_ms") {
            Some(v) => parse_u64("election_ms", v, 20, 600_000)?,
            None => DEFAULT_ELECTION_MS.max(heartbeat_ms * 2),
        };
        if election_ms < heartbeat_ms * 2 {
            return err(format!(
                "bad value for 'election_ms': {election_ms} must be at least 2 x heartbeat_ms ({heartbeat_ms})"
            ));
        }
        let data = match get("data") {
            Some("") => return err("bad value for 'data': empty path"),
            Some(v) => PathBuf::from(v),
            None => {
                let mut p = src.db_path.as_os_str().to_owned();
                p.push("-raft");
                PathBuf::from(p)
            }
        };
        Ok(Config {
            node,
            peers,
            listen,
            auth,
            ack,
            timeout_ms,
            data,
            election_ms,
            heartbeat_ms,
        })
    }

    /// This node's entry in `peers`.
    pub fn own_peer(&self) -> Option<&Peer> {
        self.peers.as_ref().and_then(|p| p.iter().find(|p| p.id == self.node))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef-secret";

    fn parse(pairs: &[(&str, &str)], toml: Option<&str>) -> Result<Config, ConfigError> {
        let read = |p: &Path| -> Result<String, String> {
            match p.to_str() {
                Some("/k") => Ok(format!("{SECRET}\n")),
                Some("/short") => Ok("abc".into()),
                Some("/pem") => Ok("PEM".into()),
                _ => Err("No such file or directory".into()),
            }
        };
        let src = Sources {
            db_path: Path::new("/d/app.db"),
            uri: pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            toml: toml.map(|t| ("/c.toml".to_string(), t.to_string())),
            read_file: &read,
        };
        Config::parse(&src)
    }

    fn base() -> Vec<(&'static str, &'static str)> {
        vec![
            ("vfs", "replicated"),
            ("node", "1"),
            ("peers", "1@127.0.0.1:7001"),
            ("secret", SECRET),
        ]
    }

    fn with(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
        let mut b = base();
        for (k, v) in extra {
            b.retain(|(bk, _)| bk != k);
            b.push((k, v));
        }
        b
    }

    fn msg(r: Result<Config, ConfigError>) -> String {
        match r {
            Ok(c) => panic!("expected an error, got {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn defaults() {
        let c = parse(&base(), None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.node, 1);
        assert_eq!(c.ack, Ack::Apply);
        assert_eq!(c.timeout_ms, DEFAULT_TIMEOUT_MS);
        assert_eq!(c.data, PathBuf::from("/d/app.db-raft"));
        assert_eq!(c.own_peer().map(|p| p.addr.as_str()), Some("127.0.0.1:7001"));
    }

    #[test]
    fn every_key_error_names_the_key() {
        let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
            (base().into_iter().filter(|(k, _)| *k != "node").collect(), "'node'"),
            (with(&[("node", "0")]), "'node'"),
            (with(&[("node", "x")]), "'node'"),
            (with(&[("peers", "1@nohostport")]), "'peers'"),
            (with(&[("peers", "2@127.0.0.1:7002")]), "'peers'"),
            (with(&[("peers", "1@127.0.0.1:7001,1@127.0.0.1:7002")]), "'peers'"),
            (with(&[("peers", "1@127.0.0.1:0")]), "'peers'"),
            (with(&[("listen", "bad")]), "'listen'"),
            (with(&[("secret", "short")]), "'secret'"),
            (base().into_iter().filter(|(k, _)| *k != "secret").collect(), "'secret'"),
            (with(&[("secret_file", "/k")]), "'secret_file'"),
            (
                base()
                    .into_iter()
                    .filter(|(k, _)| *k != "secret")
                    .chain([("secret_file", "/missing")])
                    .collect(),
                "'secret_file'",
            ),
            (
                base()
                    .into_iter()
                    .filter(|(k, _)| *k != "secret")
                    .chain([("secret_file", "/short")])
                    .collect(),
                "'secret_file'",
            ),
            (
                base()
                    .into_iter()
                    .filter(|(k, _)| *k != "secret")
                    .chain([("tls_ca", "/pem")])
                    .collect(),
                "'tls_cert'",
            ),
            (
                base()
                    .into_iter()
                    .filter(|(k, _)| *k != "secret")
                    .chain([("tls_ca", "/pem"), ("tls_cert", "/pem"), ("tls_key", "/nope")])
                    .collect(),
                "'tls_key'",
            ),
            (with(&[("tls_ca", "/pem")]), "'tls_ca'"),
            (with(&[("ack", "quorum")]), "'ack'"),
            (with(&[("timeout_ms", "0")]), "'timeout_ms'"),
            (with(&[("timeout_ms", "soon")]), "'timeout_ms'"),
            (with(&[("data", "")]), "'data'"),
            (with(&[("election_ms", "90"), ("heartbeat_ms", "50")]), "'election_ms'"),
            (with(&[("heartbeat_ms", "1")]), "'heartbeat_ms'"),
            (with(&[("bogus", "1")]), "'bogus'"),
            (with(&[("immutable", "1")]), "'immutable'"),
            (with(&[("nolock", "1")]), "'nolock'"),
        ];
        for (pairs, key) in cases {
            let m = msg(parse(&pairs, None));
            assert!(m.contains(key), "{pairs:?}: message {m:?} does not name {key}");
        }
    }

    #[test]
    fn secret_file_and_tls() {
        let pairs: Vec<_> = base()
            .into_iter()
            .filter(|(k, _)| *k != "secret")
            .chain([("secret_file", "/k")])
            .collect();
        let c = parse(&pairs, None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.auth, Auth::Secret(SECRET.into()));
        let pairs: Vec<_> = base()
            .into_iter()
            .filter(|(k, _)| *k != "secret")
            .chain([("tls_ca", "/pem"), ("tls_cert", "/pem"), ("tls_key", "/pem")])
            .collect();
        assert!(matches!(parse(&pairs, None).map(|c| c.auth), Ok(Auth::Tls { .. })));
    }

    #[test]
    fn toml_file_and_uri_precedence() {
        let toml = format!(
            "node = 2\npeers = [\"1@127.0.0.1:7001\", \"2@127.0.0.1:7002\"]\nsecret = \"{SECRET}\"\ntimeout_ms = 900\n"
        );
        let c = parse(&[("vfs", "replicated")], Some(&toml)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((c.node, c.timeout_ms), (2, 900));
        assert_eq!(c.peers.as_ref().map(Vec::len), Some(2));
        let c = parse(&[("node", "1"), ("timeout_ms", "50")], Some(&toml)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((c.node, c.timeout_ms), (1, 50));
        assert!(msg(parse(&[], Some("nod = 1"))).contains("'nod'"));
        assert!(msg(parse(&[], Some("node = "))).contains("/c.toml"));
        assert!(msg(parse(&[], Some("node = 1.5"))).contains("'node'"));
    }

    #[test]
    fn off_flags_and_sqlite_keys_pass() {
        assert!(parse(
            &with(&[
                ("immutable", "0"),
                ("mode", "rwc"),
                ("cache", "private"),
                ("_sync", "FULL")
            ]),
            None
        )
        .is_ok());
        assert!(msg(parse(
            &with(&[("node", "1"), ("timeout_ms", "5")])
                .into_iter()
                .chain([("timeout_ms", "6")])
                .collect::<Vec<_>>(),
            None
        ))
        .contains("'timeout_ms'"));
    }
}
