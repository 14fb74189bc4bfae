//! Durable answers without the writer waiting for the disk: the writer thread commits with
//! `synchronous = NORMAL` (each commit writes its frames to the write-ahead log, no fsync) and
//! hands the answers of the commit to this thread, which fsyncs the log once for every commit
//! that queued up meanwhile and only then answers them. An append is still acknowledged only
//! once the commit holding it is on disk (what `synchronous = FULL` gives), but the writer is
//! already inserting the next group while the disk syncs the last one.
//!
//! An fsync covers every write made to the file before it began, whichever descriptor made
//! it, so a commit that returned before the fsync started is durable when it ends. A failed
//! fsync fails its answers and every later append (the kernel may have dropped the pages it
//! could not write, so a retry could find as stored rows that are not on disk): the writer
//! stays failed until the collector is restarted, which recovers from the log what is on disk.

use super::error::AuditError;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;

/// An answer to send once the commit it belongs to is durable (or failed to be).
pub(crate) type Answer = Box<dyn FnOnce(Result<(), AuditError>) + Send>;

/// The fsync thread of one writer and the write-ahead log it syncs.
pub(crate) struct WalSync {
    tx: Option<mpsc::Sender<Vec<Answer>>>,
    thread: Option<JoinHandle<()>>,
    log: Arc<File>,
    path: PathBuf,
    failed: Arc<AtomicBool>,
}

impl WalSync {
    /// Starts syncing the write-ahead log of the store at `db` (the path SQLite resolved, whose
    /// log is `db` with `-wal` appended); `None` when the log cannot be opened (the writer
    /// then keeps `synchronous = FULL`).
    pub(crate) fn start(db: &Path) -> Option<Self> {
        let mut wal = db.as_os_str().to_owned();
        wal.push("-wal");
        let log = Arc::new(std::fs::OpenOptions::new().write(true).open(&wal).ok()?);
        let failed = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel::<Vec<Answer>>();
        let thread = {
            let (log, failed, path) = (log.clone(), failed.clone(), db.to_path_buf());
            std::thread::Builder::new()
                .name("mcp-otel-audit-sync".to_owned())
                .spawn(move || {
                    while let Ok(mut answers) = rx.recv() {
                        // Every commit queued by now shares this fsync.
                        while let Ok(more) = rx.try_recv() {
                            answers.extend(more);
                        }
                        let synced = sync(&log, &path, &failed);
                        for answer in answers {
                            answer(synced.clone());
                        }
                    }
                })
                .ok()?
        };
        Some(WalSync {
            tx: Some(tx),
            thread: Some(thread),
            log,
            path: db.to_path_buf(),
            failed,
        })
    }

    /// Sends `answers` once every commit made so far is on disk (an empty list still syncs).
    pub(crate) fn after_sync(&self, answers: Vec<Answer>) {
        if let Some(tx) = &self.tx
            && let Err(mpsc::SendError(answers)) = tx.send(answers)
        {
            // The thread is gone (it never panics; only at shutdown): sync here.
            let synced = self.sync_now();
            for answer in answers {
                answer(synced.clone());
            }
        }
    }

    /// Fsyncs the log now, on the calling thread.
    pub(crate) fn sync_now(&self) -> Result<(), AuditError> {
        sync(&self.log, &self.path, &self.failed)
    }

    /// `Err` once an fsync has failed: nothing more may be committed.
    pub(crate) fn check(&self) -> Result<(), AuditError> {
        match self.failed.load(Ordering::Acquire) {
            true => Err(sync_error(
                &self.path,
                "an earlier fsync of the write-ahead log failed; restart the collector".into(),
            )),
            false => Ok(()),
        }
    }
}

impl Drop for WalSync {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn sync(log: &File, path: &Path, failed: &AtomicBool) -> Result<(), AuditError> {
    if failed.load(Ordering::Acquire) {
        return Err(sync_error(path, "an earlier fsync failed".into()));
    }
    log.sync_data().map_err(|e| {
        failed.store(true, Ordering::Release);
        sync_error(path, e.to_string())
    })
}

/// A failed fsync, as the I/O error SQLite would have reported for it.
fn sync_error(path: &Path, reason: String) -> AuditError {
    AuditError::Io {
        path: path.to_path_buf(),
        context: "syncing the write-ahead log",
        source: Arc::new(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR_FSYNC),
            Some(reason),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_wait_for_the_sync_and_a_store_without_a_log_is_not_synced_here() {
        let (dir, db) = crate::testing::temp_path("a.db");
        assert!(WalSync::start(&db).is_none(), "no log, no fsync thread");
        std::fs::write(dir.path().join("a.db-wal"), b"").unwrap();
        let sync = WalSync::start(&db).unwrap();
        let (tx, rx) = mpsc::channel();
        for i in 0..3 {
            let tx = tx.clone();
            sync.after_sync(vec![Box::new(move |r| tx.send((i, r.is_ok())).unwrap())]);
        }
        let mut got: Vec<_> = (0..3).map(|_| rx.recv().unwrap()).collect();
        got.sort();
        assert_eq!(got, [(0, true), (1, true), (2, true)]);
        sync.check().unwrap();
        sync.failed.store(true, Ordering::Release);
        let e = sync.check().unwrap_err();
        assert!(e.is_retryable() && e.to_string().contains("fsync"), "{e}");
        sync.after_sync(vec![Box::new(move |r| tx.send((9, r.is_ok())).unwrap())]);
        assert_eq!(
            rx.recv().unwrap(),
            (9, false),
            "no answer is sent as durable"
        );
    }
}
