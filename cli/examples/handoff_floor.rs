//! The latency floor of the push path's shape on this machine, without a broker in it.
//!
//! W4 measures publish→delivery through five hand-offs: the producer's task writes to a
//! socket, the broker's session task reads it and queues it for the storage writer thread,
//! the writer wakes the push group's task, which writes to the consumer's socket, whose
//! task reads it. This program builds exactly that chain — two loopback sockets, a thread
//! between two tasks, the writer doing `WORK_US` of busy work (about a sled insert) — paced
//! like `herald bench --rate` (the bench's own pacer), and prints the percentiles W4
//! reports. Whatever it measures, no broker of this shape can do better here.
//!
//! ```sh
//! cargo run --release --example handoff_floor -- 5000 10 15   # msg/s, seconds, WORK_US
//! ```

#[path = "../src/cli/bench/pacer.rs"]
mod pacer;

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let arg = |i: usize, default: u64| {
        std::env::args()
            .nth(i)
            .and_then(|a| a.parse().ok())
            .unwrap_or(default)
    };
    let (rate, seconds, work_us) = (arg(1, 5000), arg(2, 10), arg(3, 15));
    let messages = rate * seconds;
    let clock = Instant::now();
    let now_ns = move || clock.elapsed().as_nanos() as u64;

    let (mut producer, mut session) = socket_pair().await?;
    let (mut dispatcher, mut consumer) = socket_pair().await?;
    let (to_writer, writer_queue) = std::sync::mpsc::channel::<u64>();
    let (to_dispatcher, mut dispatcher_queue) = tokio::sync::mpsc::unbounded_channel::<u64>();
    // The session task: socket → writer thread.
    tokio::spawn(async move {
        let mut stamp = [0u8; 8];
        while session.read_exact(&mut stamp).await.is_ok() {
            if to_writer.send(u64::from_be_bytes(stamp)).is_err() {
                return;
            }
        }
    });
    // The writer thread: some work, then wake the dispatcher task.
    std::thread::spawn(move || {
        while let Ok(stamp) = writer_queue.recv() {
            let start = Instant::now();
            while start.elapsed() < Duration::from_micros(work_us) {
                std::hint::spin_loop();
            }
            if to_dispatcher.send(stamp).is_err() {
                return;
            }
        }
    });
    // The dispatcher task: → the consumer's socket.
    tokio::spawn(async move {
        while let Some(stamp) = dispatcher_queue.recv().await {
            if dispatcher.write_all(&stamp.to_be_bytes()).await.is_err() {
                return;
            }
        }
    });
    // The consumer task: records publish→delivery.
    let consumer = tokio::spawn(async move {
        let mut latency = Histogram::<u64>::new(3).expect("histogram");
        let mut stamp = [0u8; 8];
        for _ in 0..messages {
            consumer.read_exact(&mut stamp).await?;
            let micros = (now_ns() - u64::from_be_bytes(stamp)) / 1000;
            latency.saturating_record(micros.max(1));
        }
        Ok::<_, std::io::Error>(latency)
    });
    // The producer task, paced like the bench's.
    let mut pace = pacer::Pacer::new(Duration::from_secs_f64(1.0 / rate as f64))?;
    let mut sent = 0;
    while sent < messages {
        for _ in 0..pace.tick().await?.min(messages - sent) {
            producer.write_all(&now_ns().to_be_bytes()).await?;
            sent += 1;
        }
    }
    let latency = consumer.await.expect("consumer task")?;
    println!(
        "{messages} messages at {rate}/s, writer work {work_us} µs: publish→delivery p50 {} \
         p99 {} p99.9 {} max {} µs",
        latency.value_at_quantile(0.5),
        latency.value_at_quantile(0.99),
        latency.value_at_quantile(0.999),
        latency.max()
    );
    Ok(())
}

/// Two ends of a loopback TCP connection, without Nagle's delay.
async fn socket_pair() -> std::io::Result<(TcpStream, TcpStream)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let client = TcpStream::connect(listener.local_addr()?).await?;
    let (server, _) = listener.accept().await?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    Ok((client, server))
}
