//! `herald bench`: every scenario reports as documented, and a run whose consuming side
//! misses or duplicates a message fails instead of printing figures.

use herald_client::{FetchRequest, Record};
use herald_suite::{binary, TestBroker};
use serde_json::Value;
use tokio::process::Command;

async fn bench(args: &[&str]) -> std::process::Output {
    Command::new(binary("herald"))
        .arg("bench")
        .args(args)
        .output()
        .await
        .unwrap()
}

async fn bench_json(args: &[&str]) -> Value {
    let out = bench(&[args, &["--json"]].concat()).await;
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn assert_throughput(section: &Value) {
    assert!(section["msgs_per_sec"].as_f64().unwrap() > 0.0, "{section}");
    assert!(section["mb_per_sec"].as_f64().unwrap() > 0.0, "{section}");
}

fn assert_percentiles(section: &Value) {
    let p = |name: &str| {
        section[name]
            .as_u64()
            .unwrap_or_else(|| panic!("{name} in {section}"))
    };
    assert!(
        p("p50") <= p("p90")
            && p("p90") <= p("p99")
            && p("p99") <= p("p999")
            && p("p999") <= p("max")
    );
}

#[tokio::test]
async fn publish_reports_confirm_latency_and_no_consume_section() {
    let report = bench_json(&[
        "--embedded",
        "--fsync",
        "never",
        "--scenario",
        "publish",
        "--messages",
        "3000",
        "--size",
        "64",
    ])
    .await;
    assert_eq!(report["scenario"], "publish");
    assert_eq!(
        (report["messages"].as_u64(), report["size"].as_u64()),
        (Some(3000), Some(64))
    );
    assert_eq!(
        (report["producers"].as_u64(), report["consumers"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(report["fsync"], "never");
    assert_throughput(&report["publish"]);
    assert!(report["consume"].is_null());
    assert_percentiles(&report["latency_us"]["confirm"]);
    assert!(report["latency_us"]["delivery"].is_null());
    assert_eq!(report["verified"], true);
}

#[tokio::test]
async fn compression_and_payloads_report_bytes_on_the_wire_and_on_disk() {
    let run = |payload: &'static str, codec: &'static str| async move {
        let args = [
            "--embedded",
            "--fsync",
            "never",
            "--messages",
            "4000",
            "--size",
            "512",
            "--payload",
            payload,
            "--compression",
            codec,
        ];
        let report = bench_json(&args).await;
        assert_eq!(
            (report["payload"].as_str(), report["compression"].as_str()),
            (Some(payload), Some(codec))
        );
        assert_eq!(report["verified"], true);
        assert_throughput(&report["publish"]);
        let bytes = &report["bytes_per_record"];
        assert_eq!(bytes["payload"], 512);
        (
            bytes["wire"].as_f64().unwrap(),
            bytes["disk"].as_f64().unwrap(),
        )
    };
    let (plain_wire, plain_disk) = run("json", "none").await;
    // Uncompressed: the payload plus a few bytes of record and batch framing.
    assert!((512.0..540.0).contains(&plain_wire), "{plain_wire}");
    assert!(plain_disk >= plain_wire, "{plain_disk} {plain_wire}");
    let (lz4_wire, lz4_disk) = run("json", "lz4").await;
    let (zstd_wire, zstd_disk) = run("json", "zstd").await;
    assert!(
        lz4_wire * 2.0 < plain_wire,
        "lz4 {lz4_wire} of {plain_wire}"
    );
    assert!(zstd_wire < lz4_wire, "zstd {zstd_wire}, lz4 {lz4_wire}");
    assert!(lz4_disk < plain_disk / 2.0 && zstd_disk < lz4_disk);
    // Random letters and digits hardly compress.
    let (random_wire, _) = run("random", "lz4").await;
    assert!(random_wire > 0.7 * 512.0, "{random_wire}");

    let out = bench(&["--embedded", "--compression", "brotli"]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("brotli"));
    let out = bench(&["--embedded", "--payload", "json", "--size", "40"]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--payload json"));
}

#[tokio::test]
async fn consume_pubsub_and_fanout_report_their_sections() {
    let common = [
        "--embedded",
        "--messages",
        "3000",
        "--partitions",
        "3",
        "--producers",
        "2",
    ];
    let consume =
        bench_json(&[&common[..], &["--scenario", "consume", "--consumers", "2"]].concat()).await;
    assert_throughput(&consume["publish"]);
    assert_throughput(&consume["consume"]);
    assert!(consume["latency_us"]["delivery"].is_null());

    let pubsub =
        bench_json(&[&common[..], &["--scenario", "pubsub", "--rate", "20000"]].concat()).await;
    assert_throughput(&pubsub["consume"]);
    assert_percentiles(&pubsub["latency_us"]["confirm"]);
    assert_percentiles(&pubsub["latency_us"]["delivery"]);

    let fanout =
        bench_json(&[&common[..], &["--scenario", "fanout", "--groups", "3"]].concat()).await;
    assert_eq!(fanout["groups"], 3);
    assert_throughput(&fanout["consume"]);
}

#[tokio::test]
async fn the_table_names_settings_and_machine() {
    let out = bench(&["--embedded", "--scenario", "publish", "--messages", "500"]).await;
    assert!(out.status.success());
    let table = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "msgs/s",
        "MB/s",
        "p99.9",
        "publish→confirm",
        "fsync always",
        "cores",
        "kernel",
    ] {
        assert!(table.contains(needle), "{needle} missing from:\n{table}");
    }
}

/// Publishes 1,000 bench messages to `topic` with a verified bench run.
async fn seed(addr: &str, topic: &str) {
    let args = [
        "--broker",
        addr,
        "--scenario",
        "publish",
        "--topic",
        topic,
        "--messages",
        "1000",
    ];
    let wrote = bench(&args).await;
    assert!(
        wrote.status.success(),
        "{}",
        String::from_utf8_lossy(&wrote.stderr)
    );
}

#[tokio::test]
async fn a_missing_message_fails_the_run() {
    let broker = TestBroker::start().await;
    let addr = broker.addr().to_string();
    seed(&addr, "short").await;
    // Reading it back as if 1,500 had been published: 500 never arrive.
    let args = [
        "--scenario",
        "consume",
        "--topic",
        "short",
        "--messages",
        "1500",
        "--timeout-ms",
        "500",
        "--json",
    ];
    let out = bench(&[&["--broker", addr.as_str()][..], &args].concat()).await;
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "a failed run prints no figures");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("verification failed: 500 missing"),
        "{stderr}"
    );
    broker.stop().await;
}

#[tokio::test]
async fn a_duplicated_message_fails_the_run() {
    let broker = TestBroker::start().await;
    let addr = broker.addr().to_string();
    seed(&addr, "dup").await;
    let client = broker.client().await;
    let original = client
        .fetch(FetchRequest::new("dup", 0, 500))
        .await
        .unwrap()
        .records[0]
        .record
        .clone();
    client
        .producer()
        .send("dup", Record::new(original.payload))
        .await
        .unwrap();
    let out = bench(&[
        "--broker",
        &addr,
        "--scenario",
        "consume",
        "--topic",
        "dup",
        "--messages",
        "1000",
    ])
    .await;
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("verification failed"));
    broker.stop().await;
}

#[tokio::test]
async fn push_mode_is_measured_and_verified_in_every_scenario() {
    let common = [
        "--embedded",
        "--mode",
        "push",
        "--messages",
        "3000",
        "--partitions",
        "2",
        "--prefetch",
        "100",
    ];
    let consume =
        bench_json(&[&common[..], &["--scenario", "consume", "--consumers", "2"]].concat()).await;
    assert_eq!(consume["mode"], "push");
    assert_eq!(consume["verified"], true);
    assert_throughput(&consume["consume"]);
    let pubsub =
        bench_json(&[&common[..], &["--scenario", "pubsub", "--rate", "20000"]].concat()).await;
    assert_percentiles(&pubsub["latency_us"]["delivery"]);
    let fanout =
        bench_json(&[&common[..], &["--scenario", "fanout", "--groups", "2"]].concat()).await;
    assert_eq!(fanout["groups"], 2);
    assert_throughput(&fanout["consume"]);
}

#[tokio::test]
async fn bad_settings_are_refused() {
    for args in [
        &["--embedded", "--size", "4"][..],
        &["--embedded", "--messages", "0"],
        &[
            "--embedded",
            "--mode",
            "push",
            "--scenario",
            "consume",
            "--prefetch",
            "0",
        ],
    ] {
        let out = bench(args).await;
        assert!(!out.status.success(), "{args:?}");
        assert!(!out.stderr.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bench_whose_broker_goes_away_fails_instead_of_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let broker =
        herald_suite::BrokerProcess::start(&dir.path().join("data"), "127.0.0.1:0", &[]).await;
    let addr = broker.addr().to_string();
    // Paced so that the run is still going when the broker dies.
    let run = Command::new(binary("herald"))
        .args(["bench", "--broker", &addr, "--scenario", "pubsub"])
        .args(["--messages", "100000", "--rate", "5000", "--json"])
        .kill_on_drop(true)
        .output();
    let run = tokio::spawn(run);
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    broker.kill().await;
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), run)
        .await
        .expect("the bench gives up on a broker that is gone")
        .unwrap()
        .unwrap();
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.is_empty(), "the failure is said");
}

#[tokio::test]
async fn web_scenarios_publish_by_http_push_over_websockets_and_fan_out_over_sse() {
    let common = ["--embedded", "--fsync", "never", "--messages", "2000"];
    let http =
        bench_json(&[&common[..], &["--scenario", "publish", "--via", "http"]].concat()).await;
    assert_eq!(
        (&http["scenario"], &http["via"]),
        (&"publish".into(), &"http".into())
    );
    assert_throughput(&http["publish"]);
    assert_percentiles(&http["latency_us"]["confirm"]);
    assert_eq!(http["verified"], true);

    let ws = bench_json(
        &[
            &common[..],
            &[
                "--scenario",
                "consume",
                "--via",
                "websocket",
                "--prefetch",
                "100",
            ],
        ]
        .concat(),
    )
    .await;
    assert_eq!(
        (&ws["via"], &ws["mode"]),
        (&"websocket".into(), &"push".into())
    );
    assert_throughput(&ws["consume"]);
    assert_eq!(ws["verified"], true);

    let sse = bench_json(
        &[
            &common[..],
            &[
                "--scenario",
                "fanout",
                "--via",
                "sse",
                "--groups",
                "20",
                "--rate",
                "4000",
            ],
        ]
        .concat(),
    )
    .await;
    assert_eq!((&sse["via"], &sse["groups"]), (&"sse".into(), &20.into()));
    assert_throughput(&sse["consume"]);
    assert_percentiles(&sse["latency_us"]["delivery"]);
    assert_eq!(sse["verified"], true);
}

#[tokio::test]
async fn idle_reports_the_brokers_cpu_and_memory_per_connection() {
    for via in ["sse", "http"] {
        let report = bench_json(&[
            "--embedded",
            "--scenario",
            "idle",
            "--via",
            via,
            "--connections",
            "200",
            "--hold-ms",
            "500",
        ])
        .await;
        let idle = &report["idle"];
        assert_eq!(idle["connections"], 200, "{report}");
        assert!(idle["hold_ms"].as_u64().unwrap() >= 500, "{report}");
        // Figures read from /proc: a share of the machine's cores, resident sizes of a
        // real process, and the growth between them shared out over the connections.
        let cores = report["machine"]["cores"].as_f64().unwrap();
        let cpu = idle["broker_cpu_percent"].as_f64().unwrap();
        assert!(
            cpu.is_finite() && (0.0..=100.0 * cores).contains(&cpu),
            "{report}"
        );
        let (before, open) = (
            idle["rss_before_mb"].as_f64().unwrap(),
            idle["rss_open_mb"].as_f64().unwrap(),
        );
        assert!(before > 1.0 && open > 1.0, "{report}");
        let shared_out = idle["bytes_per_connection"].as_u64().unwrap() as f64 * 200.0;
        let growth = (open - before).max(0.0) * 1e6;
        assert!((shared_out - growth).abs() <= 1_000.0, "{report}");
        assert!(idle["measured"].as_str().unwrap().contains("this process"));
    }
}

#[tokio::test]
async fn a_way_in_a_scenario_does_not_take_is_refused() {
    let out = bench(&["--embedded", "--scenario", "publish", "--via", "sse"]).await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("does not run --via sse"), "{stderr}");
}
