//! Storage seen from a client: retention by age, bytes and count, and what survives a restart.

use std::time::Duration;

use herald_broker::{Broker, Config};
use herald_client::{Client, ErrorCode, FetchRequest, Record, Retention, StartPosition};
use herald_suite::{read_all, TestBroker};

async fn fast_retention() -> TestBroker {
    TestBroker::start_with(|c| c.retention_check_ms = 20).await
}

async fn publish(client: &Client, topic: &str, count: usize, size: usize) {
    let producer = client.producer();
    let records = (0..count)
        .map(|i| Record::new(vec![(i % 251) as u8; size]))
        .collect();
    producer.send_batch(topic, records).await.unwrap();
}

/// Waits (up to 10 s) until the partition's first offset satisfies `done`.
async fn wait_for_first(
    client: &Client,
    topic: &str,
    done: impl Fn(u64, u64) -> bool,
) -> (u64, u64, u64) {
    for _ in 0..500 {
        let p = &client.describe_topic(topic).await.unwrap().partitions[0];
        if done(p.first_offset, p.next_offset) {
            return (p.first_offset, p.next_offset, p.bytes);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("retention did not act on {topic}");
}

#[tokio::test]
async fn retention_by_count_keeps_the_newest_records() {
    let broker = fast_retention().await;
    let client = broker.client().await;
    let retention = Retention {
        max_messages: 100,
        ..Retention::default()
    };
    client
        .create_topic_with("count", 1, retention)
        .await
        .unwrap();
    publish(&client, "count", 1000, 100).await;
    let (first, next, _) = wait_for_first(&client, "count", |first, _| first > 0).await;
    assert_eq!(next, 1000);
    let kept = next - first;
    // Whole stored chunks (7 KiB, about 60 records of 100 B) are deleted, never more.
    assert!((100..100 + 70).contains(&kept), "kept {kept}");
    let err = client
        .fetch(FetchRequest::new("count", 0, 0))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::OffsetOutOfRange));
    let herald_client::Error::Broker(err) = err else {
        unreachable!()
    };
    assert_eq!(
        err.offsets,
        Some((first, next)),
        "the error carries the first and next offsets"
    );
    let fetched = client
        .fetch(FetchRequest::new("count", 0, first))
        .await
        .unwrap();
    assert_eq!(fetched.records[0].offset, first);
    broker.stop().await;
}

#[tokio::test]
async fn retention_by_bytes_keeps_about_the_limit() {
    let broker = fast_retention().await;
    let client = broker.client().await;
    let retention = Retention {
        max_bytes: 20_000,
        ..Retention::default()
    };
    client
        .create_topic_with("bytes", 1, retention)
        .await
        .unwrap();
    publish(&client, "bytes", 1000, 100).await;
    let (first, _, bytes) = wait_for_first(&client, "bytes", |first, _| first > 0).await;
    assert!(first > 0);
    assert!(
        (20_000..20_000 + 8 * 1024).contains(&bytes),
        "kept {bytes} bytes"
    );
    broker.stop().await;
}

#[tokio::test]
async fn retention_by_age_empties_a_partition_without_reusing_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let config = || Config {
        retention_check_ms: 20,
        ..Config::ephemeral(dir.path().join("data"))
    };
    let broker = Broker::start(config()).await.unwrap();
    let client = Client::connect(broker.local_addr()).await.unwrap();
    client
        .create_topic_with(
            "aged",
            1,
            Retention {
                max_age_ms: 200,
                ..Retention::default()
            },
        )
        .await
        .unwrap();
    publish(&client, "aged", 50, 10).await;
    let (first, next, bytes) = wait_for_first(&client, "aged", |first, next| first == next).await;
    assert_eq!((first, next, bytes), (50, 50, 0), "every record aged out");
    broker.shutdown().await.unwrap();

    let broker = Broker::start(config()).await.unwrap();
    let client = Client::connect(broker.local_addr()).await.unwrap();
    let p = &client.describe_topic("aged").await.unwrap().partitions[0];
    assert_eq!(
        (p.first_offset, p.next_offset),
        (50, 50),
        "bounds survive a restart"
    );
    let confirm = client
        .producer()
        .send("aged", Record::new("later"))
        .await
        .unwrap();
    assert_eq!(confirm.offset, 50, "offsets continue; none is reused");
    broker.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_restart_keeps_topics_offsets_and_group_positions() {
    let dir = tempfile::tempdir().unwrap();
    let config = || Config::ephemeral(dir.path().join("data"));
    let broker = Broker::start(config()).await.unwrap();
    let client = Client::connect(broker.local_addr()).await.unwrap();
    client.create_topic("kept", 3).await.unwrap();
    let keyed = (0..30)
        .map(|i| Record::new(vec![1u8; 50]).with_key(format!("k{i}")))
        .collect();
    client.producer().send_batch("kept", keyed).await.unwrap();
    let before = client.describe_topic("kept").await.unwrap();
    let committed: Vec<(u32, u64)> = before
        .partitions
        .iter()
        .map(|p| (p.partition, p.next_offset / 2))
        .collect();
    assert!(
        committed.iter().filter(|(_, o)| *o > 0).count() >= 2,
        "records spread over partitions"
    );
    let assignment = client
        .join_group("kept", "readers", StartPosition::Earliest)
        .await
        .unwrap();
    client
        .commit("kept", "readers", &assignment, &committed)
        .await
        .unwrap();
    broker.shutdown().await.unwrap();

    let broker = Broker::start(config()).await.unwrap();
    let client = Client::connect(broker.local_addr()).await.unwrap();
    assert_eq!(client.describe_topic("kept").await.unwrap(), before);
    let assignment = client
        .join_group("kept", "readers", StartPosition::Latest)
        .await
        .unwrap();
    let positions: Vec<(u32, u64)> = assignment
        .partitions
        .iter()
        .map(|p| (p.partition, p.committed))
        .collect();
    assert_eq!(
        positions, committed,
        "committed positions, not the new start"
    );
    broker.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_data_directory_in_use_is_refused() {
    let broker = TestBroker::start().await;
    let err = Broker::start(Config::ephemeral(broker.data_dir()))
        .await
        .err()
        .expect("second broker refused");
    assert!(
        format!("{err:#}").contains("in use by another running broker"),
        "{err:#}"
    );
    broker
        .client()
        .await
        .list_topics()
        .await
        .expect("the first broker is unaffected");
    broker.stop().await;
}

#[tokio::test]
async fn a_damaged_store_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let broker = Broker::start(Config::ephemeral(&data)).await.unwrap();
    let client = Client::connect(broker.local_addr()).await.unwrap();
    publish(&client, "precious", 100, 100).await;
    broker.shutdown().await.unwrap();
    // Damage the head of sled's log: sled alone would start over with an empty store.
    let mut log = std::fs::read(data.join("db")).unwrap();
    for (i, byte) in log.iter_mut().take(512).enumerate() {
        *byte = (i * 37 % 256) as u8;
    }
    std::fs::write(data.join("db"), log).unwrap();
    let out = tokio::process::Command::new(herald_suite::binary("herald-broker"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("damaged store") && !stderr.contains("panicked"),
        "{stderr}"
    );
}

/// Copies a data directory (sled's files and Herald's), so each case damages its own.
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[tokio::test]
async fn a_store_cut_short_is_refused_or_complete_never_silently_shorter() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let broker = Broker::start(Config::ephemeral(&data)).await.unwrap();
    let client = Client::connect(broker.local_addr()).await.unwrap();
    client.create_topic("kept", 2).await.unwrap();
    for _ in 0..30 {
        publish(&client, "kept", 100, 100).await;
    }
    broker.shutdown().await.unwrap();

    // Cut sled's file (the index, topics and groups) or the partitions' segment files
    // (the records) to a fraction of their length.
    let segment_files = |root: &std::path::Path| -> Vec<std::path::PathBuf> {
        let mut files = Vec::new();
        for log in std::fs::read_dir(root.join("segments")).unwrap() {
            for file in std::fs::read_dir(log.unwrap().path()).unwrap() {
                files.push(file.unwrap().path());
            }
        }
        files
    };
    let mut refused = std::collections::BTreeMap::new();
    for (what, keep) in [
        ("db", 0.95),
        ("db", 0.8),
        ("db", 0.6),
        ("db", 0.4),
        ("segments", 0.95),
        ("segments", 0.5),
    ] {
        let case = dir.path().join(format!("cut-{what}-{keep}"));
        copy_dir(&data, &case);
        let files = match what {
            "db" => vec![case.join("db")],
            _ => segment_files(&case),
        };
        for file in files {
            let length = std::fs::metadata(&file).unwrap().len();
            let file = std::fs::OpenOptions::new().write(true).open(file).unwrap();
            file.set_len((length as f64 * keep) as u64).unwrap();
        }
        match Broker::start(Config::ephemeral(&case)).await {
            Err(err) => {
                let message = format!("{err:#}");
                assert!(message.contains("damaged store"), "{message}");
                *refused.entry(what).or_insert(0) += 1;
            }
            Ok(broker) => {
                let client = Client::connect(broker.local_addr()).await.unwrap();
                assert_eq!(
                    read_all(&client, "kept").await.len(),
                    3000,
                    "{what} cut to {keep}"
                );
                broker.shutdown().await.unwrap();
            }
        }
    }
    assert_eq!(
        refused.get("segments"),
        Some(&2),
        "synced records cut from the segment files are lost"
    );
}

#[tokio::test]
async fn a_log_behind_its_recorded_synced_offset_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let broker = Broker::start(Config::ephemeral(&data)).await.unwrap();
    let client = Client::connect(broker.local_addr()).await.unwrap();
    client.create_topic("kept", 1).await.unwrap();
    client.create_topic("gone", 1).await.unwrap();
    publish(&client, "kept", 10, 10).await;
    client.delete_topic("gone").await.unwrap();
    broker.shutdown().await.unwrap();

    // Deleting a topic is not damage: the store opens.
    let offsets = std::fs::read_to_string(data.join("herald.offsets")).unwrap();
    assert_eq!(offsets.lines().count(), 2, "{offsets}");
    let broker = Broker::start(Config::ephemeral(&data)).await.unwrap();
    broker.shutdown().await.unwrap();

    // A log that ends before what was synced lost records.
    let (name, next) = offsets.lines().nth(1).unwrap().split_once(' ').unwrap();
    assert_eq!(next, "10");
    std::fs::write(
        data.join("herald.offsets"),
        format!("herald offsets 1\n{name} 11\n"),
    )
    .unwrap();
    let err = Broker::start(Config::ephemeral(&data)).await.err().unwrap();
    let message = format!("{err:#}");
    assert!(
        message.contains("damaged store") && message.contains("were synced"),
        "{message}"
    );

    // A synced log whose topic vanished was lost too.
    std::fs::write(
        data.join("herald.offsets"),
        format!("herald offsets 1\n{name} 10\nlog.999.0 5\n"),
    )
    .unwrap();
    let err = Broker::start(Config::ephemeral(&data)).await.err().unwrap();
    assert!(format!("{err:#}").contains("never deleted"), "{err:#}");
}

#[tokio::test]
async fn a_store_without_herald_offsets_is_refused_until_started_with_repair_store() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let broker = Broker::start(Config::ephemeral(&data)).await.unwrap();
    let client = Client::connect(broker.local_addr()).await.unwrap();
    client.create_topic("kept", 2).await.unwrap();
    publish(&client, "kept", 500, 300).await;
    broker.shutdown().await.unwrap();
    std::fs::remove_file(data.join("herald.offsets")).unwrap();

    // The binary refuses it: exit 1, and the message names the way out.
    let refused = tokio::process::Command::new(herald_suite::binary("herald-broker"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .output();
    let refused = tokio::time::timeout(Duration::from_secs(30), refused)
        .await
        .expect("refused in time")
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("herald.offsets") && stderr.contains("--repair-store"),
        "{stderr}"
    );
    assert!(
        !data.join("herald.offsets").exists(),
        "a refusal changes nothing"
    );

    // With the flag every batch is verified and kept, and the offsets recorded anew.
    let repairing =
        herald_suite::BrokerProcess::start(&data, "127.0.0.1:0", &["--repair-store"]).await;
    let client = Client::connect(repairing.addr()).await.unwrap();
    assert_eq!(read_all(&client, "kept").await.len(), 500);
    repairing.signal("-TERM");
    assert_eq!(repairing.exit_code(Duration::from_secs(30)).await, Some(0));
    let offsets = std::fs::read_to_string(data.join("herald.offsets")).unwrap();
    assert_eq!(offsets.lines().count(), 3, "{offsets}");
    let broker = Broker::start(Config::ephemeral(&data)).await.unwrap();
    broker.shutdown().await.unwrap();
}
