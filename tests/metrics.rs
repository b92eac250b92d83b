//! `GET /metrics`, `/healthz` and `/readyz`, read with `curl` and the exposition format
//! parsed here: the figures move as they should after publishing, consuming, acking,
//! nacking, rejecting (dead-lettering), a session expiry and a failed login; `/readyz`
//! turns 503 when the free disk crosses the reserve and 200 again after; `--auth` guards
//! `/metrics` but not the probes.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use herald_broker::config::Listen;
use herald_broker::storage::disk::{FsSpace, Probe};
use herald_client::{Credentials, PushGroupSettings, Record};
use herald_protocol::{ErrorCode, Frame, Hello};
use herald_suite::{Raw, TestBroker};
use serde_json::Value;
use tokio::process::Command;

/// `curl` against `path`: the status and the body.
async fn curl(broker: &TestBroker, path: &str, args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "-w", "\n%{http_code}"])
        .args(args)
        .arg(format!("http://{}{path}", broker.http_addr()))
        .output()
        .await
        .expect("curl runs");
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, status) = text.rsplit_once('\n').unwrap();
    (status.parse().unwrap(), body.to_string())
}

/// One sample of the exposition: its name and labels.
type Key = (String, BTreeMap<String, String>);

/// Parses the text format: `name{label="value",...} value` lines; comments skipped.
fn parse(text: &str) -> BTreeMap<Key, f64> {
    let mut samples = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').expect("a value");
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let mut parsed = BTreeMap::new();
        for pair in labels.split("\",").filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once("=\"").expect("label=\"value\"");
            parsed.insert(key.to_string(), value.trim_end_matches('"').to_string());
        }
        samples.insert((name.to_string(), parsed), value.parse().expect("a number"));
    }
    samples
}

struct Scrape(BTreeMap<Key, f64>);

impl Scrape {
    async fn of(broker: &TestBroker) -> Scrape {
        let (status, text) = curl(broker, "/metrics", &[]).await;
        assert_eq!(status, 200, "{text}");
        assert!(
            text.ends_with("# EOF\n") || text.ends_with("# EOF"),
            "{text}"
        );
        Scrape(parse(&text))
    }

    /// The sample `name` with exactly `labels`.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let labels: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        *self
            .0
            .get(&(name.to_string(), labels.clone()))
            .unwrap_or_else(|| panic!("no {name}{labels:?} in {:#?}", self.0.keys()))
    }
}

async fn gateway(adjust: impl FnOnce(&mut herald_broker::Config)) -> TestBroker {
    TestBroker::start_with(|c| {
        c.http_listen = Listen::At("127.0.0.1:0".parse().unwrap());
        adjust(c);
    })
    .await
}

/// Topic "orders" with `partitions`, push group "workers" with `settings`, and `records`
/// records "order N" published to it.
async fn orders_with_workers(
    client: &herald_client::Client,
    partitions: u32,
    settings: PushGroupSettings,
    records: usize,
) {
    client.create_topic("orders", partitions).await.unwrap();
    client
        .create_push_group("orders", "workers", settings)
        .await
        .unwrap();
    let records = (0..records)
        .map(|i| Record::new(format!("order {i}")))
        .collect();
    client
        .producer()
        .send_batch("orders", records)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_publishing_consuming_answering_expiring_and_failed_logins() {
    let broker = gateway(|c| c.min_session_timeout_ms = 100).await;
    let client = broker.client().await;
    let settings = PushGroupSettings {
        ack_timeout: Some(Duration::from_secs(60)),
        ..Default::default()
    };
    orders_with_workers(&client, 1, settings, 10).await;

    let before = Scrape::of(&broker).await;
    let orders = [("topic", "orders"), ("partition", "0")];
    assert_eq!(before.get("herald_records_appended_total", &orders), 10.0);
    assert_eq!(before.get("herald_partition_next_offset", &orders), 10.0);
    assert_eq!(before.get("herald_partition_first_offset", &orders), 0.0);
    assert!(before.get("herald_bytes_appended_total", &orders) > 100.0);
    assert!(before.get("herald_partition_stored_bytes", &orders) > 100.0);
    let lag = [
        ("topic", "orders"),
        ("group", "workers"),
        ("partition", "0"),
    ];
    assert_eq!(before.get("herald_group_lag", &lag), 10.0);
    let group = [("topic", "orders"), ("group", "workers"), ("mode", "push")];
    assert_eq!(before.get("herald_group_members", &group), 0.0);
    assert!(
        before.get(
            "herald_requests_total",
            &[("way", "tcp"), ("type", "Publish"), ("outcome", "ok")]
        ) >= 1.0
    );
    assert_eq!(
        before.get(
            "herald_build_info",
            &[("version", env!("CARGO_PKG_VERSION")), ("fsync", "always")]
        ),
        1.0
    );
    assert!(before.get("herald_process_resident_memory_bytes", &[]) > 1e6);
    assert!(before.get("herald_process_open_fds", &[]) > 3.0);
    assert!(before.get("herald_storage_flush_seconds_count", &[]) >= 1.0);
    assert!(before.get("herald_storage_commit_group_size_count", &[]) >= 1.0);
    // Buckets are cumulative, and the last is the count.
    let buckets: Vec<f64> = before
        .0
        .iter()
        .filter(|((name, _), _)| name == "herald_storage_flush_seconds_bucket")
        .map(|(_, value)| *value)
        .collect();
    assert_eq!(buckets.len(), 15);
    let inf = before.get("herald_storage_flush_seconds_bucket", &[("le", "+Inf")]);
    assert_eq!(inf, before.get("herald_storage_flush_seconds_count", &[]));
    let le_1ms = before.get("herald_storage_flush_seconds_bucket", &[("le", "0.001")]);
    assert!(le_1ms <= inf);
    assert!(before.get("herald_storage_free_disk_bytes", &[]) > 0.0);
    assert!(before.get("herald_connections", &[("way", "tcp")]) >= 1.0);

    // A subscriber takes all ten: acks 7, nacks 1 (redelivered), rejects 1 (dead-lettered),
    // and holds the last.
    let mut consumer = client.push_consumer("orders", "workers").await.unwrap();
    let mut held = Vec::new();
    let mut redelivered = false;
    while !redelivered {
        let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("a delivery")
            .expect("open")
            .unwrap();
        let offset = delivery.offset;
        if delivery.delivery_count > 1 {
            redelivered = true;
            delivery.ack();
        } else if offset == 7 {
            delivery.nack(Duration::ZERO).await.unwrap();
        } else if offset == 8 {
            delivery.reject("bad order").await.unwrap();
        } else if offset == 9 {
            held.push(delivery);
        } else {
            delivery.ack();
        }
    }
    consumer.flush_acks().await.unwrap();
    let after = Scrape::of(&broker).await;
    assert_eq!(after.get("herald_group_members", &group), 1.0);
    assert_eq!(after.get("herald_group_in_flight", &group), 1.0);
    assert_eq!(after.get("herald_group_redelivered_total", &group), 1.0);
    assert_eq!(after.get("herald_group_dead_lettered_total", &group), 1.0);
    assert_eq!(
        after.get("herald_group_lag", &lag),
        1.0,
        "only the held one is left"
    );
    // The dead-letter topic now exists, with the rejected record.
    let dlq = [("topic", "orders.dlq"), ("partition", "0")];
    assert_eq!(after.get("herald_records_appended_total", &dlq), 1.0);
    assert!(
        after.get(
            "herald_requests_total",
            &[("way", "tcp"), ("type", "Subscribe"), ("outcome", "ok")]
        ) >= 1.0
    );
    assert!(
        after.get(
            "herald_requests_total",
            &[("way", "tcp"), ("type", "Reject"), ("outcome", "ok")]
        ) >= 1.0
    );
    assert!(
        after.get(
            "herald_requests_total",
            &[
                ("way", "http"),
                ("type", "GET /metrics"),
                ("outcome", "2xx")
            ]
        ) >= 1.0
    );
    drop(held);

    // A session that goes silent expires; a failed login counts (with --auth off too).
    let expired = after.get("herald_session_expiries_total", &[("way", "tcp")]);
    let mut silent = Raw::connect(broker.addr()).await;
    let hello = Hello {
        min_version: 1,
        max_version: 1,
        session_timeout_ms: 100,
        ..Hello::default()
    };
    assert!(matches!(silent.call(hello).await, Frame::HelloOk(_)));
    silent.expect_error(0, ErrorCode::SessionExpired).await;
    let failed = broker
        .client_as(Credentials::password("nobody", "pw"))
        .await;
    assert!(failed.is_err());
    let (status, _) = curl(&broker, "/v1/topics", &["-u", "nobody:pw"]).await;
    assert_eq!(status, 401);
    let last = Scrape::of(&broker).await;
    assert_eq!(
        last.get("herald_session_expiries_total", &[("way", "tcp")]),
        expired + 1.0
    );
    assert_eq!(last.get("herald_authentication_failures_total", &[]), 2.0);
    assert!(
        last.get(
            "herald_requests_total",
            &[
                ("way", "http"),
                ("type", "GET /v1/topics"),
                ("outcome", "4xx")
            ]
        ) >= 1.0
    );
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_past_the_limit_are_summed_as_other() {
    let broker = gateway(|c| c.metrics_max_topics = 2).await;
    let client = broker.client().await;
    for name in ["a", "b", "c", "d"] {
        client.create_topic(name, 2).await.unwrap();
        let records = (0..3).map(|i| Record::new(format!("{i}"))).collect();
        client.producer().send_batch(name, records).await.unwrap();
    }
    let scrape = Scrape::of(&broker).await;
    assert_eq!(
        scrape.get(
            "herald_records_appended_total",
            &[("topic", "a"), ("partition", "0")]
        ) + scrape.get(
            "herald_records_appended_total",
            &[("topic", "a"), ("partition", "1")]
        ),
        3.0
    );
    assert_eq!(
        scrape.get(
            "herald_records_appended_total",
            &[("topic", "_other"), ("partition", "_all")]
        ),
        6.0
    );
    let topics: std::collections::BTreeSet<_> = scrape
        .0
        .keys()
        .filter(|(name, _)| name == "herald_records_appended_total")
        .map(|(_, labels)| labels["topic"].clone())
        .collect();
    assert_eq!(topics.into_iter().collect::<Vec<_>>(), ["_other", "a", "b"]);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_below_the_disk_reserve_and_200_again_after() {
    let available = Arc::new(AtomicU64::new(1 << 30));
    let probe = {
        let available = Arc::clone(&available);
        Probe::new(move |_| {
            Ok(FsSpace {
                available: available.load(Ordering::Relaxed),
                total: 1 << 40,
            })
        })
    };
    let broker = gateway(|c| {
        c.disk_probe = probe;
        c.min_free_disk_bytes = Some(1 << 20);
    })
    .await;
    assert_eq!(curl(&broker, "/healthz", &[]).await.0, 200);
    let (status, body) = curl(&broker, "/readyz", &[]).await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ready"}"#));

    available.store(1000, Ordering::Relaxed);
    let body = loop {
        // The disk is sampled every few milliseconds.
        let (status, body) = curl(&broker, "/readyz", &[]).await;
        if status == 503 {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["status"], "unavailable");
    let reason = body["reasons"][0].as_str().unwrap();
    assert!(
        reason.contains("reserve") && reason.contains("1000 bytes"),
        "{reason}"
    );
    assert_eq!(
        curl(&broker, "/healthz", &[]).await.0,
        200,
        "alive all the same"
    );

    available.store(1 << 30, Ordering::Relaxed);
    loop {
        if curl(&broker, "/readyz", &[]).await.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_auth_metrics_need_a_rule_on_every_topic_and_the_probes_need_nothing() {
    let broker = gateway(|c| {
        c.auth = true;
        c.admin_password = Some(herald_broker::auth::secrets::Secret::new("admin-pw"));
    })
    .await;
    let admin = broker
        .client_as(Credentials::password("admin", "admin-pw"))
        .await
        .unwrap();
    admin.create_user("scraper", "pw", false).await.unwrap();
    admin.create_user("orders", "pw", false).await.unwrap();
    admin
        .add_acl("orders", "orders", &["describe"])
        .await
        .unwrap();
    admin.add_acl("scraper", "*", &["describe"]).await.unwrap();
    let token = admin.create_token("scraper", None).await.unwrap().token;
    assert_eq!(curl(&broker, "/metrics", &[]).await.0, 401);
    assert_eq!(curl(&broker, "/metrics", &["-u", "orders:pw"]).await.0, 403);
    let bearer = format!("Authorization: Bearer {token}");
    let (status, text) = curl(&broker, "/metrics", &["-H", &bearer]).await;
    assert_eq!(status, 200);
    assert!(
        text.contains("herald_authentication_failures_total"),
        "{text}"
    );
    assert_eq!(curl(&broker, "/healthz", &[]).await.0, 200);
    assert_eq!(curl(&broker, "/readyz", &[]).await.0, 200);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_broker_and_answers_a_lag_query() {
    let has = std::process::Command::new("prometheus")
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success());
    if !has {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have prometheus (.ci/run installs it)"
        );
        eprintln!("not run: no prometheus installed");
        return;
    }
    let broker = gateway(|_| {}).await;
    let client = broker.client().await;
    orders_with_workers(&client, 1, PushGroupSettings::default(), 7).await;

    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: herald\n    \
         static_configs:\n      - targets: ['{}']\n",
        broker.http_addr()
    );
    std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut prometheus = Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("prometheus starts");

    // Prometheus's own HTTP API, until its first scrape is in.
    let query = format!(
        "http://127.0.0.1:{port}/api/v1/query?query=herald_group_lag%7Bgroup%3D%22workers%22%7D"
    );
    let started = std::time::Instant::now();
    let answer = loop {
        let out = Command::new("curl")
            .args(["-sS", &query])
            .output()
            .await
            .unwrap();
        let answer: Option<Value> = serde_json::from_slice(&out.stdout).ok();
        if let Some(answer) = answer.filter(|a| a["data"]["result"][0].is_object()) {
            break answer;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no scrape in a minute: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let sample = &answer["data"]["result"][0];
    assert_eq!(sample["metric"]["topic"], "orders", "{answer}");
    assert_eq!(sample["metric"]["partition"], "0", "{answer}");
    assert_eq!(sample["value"][1], "7", "{answer}");
    prometheus.kill().await.unwrap();
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herald_stats_shows_what_v1_stats_answers() {
    let broker = gateway(|_| {}).await;
    let client = broker.client().await;
    orders_with_workers(&client, 2, PushGroupSettings::default(), 10).await;
    // Created after the publish, at the earliest offset: everything is its lag.
    client
        .create_pull_group("orders", "audit", herald_client::StartPosition::Earliest)
        .await
        .unwrap();

    let herald = |args: &'static [&'static str]| {
        let addr = broker.addr().to_string();
        async move {
            let out = Command::new(herald_suite::binary("herald"))
                .args(["--broker", &addr, "stats"])
                .args(args)
                .output()
                .await
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap()
        }
    };
    let cli: Value =
        serde_json::from_str(&herald(&["--interval-ms", "10", "--json"]).await).unwrap();
    let (status, http) = curl(&broker, "/v1/stats", &[]).await;
    assert_eq!(status, 200);
    let http: Value = serde_json::from_str(&http).unwrap();
    for field in ["topics", "groups", "version", "fsync"] {
        assert_eq!(cli[field], http[field], "{field}");
    }
    let orders = &http["topics"][0];
    assert_eq!(orders["name"], "orders");
    assert_eq!(orders["records"], 10);
    assert_eq!(orders["partitions"].as_array().unwrap().len(), 2);
    let lags: Vec<(String, u64)> = http["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["group"].as_str().unwrap().to_string(),
                g["lag"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        lags,
        [("audit".to_string(), 10), ("workers".to_string(), 10)]
    );

    // The summary, with a publish rate measured while a producer runs.
    let producer = {
        let client = broker.client().await;
        tokio::spawn(async move {
            for _ in 0..20 {
                let records = (0..100).map(|i| Record::new(format!("more {i}"))).collect();
                client
                    .producer()
                    .send_batch("orders", records)
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let table = herald(&["--interval-ms", "500"]).await;
    producer.await.unwrap();
    assert!(table.starts_with("herald "), "{table}");
    assert!(table.contains("connections: tcp "), "{table}");
    let rate: f64 = table
        .lines()
        .find_map(|l| l.strip_prefix("publishing: "))
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{table}"));
    assert!(rate > 0.0, "{table}");
    assert!(
        table.contains("orders / workers") && table.contains("orders / audit"),
        "{table}"
    );
    broker.stop().await;
}
