//! The reader of `COPY (SELECT …) TO STDOUT (FORMAT binary)`, for the scans that read a whole
//! chain (`verify`) or a whole day of writes (`review`): each tuple's fields are borrowed from
//! the bytes the server sent, so a row costs no allocation, and the server sends each value in
//! its binary form (no text to render or parse). The format is PostgreSQL's ("COPY", "Binary
//! Format"): a signature, flags and a header extension, then per tuple a 16-bit field count and
//! per field a 32-bit length (-1 for NULL) and the bytes, then a count of -1.

use bytes::Bytes;
use futures::{Stream, StreamExt};
use std::ops::ControlFlow;

/// The first bytes of every binary COPY stream.
const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";

/// Why a COPY stream could not be read.
#[derive(Debug)]
pub(crate) enum CopyError {
    /// The server or the connection failed.
    Postgres(tokio_postgres::Error),
    /// The bytes are not a binary COPY stream of the expected columns (what is wrong).
    Malformed(&'static str),
}

/// One tuple: `N` fields, `None` for NULL.
pub(crate) type Fields<'a, const N: usize> = [Option<&'a [u8]>; N];

/// What parsing a buffer came to.
enum Step {
    /// Every complete tuple was handed over; more bytes are needed.
    More,
    /// The end-of-data marker.
    End,
    /// The callback asked to stop.
    Stopped,
}

/// Hands each tuple of `stream` (of `N` fields) to `row`, in order, until the stream ends or
/// `row` breaks; `true` when the stream was read to its end.
pub(crate) async fn for_each<const N: usize>(
    stream: impl Stream<Item = Result<Bytes, tokio_postgres::Error>>,
    mut row: impl FnMut(&Fields<'_, N>) -> ControlFlow<()>,
) -> Result<bool, CopyError> {
    let mut stream = std::pin::pin!(stream);
    // The start of a tuple that one message did not complete (the server sends one message
    // per tuple, so this is rare), and whether the header was read.
    let mut carry: Vec<u8> = Vec::new();
    let mut header = false;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(CopyError::Postgres)?;
        let carried = !carry.is_empty();
        if carried {
            carry.extend_from_slice(&chunk);
        }
        let data: &[u8] = if carried { &carry } else { &chunk };
        let (used, step) = parse(data, &mut header, &mut row)?;
        match step {
            Step::Stopped => return Ok(false),
            Step::End => {
                // Only the end of the copy follows.
                while let Some(rest) = stream.next().await {
                    rest.map_err(CopyError::Postgres)?;
                }
                return Ok(true);
            }
            Step::More if carried => {
                carry.drain(..used);
            }
            Step::More => carry.extend_from_slice(&chunk[used..]),
        }
    }
    Err(CopyError::Malformed(
        "the stream ended before its end-of-data marker",
    ))
}

/// Hands the complete tuples at the start of `data` to `row`; how many bytes they took.
fn parse<const N: usize>(
    data: &[u8],
    header: &mut bool,
    row: &mut impl FnMut(&Fields<'_, N>) -> ControlFlow<()>,
) -> Result<(usize, Step), CopyError> {
    let mut at = 0;
    if !*header {
        if data.len() < SIGNATURE.len() + 8 {
            return Ok((0, Step::More));
        }
        if &data[..SIGNATURE.len()] != SIGNATURE {
            return Err(CopyError::Malformed("no binary COPY signature"));
        }
        let extension = be_u32(&data[SIGNATURE.len() + 4..]) as usize;
        at = SIGNATURE.len() + 8 + extension;
        if data.len() < at {
            return Ok((0, Step::More));
        }
        *header = true;
    }
    let mut fields: Fields<'_, N> = [None; N];
    loop {
        let Some(count) = data.get(at..at + 2) else {
            return Ok((at, Step::More));
        };
        let count = i16::from_be_bytes([count[0], count[1]]);
        if count == -1 {
            return Ok((at + 2, Step::End));
        }
        if usize::try_from(count) != Ok(N) {
            return Err(CopyError::Malformed("a tuple has another number of fields"));
        }
        let mut p = at + 2;
        for field in fields.iter_mut() {
            let Some(len) = data.get(p..p + 4) else {
                return Ok((at, Step::More));
            };
            let len = be_u32(len) as i32;
            p += 4;
            *field = match usize::try_from(len) {
                Err(_) if len == -1 => None,
                Err(_) => return Err(CopyError::Malformed("a field has a negative length")),
                Ok(len) => match data.get(p..p + len) {
                    Some(bytes) => {
                        p += len;
                        Some(bytes)
                    }
                    None => return Ok((at, Step::More)),
                },
            };
        }
        if row(&fields).is_break() {
            return Ok((p, Step::Stopped));
        }
        at = p;
    }
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// An `int8` field.
pub(crate) fn int8(b: &[u8]) -> Option<i64> {
    Some(i64::from_be_bytes(b.try_into().ok()?))
}

/// A `float8` field.
pub(crate) fn float8(b: &[u8]) -> Option<f64> {
    Some(f64::from_bits(u64::from_be_bytes(b.try_into().ok()?)))
}

/// A `bool` field.
pub(crate) fn boolean(b: &[u8]) -> Option<bool> {
    match b {
        [0] => Some(false),
        [1] => Some(true),
        _ => None,
    }
}

/// A `text` field (the server sends it in the client encoding, UTF-8).
pub(crate) fn text(b: &[u8]) -> Option<&str> {
    std::str::from_utf8(b).ok()
}

/// A `timestamptz` field: microseconds since 2000-01-01 00:00 UTC.
pub(crate) fn micros(b: &[u8]) -> Option<i64> {
    int8(b)
}

/// Microseconds from 1970 to 2000 (PostgreSQL's epoch).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// Writes the time `micros` (PostgreSQL's epoch) into `out` as the store keeps times
/// ([`crate::audit::store::format_time`]: RFC 3339 UTC, milliseconds, the microseconds cut),
/// without allocating for years 0–9999; `false` when chrono cannot represent it.
pub(crate) fn write_time(out: &mut String, micros: i64) -> bool {
    out.clear();
    let ms = micros.div_euclid(1000);
    let (secs, milli) = (ms.div_euclid(1000), ms.rem_euclid(1000));
    let (days, sod) = (secs.div_euclid(86_400) + 10_957, secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    if !(0..=9999).contains(&y) {
        let Some(t) = micros
            .checked_add(PG_EPOCH_MICROS)
            .and_then(chrono::DateTime::from_timestamp_micros)
        else {
            return false;
        };
        out.push_str(&crate::audit::store::format_time(t));
        return true;
    }
    let mut b = *b"0000-00-00T00:00:00.000Z";
    let mut put = |at: usize, width: usize, mut v: i64| {
        for i in (at..at + width).rev() {
            b[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, 4, y);
    put(5, 2, m);
    put(8, 2, d);
    put(11, 2, sod / 3600);
    put(14, 2, sod / 60 % 60);
    put(17, 2, sod % 60);
    put(20, 3, milli);
    out.push_str(std::str::from_utf8(&b).unwrap_or_default());
    true
}

/// The proleptic Gregorian (year, month, day) of `days` since 1970-01-01 (H. Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::store::format_time;

    #[test]
    fn times_are_written_as_the_store_formats_them() {
        let mut out = String::new();
        let mut check = |micros: i64| {
            let t = chrono::DateTime::from_timestamp_micros(micros + PG_EPOCH_MICROS).unwrap();
            assert!(write_time(&mut out, micros));
            assert_eq!(out, format_time(t), "{micros}");
        };
        // Around the epochs, leap days, sub-millisecond parts (cut), far past and future.
        let day = 86_400_000_000i64;
        for micros in [
            0,
            -1,
            999,
            1_000,
            -PG_EPOCH_MICROS,
            -PG_EPOCH_MICROS - 1,
            59 * day,
            60 * day + 123_456,
            -(730_000 * day),
            3_000_000 * day,
            100 * 365 * day + 86_399_999_999,
        ] {
            check(micros);
        }
        let mut x: i64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            check(x % (4_000_000 * day));
        }
    }

    #[test]
    fn tuples_split_across_messages_are_joined() {
        let mut stream = SIGNATURE.to_vec();
        stream.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]);
        for (a, b) in [(&b"ab"[..], Some(&b"c"[..])), (b"", None)] {
            stream.extend_from_slice(&2i16.to_be_bytes());
            stream.extend_from_slice(&(a.len() as i32).to_be_bytes());
            stream.extend_from_slice(a);
            match b {
                Some(b) => {
                    stream.extend_from_slice(&(b.len() as i32).to_be_bytes());
                    stream.extend_from_slice(b);
                }
                None => stream.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        stream.extend_from_slice(&(-1i16).to_be_bytes());
        for cut in 0..stream.len() {
            let chunks = vec![
                Ok(Bytes::copy_from_slice(&stream[..cut])),
                Ok(Bytes::copy_from_slice(&stream[cut..])),
            ];
            let mut seen = Vec::new();
            let done =
                futures::executor::block_on(for_each::<2>(futures::stream::iter(chunks), |f| {
                    seen.push((f[0].map(<[u8]>::to_vec), f[1].map(<[u8]>::to_vec)));
                    ControlFlow::Continue(())
                }))
                .unwrap();
            assert!(done, "cut at {cut}");
            assert_eq!(
                seen,
                [
                    (Some(b"ab".to_vec()), Some(b"c".to_vec())),
                    (Some(Vec::new()), None)
                ],
                "cut at {cut}"
            );
        }
        let cut = futures::executor::block_on(for_each::<2>(
            futures::stream::iter(vec![Ok(Bytes::copy_from_slice(&stream[..30]))]),
            |_| ControlFlow::Continue(()),
        ));
        assert!(matches!(cut, Err(CopyError::Malformed(_))));
    }
}
