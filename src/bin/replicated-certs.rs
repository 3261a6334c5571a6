//! replicated-certs: make a cluster CA and node certificates for mutual-TLS mode.
//!
//! ```text
//!     replicated-certs DIR ID[@HOST] [ID[@HOST] ...]
//! ```
//!
//! Writes, in DIR (created if needed):
//! * `ca.pem`, `ca.key`: the cluster CA (basic constraints CA, key usage certificate and CRL
//!   signing). If `ca.key` already exists the CA is reused (and `ca.pem` rewritten from it only if
//!   it is missing); an existing `ca.pem` without its `ca.key` is refused.
//! * `node-ID.pem`, `node-ID.key` for each ID: an ECDSA P-256 key and a certificate signed by the
//!   CA, with DNS name `node-ID.replicated` (the name the transport checks, see net/auth.rs), plus
//!   HOST as an IP or DNS name when given (`ID@HOST`, HOST may carry a `:port`, which is ignored),
//!   and extended key usage serverAuth + clientAuth (every node is both). Existing files for that
//!   ID are replaced.
//!
//! Keys are written with mode 0600. Every node certificate is verified against `ca.pem` as a TLS
//! server (under its node name) and as a TLS client before the tool reports success, so a reused
//! `ca.key` that does not belong to `ca.pem` is caught here, not at the first connection.
//!
//! Exit status: 0 on success, 2 on bad arguments, 1 on any other failure; the message says why.

use replicated::net::auth::server_name;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const USAGE: &str = "usage: replicated-certs DIR ID[@HOST] [ID[@HOST] ...]
  Creates DIR/ca.pem and DIR/ca.key (reused when ca.key exists) and, for each node ID,
  DIR/node-ID.pem and DIR/node-ID.key for the name node-ID.replicated (plus HOST, an IP
  address or DNS name, when given).";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host {
    Ip(IpAddr),
    Dns(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeSpec {
    pub id: u64,
    pub host: Option<Host>,
}

/// Bad command line (exit 2) or failure while making or writing certificates (exit 1).
#[derive(Debug, PartialEq, Eq)]
pub enum Error {
    Usage(String),
    Failed(String),
}

fn failed(msg: impl Into<String>) -> Error {
    Error::Failed(msg.into())
}

fn valid_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

pub fn parse_host(h: &str) -> Result<Host, String> {
    if let Ok(sa) = h.parse::<SocketAddr>() {
        return Ok(Host::Ip(sa.ip()));
    }
    let bare = h.strip_prefix('[').and_then(|x| x.strip_suffix(']')).unwrap_or(h);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(Host::Ip(ip));
    }
    let name = match h.rsplit_once(':') {
        Some((n, port)) if !n.contains(':') && !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => n,
        _ => h,
    };
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(Host::Ip(ip));
    }
    if valid_dns_name(name) {
        Ok(Host::Dns(name.to_ascii_lowercase()))
    } else {
        Err(format!("'{h}' is neither an IP address nor a DNS name"))
    }
}

pub fn parse_node(arg: &str) -> Result<NodeSpec, String> {
    let (id, host) = match arg.split_once('@') {
        Some((i, h)) => (i, Some(h)),
        None => (arg, None),
    };
    let id: u64 = match id.parse() {
        Ok(n) if n > 0 => n,
        _ => return Err(format!("'{arg}': the node id must be an integer > 0")),
    };
    let host = match host {
        Some(h) => Some(parse_host(h).map_err(|e| format!("'{arg}': {e}"))?),
        None => None,
    };
    Ok(NodeSpec { id, host })
}

/// `args` without the program name.
pub fn parse_args(args: &[String]) -> Result<(PathBuf, Vec<NodeSpec>), Error> {
    if args.len() < 2 {
        return Err(Error::Usage("need a directory and at least one node id".into()));
    }
    let dir = PathBuf::from(&args[0]);
    if args[0].is_empty() {
        return Err(Error::Usage("the directory is empty".into()));
    }
    let mut nodes: Vec<NodeSpec> = Vec::new();
    for a in &args[1..] {
        let n = parse_node(a).map_err(Error::Usage)?;
        if nodes.iter().any(|m| m.id == n.id) {
            return Err(Error::Usage(format!("node {} given twice", n.id)));
        }
        nodes.push(n);
    }
    Ok((dir, nodes))
}

fn ca_params() -> Result<rcgen::CertificateParams, Error> {
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| failed(e.to_string()))?;
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "replicated cluster CA");
    Ok(p)
}

fn write(path: &Path, contents: &str, private: bool) -> Result<(), Error> {
    let io = |e: std::io::Error| failed(format!("cannot write {}: {e}", path.display()));
    #[cfg(unix)]
    {
        use std::io::Write;
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let mode = if private { 0o600 } else { 0o644 };
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(path)
            .map_err(io)?;
        // An existing file keeps its old mode through open(): set it.
        f.set_permissions(std::fs::Permissions::from_mode(mode)).map_err(io)?;
        f.write_all(contents.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)
    }
    #[cfg(not(unix))]
    {
        let _ = private;
        std::fs::write(path, contents).map_err(io)
    }
}

fn read(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|e| failed(format!("cannot read {}: {e}", path.display())))
}

/// Check a node certificate against the CA file exactly as the transport will use it.
fn verify_node_cert(ca_pem: &str, leaf: &CertificateDer<'_>, id: u64) -> Result<(), String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    }
    let roots = Arc::new(roots);
    let name = ServerName::try_from(server_name(id)).map_err(|e| e.to_string())?;
    let now = UnixTime::now();
    let server = rustls::client::WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| e.to_string())?;
    server
        .verify_server_cert(leaf, &[], &name, &[], now)
        .map_err(|e| format!("as a server: {e}"))?;
    let client = rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider)
        .build()
        .map_err(|e| e.to_string())?;
    client
        .verify_client_cert(leaf, &[], now)
        .map_err(|e| format!("as a client: {e}"))?;
    Ok(())
}

/// Make (or reuse) the CA and issue the node certificates; returns what it did, one line each.
pub fn run(dir: &Path, nodes: &[NodeSpec]) -> Result<Vec<String>, Error> {
    std::fs::create_dir_all(dir).map_err(|e| failed(format!("cannot create {}: {e}", dir.display())))?;
    let (ca_pem_path, ca_key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
    let mut report = Vec::new();
    let params = ca_params()?;
    let (ca_key, ca_pem) = if ca_key_path.exists() {
        let key = rcgen::KeyPair::from_pem(&read(&ca_key_path)?)
            .map_err(|e| failed(format!("{}: not a usable private key: {e}", ca_key_path.display())))?;
        report.push(format!("reused {} (existing cluster CA)", ca_key_path.display()));
        let pem = if ca_pem_path.exists() {
            read(&ca_pem_path)?
        } else {
            let pem = params.self_signed(&key).map_err(|e| failed(e.to_string()))?.pem();
            write(&ca_pem_path, &pem, false)?;
            report.push(format!("wrote {} (re-made from ca.key)", ca_pem_path.display()));
            pem
        };
        (key, pem)
    } else {
        if ca_pem_path.exists() {
            return Err(failed(format!(
                "{} exists without {}: refusing to replace a CA whose key is missing (put the key back, or move ca.pem away)",
                ca_pem_path.display(),
                ca_key_path.display()
            )));
        }
        let key = rcgen::KeyPair::generate().map_err(|e| failed(e.to_string()))?;
        let pem = params.self_signed(&key).map_err(|e| failed(e.to_string()))?.pem();
        write(&ca_key_path, &key.serialize_pem(), true)?;
        write(&ca_pem_path, &pem, false)?;
        report.push(format!("wrote {} (new cluster CA key)", ca_key_path.display()));
        report.push(format!("wrote {} (new cluster CA certificate)", ca_pem_path.display()));
        (key, pem)
    };
    let issuer = rcgen::Issuer::new(params, &ca_key);
    for n in nodes {
        let name = server_name(n.id);
        let mut p = rcgen::CertificateParams::new(vec![name.clone()]).map_err(|e| failed(e.to_string()))?;
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(rcgen::DnType::CommonName, name.clone());
        p.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let mut names = name.clone();
        match &n.host {
            Some(Host::Ip(ip)) => {
                p.subject_alt_names.push(rcgen::SanType::IpAddress(*ip));
                names.push_str(&format!(", {ip}"));
            }
            Some(Host::Dns(d)) if *d != name => {
                let ia5 = d
                    .clone()
                    .try_into()
                    .map_err(|e: rcgen::Error| failed(format!("{d}: {e}")))?;
                p.subject_alt_names.push(rcgen::SanType::DnsName(ia5));
                names.push_str(&format!(", {d}"));
            }
            _ => {}
        }
        let key = rcgen::KeyPair::generate().map_err(|e| failed(e.to_string()))?;
        let cert = p.signed_by(&key, &issuer).map_err(|e| failed(e.to_string()))?;
        verify_node_cert(&ca_pem, cert.der(), n.id).map_err(|e| {
            failed(format!(
                "the certificate made for node {} does not verify against {} ({e}): does ca.key belong to ca.pem?",
                n.id,
                ca_pem_path.display()
            ))
        })?;
        let (cert_path, key_path) = (
            dir.join(format!("node-{}.pem", n.id)),
            dir.join(format!("node-{}.key", n.id)),
        );
        write(&key_path, &key.serialize_pem(), true)?;
        write(&cert_path, &cert.pem(), false)?;
        report.push(format!("wrote {} (node {}: {names})", cert_path.display(), n.id));
        report.push(format!("wrote {} (node {} private key)", key_path.display(), n.id));
    }
    Ok(report)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return;
    }
    let result = parse_args(&args).and_then(|(dir, nodes)| run(&dir, &nodes));
    match result {
        Ok(lines) => {
            for l in lines {
                println!("{l}");
            }
        }
        Err(Error::Usage(m)) => {
            eprintln!("replicated-certs: {m}\n{USAGE}");
            std::process::exit(2);
        }
        Err(Error::Failed(m)) => {
            eprintln!("replicated-certs: {m}");
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use replicated::config::Auth;
    use replicated::net::{Handler, NetConfig, NetError, NodeId, Transport};
    use std::future::Future;
    use std::pin::Pin;
    use std::time::Duration;

    fn args(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_nodes_and_hosts() {
        let (dir, nodes) = parse_args(&args(&[
            "out",
            "1",
            "2@10.0.0.2",
            "3@db-3.example.com:7001",
            "4@[::1]:7001",
        ]))
        .unwrap();
        assert_eq!(dir, PathBuf::from("out"));
        assert_eq!(
            nodes,
            vec![
                NodeSpec { id: 1, host: None },
                NodeSpec {
                    id: 2,
                    host: Some(Host::Ip("10.0.0.2".parse().unwrap()))
                },
                NodeSpec {
                    id: 3,
                    host: Some(Host::Dns("db-3.example.com".into()))
                },
                NodeSpec {
                    id: 4,
                    host: Some(Host::Ip("::1".parse().unwrap()))
                },
            ]
        );
        assert_eq!(
            parse_host("10.0.0.1:7001").unwrap(),
            Host::Ip("10.0.0.1".parse().unwrap())
        );
        assert_eq!(parse_host("fe80::1").unwrap(), Host::Ip("fe80::1".parse().unwrap()));
        assert_eq!(parse_host("Node.LAN").unwrap(), Host::Dns("node.lan".into()));
    }

    #[test]
    fn bad_input_is_a_usage_error() {
        for bad in [
            &["out"][..],
            &[][..],
            &["out", "0"][..],
            &["out", "x"][..],
            &["out", "-1"][..],
            &["out", "1@"][..],
            &["out", "1@bad host"][..],
            &["out", "1@-x.com"][..],
            &["out", "1", "1@10.0.0.1"][..],
            &["", "1"][..],
        ] {
            assert!(matches!(parse_args(&args(bad)), Err(Error::Usage(_))), "{bad:?}");
        }
    }

    struct Echo;
    impl Handler for Echo {
        fn handle(
            &self,
            from: NodeId,
            _kind: u8,
            mut body: Vec<u8>,
        ) -> Pin<Box<dyn Future<Output = Result<Vec<u8>, String>> + Send>> {
            body.extend_from_slice(format!(" from {from}").as_bytes());
            Box::pin(async move { Ok(body) })
        }
    }

    fn auth(dir: &Path, id: u64) -> Auth {
        Auth::Tls {
            ca: dir.join("ca.pem"),
            cert: dir.join(format!("node-{id}.pem")),
            key: dir.join(format!("node-{id}.key")),
        }
    }

    fn start(dir: &Path, id: u64) -> Transport {
        Transport::start(
            NetConfig::new(id, "127.0.0.1:0".parse().unwrap(), auth(dir, id)),
            Arc::new(Echo),
        )
        .unwrap()
    }

    const T: Duration = Duration::from_secs(5);

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn output_loads_and_serves_mutual_tls() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("pki");
        let (_, nodes) = parse_args(&args(&["unused", "1@127.0.0.1", "2@localhost:7001"])).unwrap();
        let report = run(&dir, &nodes).unwrap();
        assert_eq!(report.len(), 6, "{report:?}");
        for f in [
            "ca.pem",
            "ca.key",
            "node-1.pem",
            "node-1.key",
            "node-2.pem",
            "node-2.key",
        ] {
            assert!(dir.join(f).exists(), "{f}");
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join("node-1.key")).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let a = start(&dir, 1);
        let b = start(&dir, 2);
        assert_eq!(
            a.call(2, &b.local_addr().to_string(), 1, b"hi", T).await.unwrap(),
            b"hi from 1"
        );
        assert_eq!(
            b.call(1, &a.local_addr().to_string(), 1, b"yo", T).await.unwrap(),
            b"yo from 2"
        );

        // Re-running reuses the CA: ca.pem is unchanged and a node issued later talks to node 1.
        let ca_before = std::fs::read(dir.join("ca.pem")).unwrap();
        let report = run(&dir, &[NodeSpec { id: 3, host: None }]).unwrap();
        assert!(report[0].starts_with("reused"), "{report:?}");
        assert_eq!(std::fs::read(dir.join("ca.pem")).unwrap(), ca_before);
        let c = start(&dir, 3);
        assert_eq!(
            c.call(1, &a.local_addr().to_string(), 1, b"hey", T).await.unwrap(),
            b"hey from 3"
        );
        assert_eq!(a.refused_count() + b.refused_count() + c.refused_count(), 0);
        // Dialing "node 2" at node 1's address: node 1's certificate fails the name check.
        let r = c.call(2, &a.local_addr().to_string(), 1, b"x", T).await;
        assert!(matches!(r, Err(NetError::Refused(_))), "{r:?}");
        assert_eq!(c.refused_count(), 1);
    }

    #[test]
    fn ca_files_are_guarded() {
        let tmp = tempfile::tempdir().unwrap();
        let one = [NodeSpec { id: 1, host: None }];
        // ca.pem without ca.key: refused, nothing replaced.
        let lone = tmp.path().join("lone");
        std::fs::create_dir_all(&lone).unwrap();
        std::fs::write(lone.join("ca.pem"), "precious").unwrap();
        assert!(matches!(run(&lone, &one), Err(Error::Failed(m)) if m.contains("without")));
        assert_eq!(std::fs::read_to_string(lone.join("ca.pem")).unwrap(), "precious");
        // ca.key that does not belong to ca.pem: caught by the verification.
        let (x, y) = (tmp.path().join("x"), tmp.path().join("y"));
        run(&x, &one).unwrap();
        run(&y, &one).unwrap();
        std::fs::copy(y.join("ca.pem"), x.join("ca.pem")).unwrap();
        assert!(matches!(run(&x, &one), Err(Error::Failed(m)) if m.contains("does not verify")));
        // ca.key alone: ca.pem is re-made and works.
        std::fs::remove_file(x.join("ca.pem")).unwrap();
        let report = run(&x, &one).unwrap();
        assert!(report.iter().any(|l| l.contains("re-made")), "{report:?}");
        // A garbage ca.key is an error, not a panic.
        std::fs::write(x.join("ca.key"), "garbage").unwrap();
        assert!(matches!(run(&x, &one), Err(Error::Failed(_))));
    }
}
