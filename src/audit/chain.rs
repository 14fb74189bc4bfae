//! The hash chain: each row's `hash` is SHA-256 over a canonical, versioned encoding of the row
//! (as stored) followed by the previous row's hash, so that changing, removing or reordering a
//! row breaks every later link.
//!
//! Encoding v1: the domain tag `mcp-otel/audit/row/v1\0`, then every column of [`RowFields`] in
//! declaration order, each as a one-byte type tag (`0` NULL, `1` integer as 8 bytes big-endian,
//! `2` real as the 8 big-endian bytes of its IEEE-754 bits, `3` text as a 4-byte big-endian
//! length and its UTF-8 bytes), then the 32 raw bytes of `prev_hash`. The encoding never
//! changes meaning: a future layout gets a new tag and a new `chain_version` in `audit_meta`.
//!
//! Encoding v2 (the confirmation columns): the tag `mcp-otel/audit/row/v2\0`, the v1 fields in
//! the same way, then `confirmation_outcome`, `confirmation_source`,
//! `confirmation_arguments_digest` (texts), `confirmation_wait_ms` (real) and `row_version`
//! (integer), then `prev_hash`. Each row keeps the version it was written with (its
//! `row_version` column; NULL in rows written before it existed means 1), so a store migrated
//! from v1 holds v1 rows followed by v2 rows and still verifies; a v1 row cannot carry the v2
//! fields, and changing a row's version changes its tag and so its hash.

use sha2::{Digest, Sha256};

/// The version of the row encoding this build writes and verifies.
pub(crate) const CHAIN_VERSION: u32 = 2;

/// The versions this build verifies (a store's rows may mix them, oldest first).
pub(crate) const READABLE_VERSIONS: [u32; 2] = [1, 2];

/// `prev_hash` of the first row ever written.
pub(crate) const GENESIS_HASH: [u8; 32] = [0; 32];

const ROW_TAG_V1: &[u8] = b"mcp-otel/audit/row/v1\0";
const ROW_TAG_V2: &[u8] = b"mcp-otel/audit/row/v2\0";

/// One row of `mcp_logs` as stored, borrowed: the input of the chain hash.
///
/// JSON columns (`before_state`, `after_state`, `context`, `mcp`, `result`) are hashed as the
/// exact text stored, so the hash does not depend on how a JSON library orders keys.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RowFields<'a> {
    /// The row's position in the table (`INTEGER PRIMARY KEY`, ascending in write order).
    pub id: i64,
    /// Start of the call: RFC 3339, UTC, milliseconds (`2026-01-02T03:04:05.678Z`).
    pub timestamp: &'a str,
    /// The tool's name (`gen_ai.tool.name`).
    pub tool_name: &'a str,
    /// Who made the call (`enduser.id`).
    pub user: &'a str,
    /// `success`, `error` or `timeout`.
    pub status: &'a str,
    /// The call's duration in milliseconds (0 when the record's was not a finite number).
    pub duration_ms: f64,
    /// The call's error code (`401`, `-32602`, `tool_error`, …); `None` on success.
    pub error_code: Option<&'a str>,
    /// `create`, `update`, `delete` or `write`; `None` for reads.
    pub operation_type: Option<&'a str>,
    /// The id of the resource a write changed.
    pub resource_id: Option<&'a str>,
    /// The resource's state before the write, as the stored JSON text.
    pub before_state: Option<&'a str>,
    /// The resource's state after the write, as the stored JSON text.
    pub after_state: Option<&'a str>,
    /// Whether the user confirmed the write; `None` when unknown.
    pub user_confirmation: Option<bool>,
    /// The call's redacted arguments, as the stored JSON text.
    pub context: Option<&'a str>,
    /// The trace id, 32 lowercase hex digits.
    pub trace_id: &'a str,
    /// The call's span id, 16 lowercase hex digits.
    pub span_id: &'a str,
    /// The parent span id in hex; `None` for a root span.
    pub parent_span_id: Option<&'a str>,
    /// The MCP protocol facts (method, request id, session, client, transport) as the stored JSON
    /// text.
    pub mcp: Option<&'a str>,
    /// The tool result as the stored JSON text, when it was captured (opt-in).
    pub result: Option<&'a str>,
    /// When the collector wrote the row (RFC 3339, UTC, milliseconds).
    pub recorded_at: &'a str,
    /// The confirmation outcome (`accepted`, `declined`, …); v2 rows only.
    pub confirmation_outcome: Option<&'a str>,
    /// How the confirmation was obtained (`elicitation`, `client_flag`, `server_audit_block`); v2
    /// rows only.
    pub confirmation_source: Option<&'a str>,
    /// `sha256:<hex>` of the arguments the confirmation was about; v2 rows only.
    pub confirmation_arguments_digest: Option<&'a str>,
    /// How long the confirmation answer took, in milliseconds; v2 rows only.
    pub confirmation_wait_ms: Option<f64>,
    /// The encoding this row was written with: 1 or 2 (0, the default, reads as 1).
    pub row_version: u32,
}

impl RowFields<'_> {
    /// True when a field that only the v2 encoding covers is set.
    pub(crate) fn has_v2_fields(&self) -> bool {
        self.confirmation_outcome.is_some()
            || self.confirmation_source.is_some()
            || self.confirmation_arguments_digest.is_some()
            || self.confirmation_wait_ms.is_some()
    }
}

/// Computes row hashes, reusing one buffer across rows.
#[derive(Default)]
pub struct RowHasher {
    buf: Vec<u8>,
}

impl RowHasher {
    /// A hasher with an empty buffer sized for a typical row.
    pub fn new() -> Self {
        RowHasher {
            buf: Vec::with_capacity(1024),
        }
    }

    /// SHA-256 of the encoding of `row` (in its `row_version`) followed by `prev_hash`.
    pub fn hash(&mut self, row: &RowFields<'_>, prev_hash: &[u8; 32]) -> [u8; 32] {
        self.encode(row, prev_hash);
        Sha256::digest(&self.buf).into()
    }

    /// The encoding itself (what [`RowHasher::hash`] digests): each of the row's
    /// [`values`](RowFields::values) of its version, tagged by the type SQLite stores it as
    /// (written field by field here, as [`Encode`] says, rather than through `ToSql`: verify
    /// encodes every row of a chain).
    pub(crate) fn encode(&mut self, row: &RowFields<'_>, prev_hash: &[u8; 32]) -> &[u8] {
        let v2 = row.row_version >= 2;
        let fields = if v2 { usize::MAX } else { V1_FIELDS };
        let b = &mut self.buf;
        b.clear();
        b.extend_from_slice(if v2 { ROW_TAG_V2 } else { ROW_TAG_V1 });
        macro_rules! each {
            ($($f:ident),*) => {{
                let mut i = 0;
                $(
                    if i < fields {
                        row.$f.encode(b);
                    }
                    i += 1;
                )*
                let _ = i;
            }};
        }
        chained_columns!(each!());
        b.extend_from_slice(prev_hash);
        &self.buf
    }
}

/// A field of [`RowFields`] in the encoding: tagged by the type SQLite stores it as (what
/// `rusqlite::ToSql` makes of it: `bool` and `u32` are integers), `0` for NULL.
trait Encode {
    fn encode(&self, b: &mut Vec<u8>);
}

impl Encode for i64 {
    fn encode(&self, b: &mut Vec<u8>) {
        b.push(1);
        b.extend_from_slice(&self.to_be_bytes());
    }
}

impl Encode for u32 {
    fn encode(&self, b: &mut Vec<u8>) {
        i64::from(*self).encode(b);
    }
}

impl Encode for bool {
    fn encode(&self, b: &mut Vec<u8>) {
        i64::from(*self).encode(b);
    }
}

impl Encode for f64 {
    fn encode(&self, b: &mut Vec<u8>) {
        b.push(2);
        b.extend_from_slice(&self.to_bits().to_be_bytes());
    }
}

impl Encode for &str {
    fn encode(&self, b: &mut Vec<u8>) {
        b.push(3);
        // Columns are capped far below 4 GiB by redaction; saturate rather than wrap
        // regardless.
        let len = u32::try_from(self.len()).unwrap_or(u32::MAX);
        b.extend_from_slice(&len.to_be_bytes());
        b.extend_from_slice(self.as_bytes());
    }
}

impl<T: Encode> Encode for Option<T> {
    fn encode(&self, b: &mut Vec<u8>) {
        match self {
            Some(v) => v.encode(b),
            None => b.push(0),
        }
    }
}

/// How many of [`RowFields::values`] the v1 encoding covers (up to `recorded_at`).
const V1_FIELDS: usize = super::store::FIRST_V2_COLUMN;

/// Calls `$m!` with the given tokens followed by the chained columns' names, in table order
/// (the v1 ones first, then those [`CHAIN_VERSION`] 2 added): the one list that the SQLite row's
/// binding and the PostgreSQL batch's share (the table itself is `store::COLUMNS`; a unit test of
/// each store checks its binding against it).
macro_rules! chained_columns {
    ($m:ident!($($pre:tt)*)) => {
        $m!(
            $($pre)* id, timestamp, tool_name, user, status, duration_ms, error_code,
            operation_type, resource_id, before_state, after_state, user_confirmation, context,
            trace_id, span_id, parent_span_id, mcp, result, recorded_at, confirmation_outcome,
            confirmation_source, confirmation_arguments_digest, confirmation_wait_ms, row_version
        )
    };
}
pub(crate) use chained_columns;

impl RowFields<'_> {
    /// The chained columns' values in table order (the v1 ones first), as SQLite stores them:
    /// what the insert binds and what the hash encodes.
    pub(crate) fn values(&self) -> [&dyn rusqlite::ToSql; 24] {
        macro_rules! refs {
            ($($f:ident),*) => { [$(&self.$f as &dyn rusqlite::ToSql),*] };
        }
        chained_columns!(refs!())
    }
}

/// Lower-case hex of a hash, as stored in `prev_hash` and `hash`.
pub fn to_hex(hash: &[u8; 32]) -> String {
    crate::hex::encode(hash)
}

/// [`to_hex`] into a reused buffer.
pub(crate) fn write_hex(out: &mut String, hash: &[u8; 32]) {
    out.clear();
    crate::hex::push(out, hash);
}

/// Parses 64 hex digits (either case) into a hash.
pub fn from_hex(s: &str) -> Option<[u8; 32]> {
    crate::hex::decode(s, crate::hex::Case::Any)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> RowFields<'static> {
        RowFields {
            id: 1,
            timestamp: "2026-01-02T03:04:05.678Z",
            tool_name: "delete_task",
            user: "alice",
            status: "success",
            duration_ms: 12.5,
            operation_type: Some("delete"),
            trace_id: "0af7651916cd43dd8448eb211c80319c",
            span_id: "b7ad6b7169203331",
            recorded_at: "2026-01-02T03:04:06.000Z",
            ..RowFields::default()
        }
    }

    #[test]
    fn every_field_and_the_link_change_the_hash() {
        let mut h = RowHasher::new();
        let base = h.hash(&row(), &GENESIS_HASH);
        let variants = [
            RowFields { id: 2, ..row() },
            RowFields {
                user: "bob",
                ..row()
            },
            RowFields {
                duration_ms: 12.6,
                ..row()
            },
            RowFields {
                user_confirmation: Some(false),
                ..row()
            },
            RowFields {
                user_confirmation: Some(true),
                ..row()
            },
            RowFields {
                error_code: Some(""),
                ..row()
            },
            RowFields {
                context: Some("{}"),
                ..row()
            },
            RowFields {
                operation_type: None,
                ..row()
            },
        ];
        for v in variants {
            assert_ne!(h.hash(&v, &GENESIS_HASH), base, "{v:?}");
        }
        assert_ne!(h.hash(&row(), &[1; 32]), base);
    }

    #[test]
    fn adjacent_texts_cannot_be_shifted() {
        // Without length prefixes, ("ab", "c") and ("a", "bc") would encode the same.
        let mut h = RowHasher::new();
        let a = RowFields {
            tool_name: "ab",
            user: "c",
            ..row()
        };
        let b = RowFields {
            tool_name: "a",
            user: "bc",
            ..row()
        };
        assert_ne!(h.hash(&a, &GENESIS_HASH), h.hash(&b, &GENESIS_HASH));
    }

    /// The encoding as the values SQLite binds describe it (`ToSql`), field by field: what
    /// [`RowHasher::encode`] must write.
    fn encoding_by_to_sql(row: &RowFields<'_>, prev_hash: &[u8; 32]) -> Vec<u8> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        let v2 = row.row_version >= 2;
        let mut b = (if v2 { ROW_TAG_V2 } else { ROW_TAG_V1 }).to_vec();
        let values = row.values();
        for value in &values[..if v2 { values.len() } else { V1_FIELDS }] {
            let out = value.to_sql().unwrap();
            let value = match &out {
                ToSqlOutput::Borrowed(v) => *v,
                ToSqlOutput::Owned(v) => v.into(),
                other => panic!("{other:?}"),
            };
            match value {
                ValueRef::Null => b.push(0),
                ValueRef::Integer(v) => {
                    b.push(1);
                    b.extend_from_slice(&v.to_be_bytes());
                }
                ValueRef::Real(v) => {
                    b.push(2);
                    b.extend_from_slice(&v.to_bits().to_be_bytes());
                }
                ValueRef::Text(s) => {
                    b.push(3);
                    b.extend_from_slice(&(s.len() as u32).to_be_bytes());
                    b.extend_from_slice(s);
                }
                ValueRef::Blob(_) => panic!("no field is a blob"),
            }
        }
        b.extend_from_slice(prev_hash);
        b
    }

    #[test]
    fn every_field_is_encoded_as_sqlite_binds_it() {
        let full = RowFields {
            error_code: Some("-32602"),
            resource_id: Some("task-1"),
            before_state: Some("{\"a\":1}"),
            after_state: Some(""),
            user_confirmation: Some(true),
            context: Some("{}"),
            parent_span_id: Some("00f067aa0ba902b7"),
            mcp: Some("{\"method\":\"tools/call\"}"),
            result: Some("[]"),
            confirmation_outcome: Some("accepted"),
            confirmation_source: Some("elicitation"),
            confirmation_arguments_digest: Some("sha256:00"),
            confirmation_wait_ms: Some(-0.0),
            duration_ms: f64::NAN,
            row_version: 2,
            ..row()
        };
        let mut h = RowHasher::new();
        for r in [
            row(),
            full,
            RowFields {
                row_version: 1,
                ..full
            },
            RowFields {
                user_confirmation: Some(false),
                id: i64::MIN,
                row_version: 7,
                ..full
            },
        ] {
            let prev = [0x5a; 32];
            assert_eq!(
                h.encode(&r, &prev),
                &encoding_by_to_sql(&r, &prev)[..],
                "{r:?}"
            );
        }
    }

    #[test]
    fn the_v1_encoding_is_stable() {
        // Pinned (and reproduced independently from the encoding described in the module doc):
        // a change here breaks every stored chain. Bump CHAIN_VERSION instead.
        let hash = RowHasher::new().hash(&row(), &GENESIS_HASH);
        assert_eq!(
            to_hex(&hash),
            "bed01e755ac5eb406ee21733babd3f0d273b086bb3448b706e3fb6d11ba3db09"
        );
        assert_eq!(from_hex(&to_hex(&hash)), Some(hash));
        assert_eq!(from_hex("zz"), None);
        let v1 = RowFields {
            row_version: 1,
            ..row()
        };
        assert_eq!(
            RowHasher::new().hash(&v1, &GENESIS_HASH),
            hash,
            "0 reads as 1"
        );
    }

    #[test]
    fn the_v2_encoding_covers_the_confirmation_and_its_own_version() {
        let mut h = RowHasher::new();
        let v2 = RowFields {
            row_version: 2,
            confirmation_outcome: Some("declined"),
            confirmation_source: Some("elicitation"),
            confirmation_arguments_digest: Some("sha256:00"),
            confirmation_wait_ms: Some(812.5),
            ..row()
        };
        let base = h.hash(&v2, &GENESIS_HASH);
        let bare = RowFields {
            row_version: 2,
            ..row()
        };
        assert_ne!(
            h.hash(&bare, &GENESIS_HASH),
            h.hash(&row(), &GENESIS_HASH),
            "the tag"
        );
        for v in [
            RowFields {
                confirmation_outcome: Some("accepted"),
                ..v2
            },
            RowFields {
                confirmation_source: None,
                ..v2
            },
            RowFields {
                confirmation_arguments_digest: Some("sha256:01"),
                ..v2
            },
            RowFields {
                confirmation_wait_ms: Some(812.0),
                ..v2
            },
            RowFields {
                row_version: 3,
                ..v2
            },
        ] {
            assert_ne!(h.hash(&v, &GENESIS_HASH), base, "{v:?}");
        }
        assert!(v2.has_v2_fields() && !row().has_v2_fields());
        // Pinned like v1 (and reproduced independently from the module doc).
        assert_eq!(
            to_hex(&base),
            "fdc119f40506f1c8ddfcd48647610bd931fe6125ce9515f0ab37e8d483784355"
        );
    }
}
