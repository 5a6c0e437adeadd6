//! The body of a client's HTTP/1 request, read straight off the connection as the request path
//! takes it. The connection (socket and read buffer) moves into the body while the request is
//! handled and comes back through a oneshot when the body is dropped, so a request without a
//! body (nearly all of them) never shares its connection and pays for no channel or lock.

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::Frame;
use tokio::io::AsyncWrite;
use tokio::sync::oneshot;

use crate::bufpool::FRONT_READ;
use crate::client_body::{BodyTimer, ClientBodyError};
use crate::h1client::conn::{MAX_READ, make_room, take_fixed};
use crate::h1client::{ChunkedDecoder, Decoded};

use super::io::ConnIo;

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

#[derive(Debug)]
enum State {
    Fixed(u64),
    Chunked(ChunkedDecoder),
    Done,
    Failed,
}

#[derive(Debug)]
pub struct RequestBody {
    conn: Option<ConnIo>,
    state: State,
    /// 0 = unlimited (checked here for chunked bodies; the head check covers fixed ones).
    max_body: u64,
    timer: BodyTimer,
    /// Bytes of `100 Continue` still to write before the first read (`Expect: 100-continue`).
    continue_at: Option<usize>,
    back: Option<oneshot::Sender<ConnIo>>,
    /// Room asked for before a read: from [`FRONT_READ`], doubled each time a read fills it, up
    /// to [`MAX_READ`]. A large upload then moves in reads of up to 256 KiB instead of 4 KiB
    /// (60× fewer reads and chunks); a small body never takes more than the first size.
    read_size: usize,
}

/// How the body after a head is framed, for [`RequestBody::new`].
#[derive(Debug, Clone, Copy)]
pub enum Framing {
    Fixed(u64),
    Chunked,
}

impl RequestBody {
    /// Takes the connection for the body's lifetime; the receiver gets it back when the body
    /// has been read to its end or is dropped (with [`ConnIo::body_done`] telling which).
    pub fn new(
        conn: ConnIo,
        framing: Framing,
        expect_continue: bool,
        max_body: u64,
        body_timeout: Duration,
    ) -> (Self, oneshot::Receiver<ConnIo>) {
        let (tx, rx) = oneshot::channel();
        let state = match framing {
            Framing::Fixed(0) => State::Done,
            Framing::Fixed(n) => State::Fixed(n),
            Framing::Chunked => State::Chunked(ChunkedDecoder::default()),
        };
        // A client that already sent body bytes is not waiting for the 100.
        let continue_at = (expect_continue && conn.rbuf.is_empty()).then_some(0);
        let body = RequestBody {
            conn: Some(conn),
            state,
            max_body,
            timer: BodyTimer::new(body_timeout),
            continue_at,
            back: Some(tx),
            read_size: FRONT_READ,
        };
        (body, rx)
    }

    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done | State::Failed)
    }

    /// Exact bytes still to come, when the framing says.
    pub fn remaining(&self) -> Option<u64> {
        match self.state {
            State::Fixed(n) => Some(n),
            State::Done | State::Failed => Some(0),
            State::Chunked(_) => None,
        }
    }

    fn fail(
        &mut self,
        status: u16,
        why: impl Into<crate::body::BoxError>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        self.state = State::Failed;
        Poll::Ready(Some(Err(ClientBodyError::new(status, why))))
    }

    /// The next piece of the body, then a chunked body's trailer fields (less those
    /// [`crate::headers::allowed_in_trailers`] leaves out), `None` at its end.
    pub fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match &mut self.state {
                State::Done | State::Failed => return Poll::Ready(None),
                State::Fixed(n) => {
                    if !conn.rbuf.is_empty() {
                        let data = take_fixed(&mut conn.rbuf, n);
                        if *n == 0 {
                            self.state = State::Done;
                            conn.body_done = true;
                            self.hand_back();
                        }
                        self.timer.arrived();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                State::Chunked(decoder) => match decoder.decode(&mut conn.rbuf) {
                    // The chunk sizes announced so far: a chunk that would take the body past
                    // the limit is refused at its size line, before any of its data goes on.
                    _ if self.max_body > 0 && decoder.declared() > self.max_body => {
                        return self.fail(413, "request body too large");
                    }
                    Ok(Decoded::Data(data)) => {
                        self.timer.arrived();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    Ok(Decoded::Done) => {
                        conn.body_done = true;
                        let trailers = decoder.take_trailers();
                        self.state = State::Done;
                        self.hand_back();
                        return Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))));
                    }
                    Ok(Decoded::NeedMore) => {}
                    Err(e) => return self.fail(400, format!("malformed chunked body: {e}")),
                },
            }
            if let Some(at) = &mut self.continue_at {
                match ready!(write_continue(conn, cx, at)) {
                    Ok(()) => self.continue_at = None,
                    Err(e) => return self.fail(400, e),
                }
            }
            make_room(&mut conn.rbuf, self.read_size);
            let room = conn.rbuf.capacity() - conn.rbuf.len();
            match tokio_util::io::poll_read_buf(Pin::new(&mut conn.io), cx, &mut conn.rbuf) {
                Poll::Ready(Ok(0)) => return self.fail(400, "client closed the connection inside the body"),
                Poll::Ready(Ok(n)) => {
                    if n == room && self.read_size < MAX_READ {
                        self.read_size *= 2;
                    }
                }
                Poll::Ready(Err(e)) => return self.fail(400, e),
                Poll::Pending => {
                    if self.timer.expired(cx) {
                        self.state = State::Failed;
                        return Poll::Ready(Some(Err(BodyTimer::error())));
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

/// Writes what is left of `100 Continue` from `at`.
fn write_continue(conn: &mut ConnIo, cx: &mut Context<'_>, at: &mut usize) -> Poll<std::io::Result<()>> {
    while *at < CONTINUE.len() {
        match ready!(Pin::new(&mut conn.io).poll_write(cx, &CONTINUE[*at..])) {
            Ok(0) => return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
            Ok(n) => *at += n,
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
    Pin::new(&mut conn.io).poll_flush(cx)
}

impl RequestBody {
    /// Gives the connection back to its server, as soon as the body has been read to its end
    /// (the server can then write interim responses while the request is still being handled)
    /// or else when the body is dropped.
    fn hand_back(&mut self) {
        if let (Some(tx), Some(conn)) = (self.back.take(), self.conn.take()) {
            let _ = tx.send(conn);
        }
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        self.hand_back();
    }
}
