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

/// Blob files synced at once: each fdatasync waits on the disk, so waiting on several
/// together costs little more than waiting on one.
const PARALLEL_SYNCS: usize = 8;

/// `fdatasync`s every file in `paths`, up to [`PARALLEL_SYNCS`] at a time.
fn sync_all_data(paths: &[PathBuf]) -> io::Result<()> {
    if paths.len() == 1 {
        return sync_data(&paths[0]);
    }
    let per_thread = paths.len().div_ceil(PARALLEL_SYNCS);
    std::thread::scope(|scope| {
        let workers: Vec<_> = paths
            .chunks(per_thread)
            .map(|chunk| scope.spawn(move || chunk.iter().try_for_each(|path| sync_data(path))))
            .collect();
        workers.into_iter().try_for_each(|worker| {
            worker
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("a sync thread panicked")))
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
