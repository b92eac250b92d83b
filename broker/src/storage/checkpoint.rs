//! Durable high-water marks, so a damaged store is refused instead of silently shortened.
//!
//! sled recovers its log up to the first record it cannot read and treats everything after
//! it as never written: damage in the middle of the log would silently drop confirmed
//! records. So the broker keeps, outside sled, the next offset of every partition as of a
//! completed sync (`herald.offsets`, replaced atomically: written to a temporary file,
//! synced, renamed, directory synced). At start every partition must reach at least the
//! offset recorded for it; one that does not means the store lost synced data.
//!
//! The file is rewritten at most once a second from a thread of its own (so commits never
//! wait on it) and once more at a clean stop. Under `--fsync never` nothing is synced
//! before the stop, so only a clean stop records offsets.
//!
//! A deleted topic's logs leave the file *before* the topic leaves the store. So a log in
//! the file whose topic is missing at start was not deleted: the store lost it.
//!
//! A new store writes the file (empty) before anything else, so a store without it was
//! copied without it or damaged: it is refused at start, since nothing could then tell a
//! shortened log from a whole one. `--repair-store` verifies every stored chunk instead,
//! keeps each log up to its first damage and writes the file anew (see `storage::repair`).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
use std::time::Duration;

use crossbeam::channel::{self, Receiver, Sender};

/// Partition log (sled tree name) → next offset known to be synced.
pub(super) type Marks = BTreeMap<String, u64>;

pub(super) const FILE: &str = "herald.offsets";
const HEADER: &str = "herald offsets 1";

/// How often the marks are written while the broker runs.
pub(super) const EVERY: Duration = Duration::from_secs(1);

/// Reads the recorded marks; `None` when the file does not exist.
pub(super) fn read(dir: &Path) -> io::Result<Option<Marks>> {
    let text = match std::fs::read_to_string(dir.join(FILE)) {
        Ok(text) => text,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err),
    };
    let invalid = |line: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{FILE}: unreadable line {line:?}"),
        )
    };
    let mut lines = text.lines();
    if lines.next() != Some(HEADER) {
        return Err(invalid(text.lines().next().unwrap_or("")));
    }
    lines
        .map(|line| {
            let (name, next) = line.split_once(' ').ok_or_else(|| invalid(line))?;
            let next = next.parse().map_err(|_| invalid(line))?;
            Ok((name.to_string(), next))
        })
        .collect::<io::Result<Marks>>()
        .map(Some)
}

/// Replaces the recorded marks atomically and durably.
pub(super) fn write(dir: &Path, marks: &Marks) -> io::Result<()> {
    let mut text = String::from(HEADER);
    text.push('\n');
    for (name, next) in marks {
        text.push_str(&format!("{name} {next}\n"));
    }
    let temporary = dir.join(format!("{FILE}.tmp"));
    let mut file = File::create(&temporary)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&temporary, dir.join(FILE))?;
    File::open(dir)?.sync_all()
}

/// A snapshot to write, and whoever waits for it to be written.
type Job = (Marks, Option<std::sync::mpsc::Sender<io::Result<()>>>);

/// Writes marks handed to it, one snapshot at a time, on a thread of its own.
pub(super) struct Recorder {
    tx: Option<Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Recorder {
    pub(super) fn start(dir: &Path) -> io::Result<Recorder> {
        let (tx, rx) = channel::bounded::<Job>(1);
        let target = dir.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("herald-offsets".into())
            .spawn(move || record(&target, rx))?;
        Ok(Recorder {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Hands over a snapshot; skipped if the previous one is still being written.
    pub(super) fn offer(&self, marks: Marks) {
        if let Some(tx) = &self.tx {
            let _ = tx.try_send((marks, None));
        }
    }

    /// Writes `marks` and waits until they are durable.
    pub(super) fn write_now(&self, marks: Marks) -> io::Result<()> {
        let stopped = || io::Error::other("the offsets recorder has stopped");
        let tx = self.tx.as_ref().ok_or_else(stopped)?;
        let (reply, written) = std::sync::mpsc::channel();
        tx.send((marks, Some(reply))).map_err(|_| stopped())?;
        written.recv().map_err(|_| stopped())?
    }

    /// Writes `last`, then stops the thread.
    pub(super) fn finish(&mut self, last: &Marks) -> io::Result<()> {
        let written = self.write_now(last.clone());
        self.tx = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        written
    }
}

fn record(dir: &Path, rx: Receiver<Job>) {
    for (marks, reply) in rx {
        let written = write(dir, &marks);
        match reply {
            Some(reply) => {
                let _ = reply.send(written);
            }
            None => {
                if let Err(err) = written {
                    tracing::warn!(%err, "cannot record synced offsets");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_survive_a_round_trip_and_a_missing_file_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
        let marks: Marks = [("log.1.0".to_string(), 42), ("log.2.3".to_string(), 7)].into();
        write(dir.path(), &marks).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(marks));
        std::fs::write(dir.path().join(FILE), "something else\n").unwrap();
        assert!(read(dir.path()).is_err());
    }
}
