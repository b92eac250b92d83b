//! Authentication and authorization on the HTTP gateway (`--auth`), driven by `curl`:
//! every route with no credentials, a wrong password, an expired and a revoked token, a
//! user without the permission, and a user with exactly the rule it needs; SSE with the
//! cookie and `?access_token=`; a WebSocket refused at its upgrade and, from Python, ended
//! when its token is revoked; an SSE stream ended the same way.

use std::time::Duration;

use base64::Engine;
use herald_broker::auth::secrets::Secret;
use herald_broker::config::Listen;
use herald_client::{Credentials, Record};
use herald_suite::{python_script, TestBroker};
use serde_json::{json, Value};
use tokio::process::Command;

const ADMIN_PASSWORD: &str = "correct horse battery staple";

async fn gateway() -> TestBroker {
    TestBroker::start_with(|c| {
        c.auth = true;
        c.admin_password = Some(Secret::new(ADMIN_PASSWORD));
        c.http_listen = Listen::At("127.0.0.1:0".parse().unwrap());
    })
    .await
}

/// `curl` against `path` with `args`, from loopback address `127.0.0.{host}`: the status,
/// the headers and the body. The broker slows failed logins per source address, so a test
/// that fails on purpose many times spreads its failures.
async fn curl_from(
    broker: &TestBroker,
    host: u8,
    args: &[String],
    path: &str,
) -> (u16, String, String) {
    let url = format!("http://{}{path}", broker.http_addr());
    let dir = tempfile::tempdir().unwrap();
    let headers = dir.path().join("headers");
    let out = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "--max-time",
            "3",
            "-D",
        ])
        .arg(&headers)
        .arg("--interface")
        .arg(format!("127.0.0.{host}"))
        .args(args)
        .arg(&url)
        .output()
        .await
        .expect("curl runs");
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, status) = text.rsplit_once('\n').unwrap();
    let body = if body.is_empty() {
        String::from_utf8_lossy(&out.stderr).into_owned()
    } else {
        body.to_string()
    };
    let headers = std::fs::read_to_string(&headers).unwrap_or_default();
    (status.parse().unwrap_or(0), headers, body)
}

/// The ways to present credentials that a test tries on every route.
#[derive(Debug, Clone)]
enum Creds {
    None,
    Basic(&'static str, &'static str),
    Bearer(String),
    Cookie(String),
    Query(String),
}

impl Creds {
    fn args(&self) -> Vec<String> {
        match self {
            Creds::None | Creds::Query(_) => vec![],
            Creds::Basic(user, password) => {
                let encoded =
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
                vec!["-H".into(), format!("Authorization: Basic {encoded}")]
            }
            Creds::Bearer(token) => vec!["-H".into(), format!("Authorization: Bearer {token}")],
            Creds::Cookie(token) => vec![
                "-H".into(),
                format!("Cookie: theme=dark; herald_token={token}"),
            ],
        }
    }

    fn path(&self, path: &str) -> String {
        match self {
            Creds::Query(token) => {
                let joiner = if path.contains('?') { '&' } else { '?' };
                format!("{path}{joiner}access_token={token}")
            }
            _ => path.to_string(),
        }
    }
}

/// Every route, as a method, a path and a JSON body (`None`: GET).
fn routes() -> Vec<(&'static str, &'static str, Option<Value>)> {
    vec![
        ("list", "/v1/topics", None),
        ("describe", "/v1/topics/orders", None),
        (
            "publish",
            "/v1/topics/orders/records",
            Some(json!({"records": [{"value": "x"}]})),
        ),
        (
            "read",
            "/v1/topics/orders/partitions/0/records?offset=0&wait_ms=0",
            None,
        ),
        ("events", "/v1/topics/orders/events?from=earliest", None),
        (
            "lease",
            "/v1/topics/orders/groups/workers/leases",
            Some(json!({"max": 1, "wait_ms": 0})),
        ),
        (
            "acks",
            "/v1/topics/orders/groups/workers/acks",
            Some(json!({"handles": ["0.0.0.0"]})),
        ),
        (
            "nacks",
            "/v1/topics/orders/groups/workers/nacks",
            Some(json!({"handles": ["0.0.0.0"]})),
        ),
        (
            "rejects",
            "/v1/topics/orders/groups/workers/rejects",
            Some(json!({"handles": ["0.0.0.0"]})),
        ),
        (
            "touches",
            "/v1/topics/orders/groups/workers/touches",
            Some(json!({"handles": ["0.0.0.0"]})),
        ),
        ("websocket", "/v1/ws", None),
    ]
}

async fn call(
    broker: &TestBroker,
    creds: &Creds,
    route: &(&'static str, &'static str, Option<Value>),
) -> (u16, String, String) {
    call_from(broker, 1, creds, route).await
}

async fn call_from(
    broker: &TestBroker,
    host: u8,
    creds: &Creds,
    route: &(&'static str, &'static str, Option<Value>),
) -> (u16, String, String) {
    let (name, path, body) = route;
    let mut args = creds.args();
    if let Some(body) = body {
        args.extend(
            [
                "-X",
                "POST",
                "-H",
                "content-type: application/json",
                "--data-binary",
            ]
            .map(String::from),
        );
        args.push(body.to_string());
    }
    if matches!(*name, "events" | "websocket") {
        // A stream or socket that is let through runs until curl stops it.
        args.extend(["--max-time", "1"].map(String::from));
    }
    if *name == "websocket" {
        for header in [
            "Connection: Upgrade",
            "Upgrade: websocket",
            "Sec-WebSocket-Version: 13",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        ] {
            args.extend(["-H".to_string(), header.to_string()]);
        }
    }
    curl_from(broker, host, &args, &creds.path(path)).await
}

fn error_code(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_string))
        .unwrap_or_else(|| format!("no error in {body:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_needs_credentials_and_a_rule_and_gives_no_data_without() {
    let broker = gateway().await;
    let admin = broker
        .client_as(Credentials::password("admin", ADMIN_PASSWORD))
        .await
        .unwrap();
    admin.create_topic("orders", 1).await.unwrap();
    admin
        .producer()
        .send("orders", Record::new("classified"))
        .await
        .unwrap();
    admin.create_user("alice", "alice-pw", false).await.unwrap();
    admin.create_user("bob", "bob-pw", false).await.unwrap();
    admin
        .add_acl("alice", "orders", &["publish", "consume"])
        .await
        .unwrap();
    let valid = admin.create_token("alice", None).await.unwrap().token;
    let expired = admin
        .create_token("alice", Some(Duration::from_millis(1)))
        .await
        .unwrap()
        .token;
    let revoked = admin.create_token("alice", None).await.unwrap();
    admin.revoke_token(&revoked.summary.id).await.unwrap();
    let bob = admin.create_token("bob", None).await.unwrap().token;
    tokio::time::sleep(Duration::from_millis(10)).await;

    let refused = [
        (Creds::None, 401, "AuthenticationRequired"),
        (Creds::Basic("alice", "wrong"), 401, "AuthenticationFailed"),
        (
            Creds::Basic("nobody", "alice-pw"),
            401,
            "AuthenticationFailed",
        ),
        (Creds::Bearer(expired.clone()), 401, "AuthenticationFailed"),
        (
            Creds::Bearer(revoked.token.clone()),
            401,
            "AuthenticationFailed",
        ),
        (
            Creds::Cookie(revoked.token.clone()),
            401,
            "AuthenticationFailed",
        ),
        (Creds::Query(expired), 401, "AuthenticationFailed"),
        (
            Creds::Bearer("not-a-token".into()),
            401,
            "AuthenticationFailed",
        ),
    ];
    let mut host = 1;
    for route in routes() {
        for (creds, status, code) in &refused {
            host += 1;
            let (got, headers, body) = call_from(&broker, host, creds, &route).await;
            assert_eq!(got, *status, "{} with {creds:?}: {body}", route.0);
            assert_eq!(error_code(&body), *code, "{} with {creds:?}", route.0);
            assert!(!body.contains("classified"), "{body}");
            assert!(
                headers
                    .to_ascii_lowercase()
                    .contains("www-authenticate: bearer"),
                "{headers}"
            );
        }
    }

    // Bob, known but granted nothing: 403 naming the operation, no data; listing shows
    // nothing; a WebSocket opens (each of its requests is checked, see the Python test).
    for creds in [Creds::Basic("bob", "bob-pw"), Creds::Bearer(bob.clone())] {
        for route in routes() {
            let (status, _, body) = call(&broker, &creds, &route).await;
            match route.0 {
                "list" => assert_eq!((status, body.as_str()), (200, r#"{"topics":[]}"#)),
                "websocket" => assert_eq!(status, 101, "{body}"),
                name => {
                    assert_eq!(status, 403, "{name}: {body}");
                    assert_eq!(error_code(&body), "NotAuthorized", "{name}");
                    assert!(
                        body.contains("bob") && body.contains("\\\"orders\\\""),
                        "{body}"
                    );
                    assert!(!body.contains("classified"), "{body}");
                }
            }
        }
    }

    // Alice, with publish and consume on `orders`: through on every route, with each way
    // of presenting her token; Basic works as well.
    for creds in [
        Creds::Bearer(valid.clone()),
        Creds::Cookie(valid.clone()),
        Creds::Query(valid.clone()),
        Creds::Basic("alice", "alice-pw"),
    ] {
        for route in routes() {
            let (status, _, body) = call(&broker, &creds, &route).await;
            match route.0 {
                "list" => assert_eq!(body, r#"{"topics":[{"name":"orders","partitions":1}]}"#),
                "websocket" => assert_eq!(status, 101),
                // The stream runs until curl gives up; it started with the record.
                "events" => assert!(body.contains("classified"), "{body}"),
                "read" => assert!(status == 200 && body.contains("classified"), "{body}"),
                "acks" | "nacks" | "rejects" | "touches" => {
                    assert_eq!(status, 200, "{}: {body}", route.0);
                    assert!(body.contains("results"), "{body}");
                }
                name => assert_eq!(status, 200, "{name} with {creds:?}: {body}"),
            }
        }
    }
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_and_sse_sessions_are_checked_and_end_when_their_token_is_revoked() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let broker = gateway().await;
    let admin = broker
        .client_as(Credentials::password("admin", ADMIN_PASSWORD))
        .await
        .unwrap();
    admin.create_topic("jobs", 1).await.unwrap();
    admin.create_topic("secret", 1).await.unwrap();
    admin.create_user("alice", "alice-pw", false).await.unwrap();
    admin
        .add_acl("alice", "jobs", &["publish", "consume"])
        .await
        .unwrap();
    let token = admin.create_token("alice", None).await.unwrap();

    // Python: refused without a token, then a session with it whose requests are checked
    // one by one; it waits on stdin, then for the broker to end the session.
    let url = format!("ws://{}/v1/ws", broker.http_addr());
    let mut python = Command::new("python3")
        .args([python_script("ws_auth.py"), url, token.token.clone()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(python.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("the script gets ready")
        .unwrap()
        .expect("a line");
    assert_eq!(ready, "ready");

    // An SSE stream with the same token, by cookie, reading along.
    let sse = Command::new("curl")
        .args(["-sS", "-N", "--max-time", "20", "-H"])
        .arg(format!("Cookie: herald_token={}", token.token))
        .arg(format!(
            "http://{}/v1/topics/jobs/events?from=earliest",
            broker.http_addr()
        ))
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = std::time::Instant::now();
    admin.revoke_token(&token.summary.id).await.unwrap();
    python
        .stdin
        .take()
        .unwrap()
        .write_all(b"revoked\n")
        .await
        .unwrap();
    let said = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("the script ends")
        .unwrap()
        .expect("a line");
    let said: Value = serde_json::from_str(&said).unwrap();
    assert_eq!(
        said["revoked"]["error"]["code"], "CredentialsRevoked",
        "{said}"
    );
    assert_eq!(said["refused_without_token"], 401, "{said}");
    assert_eq!(said["secret"]["error"]["code"], "NotAuthorized", "{said}");
    assert!(python.wait().await.unwrap().success());

    let out = tokio::time::timeout(Duration::from_secs(20), sse.wait_with_output())
        .await
        .expect("the stream ends")
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the stream outlived its token"
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("\"value\":\"from python\""), "{text}");
    let last = text.trim_end().rsplit("\n\n").next().unwrap();
    assert!(
        last.starts_with("event: error") && last.contains("CredentialsRevoked"),
        "{last:?}"
    );
    broker.stop().await;
}
