//! A real headless Chromium (Debian's `chromium`, installed by `.ci/run`) loads a page that
//! follows a topic with `EventSource` and consumes it over a `WebSocket`, acking each
//! delivery; records come from the Rust client, and the group's state is checked after.
//! Once in plaintext and once against a broker with TLS (HTTPS and WSS), Chromium trusting
//! that broker's key alone. Elsewhere than CI the test is skipped when no `chromium` is
//! installed.

use std::process::Stdio;
use std::time::Duration;

use herald_broker::config::Listen;
use herald_client::Record;
use herald_suite::{TestBroker, TestCerts};
use serde_json::Value;
use tokio::io::AsyncBufReadExt;
use tokio::process::Command;

const COUNT: usize = 20;

fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser"].into_iter().find(|name| {
        std::process::Command::new(name)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_headless_chromium_follows_with_eventsource_and_acks_over_a_websocket() {
    follow_in_chromium(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_headless_chromium_does_the_same_over_https_and_wss_with_a_token() {
    follow_in_chromium(Some(TestCerts::new())).await;
}

async fn follow_in_chromium(tls: Option<TestCerts>) {
    let Some(browser) = chromium() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have chromium (.ci/run installs it)"
        );
        eprintln!("not run: no chromium installed");
        return;
    };
    // The page is a file: its origin is "null", so the gateway allows any origin.
    let broker = TestBroker::start_with(|c| {
        c.http_listen = Listen::At("127.0.0.1:0".parse().unwrap());
        c.http_allow_origin = vec!["*".into()];
        if let Some(certs) = &tls {
            c.tls_cert = Some(certs.path("server.pem"));
            c.tls_key = Some(certs.path("server.key"));
            // And authentication: the page presents a token.
            c.auth = true;
            c.admin_password = Some(herald_broker::auth::secrets::Secret::new("admin-pw"));
        }
    })
    .await;
    let options = herald_client::ConnectOptions {
        tls: tls
            .as_ref()
            .map(|certs| herald_client::TlsOptions::ca_file(certs.path("ca.pem")).unwrap()),
        credentials: tls
            .is_some()
            .then(|| herald_client::Credentials::password("admin", "admin-pw")),
        ..Default::default()
    };
    let client = herald_client::Client::connect_with(broker.addr(), options)
        .await
        .unwrap();
    client.create_topic("browser", 1).await.unwrap();
    let records = (0..COUNT).map(|i| Record::new(format!("r{i}"))).collect();
    client
        .producer()
        .send_batch("browser", records)
        .await
        .unwrap();

    // Over HTTPS the page is user `web`, who may consume `browser` and nothing else.
    let token = match tls {
        Some(_) => {
            client.create_user("web", "web-pw", false).await.unwrap();
            client
                .add_acl("web", "browser", &["consume"])
                .await
                .unwrap();
            client.create_token("web", None).await.unwrap().token
        }
        None => String::new(),
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let page = format!(
        "file://{}/tests/clients/browser.html?http={}&topic=browser&count={COUNT}&scheme={scheme}&token={token}",
        env!("CARGO_MANIFEST_DIR"),
        broker.http_addr()
    );
    // Chromium trusts the test broker's key, and nothing else it would not trust anyway.
    let trust: Vec<String> = tls
        .iter()
        .map(|certs| {
            format!(
                "--ignore-certificate-errors-spki-list={}",
                certs.server_spki_sha256()
            )
        })
        .collect();
    let profile = tempfile::tempdir().unwrap();
    let mut chromium = Command::new(browser)
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
        ])
        .args(["--enable-logging=stderr", "--v=0"])
        .args(&trust)
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(&page)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("chromium starts");
    let mut lines = tokio::io::BufReader::new(chromium.stderr.take().unwrap()).lines();
    let reported = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some((_, rest)) = line.split_once("HERALD-RESULT ") {
                // The console line ends with `", source: ... (N)`.
                let json = rest.rsplit_once("\", source").map_or(rest, |(j, _)| j);
                return json.replace("\\\"", "\"");
            }
        }
        panic!("chromium ended without a result");
    })
    .await
    .expect("the page reports within a minute");
    chromium.kill().await.unwrap();

    let result: Value = serde_json::from_str(&reported).expect("the page's JSON");
    let expected: Vec<String> = (0..COUNT).map(|i| format!("r{i}")).collect();
    let sse: Vec<String> = serde_json::from_value(result["sse"].clone()).unwrap();
    assert_eq!(sse, expected, "EventSource saw every record in order");
    let mut delivered: Vec<String> = serde_json::from_value(result["delivered"].clone()).unwrap();
    delivered.sort_by_key(|v| v[1..].parse::<usize>().unwrap());
    delivered.dedup();
    assert_eq!(delivered, expected, "the WebSocket got every record");
    assert_eq!(result["errors"], Value::Array(vec![]), "{result}");
    assert_eq!(result["topics"], serde_json::json!(["browser"]), "{result}");
    let anonymous = if tls.is_some() { 401 } else { 200 };
    assert_eq!(result["anonymous"], anonymous, "{result}");

    let info = client
        .describe_group("browser", "browser-workers")
        .await
        .unwrap();
    assert_eq!(
        info.partitions[0].lag, 0,
        "the browser acked everything: {info:?}"
    );
    broker.stop().await;
}

/// Where the README's screenshot of the management page is kept; the test below writes a
/// fresh one when `HERALD_SCREENSHOT` is set (`HERALD_SCREENSHOT=1 cargo test --test
/// browser management`), and otherwise to a temporary file.
const SCREENSHOT: &str = "docs/management-page.png";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_management_page_logs_in_publishes_and_follows_in_chromium() {
    let Some(browser) = chromium() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have chromium (.ci/run installs it)"
        );
        eprintln!("not run: no chromium installed");
        return;
    };
    let broker = TestBroker::start_with(|c| {
        c.http_listen = Listen::At("127.0.0.1:0".parse().unwrap());
        c.auth = true;
        c.admin_password = Some(herald_broker::auth::secrets::Secret::new("admin-pw"));
    })
    .await;
    let admin = broker
        .client_as(herald_client::Credentials::password("admin", "admin-pw"))
        .await
        .unwrap();
    admin.create_topic("orders", 2).await.unwrap();
    admin.create_topic("payments", 1).await.unwrap();
    admin
        .create_push_group("orders", "workers", Default::default())
        .await
        .unwrap();
    let records = (0..5).map(|i| Record::new(format!("order {i}"))).collect();
    admin
        .producer()
        .send_batch("orders", records)
        .await
        .unwrap();
    admin.create_user("operator", "pw", false).await.unwrap();
    admin.add_acl("operator", "*", &["describe"]).await.unwrap();
    admin
        .add_acl("operator", "orders", &["publish", "consume"])
        .await
        .unwrap();
    let token = admin.create_token("operator", None).await.unwrap().token;

    let dir = tempfile::tempdir().unwrap();
    let shot = match std::env::var_os("HERALD_SCREENSHOT") {
        Some(_) => format!("{}/{SCREENSHOT}", env!("CARGO_MANIFEST_DIR")).into(),
        None => dir.path().join("page.png"),
    };
    let url = format!("http://{}/", broker.http_addr());
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        Command::new("python3")
            .arg(herald_suite::python_script("page_cdp.py"))
            .args([browser, &url, &token])
            .arg(&shot)
            .output(),
    )
    .await
    .expect("the page test ends")
    .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(seen["lag_before"], 5, "{seen}");
    assert_eq!(seen["lag_after"], 6, "{seen}");
    assert_eq!(
        seen["topics"],
        serde_json::json!(["orders", "payments"]),
        "{seen}"
    );
    assert!(
        seen["tail"]
            .as_str()
            .unwrap()
            .ends_with("hello from the page"),
        "{seen}"
    );
    assert!(
        seen["published"]
            .as_str()
            .unwrap()
            .starts_with("published to orders"),
        "{seen}"
    );
    let png = std::fs::read(&shot).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "a PNG screenshot");
    // The page's own requests went through the broker's check, as the operator.
    let stats: Value = serde_json::from_str(&admin.stats().await.unwrap()).unwrap();
    assert_eq!(stats["topics"][0]["records"], 6);
    broker.stop().await;
}
