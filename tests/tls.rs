//! TLS on every way in, with certificates made by `rcgen` for each test: the Rust client
//! and the CLI, `openssl s_client`, `curl --cacert` (HTTPS and SSE), Python `websockets`
//! over WSS; client certificates; and plaintext and TLS crossing each other with a clear
//! error on both sides instead of a hang.

use std::path::Path;
use std::time::Duration;

use herald_broker::config::Listen;
use herald_client::{Client, ConnectOptions, FetchRequest, Record, TlsOptions};
use herald_suite::{binary, TestBroker, TestCerts as Certs};
use tokio::process::Command;

async fn tls_broker(certs: &Certs, client_certificates: bool) -> TestBroker {
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
    let script = format!("{}/tests/clients/ws_session.py", env!("CARGO_MANIFEST_DIR"));
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
