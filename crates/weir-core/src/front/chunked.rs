//! Checks the chunked request body a client has already sent, as far as it is buffered, before
//! any of the request leaves weir: a malformed chunk (size overflow, bare LF, junk) or a chunk
//! size over the body limit is refused with the gateway's own 4xx, not halfway through the
//! upstream exchange. The rules are the body decoder's own ([`ChunkedDecoder::scan`]): what
//! passes here is what the decoder will accept.

use crate::h1client::ChunkedDecoder;
use crate::h1client::chunked::SIZE_TOO_LARGE;

use super::head::Reject;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chunked {
    decoder: ChunkedDecoder,
}

/// Result of feeding bytes: how many were consumed, and whether the message ended there.
#[derive(Debug, PartialEq, Eq)]
pub struct Step {
    pub used: usize,
    pub done: bool,
}

const OVERFLOW: Reject = Reject::bad("chunk size overflow");
const MALFORMED: Reject = Reject::bad("malformed chunked body");

impl Chunked {
    /// Consumes bytes of `buf` until the body ends or `buf` is exhausted; `max_body` (0 =
    /// unlimited) bounds the data the chunk sizes announce.
    pub fn feed(&mut self, buf: &[u8], max_body: u64) -> Result<Step, Reject> {
        let scanned = self
            .decoder
            .scan(buf)
            .map_err(|e| if e == SIZE_TOO_LARGE { OVERFLOW } else { MALFORMED })?;
        if max_body > 0 && self.decoder.declared() > max_body {
            return Err(Reject {
                status: 413,
                reason: "request body too large",
            });
        }
        Ok(Step {
            used: scanned.used,
            done: scanned.done,
        })
    }

    /// The data bytes the chunk sizes read so far announced.
    pub fn data_bytes(&self) -> u64 {
        self.decoder.declared()
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
        assert_eq!(c.data_bytes(), 10);
    }

    #[test]
    fn trailers_are_field_lines() {
        let body = b"1\r\na\r\n0\r\nx-sum: abc\r\nX-Empty:\r\nx-t:\tv w \xff\r\n\r\n";
        assert_eq!(
            run(body),
            Ok(Step {
                used: body.len(),
                done: true
            })
        );
    }

    #[test]
    fn overflow_is_rejected() {
        assert_eq!(run(b"10000000000000000\r\n"), Err(OVERFLOW));
        assert_eq!(run(b"ffffffffffffffffff\r\n"), Err(OVERFLOW));
        // Sixteen digits are refused even when leading zeros keep the value small, as the
        // body decoder refuses them.
        assert_eq!(run(b"0000000000000001\r\nx\r\n0\r\n\r\n"), Err(OVERFLOW));
        assert!(run(b"000000000000001\r\nx\r\n0\r\n\r\n").is_ok());
    }

    /// RFC 9112's chunk-ext grammar allows spaces and tabs (BWS) before the `;`, and a
    /// recipient must accept them; weir refused them before.
    #[test]
    fn spaces_before_an_extension_are_accepted() {
        let body = b"5 ;a=b\r\nhello\r\n6\t \t;x\r\n world\r\n0 ;last\r\n\r\nGET";
        assert_eq!(
            run(body),
            Ok(Step {
                used: body.len() - 3,
                done: true
            })
        );
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
            b"0\r\n\0\0\r\n\r\n",
            b"0\r\nno colon\r\n",
            b"0\r\n: no name\r\n",
            b"0\r\nx: a\x01b\r\n",
            b"5 \r\nhello\r\n",
            b"5 x;ext\r\nhello\r\n",
            b"1;a\x01\r\nx\r\n",
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
                    return Ok((used, true, c.data_bytes()));
                }
                assert_eq!(step.used, piece.len(), "a piece left unconsumed before the end");
            }
            Ok((used, false, c.data_bytes()))
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
