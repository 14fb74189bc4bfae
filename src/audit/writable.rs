//! A store whose files cannot be written is refused before SQLite touches them.
//!
//! In WAL mode SQLite maps `DB-shm` into memory and writes the WAL index through that mapping
//! on every transaction, readers included (their read marks). On Linux a write fault on a page
//! of a file made immutable (`chattr +i`) or append-only (`chattr +a`) is a SIGBUS: the whole
//! collector dies, and a kill is no error an exporter can retry. A `DB-wal` made immutable
//! fails SQLite's writes with a "disk I/O error". So every transaction, and every connection
//! the process opens, first asks the file system about the three files: one that is immutable
//! or append-only is [`AuditError::Unwritable`], which is retryable (exporters keep what they
//! hold and send it again once an operator has fixed the files), and the first such refusal
//! and the recovery are said once on stderr. Permission bits (`chmod 444`) do not stop a
//! process that already has the files open, and root ignores them.
//!
//! What is left: the flag set between this check and SQLite's next write to the mapping (a
//! window of one transaction) still ends in SIGBUS.

use super::error::AuditError;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// Set while some file is unwritable, so that the log says it once per episode.
static REPORTED: AtomicBool = AtomicBool::new(false);

/// The files SQLite writes for the database at `db`.
fn files(db: &Path) -> [PathBuf; 3] {
    let with = |suffix: &str| {
        let mut s = db.as_os_str().to_owned();
        s.push(suffix);
        PathBuf::from(s)
    };
    [db.to_path_buf(), with("-wal"), with("-shm")]
}

/// `Err(Unwritable)` when any file of the store at `db` is immutable or append-only.
pub(crate) fn check(db: &Path) -> Result<(), AuditError> {
    for file in files(db) {
        if let Some(flag) = blocking_flag(&file) {
            if !REPORTED.swap(true, Ordering::Relaxed) {
                eprintln!(
                    "mcp-otel collect: audit: {} is {flag}: the audit trail cannot be written; \
                     exports are refused with a retryable error (UNAVAILABLE, HTTP 503) until \
                     it is writable again (`lsattr`, `chattr -i -a`)",
                    file.display()
                );
            }
            return Err(AuditError::Unwritable {
                path: file,
                reason: flag,
            });
        }
    }
    if REPORTED.swap(false, Ordering::Relaxed) {
        eprintln!("mcp-otel collect: audit: the audit trail is writable again");
    }
    Ok(())
}

/// `immutable` or `append-only` when the file exists with that attribute.
#[cfg(target_os = "linux")]
fn blocking_flag(file: &Path) -> Option<&'static str> {
    use std::os::fd::AsRawFd;
    // From linux/fs.h; the libc crate has the ioctl but not the flags.
    const FS_APPEND_FL: libc::c_long = 0x20;
    const FS_IMMUTABLE_FL: libc::c_long = 0x10;
    let f = std::fs::File::open(file).ok()?;
    let mut flags: libc::c_long = 0;
    // SAFETY: FS_IOC_GETFLAGS writes one long through the pointer, which outlives the call.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut flags) };
    if r != 0 {
        // A file system without attributes (tmpfs on older kernels): nothing to check.
        return None;
    }
    if flags & FS_IMMUTABLE_FL != 0 {
        Some("immutable")
    } else if flags & FS_APPEND_FL != 0 {
        Some("append-only")
    } else {
        None
    }
}

#[cfg(not(target_os = "linux"))]
fn blocking_flag(_: &Path) -> Option<&'static str> {
    None
}
