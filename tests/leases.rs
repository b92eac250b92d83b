//! Work queues over plain HTTP with job handles, driven by `curl`: leases, answers per
//! handle, a lease that runs out going to another consumer, stale and unknown handles.

use std::time::Duration;

use futures::StreamExt;
use herald_broker::config::Listen;
use herald_client::{PushConsumerConfig, PushGroupSettings, Record};
use herald_suite::TestBroker;
use serde_json::{json, Value};
use tokio::process::Command;

async fn gateway() -> TestBroker {
    TestBroker::start_with(|c| c.http_listen = Listen::At("127.0.0.1:0".parse().unwrap())).await
}

async fn post(broker: &TestBroker, path: &str, body: &Value) -> (u16, Value) {
    let out = Command::new("curl")
        .args(["-sS", "-w", "\n%{http_code}", "-X", "POST"])
        .args(["-H", "content-type: application/json", "--data-binary"])
        .arg(body.to_string())
        .arg(format!("http://{}{path}", broker.http_addr()))
        .output()
        .await
        .expect("curl runs");
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, status) = text.rsplit_once('\n').unwrap();
    (status.parse().unwrap(), serde_json::from_str(body).unwrap())
}

fn handles(leased: &Value) -> Vec<String> {
    leased["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["handle"].as_str().unwrap().to_string())
        .collect()
}

fn results_ok(answered: &Value) -> Vec<bool> {
    answered["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["ok"] == true)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_hand_out_each_job_once_and_answers_decide_what_comes_back() {
    let broker = gateway().await;
    let client = broker.client().await;
    client.create_topic("jobs", 1).await.unwrap();
    let records = (0..5).map(|i| Record::new(format!("job {i}"))).collect();
    client.producer().send_batch("jobs", records).await.unwrap();
    let leases = "/v1/topics/jobs/groups/workers/leases";

    let (status, first) = post(&broker, leases, &json!({"max": 3})).await;
    assert_eq!(status, 200, "{first}");
    let first_handles = handles(&first);
    assert_eq!(first_handles.len(), 3, "{first}");
    assert_eq!(first["records"][0]["value"], "job 0");
    assert_eq!(first["records"][0]["delivery_count"], 1);
    let (_, second) = post(&broker, leases, &json!({"max": 10, "wait_ms": 200})).await;
    assert_eq!(
        handles(&second).len(),
        2,
        "the other two, once each: {second}"
    );
    let (_, none) = post(&broker, leases, &json!({"max": 10})).await;
    assert_eq!(handles(&none).len(), 0, "nothing left to lease: {none}");

    // Ack two, nack one: the nacked one comes back, redelivered.
    let acks = "/v1/topics/jobs/groups/workers/acks";
    let (_, answered) = post(&broker, acks, &json!({"handles": first_handles[..2]})).await;
    assert_eq!(results_ok(&answered), vec![true, true], "{answered}");
    let nacks = "/v1/topics/jobs/groups/workers/nacks";
    let (_, answered) = post(&broker, nacks, &json!({"handles": [first_handles[2]]})).await;
    assert_eq!(results_ok(&answered), vec![true], "{answered}");
    let (_, again) = post(&broker, leases, &json!({"max": 5, "wait_ms": 2000})).await;
    assert_eq!(again["records"][0]["value"], "job 2", "{again}");
    assert_eq!(again["records"][0]["delivery_count"], 2);
    assert_eq!(again["records"][0]["redelivered"], true);

    // Touch, then reject and ack the rest; a handle answered twice, or never issued, fails.
    let touches = "/v1/topics/jobs/groups/workers/touches";
    let (_, touched) = post(
        &broker,
        touches,
        &json!({"handles": handles(&again), "extend_ms": 60000}),
    )
    .await;
    assert_eq!(results_ok(&touched), vec![true], "{touched}");
    let rejects = "/v1/topics/jobs/groups/workers/rejects";
    let (_, rejected) = post(
        &broker,
        rejects,
        &json!({"handles": handles(&again), "reason": "bad"}),
    )
    .await;
    assert_eq!(results_ok(&rejected), vec![true], "{rejected}");
    let mut rest = handles(&second);
    rest.push(first_handles[0].clone()); // answered already
    rest.push("nonsense".into());
    rest.push("12345.0.0".into());
    let (_, answered) = post(&broker, acks, &json!({"handles": rest})).await;
    assert_eq!(
        results_ok(&answered),
        vec![true, true, false, false, false],
        "{answered}"
    );
    assert_eq!(answered["results"][3]["error"]["code"], "InvalidArgument");

    let info = client.describe_group("jobs", "workers").await.unwrap();
    assert_eq!(info.partitions[0].lag, 0, "every job done: {info:?}");
    assert_eq!(info.dead_lettered, 1, "the rejected one: {info:?}");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_that_runs_out_goes_to_another_consumer_and_its_handle_turns_stale() {
    let broker = gateway().await;
    let client = broker.client().await;
    client.create_topic("jobs", 1).await.unwrap();
    let settings = PushGroupSettings {
        ack_timeout: Some(Duration::from_millis(500)),
        ..Default::default()
    };
    client
        .create_push_group("jobs", "workers", settings)
        .await
        .unwrap();
    client
        .producer()
        .send("jobs", Record::new("slow job"))
        .await
        .unwrap();

    let leases = "/v1/topics/jobs/groups/workers/leases";
    let (_, leased) = post(&broker, leases, &json!({"max": 1})).await;
    let handle = handles(&leased).remove(0);
    let config = PushConsumerConfig {
        prefetch: 10,
        ..Default::default()
    };
    let mut other = client
        .push_consumer_with("jobs", "workers", config)
        .await
        .unwrap();
    let moved = tokio::time::timeout(Duration::from_secs(10), other.next())
        .await
        .expect("the lease ran out and the job moved")
        .unwrap()
        .unwrap();
    assert_eq!(moved.record.payload, "slow job");
    assert_eq!(moved.delivery_count, 2);

    let acks = "/v1/topics/jobs/groups/workers/acks";
    let (_, answered) = post(&broker, acks, &json!({"handles": [handle]})).await;
    let error = &answered["results"][0]["error"];
    assert!(
        error["message"].as_str().unwrap().contains("ran out"),
        "{answered}"
    );
    moved.ack();
    other.flush_acks().await.unwrap();
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_lease_requests_get_the_error_shape() {
    let broker = gateway().await;
    let client = broker.client().await;
    client.create_topic("jobs", 1).await.unwrap();
    let (status, body) = post(
        &broker,
        "/v1/topics/missing/groups/g/leases",
        &json!({"max": 1}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("UnknownTopic")),
        "{body}"
    );
    let (status, body) = post(
        &broker,
        "/v1/topics/jobs/groups/g/leases",
        &json!({"max": 0}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("InvalidArgument")),
        "{body}"
    );
    let (status, body) = post(
        &broker,
        "/v1/topics/jobs/groups/g/leases",
        &json!({"most": 3}),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    let (status, body) = post(
        &broker,
        "/v1/topics/jobs/groups/g/acks",
        &json!({"handles": ["1.0.0"]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["results"][0]["error"]["code"], "InvalidArgument",
        "{body}"
    );
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_leased_again_after_its_lease_ran_out_has_a_new_handle_and_the_old_one_fails() {
    let broker = gateway().await;
    let client = broker.client().await;
    client.create_topic("jobs", 1).await.unwrap();
    let settings = PushGroupSettings {
        ack_timeout: Some(Duration::from_millis(300)),
        ..Default::default()
    };
    client
        .create_push_group("jobs", "workers", settings)
        .await
        .unwrap();
    client
        .producer()
        .send("jobs", Record::new("job"))
        .await
        .unwrap();
    let leases = "/v1/topics/jobs/groups/workers/leases";
    let (_, first) = post(&broker, leases, &json!({"max": 1})).await;
    let old = handles(&first).remove(0);
    let (_, second) = post(&broker, leases, &json!({"max": 1, "wait_ms": 5000})).await;
    let new = handles(&second).remove(0);
    assert_ne!(old, new, "{first} {second}");
    assert_eq!(second["records"][0]["delivery_count"], 2);

    let acks = "/v1/topics/jobs/groups/workers/acks";
    let (_, answered) = post(&broker, acks, &json!({"handles": [old, new]})).await;
    assert_eq!(results_ok(&answered), vec![false, true], "{answered}");
    let info = client.describe_group("jobs", "workers").await.unwrap();
    assert_eq!(info.partitions[0].lag, 0, "{info:?}");
    broker.stop().await;
}
