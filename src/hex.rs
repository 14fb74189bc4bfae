//! Lower-case hexadecimal, the one encoder and decoder for trace ids, hashes, keys and
//! fingerprints.

const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Lower-case hex of `bytes`.
pub(crate) fn encode(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    push(&mut s, bytes);
    s
}

/// Appends the lower-case hex of `bytes` to `out`.
pub(crate) fn push(out: &mut String, bytes: &[u8]) {
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
}

/// Writes the lower-case hex of `bytes` into `out[..2 * bytes.len()]`, without allocating.
pub(crate) fn write(out: &mut [u8], bytes: &[u8]) {
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 0xf)];
    }
}

/// Which letters a decoder accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Case {
    /// `a`–`f` only, as W3C Trace Context requires.
    Lower,
    /// Either case, for what people paste (hashes, keys).
    Any,
}

/// Parses exactly `2 * N` hex digits into `N` bytes.
pub(crate) fn decode<const N: usize>(s: &str, case: Case) -> Option<[u8; N]> {
    let s = s.as_bytes();
    if s.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (o, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        *o = (nibble(pair[0], case)? << 4) | nibble(pair[1], case)?;
    }
    Some(out)
}

/// Parses an even number of hex digits of any length into bytes.
pub(crate) fn decode_vec(s: &str, case: Case) -> Option<Vec<u8>> {
    let s = s.as_bytes();
    if !s.len().is_multiple_of(2) {
        return None;
    }
    s.chunks_exact(2)
        .map(|pair| Some((nibble(pair[0], case)? << 4) | nibble(pair[1], case)?))
        .collect()
}

fn nibble(c: u8, case: Case) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' if case == Case::Any => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(bytes in proptest::array::uniform16(any::<u8>())) {
            let text = encode(&bytes);
            prop_assert_eq!(decode::<16>(&text, Case::Lower), Some(bytes));
            prop_assert_eq!(decode::<16>(&text.to_uppercase(), Case::Any), Some(bytes));
            let mut fixed = [0u8; 32];
            write(&mut fixed, &bytes);
            prop_assert_eq!(&fixed[..], text.as_bytes());
        }
    }

    #[test]
    fn rejects_what_is_not_hex() {
        assert_eq!(
            decode::<2>("ABCD", Case::Lower),
            None,
            "W3C ids are lower case"
        );
        assert_eq!(decode::<2>("ABCD", Case::Any), Some([0xab, 0xcd]));
        assert_eq!(decode::<2>("abc", Case::Any), None);
        assert_eq!(decode::<2>("abcg", Case::Any), None);
        assert_eq!(
            decode::<2>("+bcd", Case::Any),
            None,
            "from_str_radix would take a sign"
        );
    }
}
