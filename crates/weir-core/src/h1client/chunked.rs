//! Decodes a chunked response body (RFC 9112 §7.1) straight out of the connection's read buffer:
//! data comes out as slices of that buffer, framing bytes are skipped. Strict: CRLF line ends,
//! hex sizes without signs, spaces only before an extension's `;` (the grammar's BWS, which a
//! recipient must accept), bounded extensions and trailers (kept by
//! [`ChunkedDecoder::decode`] for the client, as field lines).

use bytes::{Buf, Bytes, BytesMut};

/// Longest chunk-size line extension or trailer line accepted.
const MAX_LINE: usize = 4096;
/// Most trailer bytes accepted in all.
const MAX_TRAILERS: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    Size {
        digits: u8,
        value: u64,
    },
    Ext {
        value: u64,
        len: usize,
    },
    /// Spaces or tabs after the size: RFC 9112's BWS, allowed only before an extension's `;`.
    SizeBws {
        value: u64,
        len: usize,
    },
    SizeLf {
        value: u64,
    },
    Data(u64),
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    /// In a trailer field's name, then its value; both with the line's length so far.
    TrailerName(usize),
    TrailerValue(usize),
    TrailerLf,
    EndLf,
    Done,
}

/// What one decoding step produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    Data(Bytes),
    /// The last chunk and the trailers have been read.
    Done,
    /// The buffer holds no complete step: read more.
    NeedMore,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkedDecoder {
    st: St,
    /// The trailer lines read so far (`name: value\r\n` each), for
    /// [`ChunkedDecoder::take_trailers`] and the size bound; `None` (no allocation, and 8
    /// bytes in every response body) for a body without trailers.
    trailers: Option<Box<TrailerLines>>,
    /// Data bytes the chunk-size lines read so far announced (some may not have arrived).
    declared: u64,
}

/// The raw trailer lines of a chunked body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct TrailerLines(Vec<u8>);

/// What [`ChunkedDecoder::scan`] found in a slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scanned {
    /// Bytes of the slice that belong to the body (all of it unless the body ended).
    pub used: usize,
    /// Whether the body ended within them.
    pub done: bool,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder {
            st: St::Size { digits: 0, value: 0 },
            trailers: None,
            declared: 0,
        }
    }
}

impl ChunkedDecoder {
    pub fn is_done(&self) -> bool {
        self.st == St::Done
    }

    /// The data bytes announced by the chunk sizes read so far, including a chunk whose data
    /// is still to come: a body limit can refuse it before its data is read.
    pub fn declared(&self) -> u64 {
        self.declared
    }

    /// Consumes framing from the front of `buf` and returns the next data slice, the end, or
    /// a request for more bytes. Data is split off `buf` without copying.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, &'static str> {
        let mut used = 0;
        let result = loop {
            if let St::Data(n) = self.st {
                if used > 0 {
                    buf.advance(used);
                    used = 0;
                }
                if buf.is_empty() {
                    break Decoded::NeedMore;
                }
                let take = n.min(buf.len() as u64) as usize;
                self.st = if take as u64 == n {
                    St::DataCr
                } else {
                    St::Data(n - take as u64)
                };
                return Ok(Decoded::Data(buf.split_to(take).freeze()));
            }
            if self.st == St::Done {
                break Decoded::Done;
            }
            let Some(&b) = buf.get(used) else {
                break Decoded::NeedMore;
            };
            used += 1;
            self.step(b)?;
        };
        buf.advance(used);
        Ok(result)
    }

    /// The trailer fields read, once the body has ended (`None` when it had none), less those
    /// [`crate::headers::allowed_in_trailers`] leaves out. Their lines passed
    /// [`ChunkedDecoder::decode`]'s checks (a token, a colon, a valid value).
    pub fn take_trailers(&mut self) -> Option<http::HeaderMap> {
        if self.st != St::Done {
            return None;
        }
        let lines = self.trailers.take()?;
        let mut map = http::HeaderMap::new();
        for line in lines.0.split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                continue;
            };
            let value = line[colon + 1..].trim_ascii();
            if let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(&line[..colon]),
                http::HeaderValue::from_bytes(value),
            ) && crate::headers::allowed_in_trailers(&name)
            {
                map.append(name, value);
            }
        }
        (!map.is_empty()).then_some(map)
    }

    /// Follows the framing through `buf` without taking anything from it: the same rules as
    /// [`ChunkedDecoder::decode`], data skipped by its length. The client side checks what
    /// it has buffered of a request body with it before any of the request leaves weir.
    pub fn scan(&mut self, buf: &[u8]) -> Result<Scanned, &'static str> {
        let mut i = 0;
        while i < buf.len() {
            match self.st {
                St::Data(n) => {
                    let take = n.min((buf.len() - i) as u64);
                    i += take as usize;
                    self.st = if take == n { St::DataCr } else { St::Data(n - take) };
                }
                St::Done => break,
                _ => {
                    self.step(buf[i])?;
                    i += 1;
                }
            }
        }
        Ok(Scanned {
            used: i,
            done: self.st == St::Done,
        })
    }

    /// Moves past one framing byte (never called in `Data` or `Done`).
    fn step(&mut self, b: u8) -> Result<(), &'static str> {
        let before = self.st;
        self.st = match self.st {
            St::Size { digits, value } => match hex(b) {
                Some(d) => {
                    // 16 hex digits would overflow; no chunk is near 2^60 bytes anyway.
                    if digits >= 15 {
                        return Err(SIZE_TOO_LARGE);
                    }
                    St::Size {
                        digits: digits + 1,
                        value: value * 16 + d,
                    }
                }
                None if digits == 0 => return Err("invalid chunk size"),
                None => match b {
                    b';' => St::Ext { value, len: 0 },
                    b'\r' => St::SizeLf { value },
                    b' ' | b'\t' => St::SizeBws { value, len: 1 },
                    _ => return Err("invalid chunk size"),
                },
            },
            St::SizeBws { value, len } => match b {
                b';' => St::Ext { value, len },
                _ if len >= MAX_LINE => return Err("chunk extension too long"),
                b' ' | b'\t' => St::SizeBws { value, len: len + 1 },
                _ => return Err("whitespace after a chunk size not followed by an extension"),
            },
            St::Ext { value, len } => match b {
                b'\r' => St::SizeLf { value },
                _ if len >= MAX_LINE => return Err("chunk extension too long"),
                _ if field_value_byte(b) => St::Ext { value, len: len + 1 },
                _ => return Err("invalid byte in a chunk extension"),
            },
            St::SizeLf { value } => match b {
                b'\n' if value == 0 => St::TrailerStart,
                b'\n' => {
                    self.declared = self.declared.saturating_add(value);
                    St::Data(value)
                }
                _ => return Err("chunk size line not ended by CRLF"),
            },
            St::Data(_) | St::Done => unreachable_state()?,
            St::DataCr => match b {
                b'\r' => St::DataLf,
                _ => return Err("chunk data not followed by CRLF"),
            },
            St::DataLf => match b {
                b'\n' => St::Size { digits: 0, value: 0 },
                _ => return Err("chunk data not followed by CRLF"),
            },
            St::TrailerStart => match b {
                b'\r' => St::EndLf,
                _ => trailer_name(0, b)?,
            },
            St::TrailerName(len) | St::TrailerValue(len) if len >= MAX_LINE => {
                return Err("trailer line too long");
            }
            St::TrailerName(len) => trailer_name(len, b)?,
            St::TrailerValue(len) => match b {
                b'\r' => St::TrailerLf,
                _ if field_value_byte(b) => St::TrailerValue(len + 1),
                _ => return Err("invalid trailer field value"),
            },
            St::TrailerLf => match b {
                b'\n' => St::TrailerStart,
                _ => return Err("trailer line not ended by CRLF"),
            },
            St::EndLf => match b {
                b'\n' => St::Done,
                _ => return Err("chunked body not ended by CRLF"),
            },
        };
        // A trailer line's bytes, its CRLF included, are kept; the CR of the empty line that
        // ends them is not. The bound counts as it always has: the LF ending the last-chunk
        // line, every line byte, and that final CR.
        let line_byte = matches!(before, St::TrailerName(_) | St::TrailerValue(_) | St::TrailerLf)
            || (before == St::TrailerStart && self.st != St::EndLf);
        if line_byte || self.st == St::EndLf {
            let held = self.trailers.as_ref().map_or(0, |t| t.0.len());
            if held + 2 > MAX_TRAILERS {
                return Err("trailers too large");
            }
            if line_byte {
                self.trailers.get_or_insert_with(Box::default).0.push(b);
            }
        }
        Ok(())
    }
}

/// RFC 9110 §5.6.2's `tchar`: what a field name (and a method) is made of.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A byte a field value may hold: visible, space, tab or obs-text; no other control.
fn field_value_byte(b: u8) -> bool {
    b == b'\t' || (b >= 0x20 && b != 0x7f)
}

/// The value of one hex digit of a chunk size.
fn hex(b: u8) -> Option<u64> {
    match b {
        b'0'..=b'9' => Some(u64::from(b - b'0')),
        b'a'..=b'f' => Some(u64::from(b - b'a' + 10)),
        b'A'..=b'F' => Some(u64::from(b - b'A' + 10)),
        _ => None,
    }
}

/// The error of a chunk size of 16 hex digits or more.
pub const SIZE_TOO_LARGE: &str = "chunk size too large";

/// The next state after byte `b` of a trailer field's name, `len` bytes into its line: trailers
/// are read as field lines (`token ":" value`), as hyper's client reads them; a line that is
/// not one makes the body malformed.
fn trailer_name(len: usize, b: u8) -> Result<St, &'static str> {
    match b {
        b':' if len > 0 => Ok(St::TrailerValue(len + 1)),
        _ if is_tchar(b) => Ok(St::TrailerName(len + 1)),
        _ => Err("invalid trailer field name"),
    }
}

/// Data and Done are handled before the byte loop; reaching them there is a bug, reported as
/// malformed input rather than a panic.
fn unreachable_state() -> Result<St, &'static str> {
    Err("chunked decoder state error")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` fed in pieces of `step` bytes; returns the data or the error.
    fn decode_in_steps(input: &[u8], step: usize) -> Result<(Vec<u8>, usize), &'static str> {
        let mut dec = ChunkedDecoder::default();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for piece in input.chunks(step.max(1)) {
            buf.extend_from_slice(piece);
            loop {
                match dec.decode(&mut buf)? {
                    Decoded::Data(d) => out.extend_from_slice(&d),
                    Decoded::Done => return Ok((out, buf.len())),
                    Decoded::NeedMore => break,
                }
            }
        }
        Err("incomplete")
    }

    /// Trailer fields come out whole wherever the reads split them, values trimmed, framing
    /// and connection fields left out; a body without trailers has none.
    #[test]
    fn trailers_are_kept_at_every_split_point() {
        let input = b"3\r\nabc\r\n0\r\nx-sum: 1 2 \r\ngrpc-status:0\r\ncontent-length: 9\r\nConnection: close\r\nx-sum: 3\r\n\r\n";
        for step in 1..input.len() {
            let mut dec = ChunkedDecoder::default();
            let mut buf = BytesMut::new();
            let mut done = false;
            for piece in input.chunks(step) {
                buf.extend_from_slice(piece);
                while let Ok(d) = dec.decode(&mut buf) {
                    match d {
                        Decoded::Done => done = true,
                        Decoded::Data(_) => continue,
                        Decoded::NeedMore => {}
                    }
                    break;
                }
            }
            assert!(done, "step {step}");
            let t = dec.take_trailers().unwrap_or_default();
            let sums: Vec<_> = t.get_all("x-sum").iter().collect();
            assert_eq!(sums, ["1 2", "3"], "step {step}");
            assert_eq!(
                t.get("grpc-status").map(|v| v.as_bytes()),
                Some(&b"0"[..]),
                "step {step}"
            );
            assert_eq!(t.len(), 3, "step {step}: {t:?}");
        }
        let mut dec = ChunkedDecoder::default();
        let mut buf = BytesMut::from(&b"3\r\nabc\r\n0\r\n\r\n"[..]);
        while !matches!(dec.decode(&mut buf), Ok(Decoded::Done) | Err(_)) {}
        assert!(dec.is_done());
        assert_eq!(dec.take_trailers(), None);
    }

    /// The trailer bound counts what it always counted: the last-chunk line's LF, the trailer
    /// lines and the final CR, at most `MAX_TRAILERS` bytes.
    #[test]
    fn the_trailer_bound_is_exact() {
        let body_with_lines_of = |n: usize| {
            let mut body = b"0\r\n".to_vec();
            let mut left = n;
            while left > 0 {
                let len = left.clamp(6, 100);
                let len = if left - len > 0 && left - len < 6 { len - 6 } else { len };
                body.extend_from_slice(b"x: ");
                body.extend(std::iter::repeat_n(b'a', len - 5));
                body.extend_from_slice(b"\r\n");
                left -= len;
            }
            body.extend_from_slice(b"\r\n");
            body
        };
        assert!(decode_in_steps(&body_with_lines_of(MAX_TRAILERS - 2), 4096).is_ok());
        assert_eq!(
            decode_in_steps(&body_with_lines_of(MAX_TRAILERS - 1), 4096),
            Err("trailers too large")
        );
    }

    #[test]
    fn decodes_at_every_split_point() {
        let input = b"5\r\nhello\r\n1;ext=1\r\n \r\nA\r\n0123456789\r\n0\r\nx-trailer: 1\r\n\r\nNEXT";
        for step in 1..input.len() {
            let (data, rest) = decode_in_steps(input, step).unwrap_or_else(|e| panic!("step {step}: {e}"));
            assert_eq!(data, b"hello 0123456789", "step {step}");
            // Bytes after the body are left for whoever reads next (and make the connection unusable).
            assert!(rest <= 4);
        }
    }

    #[test]
    fn trailers_are_field_lines_and_dropped() {
        let input = b"1\r\na\r\n0\r\nx-sum: abc\r\nX-Empty:\r\nx-t:\tv w \xff\r\n\r\n";
        assert_eq!(decode_in_steps(input, 3), Ok((b"a".to_vec(), 0)));
    }

    #[test]
    fn empty_body() {
        assert_eq!(decode_in_steps(b"0\r\n\r\n", 64), Ok((Vec::new(), 0)));
    }

    #[test]
    fn refuses_malformed_framing() {
        for bad in [
            &b"x\r\n"[..],
            b"-1\r\n",
            b" 5\r\nhello\r\n0\r\n\r\n",
            b"5 \r\nhello\r\n0\r\n\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloX\r\n0\r\n\r\n",
            b"5\r\nhello\n0\r\n\r\n",
            b"0\r\n\n",
            b"0\r\nx: 1\n\r\n",
            b"10000000000000000\r\n",
            b"0\r\n\r\r",
            b"5;a\nhello\r\n",
            // Trailer lines that are not field lines.
            b"0\r\n\0\0\r\n\r\n",
            b"0\r\nno colon\r\n\r\n",
            b"0\r\n: no name\r\n\r\n",
            b"0\r\nx: a\x01b\r\n\r\n",
            b"0\r\nd\r\n\r\n",
        ] {
            assert!(
                decode_in_steps(bad, 64).is_err_and(|e| e != "incomplete"),
                "accepted {:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn bounded_extensions_and_trailers() {
        let long_ext = format!("1;{}\r\na\r\n0\r\n\r\n", "e".repeat(MAX_LINE + 1));
        assert!(decode_in_steps(long_ext.as_bytes(), 1024).is_err());
        let many_trailers: String = (0..2000).map(|i| format!("x-t{i}: {}\r\n", "v".repeat(30))).collect();
        let body = format!("0\r\n{many_trailers}\r\n");
        assert_eq!(decode_in_steps(body.as_bytes(), 4096), Err("trailers too large"));
    }

    #[test]
    fn large_chunk_streams_without_waiting_for_all_of_it() {
        let mut dec = ChunkedDecoder::default();
        let mut buf = BytesMut::from(&b"100000\r\nabc"[..]);
        assert_eq!(dec.decode(&mut buf), Ok(Decoded::Data(Bytes::from_static(b"abc"))));
        assert_eq!(dec.decode(&mut buf), Ok(Decoded::NeedMore));
        assert!(!dec.is_done());
    }

    mod properties {
        use super::*;
        use crate::http1_gen::{broken, chunked_body, cuts, pieces};
        use proptest::prelude::*;

        /// Decodes `pieces` arriving in turn: the data and the bytes left after the end, the
        /// data so far if the input ran out first, or the error.
        fn decode_pieces(pieces: &[&[u8]]) -> Result<(Vec<u8>, Option<Vec<u8>>), &'static str> {
            let mut dec = ChunkedDecoder::default();
            let mut buf = BytesMut::new();
            let mut out = Vec::new();
            for (i, piece) in pieces.iter().enumerate() {
                buf.extend_from_slice(piece);
                loop {
                    match dec.decode(&mut buf)? {
                        Decoded::Data(d) => {
                            assert!(!d.is_empty(), "an empty data slice");
                            out.extend_from_slice(&d);
                        }
                        Decoded::Done => {
                            assert!(dec.is_done());
                            // Every later piece stays unread too.
                            let mut left = buf.to_vec();
                            pieces[i + 1..].iter().for_each(|p| left.extend_from_slice(p));
                            return Ok((out, Some(left)));
                        }
                        Decoded::NeedMore => break,
                    }
                }
            }
            Ok((out, None))
        }

        proptest! {
            /// A well-formed body gives back exactly its data however it is cut, and leaves
            /// the bytes after it unread.
            #[test]
            fn well_formed_body_decodes_to_its_data((body, data) in chunked_body(), next in prop::collection::vec(any::<u8>(), 0..20), cuts in cuts()) {
                let mut input = body.clone();
                input.extend_from_slice(&next);
                prop_assert_eq!(decode_pieces(&pieces(&input, &cuts)), Ok((data, Some(next))));
            }

            /// On any input, broken or not, the decoder gives the same data and the same
            /// verdict whether the bytes come at once or in pieces.
            #[test]
            fn verdict_does_not_depend_on_how_bytes_arrive(input in broken(chunked_body().prop_map(|(b, _)| b)), cuts in cuts()) {
                prop_assert_eq!(decode_pieces(&[&input]), decode_pieces(&pieces(&input, &cuts)));
            }
        }
    }
}
