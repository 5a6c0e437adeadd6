//! Tracks chunked transfer-coding boundaries in a request body as bytes pass through, so the guard
//! knows where the next request head starts and can refuse a malformed chunk (size overflow,
//! bare LF, junk) before hyper or the upstream sees it.

use super::head::Reject;

/// Longest chunk extension or trailer line accepted.
const MAX_LINE: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    Size { digits: u8, value: u64 },
    Ext { value: u64, len: usize },
    SizeLf { value: u64 },
    Data(u64),
    DataCr,
    DataLf,
    TrailerStart,
    TrailerLine(usize),
    TrailerLf,
    EndLf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunked {
    st: St,
    /// Total data bytes seen (for the body limit).
    pub data_bytes: u64,
}

/// Result of feeding bytes: how many were consumed, and whether the message ended there.
#[derive(Debug, PartialEq, Eq)]
pub struct Step {
    pub used: usize,
    pub done: bool,
}

impl Default for Chunked {
    fn default() -> Self {
        Chunked {
            st: St::Size { digits: 0, value: 0 },
            data_bytes: 0,
        }
    }
}

const OVERFLOW: Reject = Reject::bad("chunk size overflow");
const MALFORMED: Reject = Reject::bad("malformed chunked body");

impl Chunked {
    /// Consumes bytes of `buf` until the body ends or `buf` is exhausted.
    pub fn feed(&mut self, buf: &[u8], max_body: u64) -> Result<Step, Reject> {
        let mut i = 0;
        while i < buf.len() {
            if let St::Data(n) = self.st {
                let take = n.min((buf.len() - i) as u64);
                i += take as usize;
                self.st = if take == n { St::DataCr } else { St::Data(n - take) };
                continue;
            }
            let b = buf[i];
            i += 1;
            self.st = match self.st {
                St::Size { digits, value } => match hex(b) {
                    Some(d) => {
                        // Sizes above 2^62 are refused outright: no body is that large, and it
                        // keeps every later sum far from overflow.
                        let value = value
                            .checked_mul(16)
                            .map(|v| v + d)
                            .filter(|v| *v < 1 << 62)
                            .ok_or(OVERFLOW)?;
                        St::Size {
                            digits: digits.saturating_add(1),
                            value,
                        }
                    }
                    None if digits == 0 => return Err(MALFORMED),
                    None => match b {
                        b';' | b' ' | b'\t' => St::Ext { value, len: 0 },
                        b'\r' => St::SizeLf { value },
                        _ => return Err(MALFORMED),
                    },
                },
                St::Ext { value, len } => match b {
                    b'\r' => St::SizeLf { value },
                    b'\n' => return Err(MALFORMED),
                    _ if len >= MAX_LINE || (b < 0x20 && b != b'\t') || b == 0x7f => {
                        return Err(MALFORMED);
                    }
                    _ => St::Ext { value, len: len + 1 },
                },
                St::SizeLf { value } => {
                    if b != b'\n' {
                        return Err(MALFORMED);
                    }
                    if value == 0 {
                        St::TrailerStart
                    } else {
                        self.data_bytes = self.data_bytes.saturating_add(value);
                        if max_body > 0 && self.data_bytes > max_body {
                            return Err(Reject {
                                status: 413,
                                reason: "request body too large",
                            });
                        }
                        St::Data(value)
                    }
                }
                St::Data(_) => unreachable_data(),
                St::DataCr if b == b'\r' => St::DataLf,
                St::DataLf if b == b'\n' => St::Size { digits: 0, value: 0 },
                St::DataCr | St::DataLf => return Err(MALFORMED),
                St::TrailerStart => match b {
                    b'\r' => St::EndLf,
                    b'\n' => return Err(MALFORMED),
                    _ => St::TrailerLine(1),
                },
                St::TrailerLine(len) => match b {
                    b'\r' => St::TrailerLf,
                    b'\n' => return Err(MALFORMED),
                    0 => return Err(MALFORMED),
                    _ if len >= MAX_LINE => return Err(MALFORMED),
                    _ => St::TrailerLine(len + 1),
                },
                St::TrailerLf if b == b'\n' => St::TrailerStart,
                St::TrailerLf => return Err(MALFORMED),
                St::EndLf if b == b'\n' => {
                    return Ok(Step { used: i, done: true });
                }
                St::EndLf => return Err(MALFORMED),
            };
        }
        Ok(Step { used: i, done: false })
    }
}

/// `St::Data` is handled in bulk before the byte match; reaching it there is impossible.
fn unreachable_data() -> St {
    St::DataCr
}

/// The value of one hex digit of a chunk size.
pub(crate) fn hex(b: u8) -> Option<u64> {
    match b {
        b'0'..=b'9' => Some(u64::from(b - b'0')),
        b'a'..=b'f' => Some(u64::from(b - b'a' + 10)),
        b'A'..=b'F' => Some(u64::from(b - b'A' + 10)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(body: &[u8]) -> Result<Step, Reject> {
        Chunked::default().feed(body, 0)
    }

    #[test]
    fn whole_body() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-T: v\r\n\r\nGET";
        assert_eq!(
            run(body),
            Ok(Step {
                used: body.len() - 3,
                done: true
            })
        );
    }

    #[test]
    fn byte_at_a_time() {
        let body = b"a\r\n0123456789\r\n0\r\n\r\n";
        let mut c = Chunked::default();
        for (i, b) in body.iter().enumerate() {
            let step = c.feed(std::slice::from_ref(b), 0);
            assert_eq!(
                step,
                Ok(Step {
                    used: 1,
                    done: i == body.len() - 1
                })
            );
        }
        assert_eq!(c.data_bytes, 10);
    }

    #[test]
    fn overflow_is_rejected() {
        assert_eq!(run(b"10000000000000000\r\n"), Err(OVERFLOW));
        assert_eq!(run(b"ffffffffffffffffff\r\n"), Err(OVERFLOW));
        assert!(run(b"0000000000000000000001\r\nx\r\n0\r\n\r\n").is_ok());
    }

    #[test]
    fn malformed_is_rejected() {
        for bad in [
            &b"x\r\n"[..],
            b"5\nhello",
            b"5\r\nhelloX\r\n",
            b"\r\n",
            b"-1\r\n",
            b"0\r\n\n",
            b"5\r\nhello\r\r",
        ] {
            assert_eq!(run(bad), Err(MALFORMED), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn body_limit() {
        let r = Chunked::default().feed(b"5\r\nhello\r\n6\r\n", 10);
        assert_eq!(r.err().map(|r| r.status), Some(413));
    }

    mod properties {
        use super::*;
        use crate::http1_gen::{broken, chunked_body, cuts, pieces};
        use proptest::prelude::*;

        /// Feeds `pieces` in turn until an error or the end: the error, or the bytes used and
        /// whether the body ended.
        fn feed_pieces(pieces: &[&[u8]]) -> Result<(usize, bool, u64), Reject> {
            let mut c = Chunked::default();
            let mut used = 0;
            for piece in pieces {
                let step = c.feed(piece, 0)?;
                used += step.used;
                if step.done {
                    return Ok((used, true, c.data_bytes));
                }
                assert_eq!(step.used, piece.len(), "a piece left unconsumed before the end");
            }
            Ok((used, false, c.data_bytes))
        }

        proptest! {
            /// A well-formed body is tracked to its exact last byte however it is cut, and what
            /// follows it (the next request) is left alone.
            #[test]
            fn well_formed_body_ends_where_it_ends((body, data) in chunked_body(), next in prop::collection::vec(any::<u8>(), 0..20), cuts in cuts()) {
                let mut input = body.clone();
                input.extend_from_slice(&next);
                let got = feed_pieces(&pieces(&input, &cuts));
                prop_assert_eq!(got, Ok((body.len(), true, data.len() as u64)));
            }

            /// On any input, broken or not, the tracker reaches the same verdict whether the
            /// bytes come at once or in pieces: same error, or the end at the same byte.
            #[test]
            fn verdict_does_not_depend_on_how_bytes_arrive(input in broken(chunked_body().prop_map(|(b, _)| b)), cuts in cuts()) {
                let whole = feed_pieces(&[&input]);
                let cut = feed_pieces(&pieces(&input, &cuts));
                prop_assert_eq!(whole, cut);
            }
        }
    }
}
