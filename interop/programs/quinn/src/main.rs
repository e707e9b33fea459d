//! quinn 0.9 as an hq-interop endpoint of NetSched's interop suite (interop/README.md).
//!
//! One job, by the QUIC interop runner's endpoint contract (interop/programs/contract.py):
//! ROLE=server serves the WWW folder on HOST:PORT; ROLE=client fetches the REQUESTS URLs
//! into DOWNLOADS. TLS secrets go to SSLKEYLOGFILE (rustls' KeyLogFile reads it). Test
//! cases map to quinn's configuration: retry → ServerConfig::use_retry, chacha20 → the
//! only TLS 1.3 suite the client offers, keyupdate → Connection::force_key_update once
//! data flows, transfer → small client flow-control windows, multiconnect → a connection
//! per URL, resumption → the first URL over one connection and the rest over a second that
//! resumes its session (rustls' in-memory ticket cache), zerortt → the same with the second
//! connection's requests in 0-RTT. Anything else (v2: quinn 0.9 knows v1 and drafts 29-34
//! only) exits with 127.
//! quinn 0.9 writes no qlog: with QLOGDIR set, its tracing events go to QLOGDIR/quinn.log.
//! Written for Rust 1.63 (Debian bookworm's rustc) as well as current ones.

use std::env;
use std::fs;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process;
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context, Result};
use quinn::{Connection, ConnectionError, Endpoint, VarInt, WriteError};

const ALPN: &str = "hq-interop";
const EXIT_FAILED: i32 = 1;
const EXIT_UNSUPPORTED: i32 = 127;
// The leaf certificate names localhost (runner.make_certificates); URLs carry an address.
const SERVER_NAME: &str = "localhost";
const MAX_REQUEST: usize = 2048; // "GET <path>\r\n"
const MAX_RESPONSE: usize = 64 << 20; // the largest case file is 10 MB
const MAX_REQUESTS: usize = 10_000; // as programs/contract.py
                                    // The runner's transfer case asks clients for small initial windows where they allow.
const SMALL_WINDOW: u32 = 256 << 10;
const SMALL_STREAM_WINDOW: u32 = 128 << 10;
// quinn's default of 10 s gives up where handshakeloss's 30 % loss and PTO backoff
// legitimately leave longer silences (seen here: "timed out" with every packet acked,
// waiting for the peer's retransmission); 30 s, as ngtcp2's client is given here.
const IDLE_TIMEOUT_MS: u32 = 30_000;
const NOT_FOUND: u32 = 0x10; // application error code on a reset response stream
const SERVER_CASES: &[&str] = &[
    "handshake",
    "transfer",
    "retry",
    "chacha20",
    "multiconnect",
    "resumption",
    "zerortt",
];
const CLIENT_CASES: &[&str] = &[
    "handshake",
    "transfer",
    "retry",
    "chacha20",
    "keyupdate",
    "multiconnect",
    "resumption",
    "zerortt",
];

/// The environment of the endpoint contract, checked.
struct Contract {
    is_client: bool,
    testcase: String,
    listen: SocketAddr,
    requests: Vec<String>,
    downloads: PathBuf,
    www: PathBuf,
    certs: PathBuf,
}

fn main() {
    if let Err(e) = trace_to_qlog_dir() {
        eprintln!("quinn peer: QLOGDIR: {e:#}");
        process::exit(EXIT_FAILED);
    }
    let code = match contract() {
        Err(e) => {
            eprintln!("quinn peer: {e:#}");
            EXIT_FAILED
        }
        Ok(c) => match unsupported(&c) {
            Some(why) => {
                eprintln!("test case {:?} unsupported: {why}", c.testcase);
                EXIT_UNSUPPORTED
            }
            None => run(&c),
        },
    };
    process::exit(code);
}

/// quinn's own trace (every packet and frame) as the closest it has to a qlog.
fn trace_to_qlog_dir() -> Result<()> {
    let dir = match env::var("QLOGDIR") {
        Ok(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => return Ok(()),
    };
    fs::create_dir_all(&dir).with_context(|| format!("creating {dir:?}"))?;
    let file = fs::File::create(dir.join("quinn.log")).context("creating quinn.log")?;
    tracing_subscriber::fmt()
        .with_max_level(tracing_subscriber::filter::LevelFilter::TRACE)
        .with_writer(Mutex::new(file))
        .init();
    Ok(())
}

fn contract() -> Result<Contract> {
    let role = required("ROLE")?;
    if role != "client" && role != "server" {
        bail!("ROLE must be client or server, got {role:?}");
    }
    let host: IpAddr = optional("HOST", "127.0.0.1")
        .parse()
        .map_err(|e| anyhow!("HOST must be an IP address: {e}"))?;
    let port = match optional("PORT", "443").parse::<u16>() {
        Ok(port) if port > 0 => port,
        _ => bail!("PORT must be 1..65535, got {:?}", optional("PORT", "443")),
    };
    Ok(Contract {
        is_client: role == "client",
        testcase: required("TESTCASE")?,
        listen: SocketAddr::new(host, port),
        requests: optional("REQUESTS", "")
            .split_whitespace()
            .map(String::from)
            .collect(),
        downloads: PathBuf::from(optional("DOWNLOADS", "")),
        www: PathBuf::from(optional("WWW", "")),
        certs: PathBuf::from(required("CERTS")?),
    })
}

fn required(name: &str) -> Result<String> {
    match env::var(name) {
        Ok(value) if !value.is_empty() => Ok(value),
        _ => bail!("{name} is not set"),
    }
}

fn optional(name: &str, default: &str) -> String {
    env::var(name).unwrap_or_else(|_| default.to_string())
}

/// Why this endpoint cannot play the test case, or None.
fn unsupported(c: &Contract) -> Option<String> {
    let alpn = optional("ALPN", ALPN);
    if alpn != ALPN {
        return Some(format!("this peer speaks {ALPN} only, not {alpn}"));
    }
    let cases = if c.is_client {
        CLIENT_CASES
    } else {
        SERVER_CASES
    };
    if cases.contains(&c.testcase.as_str()) {
        None
    } else {
        Some(format!("quinn 0.9 peer plays only {}", cases.join(", ")))
    }
}

fn run(c: &Contract) -> i32 {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let result = match runtime {
        Ok(rt) if c.is_client => rt.block_on(client(c)),
        Ok(rt) => rt.block_on(server(c)),
        Err(e) => Err(anyhow!("tokio runtime: {e}")),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("quinn peer: {e:#}");
            EXIT_FAILED
        }
    }
}

// ------------------------------------------------------------------ server

async fn server(c: &Contract) -> Result<()> {
    let certs = read_certificates(&c.certs.join("cert.pem"))?;
    let key = read_private_key(&c.certs.join("priv.key"))?;
    let mut tls = rustls::ServerConfig::builder()
        .with_safe_defaults()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("CERTS: cert.pem / priv.key")?;
    tls.alpn_protocols = vec![ALPN.into()];
    tls.key_log = Arc::new(rustls::KeyLogFile::new());
    // rustls issues (stateful) tickets by default; 0-RTT also needs this, and QUIC allows
    // no other non-zero value (RFC 9001 section 4.6.1).
    if c.testcase == "zerortt" {
        tls.max_early_data_size = u32::MAX;
    }
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(tls));
    config.use_retry(c.testcase == "retry");
    config.transport_config(Arc::new(transport(false)));
    let endpoint =
        Endpoint::server(config, c.listen).with_context(|| format!("bind {}", c.listen))?;
    eprintln!("quinn server on {} ({})", c.listen, c.testcase);
    let www = Arc::new(fs::canonicalize(&c.www).with_context(|| format!("WWW {:?}", c.www))?);
    // Runs until the runner stops it.
    while let Some(connecting) = endpoint.accept().await {
        tokio::spawn(serve_connection(connecting, www.clone()));
    }
    Ok(())
}

async fn serve_connection(connecting: quinn::Connecting, www: Arc<PathBuf>) {
    let conn = match connecting.await {
        Ok(conn) => conn,
        Err(e) => return eprintln!("handshake failed: {e}"),
    };
    eprintln!("connection from {}", conn.remote_address());
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                let www = www.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve_stream(send, recv, &www).await {
                        eprintln!("stream: {e:#}");
                    }
                });
            }
            Err(ConnectionError::ApplicationClosed(_)) => return,
            Err(e) => return eprintln!("connection ended: {e}"),
        }
    }
}

/// Answer one hq-interop request ("GET <path>\r\n") with the file's bytes.
async fn serve_stream(
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
    www: &Path,
) -> Result<()> {
    let request = recv
        .read_to_end(MAX_REQUEST)
        .await
        .context("reading request")?;
    let path = request_path(&request)?;
    let file = match www_file(www, path) {
        Some(file) => file,
        None => {
            eprintln!("not found: {path}");
            let _ = send.reset(VarInt::from_u32(NOT_FOUND));
            return Ok(());
        }
    };
    let body = fs::read(&file).with_context(|| format!("reading {file:?}"))?;
    send.write_all(&body)
        .await
        .with_context(|| format!("sending {path}"))?;
    match send.finish().await {
        // The client closes once it has every byte, possibly before our FIN's ACK comes.
        Ok(()) | Err(WriteError::ConnectionLost(ConnectionError::ApplicationClosed(_))) => Ok(()),
        Err(e) => Err(anyhow!("finishing {path}: {e}")),
    }
}

fn request_path(request: &[u8]) -> Result<&str> {
    let line = std::str::from_utf8(request).map_err(|_| anyhow!("request is not UTF-8"))?;
    match line.trim_end().strip_prefix("GET ") {
        Some(path) if path.starts_with('/') => Ok(path),
        _ => bail!(
            "expected \"GET /<path>\", got {:?}",
            line.chars().take(80).collect::<String>()
        ),
    }
}

/// The file under `www` that a request path names, or None (missing or outside `www`).
fn www_file(www: &Path, path: &str) -> Option<PathBuf> {
    let candidate = fs::canonicalize(www.join(path.trim_start_matches('/'))).ok()?;
    if candidate.starts_with(www) && candidate.is_file() {
        Some(candidate)
    } else {
        None
    }
}

// ------------------------------------------------------------------ client

/// One URL of REQUESTS: where to connect, what to ask, where the file goes.
struct Target {
    addr: SocketAddr,
    path: String,
    download: PathBuf,
}

impl Target {
    fn parse(url: &str, downloads: &Path) -> Result<Self> {
        let rest = url
            .strip_prefix("https://")
            .ok_or_else(|| anyhow!("REQUESTS: expected an https URL, got {url:?}"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, "/"),
        };
        let with_port = if authority.ends_with(']') || !authority.contains(':') {
            format!("{authority}:443")
        } else {
            authority.to_string()
        };
        let addr = with_port
            .to_socket_addrs()
            .ok()
            .and_then(|mut addrs| addrs.next())
            .ok_or_else(|| anyhow!("REQUESTS: cannot resolve {authority:?} of {url:?}"))?;
        let name = path.rsplit('/').next().unwrap_or("");
        if name.is_empty() || name == "." || name == ".." {
            bail!("REQUESTS: URL {url:?} names no file");
        }
        Ok(Target {
            addr,
            path: path.to_string(),
            download: downloads.join(name),
        })
    }
}

async fn client(c: &Contract) -> Result<()> {
    if c.requests.is_empty() || c.requests.len() > MAX_REQUESTS {
        bail!(
            "REQUESTS: a client needs 1 to {MAX_REQUESTS} URLs, got {}",
            c.requests.len()
        );
    }
    let targets = c
        .requests
        .iter()
        .map(|url| Target::parse(url, &c.downloads))
        .collect::<Result<Vec<_>>>()?;
    let bind = SocketAddr::new(targets[0].addr.ip(), 0); // loopback in, loopback out
    let mut endpoint = Endpoint::client(bind).with_context(|| format!("bind {bind}"))?;
    endpoint.set_default_client_config(client_config(c)?);
    match c.testcase.as_str() {
        "multiconnect" => {
            for target in targets {
                let conn = connect(&endpoint, target.addr).await?;
                fetch(conn.clone(), target, false).await?;
                conn.close(VarInt::from_u32(0), b"done");
            }
        }
        "resumption" | "zerortt" => {
            let mut rest = targets;
            let first = rest.remove(0);
            let conn = connect(&endpoint, first.addr).await?;
            // The server's ticket comes in its first 1-RTT CRYPTO data, before any response.
            fetch(conn.clone(), first, false).await?;
            conn.close(VarInt::from_u32(0), b"done");
            let addr = rest.first().map_or(conn.remote_address(), |t| t.addr);
            let conn = if c.testcase == "zerortt" {
                connect_0rtt(&endpoint, addr)?
            } else {
                connect(&endpoint, addr).await?
            };
            fetch_all(&conn, rest, false).await?;
        }
        _ => {
            let conn = connect(&endpoint, targets[0].addr).await?;
            fetch_all(&conn, targets, c.testcase == "keyupdate").await?;
        }
    }
    // Let the CONNECTION_CLOSE go out before the process ends.
    endpoint.wait_idle().await;
    Ok(())
}

/// Fetch every target over `conn` at once (quinn queues open_bi until the server's stream
/// limit allows), then close it; `key_update` goes with the first.
async fn fetch_all(conn: &Connection, targets: Vec<Target>, key_update: bool) -> Result<()> {
    let tasks: Vec<_> = targets
        .into_iter()
        .enumerate()
        .map(|(i, target)| tokio::spawn(fetch(conn.clone(), target, key_update && i == 0)))
        .collect();
    for task in tasks {
        task.await.map_err(|e| anyhow!("download task: {e}"))??;
    }
    conn.close(VarInt::from_u32(0), b"done");
    Ok(())
}

fn client_config(c: &Contract) -> Result<quinn::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_certificates(&c.certs.join("ca.pem"))? {
        roots.add(&cert).context("CERTS: ca.pem")?;
    }
    let builder = rustls::ClientConfig::builder();
    let builder = if c.testcase == "chacha20" {
        builder
            .with_cipher_suites(&[rustls::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256])
            .with_safe_default_kx_groups()
            .with_protocol_versions(&[&rustls::version::TLS13])?
    } else {
        builder.with_safe_defaults()
    };
    let mut tls = builder.with_root_certificates(roots).with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.into()];
    tls.key_log = Arc::new(rustls::KeyLogFile::new());
    tls.enable_early_data = c.testcase == "zerortt";
    let mut config = quinn::ClientConfig::new(Arc::new(tls));
    config.transport_config(Arc::new(transport(c.testcase == "transfer")));
    Ok(config)
}

fn transport(small_windows: bool) -> quinn::TransportConfig {
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(VarInt::from_u32(IDLE_TIMEOUT_MS).into()));
    if small_windows {
        transport.receive_window(VarInt::from_u32(SMALL_WINDOW));
        transport.stream_receive_window(VarInt::from_u32(SMALL_STREAM_WINDOW));
    }
    transport
}

async fn connect(endpoint: &Endpoint, addr: SocketAddr) -> Result<Connection> {
    let connecting = endpoint
        .connect(addr, SERVER_NAME)
        .with_context(|| format!("connect {addr}"))?;
    let conn = connecting
        .await
        .with_context(|| format!("handshake with {addr}"))?;
    eprintln!("connected to {addr}");
    Ok(conn)
}

/// A connection whose streams go out in 0-RTT, with the ticket of an earlier connection.
fn connect_0rtt(endpoint: &Endpoint, addr: SocketAddr) -> Result<Connection> {
    let connecting = endpoint
        .connect(addr, SERVER_NAME)
        .with_context(|| format!("connect {addr}"))?;
    match connecting.into_0rtt() {
        Ok((conn, _accepted)) => {
            eprintln!("connecting to {addr} with 0-RTT");
            Ok(conn)
        }
        Err(_) => bail!("no 0-RTT ticket from the first connection to {addr}"),
    }
}

/// Download one file; with `key_update`, update the 1-RTT keys once its first bytes came
/// (the handshake is confirmed by then, as a key update needs).
async fn fetch(conn: Connection, target: Target, key_update: bool) -> Result<()> {
    let (mut send, mut recv) = conn.open_bi().await.context("opening a stream")?;
    send.write_all(format!("GET {}\r\n", target.path).as_bytes())
        .await
        .with_context(|| format!("requesting {}", target.path))?;
    send.finish()
        .await
        .with_context(|| format!("requesting {}", target.path))?;
    let mut body = Vec::new();
    while let Some(chunk) = recv
        .read_chunk(MAX_RESPONSE, true)
        .await
        .with_context(|| format!("reading {}", target.path))?
    {
        if key_update && body.is_empty() {
            eprintln!("initiating a key update");
            conn.force_key_update();
        }
        body.extend_from_slice(&chunk.bytes);
        if body.len() > MAX_RESPONSE {
            bail!("{}: response larger than {MAX_RESPONSE} bytes", target.path);
        }
    }
    fs::write(&target.download, &body).with_context(|| format!("writing {:?}", target.download))?;
    Ok(())
}

fn read_certificates(path: &Path) -> Result<Vec<rustls::Certificate>> {
    let certs: Vec<_> = read_pem(path)?
        .into_iter()
        .filter_map(|item| match item {
            rustls_pemfile::Item::X509Certificate(der) => Some(rustls::Certificate(der)),
            _ => None,
        })
        .collect();
    if certs.is_empty() {
        bail!("CERTS: no certificate in {path:?}");
    }
    Ok(certs)
}

fn read_private_key(path: &Path) -> Result<rustls::PrivateKey> {
    read_pem(path)?
        .into_iter()
        .find_map(|item| match item {
            rustls_pemfile::Item::PKCS8Key(der)
            | rustls_pemfile::Item::ECKey(der)
            | rustls_pemfile::Item::RSAKey(der) => Some(rustls::PrivateKey(der)),
            _ => None,
        })
        .ok_or_else(|| anyhow!("CERTS: no private key in {path:?}"))
}

fn read_pem(path: &Path) -> Result<Vec<rustls_pemfile::Item>> {
    let pem = fs::read(path).with_context(|| format!("CERTS: reading {path:?}"))?;
    rustls_pemfile::read_all(&mut pem.as_slice()).with_context(|| format!("CERTS: {path:?}"))
}
