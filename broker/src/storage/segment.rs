//! Segment files: where a partition's record batches are kept, appended in offset order.
//!
//! A partition log's chunks (see `storage::chunk`) are appended to files under
//! `segments/log.ID.P/`, each named by the base offset of its first chunk (20 digits, so
//! names sort as offsets do). A file takes chunks until it holds its log's file size
//! ([`SEGMENT_BYTES`] unless `--segment-mb` says otherwise); the next chunk starts a new
//! one. sled keeps a sparse offset index: the key of a batch's first chunk, every
//! `log::INDEX_INTERVAL_BYTES` or so and for each file's first batch, maps to a 20-byte
//! [`Pointer`] to its frame here; the chunks between are read on from there.
//!
//! ```text
//! frame: len u32 BE ‖ value (len bytes: crc32c ‖ flags ‖ batch encoding ‖ tag, as in sled)
//! ```
//!
//! A frame describes itself — its checksum, and the batch header's base offset and record
//! count — so the files alone can rebuild what the index lacks (see
//! `PartitionLog::open`). That is what lets a commit under `--fsync always` cost one
//! `fdatasync` of the segment files written and nothing of sled's: the index may lag the
//! files, and after a crash the broker scans the files past the last chunk it can verify,
//! re-indexes every intact frame in offset order, and cuts the file at the first frame that
//! is torn or does not follow (as Kafka recovers a log's unflushed segments).
//!
//! Why not in sled: sled rewrote every stored byte about four times (a leaf split at 17
//! entries rewrites both halves), its flush took 10–25 ms now and then, and it bounds its
//! cache only with values cut small. Appended to a file, a batch is written once, by one
//! `pwrite`, and the commit waits for the disk alone.
//!
//! Retention deletes index entries as before; a file is deleted once every chunk in it is
//! gone (the first offset has passed the next file's base), and a deleted topic's directory
//! is removed whole. So the disk space retention frees comes back a file at a time.
//!
//! The writer thread alone appends. Readers find a file under a short lock and read it with
//! `pread`, outside the lock; a file deleted meanwhile stays readable through the handle.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;

use super::StorageError;

/// Where segment directories live, under the data directory.
pub(super) const DIR: &str = "segments";

/// The size at which a segment file is closed and the next chunk starts a new one, by
/// default (`--segment-mb`). Kafka's default is 1 GiB; retention frees space a whole file
/// at a time, and 64 MiB keeps that grain small on the modest disks this broker is for.
pub const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

/// The bytes before a frame's value: its length.
pub const FRAME_HEAD: usize = 4;

/// A chunk's place in its log's segment files, as the index keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pointer {
    /// The base offset naming the file.
    pub segment: u64,
    /// Where the frame starts in it.
    pub position: u64,
    /// The value's length (the frame is [`FRAME_HEAD`] bytes more).
    pub len: u32,
}

impl Pointer {
    /// The encoded length. A chunk stored in sled itself is always longer (its checksum,
    /// flags and a 32-byte batch header), so a value of this length is a pointer.
    pub const LEN: usize = 20;

    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut out = [0; Self::LEN];
        out[..8].copy_from_slice(&self.segment.to_be_bytes());
        out[8..16].copy_from_slice(&self.position.to_be_bytes());
        out[16..].copy_from_slice(&self.len.to_be_bytes());
        out
    }

    /// The pointer `value` holds, if it is one.
    pub fn decode(value: &[u8]) -> Option<Pointer> {
        let value: &[u8; Self::LEN] = value.try_into().ok()?;
        let u64_at = |at: usize| {
            let mut bytes = [0; 8];
            bytes.copy_from_slice(&value[at..at + 8]);
            u64::from_be_bytes(bytes)
        };
        Some(Pointer {
            segment: u64_at(0),
            position: u64_at(8),
            len: u32::from_be_bytes([value[16], value[17], value[18], value[19]]),
        })
    }

    /// Where the next frame starts: just past this one.
    pub fn end(&self) -> u64 {
        self.position + FRAME_HEAD as u64 + u64::from(self.len)
    }

    /// The frame's size on disk.
    pub fn frame_bytes(&self) -> u64 {
        FRAME_HEAD as u64 + u64::from(self.len)
    }
}

struct Segment {
    base: u64,
    path: PathBuf,
    file: File,
    /// Bytes of frames in it: where the next one goes.
    len: AtomicU64,
    /// Written since its last `fdatasync`.
    dirty: AtomicBool,
}

/// One partition log's segment files.
pub struct Segments {
    dir: PathBuf,
    files: Mutex<BTreeMap<u64, Arc<Segment>>>,
    /// Files written since the last [`sync`](Self::sync).
    dirty: Mutex<Vec<Arc<Segment>>>,
    /// Bytes in this log's files, and in every log's of the store.
    bytes: AtomicU64,
    total: Arc<AtomicU64>,
    /// Set once the directory is removed (its topic deleted): nothing is written any more.
    removed: AtomicBool,
    /// Set when the next chunk is to start a new file (see [`roll`](Self::roll)).
    roll: AtomicBool,
    /// The size at which a file is closed.
    file_bytes: u64,
}

impl std::fmt::Debug for Segments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segments").field("dir", &self.dir).finish()
    }
}

impl Segments {
    /// The segment files of log `name` in the store at `store_dir`, creating the directory
    /// when it is missing. `total` adds up every log's file bytes. Blocks.
    pub fn open(store_dir: &Path, name: &str, total: Arc<AtomicU64>) -> io::Result<Segments> {
        let parent = store_dir.join(DIR);
        let dir = parent.join(name);
        if !dir.exists() {
            std::fs::create_dir_all(&dir)?;
            // The new directory's name is durable before any file in it is synced.
            File::open(&parent)?.sync_all()?;
            File::open(store_dir)?.sync_all()?;
        }
        let mut files = BTreeMap::new();
        let mut bytes = 0;
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(base) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".seg"))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            let path = entry.path();
            let file = OpenOptions::new().read(true).write(true).open(&path)?;
            let len = file.metadata()?.len();
            bytes += len;
            files.insert(
                base,
                Arc::new(Segment {
                    base,
                    path,
                    file,
                    len: AtomicU64::new(len),
                    dirty: AtomicBool::new(false),
                }),
            );
        }
        total.fetch_add(bytes, Ordering::Relaxed);
        Ok(Segments {
            dir,
            files: Mutex::new(files),
            dirty: Mutex::new(Vec::new()),
            bytes: AtomicU64::new(bytes),
            total,
            removed: AtomicBool::new(false),
            roll: AtomicBool::new(false),
            file_bytes: SEGMENT_BYTES,
        })
    }

    /// These files, closed at `bytes` (at least 1) rather than [`SEGMENT_BYTES`]. Files
    /// written before with another size are read as they are.
    pub fn with_file_bytes(mut self, bytes: u64) -> Segments {
        self.file_bytes = bytes.max(1);
        self
    }

    fn files(&self) -> MutexGuard<'_, BTreeMap<u64, Arc<Segment>>> {
        self.files.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Bytes in this log's files.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// The base offset of the first file, if there is one.
    pub fn first_segment(&self) -> Option<u64> {
        self.files().keys().next().copied()
    }

    /// Appends `frames` (each a length and the value it counts; the first chunk's base
    /// offset is `base_offset`) to the last file, or to a new one when the last is full, in
    /// one write. Returns the file and where they start in it. Called by the writer only.
    pub fn append(&self, base_offset: u64, frames: &[u8]) -> io::Result<(u64, u64)> {
        if self.removed.load(Ordering::Acquire) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "the log's segment files were removed",
            ));
        }
        let segment = self.writable(base_offset)?;
        let position = segment.len.load(Ordering::Relaxed);
        // At a failure (no space) the file's length does not move: the next frame
        // overwrites whatever part of this one was written.
        segment.file.write_all_at(frames, position)?;
        segment
            .len
            .store(position + frames.len() as u64, Ordering::Release);
        self.grew(frames.len() as u64);
        if !segment.dirty.swap(true, Ordering::AcqRel) {
            self.dirty
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(Arc::clone(&segment));
        }
        Ok((segment.base, position))
    }

    /// The file the next chunk goes to: the last one, or a new one starting at
    /// `base_offset` when there is none or the last is full.
    fn writable(&self, base_offset: u64) -> io::Result<Arc<Segment>> {
        let mut files = self.files();
        let roll = self.roll.swap(false, Ordering::Relaxed);
        if let Some(last) = files.values().next_back() {
            let len = last.len.load(Ordering::Relaxed);
            if len == 0 || (len < self.file_bytes && !roll) {
                return Ok(Arc::clone(last));
            }
        }
        let path = self.dir.join(format!("{base_offset:020}.seg"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        // Its name is durable before anything in it is synced.
        File::open(&self.dir)?.sync_all()?;
        let segment = Arc::new(Segment {
            base: base_offset,
            path,
            file,
            len: AtomicU64::new(0),
            dirty: AtomicBool::new(false),
        });
        files.insert(base_offset, Arc::clone(&segment));
        Ok(segment)
    }

    /// The value `pointer` points at, or `None` when its file is gone or holds no such
    /// frame. Blocks.
    pub fn read(&self, pointer: Pointer) -> io::Result<Option<Bytes>> {
        let Some(segment) = self.files().get(&pointer.segment).cloned() else {
            return Ok(None);
        };
        let mut frame = vec![0; pointer.frame_bytes() as usize];
        match segment.file.read_exact_at(&mut frame, pointer.position) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(err) => return Err(err),
        }
        let stated = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]);
        if stated != pointer.len {
            return Ok(None);
        }
        Ok(Some(Bytes::from(frame).slice(FRAME_HEAD..)))
    }

    /// `fdatasync`s every file written since the last call. Blocks.
    pub fn sync(&self) -> io::Result<()> {
        let dirty = std::mem::take(&mut *self.dirty.lock().unwrap_or_else(PoisonError::into_inner));
        for segment in dirty {
            // Cleared first: a write after this is synced by the next call.
            segment.dirty.store(false, Ordering::Release);
            if let Err(err) = segment.file.sync_data() {
                segment.dirty.store(true, Ordering::Release);
                self.dirty
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(Arc::clone(&segment));
                return Err(err);
            }
        }
        Ok(())
    }

    /// Deletes the files every chunk of which lies below `first`, the log's first offset:
    /// those followed by a file starting at or below it, and all of them once `first`
    /// reaches `end`, the log's next offset (retention emptied it). Blocks.
    pub fn remove_below(&self, first: u64, end: u64) -> io::Result<()> {
        let doomed: Vec<Arc<Segment>> = {
            let mut files = self.files();
            let bases: Vec<u64> = files.keys().copied().collect();
            let whole: Vec<u64> = if first >= end {
                bases
            } else {
                bases
                    .windows(2)
                    .take_while(|pair| pair[1] <= first)
                    .map(|pair| pair[0])
                    .collect()
            };
            whole.iter().filter_map(|base| files.remove(base)).collect()
        };
        for segment in doomed {
            std::fs::remove_file(&segment.path)?;
            self.shrank(segment.len.load(Ordering::Relaxed));
        }
        Ok(())
    }

    /// Cuts the files at `segment`/`position`: that file keeps what lies before it, and
    /// every later file is deleted. Blocks.
    pub fn truncate(&self, segment: u64, position: u64) -> io::Result<()> {
        let (cut, later) = {
            let mut files = self.files();
            let later: Vec<u64> = files.range(segment + 1..).map(|(b, _)| *b).collect();
            let later: Vec<Arc<Segment>> = later.iter().filter_map(|b| files.remove(b)).collect();
            (files.get(&segment).cloned(), later)
        };
        let removed = !later.is_empty();
        for file in later {
            std::fs::remove_file(&file.path)?;
            self.shrank(file.len.load(Ordering::Relaxed));
        }
        if let Some(file) = cut {
            let len = file.len.load(Ordering::Relaxed);
            if position < len {
                file.file.set_len(position)?;
                file.file.sync_all()?;
                file.len.store(position, Ordering::Relaxed);
                self.shrank(len - position);
            }
        }
        // Only a removed file changes the directory (every open of a log cuts at its end).
        if removed {
            File::open(&self.dir)?.sync_all()?;
        }
        Ok(())
    }

    /// Removes the log's directory and every file in it (its topic was deleted). Blocks.
    pub fn remove_all(&self) -> io::Result<()> {
        self.removed.store(true, Ordering::Release);
        let files = std::mem::take(&mut *self.files());
        self.dirty
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        let freed: u64 = files.values().map(|f| f.len.load(Ordering::Relaxed)).sum();
        self.shrank(freed);
        match std::fs::remove_dir_all(&self.dir) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
            _ => Ok(()),
        }
    }

    /// Has the next chunk start a new file, unless the last one is empty. Retention asks
    /// for it when it deleted chunks of the last file: that file can then be deleted as
    /// soon as retention reaches the next one, rather than once it fills, so the space
    /// retention frees comes back within a round or two however small the limits.
    pub fn roll(&self) {
        self.roll.store(true, Ordering::Relaxed);
    }

    /// Whether `offset` lies in the last file (or there is none).
    pub fn in_last(&self, offset: u64) -> bool {
        self.files()
            .keys()
            .next_back()
            .is_none_or(|&base| base <= offset)
    }

    /// The frame at `segment`/`position`, or when that file holds no whole frame there
    /// (its end, or a torn frame), the next file's first; `None` when there is none.
    /// Blocks.
    pub fn frame_at(&self, segment: u64, position: u64) -> io::Result<Option<(Pointer, Bytes)>> {
        let (file, next) = {
            let files = self.files();
            let Some(file) = files.get(&segment).cloned() else {
                return Ok(None);
            };
            let next = files
                .range(segment + 1..)
                .next()
                .map(|(_, f)| Arc::clone(f));
            (file, next)
        };
        if let Some(found) = read_frame(&file, position)? {
            return Ok(Some(found));
        }
        match next {
            Some(next) => read_frame(&next, 0),
            None => Ok(None),
        }
    }

    fn grew(&self, bytes: u64) {
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.total.fetch_add(bytes, Ordering::Relaxed);
    }

    fn shrank(&self, bytes: u64) {
        self.bytes.fetch_sub(bytes, Ordering::Relaxed);
        self.total.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// What a frame read takes at first: most frames (a chunk of up to 6 KiB) fit, so one read
/// gets the length and the value together.
const FIRST_READ: u64 = 8 * 1024;

/// The frame at `position` of `segment`, if a whole one starts there (a zero or
/// impossible length, or a file ending within it, is none).
fn read_frame(segment: &Segment, position: u64) -> io::Result<Option<(Pointer, Bytes)>> {
    let file_len = segment.len.load(Ordering::Acquire);
    if position + FRAME_HEAD as u64 > file_len {
        return Ok(None);
    }
    let first = FIRST_READ.min(file_len - position) as usize;
    let mut buf = vec![0; first];
    segment.file.read_exact_at(&mut buf, position)?;
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let pointer = Pointer {
        segment: segment.base,
        position,
        len,
    };
    if len == 0 || pointer.end() > file_len {
        return Ok(None);
    }
    let whole = pointer.frame_bytes() as usize;
    if whole > first {
        buf.resize(whole, 0);
        segment
            .file
            .read_exact_at(&mut buf[first..], position + first as u64)?;
    }
    buf.truncate(whole);
    Ok(Some((pointer, Bytes::from(buf).slice(FRAME_HEAD..))))
}

/// A segment file's failure, naming the log (a full disk is told apart).
pub(super) fn io_error(log: &str, err: &std::io::Error) -> StorageError {
    let text = format!("partition log {log}: segment file: {err}");
    if err.kind() == std::io::ErrorKind::StorageFull {
        StorageError::NoSpace(text)
    } else {
        StorageError::Sled(text)
    }
}

/// Removes the segment directories in `store_dir` that belong to none of `live` logs
/// (topics deleted while the broker was down, or before a crash finished it). Blocks.
pub(super) fn remove_unknown(store_dir: &Path, live: impl Fn(&str) -> bool) -> io::Result<()> {
    let Ok(entries) = std::fs::read_dir(store_dir.join(DIR)) else {
        return Ok(());
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !live(&name) {
            std::fs::remove_dir_all(entry.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(value: &[u8]) -> Vec<u8> {
        let mut out = (value.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(value);
        out
    }

    #[test]
    fn frames_are_read_back_by_pointer_and_in_order_across_files() {
        let dir = tempfile::tempdir().unwrap();
        let total = Arc::new(AtomicU64::new(0));
        let segments = Segments::open(dir.path(), "log.1.0", Arc::clone(&total)).unwrap();
        let values: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 100 + usize::from(i)]).collect();
        let pointers: Vec<Pointer> = values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let (segment, position) = segments.append(i as u64, &frame(v)).unwrap();
                Pointer {
                    segment,
                    position,
                    len: v.len() as u32,
                }
            })
            .collect();
        for (pointer, value) in pointers.iter().zip(&values) {
            assert_eq!(Pointer::decode(&pointer.encode()), Some(*pointer));
            assert_eq!(segments.read(*pointer).unwrap().unwrap(), &value[..]);
        }
        let mut read = Vec::new();
        let mut at = pointers[2].position;
        while let Some((pointer, value)) = segments.frame_at(0, at).unwrap() {
            read.push(value);
            at = pointer.end();
        }
        assert_eq!(read, values[2..]);
        let stored: u64 = pointers.iter().map(Pointer::frame_bytes).sum();
        assert_eq!(
            (segments.bytes(), total.load(Ordering::Relaxed)),
            (stored, stored)
        );
        segments.sync().unwrap();

        // Cut after the third frame: the rest is gone, and appends go on from there.
        segments.truncate(0, pointers[3].position).unwrap();
        assert_eq!(segments.read(pointers[3]).unwrap(), None);
        assert_eq!(segments.frame_at(0, pointers[3].position).unwrap(), None);
        let (_, again) = segments.append(3, &frame(b"again")).unwrap();
        assert_eq!(again, pointers[3].position);

        segments.remove_all().unwrap();
        assert!(!dir.path().join(DIR).join("log.1.0").exists());
        assert_eq!(total.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_torn_frame_ends_the_file_s_frames() {
        let dir = tempfile::tempdir().unwrap();
        let total = Arc::new(AtomicU64::new(0));
        let segments = Segments::open(dir.path(), "log.1.0", Arc::clone(&total)).unwrap();
        segments.append(0, &frame(&[1; 50])).unwrap();
        let (segment, position) = segments.append(1, &frame(&[2; 50])).unwrap();
        let second = Pointer {
            segment,
            position,
            len: 50,
        };
        drop(segments);
        let path = dir
            .path()
            .join(DIR)
            .join("log.1.0")
            .join(format!("{:020}.seg", 0));
        let file = OpenOptions::new().write(true).open(path).unwrap();
        file.set_len(second.end() - 1).unwrap();
        let segments = Segments::open(dir.path(), "log.1.0", total).unwrap();
        assert!(segments.frame_at(0, 0).unwrap().is_some());
        assert_eq!(segments.frame_at(0, second.position).unwrap(), None);
        assert_eq!(segments.read(second).unwrap(), None);
    }
}
