//! Many rows of `mcp_logs` per insert statement, for the writer thread's serial path.
//!
//! One step of an `INSERT … VALUES (…), (…), …` of [`BULK_ROWS`] rows costs the writer far less
//! than as many steps of the one-row insert: the statement's cursors on the table and its
//! indexes are opened once, and its set-up and reset are paid once. Its texts are lent to
//! SQLite for the one step (`SQLITE_STATIC`) rather than copied into a fresh allocation each, as
//! rusqlite binds them: a row has a dozen texts, and the copies and their frees were a large
//! part of the writer's work. The bindings are cleared before [`BulkInsert::insert`] returns, so
//! SQLite never holds a text past the borrow.
//!
//! The statement is `INSERT OR IGNORE`: a row already stored (a resend) or one SQLite would
//! refuse is skipped. It leaves the row ids to SQLite, which gives each the largest id plus one,
//! the id the chain hashed it with (the head is the newest row): a multi-row insert of explicit
//! ids may abort on a non-integer id, and SQLite then keeps a statement journal, a copy of every
//! page the statement changes, which cost more than the bulk insert saved. When a row was
//! skipped, or the ids are not the ones hashed (a store whose rows were all pruned, where the
//! chain continues from its retention checkpoint), [`BulkInsert::insert`] says so: the rows after
//! it were then linked wrongly, and the caller rolls the transaction back and inserts its rows
//! one at a time ([`super::store::RowInserter`]), which tells a resend from a conflict and links
//! each row to the last one stored.

use super::chain::{RowFields, chained_columns};
use super::store;
use rusqlite::{Connection, ffi};
use std::ffi::{c_char, c_int};
use std::ptr::NonNull;

/// The rows one bulk statement inserts.
pub(crate) const BULK_ROWS: usize = 16;

/// A row to insert: its fields and its chain hash (its predecessor's is the previous row's, or
/// the one given for the first).
pub(crate) struct LinkedRow<'a> {
    pub(crate) fields: RowFields<'a>,
    pub(crate) hash: [u8; 32],
}

/// A prepared insert of [`BULK_ROWS`] rows on one connection, kept by the writer from one
/// transaction to the next (preparing it costs tens of microseconds); finalized when dropped,
/// which its owner does before it closes the connection (were it not, the close would fail and
/// the connection stay open: a leak, nothing worse).
pub(crate) struct BulkInsert {
    stmt: NonNull<ffi::sqlite3_stmt>,
    /// The rows' `prev_hash` and `hash` in hex, 128 bytes per row, bound from here.
    links: Vec<u8>,
}

// SAFETY: the statement is only used through `&mut self` with the connection it was prepared on
// (checked by `insert`), and a `rusqlite::Connection` may move between threads; the writer
// thread owns both.
unsafe impl Send for BulkInsert {}

/// The columns each row binds: the chained ones but `id`, and the two links.
const ROW_PARAMS: usize = store::COLUMNS.len() - 1;

impl BulkInsert {
    /// Prepares the statement on `conn`.
    pub(crate) fn prepare(conn: &Connection) -> rusqlite::Result<Self> {
        let columns: Vec<&str> = store::COLUMNS
            .iter()
            .map(|c| c.name)
            .filter(|name| *name != "id")
            .collect();
        let row = format!("({})", vec!["?"; ROW_PARAMS].join(", "));
        let sql = format!(
            "INSERT OR IGNORE INTO mcp_logs ({}) VALUES {}",
            columns.join(", "),
            vec![row; BULK_ROWS].join(", ")
        );
        let mut stmt = std::ptr::null_mut();
        // SAFETY: `handle` is the open connection `conn` borrows; the text is valid for the
        // call and its length is given.
        let rc = unsafe {
            ffi::sqlite3_prepare_v3(
                conn.handle(),
                sql.as_ptr().cast::<c_char>(),
                c_int::try_from(sql.len()).unwrap_or(c_int::MAX),
                ffi::SQLITE_PREPARE_PERSISTENT as _,
                &mut stmt,
                std::ptr::null_mut(),
            )
        };
        let Some(stmt) = NonNull::new(stmt).filter(|_| rc == ffi::SQLITE_OK) else {
            return Err(error(conn, rc));
        };
        Ok(BulkInsert {
            stmt,
            links: vec![0; 128 * BULK_ROWS],
        })
    }

    /// Inserts `rows` ([`BULK_ROWS`] of them, with consecutive ids; the first links to `prev`)
    /// on `conn`, the connection it was prepared on, skipping any SQLite ignores. `Ok(true)`
    /// when every row was stored at its id; `Ok(false)` leaves the transaction to be rolled
    /// back.
    pub(crate) fn insert(
        &mut self,
        conn: &Connection,
        prev: &[u8; 32],
        rows: &[LinkedRow<'_>],
    ) -> rusqlite::Result<bool> {
        let misuse = |message: String| {
            rusqlite::Error::SqliteFailure(ffi::Error::new(ffi::SQLITE_MISUSE), Some(message))
        };
        if rows.len() != BULK_ROWS {
            return Err(misuse(format!(
                "a bulk insert takes {BULK_ROWS} rows, not {}",
                rows.len()
            )));
        }
        // SAFETY: both handles are live; comparing them reads nothing through them.
        if unsafe { ffi::sqlite3_db_handle(self.stmt.as_ptr()) != conn.handle() } {
            return Err(misuse(
                "a bulk insert is used on another connection than its own".to_owned(),
            ));
        }
        let mut last = prev;
        for (row, links) in rows.iter().zip(self.links.chunks_exact_mut(128)) {
            crate::hex::write(&mut links[..64], last);
            crate::hex::write(&mut links[64..], &row.hash);
            last = &row.hash;
        }
        let bound = Bound(self.stmt);
        let mut at = 1;
        for (row, links) in rows.iter().zip(self.links.chunks_exact(128)) {
            let fields = &row.fields;
            // The id is SQLite's (see the module's doc), checked below.
            macro_rules! bind_all {
                ($($f:ident),*) => {
                    $(
                        if stringify!($f) != "id" {
                            bound.bind(&mut at, &fields.$f)?;
                        }
                    )*
                };
            }
            chained_columns!(bind_all!());
            // Hex digits are ASCII.
            let (prev_hex, hash_hex) = links.split_at(64);
            bound.bind(&mut at, &std::str::from_utf8(prev_hex).unwrap_or_default())?;
            bound.bind(&mut at, &std::str::from_utf8(hash_hex).unwrap_or_default())?;
        }
        // SAFETY: every parameter is bound, to values that outlive `bound`, which resets the
        // statement and clears the bindings when dropped below.
        let rc = unsafe { ffi::sqlite3_step(self.stmt.as_ptr()) };
        if rc != ffi::SQLITE_DONE {
            return Err(error(conn, rc));
        }
        // SAFETY: the connection's handle, on the thread that owns it.
        let (changes, last_id) = unsafe {
            (
                ffi::sqlite3_changes64(conn.handle()),
                ffi::sqlite3_last_insert_rowid(conn.handle()),
            )
        };
        drop(bound);
        // Consecutive ids, given as the largest plus one: all stored, the last one at its id,
        // is every one at its id.
        Ok(changes == BULK_ROWS as i64 && Some(last_id) == rows.last().map(|r| r.fields.id))
    }
}

impl Drop for BulkInsert {
    fn drop(&mut self) {
        // SAFETY: prepared by `prepare`, finalized once.
        unsafe { ffi::sqlite3_finalize(self.stmt.as_ptr()) };
    }
}

/// The statement while it holds borrowed values: dropping it resets the statement and clears
/// every binding, on every path out of [`BulkInsert::insert`].
struct Bound(NonNull<ffi::sqlite3_stmt>);

impl Bound {
    /// Binds `value` at parameter `*at` and moves `at` to the next one.
    fn bind(&self, at: &mut c_int, value: &impl Bind) -> rusqlite::Result<()> {
        // SAFETY: the statement is live; a text bound here outlives `self` (see `insert`).
        let rc = unsafe { value.bind(self.0.as_ptr(), *at) };
        *at += 1;
        match rc {
            ffi::SQLITE_OK => Ok(()),
            rc => Err(rusqlite::Error::SqliteFailure(
                ffi::Error::new(rc),
                Some(format!("binding parameter {}", *at - 1)),
            )),
        }
    }
}

impl Drop for Bound {
    fn drop(&mut self) {
        // SAFETY: the statement is live. After these no binding refers to a borrowed text.
        unsafe {
            ffi::sqlite3_reset(self.0.as_ptr());
            ffi::sqlite3_clear_bindings(self.0.as_ptr());
        }
    }
}

/// A field of [`RowFields`] bound as SQLite stores it, the way the one-row insert binds it
/// through `rusqlite::ToSql` (and [`chain`] encodes it): `bool` and `u32` as integers, `None` as
/// NULL, texts as UTF-8.
trait Bind {
    /// # Safety
    /// `stmt` is a live statement; a text must stay valid until the statement's bindings are
    /// cleared.
    unsafe fn bind(&self, stmt: *mut ffi::sqlite3_stmt, at: c_int) -> c_int;
}

impl Bind for i64 {
    unsafe fn bind(&self, stmt: *mut ffi::sqlite3_stmt, at: c_int) -> c_int {
        unsafe { ffi::sqlite3_bind_int64(stmt, at, *self) }
    }
}

impl Bind for u32 {
    unsafe fn bind(&self, stmt: *mut ffi::sqlite3_stmt, at: c_int) -> c_int {
        unsafe { i64::from(*self).bind(stmt, at) }
    }
}

impl Bind for bool {
    unsafe fn bind(&self, stmt: *mut ffi::sqlite3_stmt, at: c_int) -> c_int {
        unsafe { i64::from(*self).bind(stmt, at) }
    }
}

impl Bind for f64 {
    unsafe fn bind(&self, stmt: *mut ffi::sqlite3_stmt, at: c_int) -> c_int {
        unsafe { ffi::sqlite3_bind_double(stmt, at, *self) }
    }
}

impl Bind for &str {
    unsafe fn bind(&self, stmt: *mut ffi::sqlite3_stmt, at: c_int) -> c_int {
        unsafe {
            ffi::sqlite3_bind_text64(
                stmt,
                at,
                self.as_ptr().cast::<c_char>(),
                self.len() as ffi::sqlite3_uint64,
                ffi::SQLITE_STATIC(),
                ffi::SQLITE_UTF8 as _,
            )
        }
    }
}

impl<T: Bind> Bind for Option<T> {
    unsafe fn bind(&self, stmt: *mut ffi::sqlite3_stmt, at: c_int) -> c_int {
        match self {
            Some(v) => unsafe { v.bind(stmt, at) },
            None => unsafe { ffi::sqlite3_bind_null(stmt, at) },
        }
    }
}

/// The connection's last error, as rusqlite reports it.
fn error(conn: &Connection, rc: c_int) -> rusqlite::Error {
    // SAFETY: the connection's handle; the message is copied before anything else runs on it.
    let (code, message) = unsafe {
        let db = conn.handle();
        let message = ffi::sqlite3_errmsg(db);
        let message = match message.is_null() {
            true => None,
            false => Some(
                std::ffi::CStr::from_ptr(message)
                    .to_string_lossy()
                    .into_owned(),
            ),
        };
        (ffi::sqlite3_extended_errcode(db), message)
    };
    let code = if code == ffi::SQLITE_OK { rc } else { code };
    rusqlite::Error::SqliteFailure(ffi::Error::new(code), message)
}
