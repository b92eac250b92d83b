//! The HTTP gateway, driven by `curl`: publishing, long-polling a partition, errors, CORS.

use std::time::{Duration, Instant};

use herald_broker::config::Listen;
use herald_suite::TestBroker;
use serde_json::{json, Value};
use tokio::process::Command;

async fn gateway_with(adjust: impl FnOnce(&mut herald_broker::Config)) -> TestBroker {
    TestBroker::start_with(|c| {
        c.http_listen = Listen::At("127.0.0.1:0".parse().unwrap());
        adjust(c);
    })
    .await
}

/// `curl` with `args` against `path`; returns the HTTP status and the body.
async fn curl(broker: &TestBroker, args: &[&str], path: &str) -> (u16, String) {
    let url = format!("http://{}{path}", broker.http_addr());
    let out = Command::new("curl")
        .args(["-sS", "-o", "-", "-w", "\n%{http_code}"])
        .args(args)
        .arg(&url)
        .output()
        .await
        .expect("curl runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, status) = text.rsplit_once('\n').unwrap();
    (status.parse().unwrap(), body.to_string())
}

async fn post(broker: &TestBroker, path: &str, body: &Value) -> (u16, Value) {
    let body = body.to_string();
    let args = [
        "-X",
        "POST",
        "-H",
        "content-type: application/json",
        "--data-binary",
        &body,
    ];
    let (status, text) = curl(broker, &args, path).await;
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn get(broker: &TestBroker, path: &str) -> (u16, Value) {
    let (status, text) = curl(broker, &[], path).await;
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_published_over_http_are_read_back_over_http_and_tcp() {
    let broker = gateway_with(|_| {}).await;
    let records = json!({"records": [
        {"value": "first"},
        {"key": "customer-7", "headers": {"trace": "abc"}, "value": "second"},
        {"value_base64": "AP8=", "key_base64": "//8="},
    ]});
    let (status, answer) = post(&broker, "/v1/topics/orders/records", &records).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["durability"], "synced",
        "the default policy is always"
    );
    let offsets: Vec<(u64, u64)> = answer["offsets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["partition"].as_u64().unwrap(),
                o["offset"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(offsets, vec![(0, 0), (0, 1), (0, 2)]);

    let (status, read) = get(&broker, "/v1/topics/orders/partitions/0/records?offset=0").await;
    assert_eq!(status, 200, "{read}");
    assert_eq!(read["next_offset"], 3);
    let got = read["records"].as_array().unwrap();
    assert_eq!(got[0]["value"], "first");
    assert_eq!(got[0]["key"], Value::Null);
    assert_eq!(got[1]["key"], "customer-7");
    assert_eq!(got[1]["headers"]["trace"], "abc");
    assert_eq!(got[1]["topic"], "orders");
    assert_eq!(got[1]["offset"], 1);
    assert!(got[1]["timestamp"].as_u64().unwrap() > 0);
    assert_eq!(got[2]["value_base64"], "AP8=", "bytes that are not UTF-8");
    assert_eq!(got[2]["key_base64"], "//8=");

    // The TCP client reads the same records.
    let client = broker.client().await;
    let request = herald_client::FetchRequest::new("orders", 0, 0);
    let fetched = client.fetch(request).await.unwrap();
    assert_eq!(fetched.records[1].record.payload, "second");

    // The topic as a client in another language looks it up before reading by offset.
    let (status, topics) = get(&broker, "/v1/topics").await;
    assert_eq!(status, 200, "{topics}");
    assert_eq!(
        topics["topics"],
        json!([{"name": "orders", "partitions": 1}])
    );
    let (status, topic) = get(&broker, "/v1/topics/orders").await;
    assert_eq!(status, 200, "{topic}");
    assert_eq!(topic["name"], "orders");
    let partition = &topic["partitions"][0];
    assert_eq!(
        (&partition["partition"], &partition["first_offset"]),
        (&json!(0), &json!(0))
    );
    assert_eq!(partition["next_offset"], 3);
    assert!(partition["bytes"].as_u64().unwrap() > 0, "{topic}");
    assert!(topic["retention"]["max_age_ms"].is_u64(), "{topic}");
    let (status, missing) = get(&broker, "/v1/topics/nothing-here").await;
    assert_eq!(status, 404, "{missing}");
    assert_eq!(missing["error"]["code"], "UnknownTopic");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_answers_when_a_record_arrives_and_a_short_poll_at_once() {
    let broker = gateway_with(|_| {}).await;
    let client = broker.client().await;
    client.create_topic("ticks", 1).await.unwrap();

    let started = Instant::now();
    let (status, empty) = get(
        &broker,
        "/v1/topics/ticks/partitions/0/records?offset=0&wait_ms=0",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(empty, json!({"records": [], "next_offset": 0}));
    assert!(started.elapsed() < Duration::from_secs(5));

    let waiting = {
        let url = "/v1/topics/ticks/partitions/0/records?offset=0&wait_ms=30000&max_records=10";
        let (addr, url) = (broker.http_addr(), url.to_string());
        tokio::spawn(async move {
            let out = Command::new("curl")
                .args(["-sS", &format!("http://{addr}{url}")])
                .output()
                .await
                .unwrap();
            serde_json::from_slice::<Value>(&out.stdout).unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "the long-poll waits for a record");
    client
        .producer()
        .send("ticks", herald_client::Record::new("tick"))
        .await
        .unwrap();
    let read = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("answered when the record arrived, not after 30 s")
        .unwrap();
    assert_eq!(read["records"][0]["value"], "tick");
    assert_eq!(read["next_offset"], 1);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_an_error_body_and_the_gateway_serves_on() {
    let broker = gateway_with(|c| {
        c.no_auto_create_topics = true;
        c.max_message_bytes = 1000;
        c.max_batch_records = 3;
    })
    .await;
    let client = broker.client().await;
    client.create_topic("kept", 1).await.unwrap();
    let big = "x".repeat(2000);
    // (method, path, body, status, code)
    let cases: Vec<(&str, &str, Option<Value>, u16, &str)> = vec![
        (
            "POST",
            "/v1/topics/missing/records",
            Some(json!({"records": [{"value": "x"}]})),
            404,
            "UnknownTopic",
        ),
        (
            "GET",
            "/v1/topics/missing/partitions/0/records?offset=0",
            None,
            404,
            "UnknownTopic",
        ),
        (
            "GET",
            "/v1/topics/kept/partitions/9/records?offset=0",
            None,
            404,
            "UnknownPartition",
        ),
        (
            "GET",
            "/v1/topics/kept/partitions/0/records?offset=5",
            None,
            416,
            "OffsetOutOfRange",
        ),
        (
            "GET",
            "/v1/topics/kept/partitions/zero/records?offset=0",
            None,
            400,
            "InvalidArgument",
        ),
        (
            "GET",
            "/v1/topics/kept/partitions/0/records",
            None,
            400,
            "InvalidArgument",
        ),
        (
            "POST",
            "/v1/topics/kept/records",
            Some(json!({"records": [{"value": big}]})),
            413,
            "MessageTooLarge",
        ),
        (
            "POST",
            "/v1/topics/kept/records",
            Some(
                json!({"records": [{"value": "1"}, {"value": "2"}, {"value": "3"}, {"value": "4"}]}),
            ),
            413,
            "BatchTooLarge",
        ),
        (
            "POST",
            "/v1/topics/kept/records",
            Some(json!({"records": []})),
            400,
            "InvalidArgument",
        ),
        (
            "POST",
            "/v1/topics/kept/records",
            Some(json!({"records": [{"key": "k"}]})),
            400,
            "InvalidArgument",
        ),
        (
            "POST",
            "/v1/topics/kept/records",
            Some(json!({"records": [{"value": 5}]})),
            422,
            "InvalidArgument",
        ),
        (
            "POST",
            "/v1/topics/kept/records",
            Some(json!({"records": [{"value_base64": "%%%"}]})),
            400,
            "InvalidArgument",
        ),
        (
            "POST",
            "/v1/topics/kept/records",
            Some(json!({"records": [{"value": "v", "colour": "red"}]})),
            422,
            "InvalidArgument",
        ),
        ("GET", "/v1/nowhere", None, 404, "NotSupported"),
    ];
    for (method, path, body, status, code) in cases {
        let (got, answer) = match &body {
            Some(body) => post(&broker, path, body).await,
            None => get(&broker, path).await,
        };
        let context = format!("{method} {path} {body:?}: {answer}");
        assert_eq!(got, status, "{context}");
        assert_eq!(answer["error"]["code"], code, "{context}");
        assert!(answer["error"]["number"].as_u64().is_some(), "{context}");
        assert!(answer["error"]["message"].is_string(), "{context}");
    }
    let args = [
        "-X",
        "POST",
        "-H",
        "content-type: application/json",
        "--data-binary",
        "{not json",
    ];
    let (status, text) = curl(&broker, &args, "/v1/topics/kept/records").await;
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &json!("InvalidArgument")),
        "{body}"
    );

    // Still serving.
    let ok = json!({"records": [{"value": "ok"}]});
    let (status, _) = post(&broker, "/v1/topics/kept/records", &ok).await;
    assert_eq!(status, 200);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_is_off_unless_origins_are_allowed() {
    let closed = gateway_with(|_| {}).await;
    let args = ["-i", "-H", "Origin: https://app.example"];
    let (_, head) = curl(&closed, &args, "/v1/topics/t/partitions/0/records?offset=0").await;
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("access-control-allow-origin"),
        "{head}"
    );
    closed.stop().await;

    let open = gateway_with(|c| c.http_allow_origin = vec!["https://app.example".into()]).await;
    let preflight = [
        "-i",
        "-X",
        "OPTIONS",
        "-H",
        "Origin: https://app.example",
        "-H",
        "Access-Control-Request-Method: POST",
    ];
    let (status, head) = curl(&open, &preflight, "/v1/topics/t/records").await;
    assert!(status == 200 || status == 204, "{status} {head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("access-control-allow-origin: https://app.example"),
        "{head}"
    );
    let other = ["-i", "-H", "Origin: https://evil.example"];
    let (_, head) = curl(&open, &other, "/v1/topics/t/partitions/0/records?offset=0").await;
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("access-control-allow-origin"),
        "{head}"
    );
    open.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_prints_its_http_address_and_can_turn_it_off() {
    let dir = tempfile::tempdir().unwrap();
    let broker =
        herald_suite::BrokerProcess::start(&dir.path().join("a"), "127.0.0.1:0", &[]).await;
    let url = format!(
        "http://{}/v1/topics/t/partitions/0/records?offset=0",
        broker.http_addr()
    );
    let out = Command::new("curl")
        .args(["-sS", &url])
        .output()
        .await
        .unwrap();
    let body: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(body["error"]["code"], "UnknownTopic", "{body}");
    broker.kill().await;

    let off = ["--http-listen", "off"];
    let quiet =
        herald_suite::BrokerProcess::start(&dir.path().join("b"), "127.0.0.1:0", &off).await;
    quiet.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_connections_count_against_the_broker_connection_limit() {
    let broker = gateway_with(|c| c.max_connections = 2).await;
    let first = broker.client().await;
    let second = broker.client().await;
    let path = "/v1/topics/t/partitions/0/records?offset=0";
    let (status, body) = get(&broker, path).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "TooManyConnections", "{body}");

    // A TCP connection closes: its slot serves HTTP.
    drop(second);
    let freed = Instant::now();
    let (status, body) = loop {
        let (status, body) = get(&broker, path).await;
        if status != 429 {
            break (status, body);
        }
        assert!(
            freed.elapsed() < Duration::from_secs(10),
            "the slot never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        (status, &body["error"]["code"]),
        (404, &json!("UnknownTopic"))
    );
    first.list_topics().await.unwrap();
    broker.stop().await;
}
