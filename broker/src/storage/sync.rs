//! Making a flush durable: what sled's own flush does not do.
//!
//! sled 0.34's flush writes its log with `sync_file_range`, which neither flushes the disk's
//! write cache nor covers file metadata, and writes values too large for its log to files
//! under `blobs/` that it never syncs. So after each flush the writer calls [`Syncer::sync`]:
//! `fdatasync` on the log file through our own descriptor, and on every blob file not yet
//! synced (then `fsync` on the `blobs` directory, so their names survive too).

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

pub(super) struct Syncer {
    log: File,
    blobs: PathBuf,
    synced: HashSet<OsString>,
}

impl Syncer {
    /// Opens sled's log file in `dir` (sled must have created it) and syncs the directory
    /// once, so the files sled created are durable by name.
    pub(super) fn open(dir: &Path) -> io::Result<Syncer> {
        File::open(dir)?.sync_all()?;
        let mut syncer = Syncer {
            log: File::open(dir.join("db"))?,
            blobs: dir.join("blobs"),
            synced: HashSet::new(),
        };
        syncer.sync()?;
        Ok(syncer)
    }

    /// Makes everything sled has flushed durable: new blob files first (several at once),
    /// then their directory, then the log that points at them.
    pub(super) fn sync(&mut self) -> io::Result<()> {
        let mut present = HashSet::new();
        let mut new_blobs = Vec::new();
        if let Ok(entries) = std::fs::read_dir(&self.blobs) {
            for entry in entries {
                let name = entry?.file_name();
                if !self.synced.contains(&name) {
                    new_blobs.push(self.blobs.join(&name));
                }
                present.insert(name);
            }
        }
        if !new_blobs.is_empty() {
            sync_all_data(&new_blobs)?;
            File::open(&self.blobs)?.sync_all()?;
        }
        self.synced = present;
        self.log.sync_data()
    }
}

/// Files synced at once: each fdatasync waits on the disk, so waiting on several together
/// costs little more than waiting on one.
const PARALLEL_SYNCS: usize = 8;

/// `fdatasync`s every file in `paths`, up to [`PARALLEL_SYNCS`] at a time.
fn sync_all_data(paths: &[PathBuf]) -> io::Result<()> {
    at_once(
        paths,
        |path| sync_data(path),
        || io::Error::other("a sync thread panicked"),
    )
}

/// Runs `each` on every item, on up to [`PARALLEL_SYNCS`] threads at once (this one among
/// them, and none besides for a single item); returns the first error. `panicked` is the
/// error for a thread that panicked. For syncs, which each wait on the disk.
pub(super) fn at_once<T: Sync, E: Send>(
    items: &[T],
    each: impl Fn(&T) -> Result<(), E> + Sync,
    panicked: impl Fn() -> E,
) -> Result<(), E> {
    if items.len() <= 1 {
        return items.iter().try_for_each(&each);
    }
    let per_thread = items.len().div_ceil(PARALLEL_SYNCS);
    let mut chunks = items.chunks(per_thread);
    let mine = chunks.next().unwrap_or_default();
    let each = &each;
    std::thread::scope(|scope| {
        let workers: Vec<_> = chunks
            .map(|chunk| scope.spawn(move || chunk.iter().try_for_each(each)))
            .collect();
        let first = mine.iter().try_for_each(each);
        workers.into_iter().fold(first, |all, worker| {
            let result = worker.join().unwrap_or_else(|_| Err(panicked()));
            all.and(result)
        })
    })
}

fn sync_data(path: &Path) -> io::Result<()> {
    match File::open(path) {
        Ok(file) => file.sync_data(),
        // sled removed it meanwhile: nothing left to make durable.
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    #[test]
    fn at_once_runs_every_item_on_at_most_eight_threads_and_returns_an_error() {
        for count in [0, 1, 2, 8, 9, 100] {
            let items: Vec<usize> = (0..count).collect();
            let seen = Mutex::new(Vec::new());
            let threads = Mutex::new(HashSet::new());
            at_once(
                &items,
                |&item| {
                    seen.lock().unwrap().push(item);
                    threads.lock().unwrap().insert(std::thread::current().id());
                    Ok::<(), String>(())
                },
                || "panicked".to_string(),
            )
            .unwrap();
            let mut seen = seen.into_inner().unwrap();
            seen.sort();
            assert_eq!(seen, items, "every item once");
            let threads = threads.into_inner().unwrap();
            assert!(
                threads.len() <= PARALLEL_SYNCS,
                "{count}: {}",
                threads.len()
            );
            if count == 1 {
                assert!(threads.contains(&std::thread::current().id()), "in line");
            }
        }
        let ran = AtomicUsize::new(0);
        let failed = at_once(
            &[1, 2, 3, 4],
            |&item| {
                ran.fetch_add(1, Ordering::Relaxed);
                if item == 3 {
                    Err(format!("item {item}"))
                } else {
                    Ok(())
                }
            },
            || "panicked".to_string(),
        );
        assert_eq!(failed, Err("item 3".to_string()));
        assert_eq!(ran.load(Ordering::Relaxed), 4, "the others still ran");
        let panicked = at_once(
            &[1, 2],
            |&item| if item == 2 { panic!("boom") } else { Ok(()) },
            || "a thread panicked".to_string(),
        );
        assert_eq!(panicked, Err("a thread panicked".to_string()));
    }
}
