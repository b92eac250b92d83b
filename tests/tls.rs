//! TLS on every way in, with certificates made by `rcgen` for each test: the Rust client
//! and the CLI, `openssl s_client`, `curl --cacert` (HTTPS and SSE), Python `websockets`
//! over WSS; client certificates; and plaintext and TLS crossing each other with a clear
//! error on both sides instead of a hang. With `--auth` as well: SASL PLAIN inside TLS
//! (from `openssl s_client`), tokens from the client, `curl` and Python over WSS, and a
//! client certificate's common name logging in as that user.

use std::path::Path;
use std::time::Duration;

use herald_broker::config::Listen;
use herald_client::{Client, ConnectOptions, Credentials, FetchRequest, Record, TlsOptions};
use herald_protocol::{Frame, FrameCodec, Hello, ListTopics, Message, SaslStart};
use herald_suite::{binary, topic_names, TestBroker, TestCerts as Certs};
use tokio::process::Command;
use tokio_util::codec::Decoder;

async fn tls_broker(certs: &Certs, client_certificates: bool) -> TestBroker {
    tls_broker_with(certs, client_certificates, false).await
}

async fn tls_broker_with(certs: &Certs, client_certificates: bool, auth: bool) -> TestBroker {
    let (cert, key, ca) = (
        certs.path("server.pem"),
        certs.path("server.key"),
        certs.path("ca.pem"),
    );
    TestBroker::start_with(move |c| {
        c.http_listen = Listen::At("127.0.0.1:0".parse().unwrap());
        c.tls_cert = Some(cert);
        c.tls_key = Some(key);
        c.tls_client_ca = client_certificates.then_some(ca);
        c.auth = auth;
        c.admin_password = auth.then(|| herald_broker::auth::secrets::Secret::new("admin-pw"));
    })
    .await
}

fn tls_options(certs: &Certs) -> TlsOptions {
    TlsOptions::ca_file(certs.path("ca.pem")).unwrap()
}

async fn connect(broker: &TestBroker, tls: Option<TlsOptions>) -> herald_client::Result<Client> {
    let options = ConnectOptions {
        tls,
        reconnect: None,
        connect_timeout: Duration::from_secs(5),
        ..ConnectOptions::default()
    };
    Client::connect_with(broker.addr(), options).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_publishes_and_reads_over_tls() {
    let certs = Certs::new();
    let broker = tls_broker(&certs, false).await;
    let client = connect(&broker, Some(tls_options(&certs))).await.unwrap();
    client.create_topic("secret", 1).await.unwrap();
    let records = (0..100).map(|i| Record::new(format!("m{i}"))).collect();
    client
        .producer()
        .send_batch("secret", records)
        .await
        .unwrap();
    let fetched = client
        .fetch(FetchRequest::new("secret", 0, 0))
        .await
        .unwrap();
    assert_eq!(fetched.records.len(), 100);
    assert_eq!(fetched.records[99].record.payload, "m99");

    // The name it carries is checked: a certificate for localhost, asked for another name.
    let wrong = tls_options(&certs).server_name("elsewhere.example");
    let err = connect(&broker, Some(wrong)).await.err().expect("refused");
    assert!(err.to_string().contains("TLS handshake"), "{err}");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_and_tls_crossing_get_a_clear_error_on_both_sides() {
    let certs = Certs::new();
    let broker = tls_broker(&certs, false).await;
    // A plaintext client at the TLS port is told, not left waiting.
    let err = tokio::time::timeout(Duration::from_secs(10), connect(&broker, None))
        .await
        .expect("no hang")
        .err()
        .expect("refused");
    assert!(err.to_string().contains("this port speaks TLS"), "{err}");
    broker.stop().await;

    // A TLS client at a plaintext port is told too.
    let plain = TestBroker::start().await;
    let err = tokio::time::timeout(
        Duration::from_secs(10),
        connect(&plain, Some(tls_options(&certs))),
    )
    .await
    .expect("no hang")
    .err()
    .expect("refused");
    assert!(err.to_string().contains("TLS handshake"), "{err}");
    plain.assert_serving().await;
    plain.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_required_when_asked_for() {
    let certs = Certs::new();
    let broker = tls_broker(&certs, true).await;
    let without = connect(&broker, Some(tls_options(&certs))).await;
    assert!(without.is_err(), "no client certificate, no session");
    let with = tls_options(&certs)
        .client_cert_files(certs.path("alice.pem"), certs.path("alice.key"))
        .unwrap();
    let client = connect(&broker, Some(with)).await.unwrap();
    client.create_topic("mine", 1).await.unwrap();
    broker.stop().await;
}

/// Runs `program` with `args`, and returns its exit status and output.
async fn run(program: &str, args: &[&str], dir: &Path) -> (bool, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        Command::new(program)
            .args(args)
            .current_dir(dir)
            .stdin(std::process::Stdio::null())
            .output(),
    )
    .await
    .expect("it ends")
    .unwrap_or_else(|e| panic!("{program} runs: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_curl_python_and_the_cli_speak_tls_to_the_broker() {
    let certs = Certs::new();
    let broker = tls_broker(&certs, false).await;
    let dir = certs.dir();
    let (tcp, http) = (broker.addr().to_string(), broker.http_addr().to_string());

    // openssl s_client: the TCP port's certificate verifies against the CA.
    let (_, text) = run(
        "openssl",
        &[
            "s_client",
            "-connect",
            &tcp,
            "-CAfile",
            "ca.pem",
            "-verify_return_error",
            "-brief",
        ],
        dir,
    )
    .await;
    assert!(text.contains("Verification: OK"), "{text}");
    assert!(text.contains("TLSv1.3"), "{text}");

    // The CLI, trusting the CA; and refused without it.
    let cli = binary("herald");
    let cli = cli.to_str().unwrap();
    let (ok, text) = run(
        cli,
        &[
            "--broker", &tcp, "--tls-ca", "ca.pem", "topic", "create", "web",
        ],
        dir,
    )
    .await;
    assert!(ok, "{text}");
    let (ok, text) = run(cli, &["--broker", &tcp, "topic", "list"], dir).await;
    assert!(!ok && text.contains("this port speaks TLS"), "{text}");

    // curl over HTTPS: publish, read, and an SSE stream.
    let https = format!("https://{http}");
    let (ok, text) = run(
        "curl",
        &[
            "-sf",
            "--cacert",
            "ca.pem",
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "-d",
            r#"{"records":[{"value":"over https"}]}"#,
            &format!("{https}/v1/topics/web/records"),
        ],
        dir,
    )
    .await;
    assert!(ok && text.contains("\"offsets\""), "{text}");
    let (ok, text) = run(
        "curl",
        &[
            "-sf",
            "--cacert",
            "ca.pem",
            &format!("{https}/v1/topics/web/partitions/0/records?offset=0"),
        ],
        dir,
    )
    .await;
    assert!(ok && text.contains("over https"), "{text}");
    let (_, text) = run(
        "curl",
        &[
            "-sN",
            "--max-time",
            "2",
            "--cacert",
            "ca.pem",
            &format!("{https}/v1/topics/web/events"),
        ],
        dir,
    )
    .await;
    assert!(
        text.contains("event: record") && text.contains("over https"),
        "{text}"
    );

    // Plain HTTP at the HTTPS port: a 400 that says so.
    let (_, text) = run(
        "curl",
        &[
            "-s",
            "-w",
            "\n%{http_code}",
            &format!("http://{http}/v1/topics"),
        ],
        dir,
    )
    .await;
    assert!(
        text.ends_with("400") && text.contains("speaks HTTPS"),
        "{text}"
    );

    // Python websockets over WSS: the whole session script.
    let client = connect(&broker, Some(tls_options(&certs))).await.unwrap();
    client.create_topic("jobs", 1).await.unwrap();
    let script = herald_suite::python_script("ws_session.py");
    let url = format!("wss://localhost:{}/v1/ws", broker.http_addr().port());
    let (ok, text) = run("python3", &[&script, &url, "ca.pem"], dir).await;
    assert!(ok, "{text}");
    broker.stop().await;
}

#[tokio::test]
async fn the_broker_refuses_tls_files_it_cannot_use_naming_the_flag() {
    let certs = Certs::new();
    let dir = certs.dir();
    std::fs::write(dir.join("garbage.pem"), "not a certificate\n").unwrap();
    let broker = binary("herald-broker");
    let broker = broker.to_str().unwrap();
    let data = dir.join("data");
    let data = data.to_str().unwrap();
    let common = [
        "--listen",
        "127.0.0.1:0",
        "--http-listen",
        "off",
        "--data-dir",
        data,
    ];
    for (args, says) in [
        (
            &["--tls-cert", "missing.pem", "--tls-key", "server.key"][..],
            "--tls-cert missing.pem",
        ),
        (
            &["--tls-cert", "garbage.pem", "--tls-key", "server.key"],
            "no certificate",
        ),
        (
            &["--tls-cert", "server.pem", "--tls-key", "garbage.pem"],
            "--tls-key garbage.pem",
        ),
        (
            &[
                "--tls-cert",
                "server.pem",
                "--tls-key",
                "server.key",
                "--tls-client-ca",
                "garbage.pem",
            ],
            "--tls-client-ca",
        ),
    ] {
        let (ok, text) = run(broker, &[&common[..], args].concat(), dir).await;
        assert!(!ok && text.contains(says), "{args:?}: {text}");
        assert!(!text.contains("panicked"), "{text}");
    }
    // One without the other is a usage error.
    let (ok, text) = run(
        broker,
        &[&common[..], &["--tls-cert", "server.pem"]].concat(),
        dir,
    )
    .await;
    assert!(!ok && text.contains("--tls-key"), "{text}");
}

/// A broker with TLS and `--auth` (the administrator's password `admin-pw`); with
/// `client_ca`, client certificates are required.
async fn tls_auth_broker(certs: &Certs, client_ca: bool) -> TestBroker {
    tls_broker_with(certs, client_ca, true).await
}

fn logged_in(tls: TlsOptions, credentials: Option<Credentials>) -> ConnectOptions {
    ConnectOptions {
        tls: Some(tls),
        credentials,
        reconnect: None,
        connect_timeout: Duration::from_secs(5),
        ..ConnectOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inside_tls_plain_and_tokens_log_in_from_openssl_curl_and_python() {
    let certs = Certs::new();
    let broker = tls_auth_broker(&certs, false).await;
    let dir = certs.dir();
    let admin = Client::connect_with(
        broker.addr(),
        logged_in(
            tls_options(&certs),
            Some(Credentials::password("admin", "admin-pw")),
        ),
    )
    .await
    .unwrap();
    admin.create_topic("jobs", 1).await.unwrap();
    admin.create_topic("other", 1).await.unwrap();
    admin
        .producer()
        .send("jobs", Record::new("over tls"))
        .await
        .unwrap();
    admin.create_user("alice", "alice-pw", false).await.unwrap();
    admin
        .add_acl("alice", "jobs", &["publish", "consume"])
        .await
        .unwrap();
    let token = admin.create_token("alice", None).await.unwrap().token;

    // SASL PLAIN inside TLS, from `openssl s_client` carrying raw frames: Hello, PLAIN
    // as alice, then a listing that shows her topic only.
    let mut frames = Vec::new();
    let hello = Hello {
        min_version: 1,
        max_version: 1,
        client_id: "openssl".into(),
        ..Hello::default()
    };
    frames.extend_from_slice(&Message::new(1, hello).to_bytes());
    let plain = SaslStart {
        mechanism: "PLAIN".into(),
        payload: herald_protocol::sasl::plain_message("alice", "alice-pw"),
    };
    frames.extend_from_slice(&Message::new(2, plain).to_bytes());
    frames.extend_from_slice(&Message::new(3, ListTopics {}).to_bytes());
    std::fs::write(dir.join("frames.bin"), &frames).unwrap();
    let port = broker.addr().port();
    let script = format!(
        "timeout 3 openssl s_client -connect 127.0.0.1:{port} -CAfile ca.pem -quiet < frames.bin"
    );
    let out = Command::new("sh")
        .args(["-c", &script])
        .current_dir(dir)
        .output()
        .await
        .unwrap();
    let mut bytes = bytes::BytesMut::from(&out.stdout[..]);
    let mut answers = Vec::new();
    while let Some(raw) = FrameCodec::default().decode(&mut bytes).unwrap() {
        answers.push(raw.decode().unwrap());
    }
    assert!(matches!(answers[0], Frame::HelloOk(_)), "{answers:?}");
    assert!(
        matches!(&answers[1], Frame::SaslOk(ok) if ok.user == "alice"),
        "{answers:?}"
    );
    let Frame::TopicList(list) = &answers[2] else {
        panic!("{answers:?}")
    };
    let names: Vec<_> = list.topics.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["jobs"]);

    // The client with a token, over TLS.
    let alice = Client::connect_with(
        broker.addr(),
        logged_in(tls_options(&certs), Some(Credentials::token(&token))),
    )
    .await
    .unwrap();
    let fetched = alice.fetch(FetchRequest::new("jobs", 0, 0)).await.unwrap();
    assert_eq!(fetched.records[0].record.payload, "over tls");

    // curl --cacert: HTTPS and SSE with the token; nothing without it.
    let http = format!("https://localhost:{}", broker.http_addr().port());
    let bearer = format!("Authorization: Bearer {token}");
    let read = format!("{http}/v1/topics/jobs/partitions/0/records?offset=0");
    let (ok, text) = run(
        "curl",
        &["-sS", "--cacert", "ca.pem", "-H", &bearer, &read],
        dir,
    )
    .await;
    assert!(ok && text.contains("over tls"), "{text}");
    let events = format!("{http}/v1/topics/jobs/events?from=earliest&access_token={token}");
    let (_, text) = run(
        "curl",
        &[
            "-sS",
            "-N",
            "--max-time",
            "2",
            "--cacert",
            "ca.pem",
            &events,
        ],
        dir,
    )
    .await;
    assert!(
        text.contains("event: record") && text.contains("over tls"),
        "{text}"
    );
    let (_, text) = run(
        "curl",
        &["-sS", "-w", "%{http_code}", "--cacert", "ca.pem", &read],
        dir,
    )
    .await;
    assert!(
        text.ends_with("401") && !text.contains("over tls"),
        "{text}"
    );

    // Python websockets over WSS with a token: the whole session script, as the
    // administrator.
    let root = admin.create_token("admin", None).await.unwrap().token;
    admin.delete_topic("jobs").await.unwrap(); // the script starts from an empty `jobs`
    admin.create_topic("jobs", 1).await.unwrap();
    let script = herald_suite::python_script("ws_session.py");
    let url = format!("wss://localhost:{}/v1/ws", broker.http_addr().port());
    let (ok, text) = run("python3", &[&script, &url, "ca.pem", &root], dir).await;
    assert!(ok, "{text}");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_logs_in_as_the_user_it_names() {
    let certs = Certs::new();
    let broker = tls_auth_broker(&certs, true).await;
    let with_cert = || {
        tls_options(&certs)
            .client_cert_files(certs.path("alice.pem"), certs.path("alice.key"))
            .unwrap()
    };
    // Nobody called alice yet: the certificate alone logs nobody in.
    let anonymous = Client::connect_with(broker.addr(), logged_in(with_cert(), None))
        .await
        .unwrap();
    let err = anonymous.list_topics().await.unwrap_err();
    assert_eq!(
        err.code(),
        Some(herald_client::ErrorCode::AuthenticationRequired)
    );

    let admin = Client::connect_with(
        broker.addr(),
        logged_in(
            with_cert(),
            Some(Credentials::password("admin", "admin-pw")),
        ),
    )
    .await
    .unwrap();
    admin.create_topic("mine", 1).await.unwrap();
    admin.create_topic("theirs", 1).await.unwrap();
    admin.create_user("alice", "alice-pw", false).await.unwrap();
    admin.add_acl("alice", "mine", &["describe"]).await.unwrap();

    // Now the certificate's common name is a user: the session is hers, with her rules.
    let alice = Client::connect_with(broker.addr(), logged_in(with_cert(), None))
        .await
        .unwrap();
    assert_eq!(topic_names(&alice).await, ["mine"]);
    let err = alice.create_topic("new", 1).await.unwrap_err();
    assert_eq!(err.code(), Some(herald_client::ErrorCode::NotAuthorized));

    // The same over HTTPS.
    let url = format!("https://localhost:{}/v1/topics", broker.http_addr().port());
    let args = [
        "-sS",
        "--cacert",
        "ca.pem",
        "--cert",
        "alice.pem",
        "--key",
        "alice.key",
        &url,
    ];
    let (ok, text) = run("curl", &args, certs.dir()).await;
    assert!(ok, "{text}");
    assert_eq!(text, r#"{"topics":[{"name":"mine","partitions":1}]}"#);
    broker.stop().await;
}
