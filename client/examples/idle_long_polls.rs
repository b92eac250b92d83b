//! Holds many idle consumers, each long-polling an empty partition on its own connection,
//! to measure what waiting costs the broker:
//!
//! ```sh
//! cargo run --release --example idle_long_polls -- 127.0.0.1:7420 1000 30
//! ```
//! (broker address, consumers, seconds). Watch the broker's CPU meanwhile, e.g. with
//! `pidstat -p $(pgrep herald-broker) 10`.

use std::time::Duration;

use herald_client::{Client, ErrorCode, FetchRequest};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let addr = args
        .get(1)
        .map_or("127.0.0.1:7420", String::as_str)
        .to_string();
    let consumers: usize = args.get(2).map_or(Ok(1000), |v| v.parse())?;
    let seconds: u64 = args.get(3).map_or(Ok(30), |v| v.parse())?;
    let admin = Client::connect(&addr).await?;
    match admin.create_topic("idle", 1).await {
        Err(err) if err.code() != Some(ErrorCode::TopicExists) => return Err(err.into()),
        _ => {}
    }
    let next = admin.describe_topic("idle").await?.partitions[0].next_offset;
    let mut polls = Vec::new();
    for _ in 0..consumers {
        let client = Client::connect(&addr).await?;
        polls.push(tokio::spawn(async move {
            loop {
                let mut request = FetchRequest::new("idle", 0, next);
                request.max_wait_ms = 5_000;
                if let Err(err) = client.fetch(request).await {
                    eprintln!("fetch failed: {err}");
                    return;
                }
            }
        }));
    }
    println!("{consumers} consumers long-polling; holding for {seconds} s");
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    Ok(())
}
