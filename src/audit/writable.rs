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
///
/// By path (`statx`), never by opening the file: closing any descriptor of a file drops every
/// POSIX lock the process holds on it, SQLite's included. (A first version opened the file for
/// `FS_IOC_GETFLAGS`; another process then took itself for the last connection, truncated the
/// `-shm` on close, and this process died of SIGBUS on its mapping.)
#[cfg(target_os = "linux")]
fn blocking_flag(file: &Path) -> Option<&'static str> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(file.as_os_str().as_bytes()).ok()?;
    // SAFETY: zeroed is a valid `statx` (plain integers); the kernel fills it.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a buffer that outlive the call.
    let r = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            path.as_ptr(),
            libc::AT_STATX_SYNC_AS_STAT,
            libc::STATX_BASIC_STATS,
            &mut st,
        )
    };
    if r != 0 {
        // Missing (no `-shm` yet) or unreadable: nothing SQLite could have mapped.
        return None;
    }
    let has = |attr: libc::c_int| {
        let attr = attr as u64;
        st.stx_attributes_mask & attr != 0 && st.stx_attributes & attr != 0
    };
    if has(libc::STATX_ATTR_IMMUTABLE) {
        Some("immutable")
    } else if has(libc::STATX_ATTR_APPEND) {
        Some("append-only")
    } else {
        None
    }
}

#[cfg(not(target_os = "linux"))]
fn blocking_flag(_: &Path) -> Option<&'static str> {
    None
}
