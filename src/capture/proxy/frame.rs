//! Newline framing for the stdio relay: which bytes form complete lines (observed, possibly
//! intercepted) and which go through at once without being observed.
//!
//! Complete lines are handed out as one slice straight from the read buffer (no copy). A
//! trailing partial line is held until its newline only when it looks like JSON (starts with
//! `{` or `[`): everything else, and any line longer than the observation limit, is relayed
//! as it arrives and the rest of that line is not observed. The bytes that come out are the
//! bytes that went in, in order; framing only decides when they leave.

/// A piece of relayed input.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Piece<'a> {
    /// One or more complete lines, each ending in `\n`.
    Lines(&'a [u8]),
    /// Bytes to relay without observing them.
    Raw(&'a [u8], RawReason),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RawReason {
    /// The line grew past the observation limit.
    Oversize,
    /// The line does not start like JSON.
    NotJson,
    /// End of input inside a line.
    Unterminated,
}

/// Splits a byte stream into [`Piece`]s.
#[derive(Debug)]
pub(crate) struct LineFramer {
    held: Vec<u8>,
    /// Inside a line that is being relayed raw (until its newline).
    raw_line: Option<RawReason>,
    max_line: usize,
}

impl LineFramer {
    pub(crate) fn new(max_line: usize) -> Self {
        LineFramer {
            held: Vec::new(),
            raw_line: None,
            max_line,
        }
    }

    /// Feeds `data`, calling `out` with each piece in order.
    pub(crate) fn push<E>(
        &mut self,
        mut data: &[u8],
        mut out: impl FnMut(Piece<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        while !data.is_empty() {
            if let Some(reason) = self.raw_line {
                match memchr::memchr(b'\n', data) {
                    Some(nl) => {
                        out(Piece::Raw(&data[..=nl], reason))?;
                        self.raw_line = None;
                        data = &data[nl + 1..];
                        continue;
                    }
                    None => return out(Piece::Raw(data, reason)),
                }
            }
            if !self.held.is_empty() {
                match memchr::memchr(b'\n', data) {
                    Some(nl) if self.held.len() + nl < self.max_line => {
                        self.held.extend_from_slice(&data[..=nl]);
                        let r = out(Piece::Lines(&self.held));
                        self.held.clear();
                        r?;
                        data = &data[nl + 1..];
                        continue;
                    }
                    Some(_) | None if self.held.len() + data.len() >= self.max_line => {
                        let r = out(Piece::Raw(&self.held, RawReason::Oversize));
                        self.held.clear();
                        r?;
                        self.raw_line = Some(RawReason::Oversize);
                        continue;
                    }
                    _ => {
                        self.held.extend_from_slice(data);
                        return Ok(());
                    }
                }
            }
            // At the start of a line.
            let (complete, rest) = match memchr::memrchr(b'\n', data) {
                Some(nl) => data.split_at(nl + 1),
                None => (&data[..0], data),
            };
            if !complete.is_empty() {
                out(Piece::Lines(complete))?;
            }
            if rest.is_empty() {
                return Ok(());
            }
            match rest.iter().find(|b| !b.is_ascii_whitespace()) {
                Some(b'{' | b'[') | None if rest.len() < self.max_line => {
                    self.held.extend_from_slice(rest);
                    return Ok(());
                }
                Some(b'{' | b'[') | None => {
                    self.raw_line = Some(RawReason::Oversize);
                }
                Some(_) => self.raw_line = Some(RawReason::NotJson),
            }
            data = rest;
        }
        Ok(())
    }

    /// End of input: whatever partial line is held goes out raw.
    pub(crate) fn finish<E>(
        &mut self,
        mut out: impl FnMut(Piece<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        if !self.held.is_empty() {
            let r = out(Piece::Raw(&self.held, RawReason::Unterminated));
            self.held.clear();
            return r;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pieces(max: usize, chunks: &[&[u8]]) -> Vec<(bool, Vec<u8>)> {
        let mut f = LineFramer::new(max);
        let mut out = Vec::new();
        for c in chunks {
            f.push::<()>(c, |p| {
                out.push(match p {
                    Piece::Lines(b) => (true, b.to_vec()),
                    Piece::Raw(b, _) => (false, b.to_vec()),
                });
                Ok(())
            })
            .unwrap();
        }
        f.finish::<()>(|p| {
            if let Piece::Raw(b, _) = p {
                out.push((false, b.to_vec()));
            }
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn lines_are_joined_across_reads_and_garbage_goes_straight_through() {
        let out = pieces(
            1024,
            &[b"{\"a\":1}\n{\"b\"", b":2}\n", b"garbage", b" more\n{}\n"],
        );
        assert_eq!(
            out,
            vec![
                (true, b"{\"a\":1}\n".to_vec()),
                (true, b"{\"b\":2}\n".to_vec()),
                (false, b"garbage".to_vec()),
                (false, b" more\n".to_vec()),
                (true, b"{}\n".to_vec()),
            ]
        );
    }

    #[test]
    fn long_lines_are_relayed_unobserved() {
        let out = pieces(8, &[b"{\"aaaa", b"aaaaaa", b"a\"}\n{}\n"]);
        let lines: Vec<_> = out.iter().filter(|(l, _)| *l).collect();
        assert_eq!(lines, vec![&(true, b"{}\n".to_vec())]);
    }

    proptest! {
        /// Whatever the input and however it is split, the output is the input, in order.
        #[test]
        fn output_is_input(data in prop::collection::vec(prop_oneof![
                Just(b'\n'), Just(b'{'), Just(b'}'), Just(b' '), any::<u8>()], 0..400),
            cuts in prop::collection::vec(0usize..400, 0..8),
            max in 1usize..64) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(data.len())).collect();
            cuts.sort();
            let mut chunks: Vec<&[u8]> = Vec::new();
            let mut prev = 0;
            for c in cuts.into_iter().chain([data.len()]) {
                chunks.push(&data[prev..c]);
                prev = c;
            }
            let out: Vec<u8> = pieces(max, &chunks).into_iter().flat_map(|(_, b)| b).collect();
            prop_assert_eq!(out, data);
        }
    }
}
