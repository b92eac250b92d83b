//! Making a flush durable: what sled's own flush does not do.
//!
//! sled 0.34's flush writes its log with `sync_file_range`, which neither flushes the disk's
//! write cache nor covers file metadata, and writes values too large for its log to files
//! under `blobs/` that it never syncs. So after each flush the writer calls [`Syncer::sync`]:
//! `fdatasync` on the log file through our own descriptor, and on every blob file not yet
//! synced (then `fsync` on the `blobs` directory, so their names survive too). Stored
//! values are kept small enough that blobs are rare (see `commit::MAX_VALUE_BYTES`).

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

    /// Makes everything sled has flushed durable.
    pub(super) fn sync(&mut self) -> io::Result<()> {
        let mut present = HashSet::new();
        let mut new_blobs = false;
        if let Ok(entries) = std::fs::read_dir(&self.blobs) {
            for entry in entries {
                let name = entry?.file_name();
                if !self.synced.contains(&name) {
                    match File::open(self.blobs.join(&name)) {
                        Ok(file) => file.sync_data()?,
                        // sled removed it meanwhile: nothing left to make durable.
                        Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                        Err(err) => return Err(err),
                    }
                    new_blobs = true;
                }
                present.insert(name);
            }
        }
        if new_blobs {
            File::open(&self.blobs)?.sync_all()?;
        }
        self.synced = present;
        self.log.sync_data()
    }
}
