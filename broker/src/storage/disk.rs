//! The disk under the store: how much room is left for records, and the reserve kept on it.
//!
//! sled stops taking writes for good once one fails for want of space (its error is sticky
//! until the store is opened again), and acks, commits, group changes, retention and topic
//! deletion all write too. So publishing stops while there is still room: below the
//! reserve (`--min-free-disk-bytes`) a publish is refused with `StorageFull`, and
//! everything else goes on in the room the reserve keeps.
//!
//! Record batches live in segment files (see `storage::segment`), which retention and topic
//! deletion delete, giving their space straight back to the filesystem. sled's own file
//! keeps the index and the rest, and, in stores written before segment files, the records.
//!
//! The room left is the filesystem's free space plus the space inside sled's file that sled
//! will reuse. sled never gives space back to the filesystem except at the end of
//! its file: segments freed by retention or by a deleted topic are reused for new writes
//! instead. That reusable space is estimated from the store's own ratio of file size to
//! record bytes, taken whenever the file grows (sled grows it only when nothing inside is
//! free): once records are deleted, the space they took at that ratio counts as free. So
//! publishing resumes by itself after retention or a topic deletion, as it does when the
//! operator frees disk, without a restart.
//!
//! The figures are sampled at most every [`REFRESH`], so a check costs an atomic read
//! mostly; the reserve covers what is written between two samples.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long a sample of the disk's figures is used before it is taken again.
pub const REFRESH: Duration = Duration::from_millis(20);

/// The largest default reserve; smaller filesystems keep a twentieth of their size.
pub const MAX_DEFAULT_RESERVE: u64 = 1024 * 1024 * 1024;

/// A filesystem's size and the bytes it has available to the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsSpace {
    pub available: u64,
    pub total: u64,
}

/// What a [`Probe`] calls: the space of the filesystem holding a directory.
type ReadSpace = dyn Fn(&Path) -> io::Result<FsSpace> + Send + Sync;

/// Reads a filesystem's space: `statvfs` of the data directory, or a stand-in (tests).
#[derive(Clone)]
pub struct Probe(Arc<ReadSpace>);

impl Probe {
    /// A stand-in that reports what `read` says.
    pub fn new(read: impl Fn(&Path) -> io::Result<FsSpace> + Send + Sync + 'static) -> Probe {
        Probe(Arc::new(read))
    }

    /// The real probe: `statvfs` of `dir`'s filesystem.
    pub fn statvfs() -> Probe {
        Probe::new(|dir: &Path| {
            let stats = fs4::statvfs(dir)?;
            Ok(FsSpace {
                available: stats.available_space(),
                total: stats.total_space(),
            })
        })
    }

    fn read(&self, dir: &Path) -> io::Result<FsSpace> {
        (self.0)(dir)
    }
}

impl Default for Probe {
    fn default() -> Probe {
        Probe::statvfs()
    }
}

impl std::fmt::Debug for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Probe")
    }
}

/// The default reserve for a filesystem of `total` bytes: a twentieth of it, at most
/// [`MAX_DEFAULT_RESERVE`] (3.2 MiB on a 64 MiB disk, 1 GiB from a 20 GiB one up).
pub fn default_reserve(total: u64) -> u64 {
    (total / 20).min(MAX_DEFAULT_RESERVE)
}

/// What the disk holds for the store, as of the last sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Room {
    /// The filesystem's free space.
    pub fs_available: u64,
    /// Space inside the store's files that sled will reuse before growing them.
    pub reusable: u64,
    /// What the store's files take on disk.
    pub store_bytes: u64,
    /// The reserve kept free.
    pub reserve: u64,
}

impl Room {
    /// Free space for the store: the filesystem's and what sled will reuse.
    pub fn free(&self) -> u64 {
        self.fs_available.saturating_add(self.reusable)
    }

    /// What the store really takes: its files less the space in them to be reused.
    pub fn used(&self) -> u64 {
        self.store_bytes.saturating_sub(self.reusable)
    }

    /// Whether publishing must stop: free space at or below the reserve.
    pub fn below_reserve(&self) -> bool {
        self.free() <= self.reserve
    }
}

/// Watches the free space of the store's filesystem.
pub struct Disk {
    dir: PathBuf,
    probe: Probe,
    reserve: u64,
    sample: Mutex<Sample>,
}

struct Sample {
    taken: Option<Instant>,
    fs: FsSpace,
    store_bytes: u64,
    /// Record bytes when the sample was taken.
    live: u64,
    /// File bytes per record byte, measured when the files last grew with the records.
    ratio: Option<f64>,
    /// Whether the last reading of the free space failed (logged once).
    probe_failing: bool,
}

impl Disk {
    /// Watches `dir`'s filesystem, keeping `reserve` free (`None`: [`default_reserve`]).
    pub fn new(dir: &Path, probe: Probe, reserve: Option<u64>) -> io::Result<Disk> {
        let fs = probe.read(dir)?;
        Ok(Disk {
            dir: dir.to_path_buf(),
            reserve: reserve.unwrap_or_else(|| default_reserve(fs.total)),
            probe,
            sample: Mutex::new(Sample {
                taken: None,
                fs,
                store_bytes: 0,
                live: 0,
                ratio: None,
                probe_failing: false,
            }),
        })
    }

    /// The reserve kept free.
    pub fn reserve(&self) -> u64 {
        self.reserve
    }

    /// The room left, from a sample at most [`REFRESH`] old. `store_bytes` measures the
    /// store's files (called only when a new sample is taken); `live` is the bytes of
    /// records stored now.
    ///
    /// A new sample (`statvfs` and the size of the store's files) is taken outside the
    /// lock, so publishers on other threads never wait for those calls.
    pub fn room(&self, live: u64, store_bytes: impl FnOnce() -> u64) -> Room {
        let stale = self.sample().taken.is_none_or(|t| t.elapsed() >= REFRESH);
        if stale {
            let fs = self.probe.read(&self.dir);
            let files = store_bytes();
            self.sample().update(fs, files, live, &self.dir);
        }
        self.sample().room(live, self.reserve)
    }

    fn sample(&self) -> std::sync::MutexGuard<'_, Sample> {
        self.sample.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Sample {
    fn update(&mut self, fs: io::Result<FsSpace>, files: u64, live: u64, dir: &Path) {
        match fs {
            Ok(fs) => {
                if self.probe_failing {
                    tracing::info!(dir = %dir.display(), "the free disk space can be read again");
                }
                self.fs = fs;
                self.probe_failing = false;
            }
            // Said once, not at every sample; the last figures stand meanwhile.
            Err(err) if !self.probe_failing => {
                tracing::warn!(%err, dir = %dir.display(), "cannot read the free disk space");
                self.probe_failing = true;
            }
            Err(_) => {}
        }
        // Growth while records were being deleted is sled writing the deletion before it
        // frees the space: no measure of its ratio.
        let grew = files > self.store_bytes && live >= self.live;
        if live > 0 && (grew || self.ratio.is_none()) {
            self.ratio = Some((files as f64 / live as f64).max(1.0));
        }
        self.store_bytes = files;
        self.live = live;
        self.taken = Some(Instant::now());
    }

    fn room(&self, live: u64, reserve: u64) -> Room {
        let in_use = self
            .ratio
            .map_or(self.store_bytes, |ratio| (ratio * live as f64) as u64);
        Room {
            fs_available: self.fs.available,
            reusable: self.store_bytes.saturating_sub(in_use),
            store_bytes: self.store_bytes,
            reserve,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn fake(available: Arc<AtomicU64>) -> Probe {
        Probe::new(move |_: &Path| {
            Ok(FsSpace {
                available: available.load(Ordering::Relaxed),
                total: 64 << 20,
            })
        })
    }

    #[test]
    fn the_default_reserve_fits_small_and_large_disks() {
        assert_eq!(default_reserve(64 << 20), (64 << 20) / 20);
        assert_eq!(default_reserve(10 << 40), MAX_DEFAULT_RESERVE);
    }

    #[test]
    fn deleted_records_make_room_at_the_store_s_own_ratio() {
        let available = Arc::new(AtomicU64::new(10 << 20));
        let disk = Disk::new(Path::new("."), fake(Arc::clone(&available)), Some(4 << 20)).unwrap();
        assert_eq!(disk.reserve(), 4 << 20);
        // 100 MB of records in 180 MB of files: nothing to reuse.
        let room = disk.room(100 << 20, || 180 << 20);
        assert_eq!((room.free(), room.used()), (10 << 20, 180 << 20));
        assert!(!room.below_reserve());
        available.store(1 << 20, Ordering::Relaxed);
        std::thread::sleep(REFRESH);
        assert!(disk.room(100 << 20, || 180 << 20).below_reserve());
        // Half of the records deleted: the files keep their size, half of them is reusable.
        std::thread::sleep(REFRESH);
        let room = disk.room(50 << 20, || 180 << 20);
        assert_eq!(room.reusable, 90 << 20);
        assert_eq!(room.used(), 90 << 20);
        assert!(!room.below_reserve());
        // The files grow while a deletion is written: still the same ratio.
        std::thread::sleep(REFRESH);
        assert_eq!(disk.room(40 << 20, || 190 << 20).reusable, 118 << 20);
        // New records fill the reusable space first.
        std::thread::sleep(REFRESH);
        assert_eq!(disk.room(100 << 20, || 190 << 20).reusable, 10 << 20);
    }
}
