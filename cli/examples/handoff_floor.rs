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
//! Given a directory as well, the writer commits as `--fsync always` does: it takes every
//! message queued, appends them (170 bytes each, a stored 100 B record) to a file there,
//! `fdatasync`s once and passes them all on. That is the floor of W4 under `always` on the
//! disk holding that directory.
//!
//! ```sh
//! cargo run --release --example handoff_floor -- 5000 10 15   # msg/s, seconds, WORK_US
//! cargo run --release --example handoff_floor -- 5000 10 15 ./herald-data   # with synced commits
//! ```

#[path = "../src/cli/bench/pacer.rs"]
mod pacer;

use std::io::Write;
use std::path::PathBuf;
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
    let mut synced = match std::env::args().nth(4).map(PathBuf::from) {
        Some(dir) => Some(SyncedFile::create(&dir)?),
        None => None,
    };
    let sync = if synced.is_some() {
        ", group commits synced"
    } else {
        ""
    };
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
    // The writer thread: some work, then wake the dispatcher task. With a file, it takes
    // everything queued, appends it, syncs once and passes it all on: a group commit.
    let writer = std::thread::spawn(move || {
        while let Ok(first) = writer_queue.recv() {
            let group: Vec<u64> = std::iter::once(first)
                .chain(writer_queue.try_iter())
                .collect();
            for _ in &group {
                let start = Instant::now();
                while start.elapsed() < Duration::from_micros(work_us) {
                    std::hint::spin_loop();
                }
            }
            if let Some(file) = &mut synced {
                file.append(group.len())?;
            }
            for stamp in group {
                if to_dispatcher.send(stamp).is_err() {
                    return Ok(());
                }
            }
        }
        Ok::<_, std::io::Error>(())
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
        // Bounded as the bench's are: up to an hour, in microseconds.
        let mut latency =
            Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("histogram");
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
    drop(producer);
    writer.join().expect("writer thread")?;
    println!(
        "{messages} messages at {rate}/s, writer work {work_us} µs{sync}: publish→delivery \
         p50 {} p99 {} p99.9 {} max {} µs",
        latency.value_at_quantile(0.5),
        latency.value_at_quantile(0.99),
        latency.value_at_quantile(0.999),
        latency.max()
    );
    Ok(())
}

/// A file that each message is appended to and synced, removed at the end.
struct SyncedFile {
    file: std::fs::File,
    path: PathBuf,
}

impl SyncedFile {
    fn create(dir: &std::path::Path) -> std::io::Result<SyncedFile> {
        let path = dir.join(format!("handoff-floor-{}", std::process::id()));
        let file = std::fs::File::create(&path)?;
        Ok(SyncedFile { file, path })
    }

    /// Appends `records` stored records of 100 B and syncs them.
    fn append(&mut self, records: usize) -> std::io::Result<()> {
        self.file.write_all(&vec![0x5a; 170 * records])?;
        self.file.sync_data()
    }
}

impl Drop for SyncedFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
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
