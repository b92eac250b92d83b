//! The shared harness of Herald's black-box tests and benches: a real broker on
//! `127.0.0.1:0` in a temporary data directory, and the paths of the built binaries.
//!
//! ```no_run
//! # async fn run() {
//! let broker = herald_suite::TestBroker::start().await;
//! let client = broker.client().await;
//! client.create_topic("t", 1).await.unwrap();
//! broker.stop().await;
//! # }
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use herald_broker::{Broker, Config, EPHEMERAL_DISK_RESERVE};
use herald_client::{Client, ConnectionEvent, Credentials, ErrorCode};
use herald_protocol::{Frame, FrameCodec, Hello, ListTopics, Message, RawFrame};
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use tempfile::TempDir;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

/// A broker started in-process for one test, with its own data directory.
pub struct TestBroker {
    broker: Broker,
    addr: SocketAddr,
    dir: TempDir,
    /// The settings it started with, to start it again the same way.
    config: Config,
}

impl TestBroker {
    /// A broker with default settings.
    pub async fn start() -> TestBroker {
        TestBroker::start_with(|_| {}).await
    }

    /// A broker whose settings `adjust` changes first.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> TestBroker {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = Config::ephemeral(dir.path().join("data"));
        adjust(&mut config);
        TestBroker::launch(dir, config).await
    }

    async fn launch(dir: TempDir, config: Config) -> TestBroker {
        let broker = Broker::start(config.clone()).await.expect("broker starts");
        let addr = broker.local_addr();
        TestBroker {
            broker,
            addr,
            dir,
            config,
        }
    }

    /// Runs the `herald` CLI against this broker with `args` and waits for it.
    pub async fn cli(&self, args: &[&str]) -> std::process::Output {
        tokio::process::Command::new(binary("herald"))
            .arg("--broker")
            .arg(self.addr().to_string())
            .args(args)
            .output()
            .await
            .expect("the herald CLI runs")
    }

    /// Stops the broker cleanly and starts it again on the same data directory and
    /// settings (on a new port: clients connect again to [`TestBroker::addr`]).
    pub async fn restart(self) -> TestBroker {
        let TestBroker {
            broker,
            dir,
            config,
            ..
        } = self;
        broker.shutdown().await.expect("clean shutdown");
        TestBroker::launch(dir, config).await
    }

    /// The address the broker listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The HTTP gateway's address (start it with `http_listen` set).
    pub fn http_addr(&self) -> SocketAddr {
        self.broker.http_addr().expect("the HTTP gateway is on")
    }

    /// The broker's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Bytes of frames the broker has queued for clients (see `--max-outbound-bytes`).
    pub fn outbound_bytes(&self) -> u64 {
        self.broker.outbound_bytes()
    }

    /// The broker's verbs, without a socket.
    pub fn core(&self) -> herald_broker::core::Core {
        self.broker.core()
    }

    /// Tasks now serving push groups (dispatchers and what they wait on).
    pub fn push_group_tasks(&self) -> usize {
        self.broker.push_group_tasks()
    }

    /// A new client connection.
    pub async fn client(&self) -> Client {
        Client::connect(self.addr).await.expect("client connects")
    }

    /// A new client connection logged in with `credentials` (no reconnecting: a test
    /// wants to see a refused login, not a retry).
    pub async fn client_as(&self, credentials: Credentials) -> herald_client::Result<Client> {
        let options = herald_client::ConnectOptions {
            credentials: Some(credentials),
            reconnect: None,
            connect_timeout: Duration::from_secs(10),
            ..Default::default()
        };
        Client::connect_with(self.addr, options).await
    }

    /// Checks that a well-behaved client still publishes and reads (on topic `healthy`).
    pub async fn assert_serving(&self) {
        let client = self.client().await;
        let confirm = client
            .producer()
            .send("healthy", herald_client::Record::new("ok"))
            .await
            .expect("publishes");
        let request =
            herald_client::FetchRequest::new("healthy", confirm.partition, confirm.offset);
        let fetched = client.fetch(request).await.expect("reads");
        assert_eq!(fetched.records[0].record.payload, "ok");
    }

    /// Shuts the broker down cleanly and removes its data.
    pub async fn stop(self) {
        self.broker.shutdown().await.expect("clean shutdown");
    }
}

/// Publishes records `make(0)` to `make(count - 1)` to `topic`, in batches of at most 500,
/// each confirmed before the next.
pub async fn publish_records(
    client: &Client,
    topic: &str,
    count: usize,
    make: impl Fn(usize) -> herald_client::Record,
) {
    let producer = client.producer();
    let numbers: Vec<usize> = (0..count).collect();
    for chunk in numbers.chunks(500) {
        let records = chunk.iter().map(|&i| make(i)).collect();
        producer
            .send_batch(topic, records)
            .await
            .expect("publish confirmed");
    }
}

/// Every record of every partition of `topic` with its partition, fetched from the first
/// retained offset up to the partition's end when the read began, in partition then
/// offset order.
pub async fn read_all(client: &Client, topic: &str) -> Vec<(u32, herald_client::StoredRecord)> {
    let info = client.describe_topic(topic).await.expect("topic described");
    let mut out = Vec::new();
    for partition in info.partitions {
        let mut offset = partition.first_offset;
        while offset < partition.next_offset {
            let request = herald_client::FetchRequest::new(topic, partition.partition, offset);
            let fetched = client.fetch(request).await.expect("fetch");
            let last = fetched
                .records
                .last()
                .expect("records up to the end")
                .offset;
            out.extend(
                fetched
                    .records
                    .into_iter()
                    .map(|r| (partition.partition, r)),
            );
            offset = last + 1;
        }
    }
    out
}

/// The path of a binary built by this workspace (`herald`, `herald-broker`), next to the
/// running test's own directory. `cargo test --workspace` builds both before any test runs;
/// `cargo test -p herald-suite` alone does not rebuild them, so run
/// `cargo build --workspace` first when iterating on one test file.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "{} is not built; run `cargo build --workspace` first",
        path.display()
    );
    path
}

/// The resident memory of process `pid` in KiB, read from `/proc`; `None` once it is gone.
pub fn rss_kib_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// A `herald-broker` process on a data directory, for tests that kill it and start it
/// again on the same address.
pub struct BrokerProcess {
    child: tokio::process::Child,
    addr: SocketAddr,
    http_addr: Option<SocketAddr>,
}

impl BrokerProcess {
    /// Starts a broker on `listen` (port 0 picks one) with `args` added, and waits until it
    /// prints the addresses it listens on. Its HTTP gateway listens on a free port too,
    /// unless `args` say otherwise.
    pub async fn start(data_dir: &Path, listen: &str, args: &[&str]) -> BrokerProcess {
        use tokio::io::AsyncBufReadExt;
        let http: &[&str] = if args.contains(&"--http-listen") {
            &[]
        } else {
            &["--http-listen", "127.0.0.1:0"]
        };
        // The small reserve of `Config::ephemeral`, for the same reason.
        let reserve = EPHEMERAL_DISK_RESERVE.to_string();
        let reserve: &[&str] = if args.contains(&"--min-free-disk-bytes") {
            &[]
        } else {
            &["--min-free-disk-bytes", &reserve]
        };
        let mut child = tokio::process::Command::new(binary("herald-broker"))
            .args(["--listen", listen, "--data-dir"])
            .arg(data_dir)
            .args(http)
            .args(reserve)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("herald-broker starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("the broker prints its address in time")
            .expect("stdout readable")
            .expect("the broker prints its address");
        let address = |line: &str| -> SocketAddr {
            line.rsplit(' ')
                .next()
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("no address in {line:?}"))
        };
        let addr = address(&line);
        let off = args
            .windows(2)
            .any(|pair| pair[0] == "--http-listen" && pair[1] == "off");
        let http_addr = if off {
            None
        } else {
            let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
                .await
                .expect("the broker prints its HTTP address in time")
                .expect("stdout readable")
                .expect("the broker prints its HTTP address");
            assert!(line.contains("http listening on"), "{line}");
            Some(address(&line))
        };
        BrokerProcess {
            child,
            addr,
            http_addr,
        }
    }

    /// The HTTP gateway's address, unless it was started with `--http-listen off`.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr.expect("the HTTP gateway is on")
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its resident memory in KiB, read from `/proc`.
    pub fn rss_kib(&self) -> u64 {
        rss_kib_of(self.pid()).expect("VmRSS in /proc/<pid>/status")
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// Sends it a signal by name (`-TERM`, `-INT`, `-STOP`, ...).
    pub fn signal(&self, name: &str) {
        let pid = self.child.id().expect("running").to_string();
        let status = std::process::Command::new("kill")
            .args([name, &pid])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {name} {pid}");
    }

    /// Waits until it exits, at most `limit`; returns its exit code (`None`: by a signal).
    pub async fn exit_code(mut self, limit: Duration) -> Option<i32> {
        let status = tokio::time::timeout(limit, self.child.wait())
            .await
            .expect("the broker exits in time")
            .expect("reaped");
        status.code()
    }

    /// Kills it with SIGKILL and waits until it is gone.
    pub async fn kill(mut self) {
        self.child.start_kill().expect("kill");
        self.child.wait().await.expect("reaped");
    }
}

/// Waits up to `limit` for the client's next `Disconnected` event (skipping others) and
/// returns its reason.
pub async fn disconnected(
    events: &mut tokio::sync::broadcast::Receiver<ConnectionEvent>,
    limit: Duration,
) -> String {
    next_event(events, limit, |event| match event {
        ConnectionEvent::Disconnected { reason, .. } => Some(reason),
        _ => None,
    })
    .await
}

/// Waits up to `limit` for the client's next `Connected` event (skipping others) and
/// returns its epoch.
pub async fn reconnected(
    events: &mut tokio::sync::broadcast::Receiver<ConnectionEvent>,
    limit: Duration,
) -> u64 {
    next_event(events, limit, |event| match event {
        ConnectionEvent::Connected { epoch, .. } => Some(epoch),
        _ => None,
    })
    .await
}

async fn next_event<T>(
    events: &mut tokio::sync::broadcast::Receiver<ConnectionEvent>,
    limit: Duration,
    mut pick: impl FnMut(ConnectionEvent) -> Option<T>,
) -> T {
    let wait = async {
        loop {
            match events.recv().await {
                Ok(event) => {
                    if let Some(found) = pick(event) {
                        return found;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(err) => panic!("no more connection events: {err}"),
            }
        }
    };
    tokio::time::timeout(limit, wait)
        .await
        .unwrap_or_else(|_| panic!("the connection event did not come within {limit:?}"))
}

/// A hand-driven connection, for sending what no well-behaved client would, or for a
/// client that falls silent.
pub struct Raw {
    framed: Framed<TcpStream, FrameCodec>,
    next_id: u32,
}

impl Raw {
    /// Connects without saying `Hello`.
    pub async fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).await.expect("connects");
        Raw {
            framed: Framed::new(stream, FrameCodec::default()),
            next_id: 1_000,
        }
    }

    /// Connects and says `Hello` (protocol 1, the broker's session defaults).
    pub async fn greeted(addr: SocketAddr) -> Raw {
        let mut raw = Raw::connect(addr).await;
        let hello = Hello {
            min_version: 1,
            max_version: 1,
            client_id: "raw".into(),
            ..Hello::default()
        };
        assert!(matches!(raw.call(hello).await, Frame::HelloOk(_)));
        raw
    }

    /// Logs in with SCRAM-SHA-256 as `user`; the broker's last answer (`SaslOk`, whose
    /// signature is checked, or an error).
    pub async fn scram(&mut self, user: &str, password: &str) -> Frame {
        use herald_protocol::scram::ClientFirst;
        let first = ClientFirst::new(user);
        let start = herald_protocol::SaslStart {
            mechanism: "SCRAM-SHA-256".into(),
            payload: first.message().into_bytes().into(),
        };
        let challenge = match self.call(start).await {
            Frame::SaslChallenge(challenge) => challenge,
            other => return other,
        };
        let server_first = String::from_utf8(challenge.payload.to_vec()).expect("UTF-8");
        let (answer, expects) = first
            .answer(&server_first, password)
            .expect("a fair challenge");
        let answer = herald_protocol::SaslContinue {
            payload: answer.into_bytes().into(),
        };
        let last = self.call(answer).await;
        if let Frame::SaslOk(ok) = &last {
            let server_final = String::from_utf8(ok.payload.to_vec()).expect("UTF-8");
            expects
                .verify(&server_final)
                .expect("the broker proves it knows the user");
        }
        last
    }

    /// Logs in with a one-message mechanism (`PLAIN`, `TOKEN`); the broker's answer.
    pub async fn sasl(&mut self, mechanism: &str, payload: impl Into<bytes::Bytes>) -> Frame {
        let start = herald_protocol::SaslStart {
            mechanism: mechanism.into(),
            payload: payload.into(),
        };
        self.call(start).await
    }

    /// Sends `frame` as request `id`.
    pub async fn send(&mut self, id: u32, frame: impl Into<Frame>) {
        self.framed
            .send(Message::new(id, frame))
            .await
            .expect("sent");
    }

    /// Writes bytes as they are.
    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        assert!(self.try_send_bytes(bytes).await, "written");
    }

    /// Writes bytes as they are; says whether the socket took them.
    pub async fn try_send_bytes(&mut self, bytes: &[u8]) -> bool {
        self.framed.get_mut().write_all(bytes).await.is_ok()
    }

    /// The next frame, with its correlation id (waits up to 5 s).
    pub async fn recv(&mut self) -> (u32, Frame) {
        let raw: RawFrame = tokio::time::timeout(Duration::from_secs(5), self.framed.next())
            .await
            .expect("a frame in time")
            .expect("the connection is open")
            .expect("a readable frame");
        (
            raw.correlation_id,
            raw.decode().expect("a well-formed frame"),
        )
    }

    /// Sends `frame` under a fresh correlation id and returns its answer, skipping
    /// heartbeats, deliveries and anything else sent meanwhile.
    pub async fn call(&mut self, frame: impl Into<Frame>) -> Frame {
        let id = self.next_id;
        self.next_id += 1;
        self.send(id, frame).await;
        loop {
            let (got, frame) = self.recv().await;
            if got == id {
                return frame;
            }
        }
    }

    /// The next frame (heartbeats aside) must be an error with `code` answering request
    /// `id`.
    pub async fn expect_error(&mut self, id: u32, code: ErrorCode) -> String {
        let next = loop {
            match self.recv().await {
                (0, Frame::Heartbeat(_)) => continue,
                other => break other,
            }
        };
        match next {
            (got, Frame::Error(err)) if got == id && err.error_code() == Some(code) => err.message,
            other => panic!("expected {code} for request {id}, got {other:?}"),
        }
    }

    /// The broker closes the connection (after any error frame it sends first).
    pub async fn expect_closed(&mut self) {
        let end = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(Ok(_)) = self.framed.next().await {}
        });
        end.await.expect("the broker closed the connection");
    }

    /// The connection still answers requests.
    pub async fn expect_alive(&mut self) {
        assert!(matches!(
            self.call(ListTopics {}).await,
            Frame::TopicList(_)
        ));
    }
}

/// A TCP proxy in front of a broker that counts the frames clients send through it, by
/// opcode, so tests can see how a client turns calls into requests.
pub struct FrameTap {
    addr: SocketAddr,
    counts: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<u16, u64>>>,
}

impl FrameTap {
    /// Starts a proxy to `target` on `127.0.0.1:0`.
    pub async fn start(target: SocketAddr) -> FrameTap {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binds");
        let addr = listener.local_addr().expect("bound");
        let counts = std::sync::Arc::default();
        let tally = std::sync::Arc::clone(&counts);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(broker) = TcpStream::connect(target).await else {
                    return;
                };
                let (client_read, mut client_write) = client.into_split();
                let (mut broker_read, broker_write) = broker.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut broker_read, &mut client_write).await;
                });
                tokio::spawn(count_frames(
                    client_read,
                    broker_write,
                    std::sync::Arc::clone(&tally),
                ));
            }
        });
        FrameTap { addr, counts }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Frames with `opcode` sent so far, by every client of the tap.
    pub fn count(&self, opcode: herald_protocol::Opcode) -> u64 {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.get(&(opcode as u16)).copied().unwrap_or(0)
    }
}

/// Forwards a client's frames, counting them (a tap for well-behaved clients: a frame
/// that does not decode ends the connection).
async fn count_frames(
    from: tokio::net::tcp::OwnedReadHalf,
    to: tokio::net::tcp::OwnedWriteHalf,
    counts: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<u16, u64>>>,
) {
    let mut frames = tokio_util::codec::FramedRead::new(from, FrameCodec::default());
    let mut sink = tokio_util::codec::FramedWrite::new(to, FrameCodec::default());
    while let Some(Ok(raw)) = frames.next().await {
        *counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(raw.opcode)
            .or_default() += 1;
        let id = raw.correlation_id;
        let Ok(frame) = raw.decode() else { return };
        if sink.send(Message::new(id, frame)).await.is_err() {
            return;
        }
    }
}

/// Certificates for TLS tests, made by `rcgen`: a CA, a server certificate for `localhost` and 127.0.0.1, and a client certificate for
/// `alice`, as PEM files in a temporary directory.
pub struct TestCerts {
    dir: tempfile::TempDir,
    /// The server key's public key (SubjectPublicKeyInfo, DER).
    server_spki: Vec<u8>,
}

impl TestCerts {
    pub fn new() -> TestCerts {
        let dir = tempfile::tempdir().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "Herald test CA");
        let ca_key = KeyPair::generate().unwrap();
        let ca = ca.self_signed(&ca_key).unwrap();
        let write = |name: &str, text: String| std::fs::write(dir.path().join(name), text).unwrap();
        write("ca.pem", ca.pem());

        let mut server =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_key = KeyPair::generate().unwrap();
        let server = server.signed_by(&server_key, &ca, &ca_key).unwrap();
        write("server.pem", server.pem());
        write("server.key", server_key.serialize_pem());

        let mut client = CertificateParams::new(Vec::<String>::new()).unwrap();
        client.distinguished_name.push(DnType::CommonName, "alice");
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client_key = KeyPair::generate().unwrap();
        let client = client.signed_by(&client_key, &ca, &ca_key).unwrap();
        write("alice.pem", client.pem());
        write("alice.key", client_key.serialize_pem());
        TestCerts {
            dir,
            server_spki: server_key.public_key_der(),
        }
    }

    /// `ca.pem`, `server.pem`, `server.key`, `alice.pem` or `alice.key`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl TestCerts {
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The base64 SHA-256 of the server's public key, as Chromium's
    /// `--ignore-certificate-errors-spki-list` takes it (to trust this server alone).
    pub fn server_spki_sha256(&self) -> String {
        use base64::Engine;
        let digest = ring::digest::digest(&ring::digest::SHA256, &self.server_spki);
        base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
    }
}

impl Default for TestCerts {
    fn default() -> Self {
        TestCerts::new()
    }
}

/// The path of a client script in `tests/clients`, with Python's `websockets` package
/// installed first if it is missing (so `cargo test --workspace` works on a fresh machine).
pub fn python_script(name: &str) -> String {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let has = std::process::Command::new("python3")
            .args(["-c", "import websockets"])
            .status()
            .is_ok_and(|s| s.success());
        if !has {
            let installed = std::process::Command::new("python3")
                .args(["-m", "pip", "install", "--quiet", "websockets"])
                .status()
                .expect("python3 runs");
            assert!(installed.success(), "pip install websockets failed");
        }
    });
    format!("{}/tests/clients/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// The names of the topics `client` may see, sorted.
pub async fn topic_names(client: &Client) -> Vec<String> {
    let topics = client.list_topics().await.expect("lists topics");
    topics.into_iter().map(|t| t.name).collect()
}
