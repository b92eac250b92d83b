//! Opening a store: the data directory's checks and lock, sled itself, the format
//! marker, the recorded offsets (`herald.offsets`), and the repair hint on errors.

use super::*;

/// Adds to a damaged-store error what the operator can do about it.
pub(super) fn with_repair_hint(err: StorageError) -> StorageError {
    match err {
        StorageError::Corrupt(what) => StorageError::Corrupt(format!(
            "{what}. Start with --repair-store to keep each partition up to its first \
             damage (what follows it is dropped, and logged)"
        )),
        other => other,
    }
}

/// The synced offsets recorded for an existing store (none for a new one). A store that
/// lacks them, or whose record cannot be read, is refused: see [`checkpoint`].
pub(super) fn recorded_marks(
    dir: &Path,
    initialised: bool,
) -> Result<checkpoint::Marks, StorageError> {
    let refuse = |why: String| {
        StorageError::Corrupt(format!(
            "{why}: without the synced offsets the broker cannot tell a store that lost \
             records from a whole one. Start with --repair-store to verify every stored \
             batch, keep what is intact and record the offsets anew"
        ))
    };
    let file = dir.join(checkpoint::FILE);
    match checkpoint::read(dir) {
        Ok(Some(marks)) => Ok(marks),
        Ok(None) if !initialised => Ok(checkpoint::Marks::new()),
        Ok(None) => Err(refuse(format!("{} is missing", file.display()))),
        Err(err) => Err(refuse(format!("{} cannot be read ({err})", file.display()))),
    }
}

/// Drops the partition trees of deleted topics (see [`PartitionLog::retire`]); at start,
/// before anything holds a handle to them, dropping is safe. A log with a synced offset on
/// record whose topic is missing was not deleted (see [`checkpoint`]): the store is damaged.
pub(super) fn drop_retired_logs(
    db: &sled::Db,
    dir: &Path,
    marks: &checkpoint::Marks,
) -> Result<(), StorageError> {
    let topics = db.open_tree("topics")?;
    let mut live = std::collections::HashSet::new();
    for entry in topics.iter() {
        let (name, value) = entry?;
        live.insert(TopicRecord::decode(&name, &value)?.id);
    }
    let topic_of =
        |name: &str| -> Option<u64> { name.strip_prefix("log.")?.split('.').next()?.parse().ok() };
    if let Some(lost) = marks
        .keys()
        .find(|name| topic_of(name).is_some_and(|id| !live.contains(&id)))
    {
        return Err(StorageError::Corrupt(format!(
            "the topic of partition log {lost} is missing, though it was never deleted"
        )));
    }
    for name in db.tree_names() {
        let name = String::from_utf8_lossy(&name).into_owned();
        if topic_of(&name).is_some_and(|id| !live.contains(&id)) {
            db.drop_tree(name.as_bytes())?;
        }
    }
    segment::remove_unknown(dir, |name| {
        topic_of(name).is_some_and(|id| live.contains(&id))
    })
    .map_err(|e| StorageError::Sled(format!("{}: {e}", dir.display())))
}

pub(crate) fn log_tree_name(topic_id: u64, partition: u32) -> String {
    format!("log.{topic_id}.{partition}")
}

pub(super) const LOCK_FILE: &str = "herald.lock";
/// Written (and synced) once a store is initialised; sled never touches it.
pub(super) const MARKER_FILE: &str = "herald.store";

/// Opens sled, turning a panic inside it (some damage makes sled panic) into an error.
///
/// The caller holds the directory's lock, so sled's own lock on its files can only be
/// held by a store this process closed a moment ago: sled releases its files from
/// deferred destructors that run on whichever thread next passes an epoch. So a refused
/// lock is tried again for [`SLED_LOCK_WAIT`].
pub(super) fn open_sled(dir: &Path, config: &StoreConfig) -> Result<sled::Db, StorageError> {
    let open = || {
        sled::Config::new()
            .path(dir)
            .cache_capacity(config.cache_bytes)
            .mode(sled::Mode::HighThroughput)
            .open()
    };
    let started = std::time::Instant::now();
    loop {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(open)) {
            // sled reports it as an `Other` error with this text.
            Ok(Err(sled::Error::Io(err)))
                if err.to_string().contains("could not acquire lock")
                    && started.elapsed() < SLED_LOCK_WAIT =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Ok(db) => return Ok(db?),
            Err(_) => {
                return Err(StorageError::Corrupt(format!(
                    "sled could not read the store in {}",
                    dir.display()
                )))
            }
        }
    }
}

/// How long [`open_sled`] waits for sled's files to be released by a store closed before.
pub(super) const SLED_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Initialises a new store, or checks an existing one. sled treats damage at the head of
/// its log as a torn write and recovers an empty database; the marker file tells that
/// apart from a new store, so a damaged store is refused instead of silently emptied.
pub(super) fn check_format(
    dir: &Path,
    db: &sled::Db,
    initialised: bool,
) -> Result<(), StorageError> {
    let meta = db.open_tree("meta")?;
    match meta.get("format")? {
        Some(v) if v.as_ref() == FORMAT_VERSION.to_be_bytes() => Ok(()),
        // Chunks kept in sled are still read (see `chunk`); new ones go to segment files,
        // which a broker reading format 2 would not find, so the store says so from now on.
        Some(v) if v.as_ref() == SLED_CHUNKS_FORMAT.to_be_bytes() => {
            meta.insert("format", &FORMAT_VERSION.to_be_bytes())?;
            db.flush()?;
            tracing::info!(
                dir = %dir.display(),
                "store format {SLED_CHUNKS_FORMAT} upgraded to {FORMAT_VERSION}: its records \
                 stay in sled and are read there, new ones go to segment files"
            );
            Ok(())
        }
        Some(v) => Err(StorageError::Corrupt(format!(
            "{} holds storage format {}, and this broker reads format {FORMAT_VERSION} \
             (segment files) or {SLED_CHUNKS_FORMAT} (chunks with checksums in sled); start it \
             on a new data directory",
            dir.display(),
            <[u8; 4]>::try_from(v.as_ref()).map_or_else(
                |_| "unknown".to_string(),
                |v| u32::from_be_bytes(v).to_string()
            ),
        ))),
        None if initialised => Err(StorageError::Corrupt(format!(
            "{} was a Herald store, but its data can no longer be read",
            dir.display()
        ))),
        None => {
            meta.insert("format", &FORMAT_VERSION.to_be_bytes())?;
            db.flush()?;
            let io = |e: std::io::Error| StorageError::Sled(format!("{}: {e}", dir.display()));
            // Recorded (empty) before the marker: a store with the marker always has it.
            checkpoint::write(dir, &checkpoint::Marks::new()).map_err(io)?;
            std::fs::File::open(dir.join("db"))
                .and_then(|f| f.sync_all())
                .map_err(io)?;
            let marker = std::fs::File::create(dir.join(MARKER_FILE)).map_err(io)?;
            std::io::Write::write_all(
                &mut &marker,
                format!("herald store format {FORMAT_VERSION}\n").as_bytes(),
            )
            .and_then(|()| marker.sync_all())
            .map_err(io)?;
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io)
        }
    }
}

/// Refuses a directory that holds files but is not a Herald store (sled's `conf` and `db`,
/// or only our lock file, left by a start that stopped before sled created its files).
pub(super) fn check_directory(dir: &Path) -> Result<(), StorageError> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(()); // missing: it is created; unreadable: opening reports it
    };
    let names: Vec<String> = entries
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let is_sled = names.iter().any(|n| n == "conf") && names.iter().any(|n| n == "db");
    if names.iter().all(|n| n == LOCK_FILE || n == MARKER_FILE) || is_sled {
        Ok(())
    } else {
        Err(StorageError::NotHerald(dir.display().to_string()))
    }
}

/// Takes the directory's lock, so two brokers never share a store.
pub(super) fn lock_directory(dir: &Path) -> Result<std::fs::File, StorageError> {
    let io = |e: std::io::Error| StorageError::Sled(format!("{}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(io)?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(LOCK_FILE))
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            Err(StorageError::InUse(dir.display().to_string()))
        }
        Err(std::fs::TryLockError::Error(e)) => Err(io(e)),
    }
}
