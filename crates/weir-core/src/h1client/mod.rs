//! weir's own upstream HTTP/1.1 client: request heads written and response heads parsed by us,
//! on pooled connections (TCP, or TLS for `[pool.tls]` pools: [`UpStream`]) driven inline by
//! the request (DESIGN §10). hyper stays on the client
//! side of weir and for health checks; the upstream hot path has no connection task.
//!
//! What it enforces on responses: one framing per message (chunked wins over a length, and the
//! connection is then closed), equal repeated lengths only, chunked only as the final coding,
//! no `Transfer-Encoding` in HTTP/1.0, bounded heads (64 KiB, 128 fields), strict chunk framing
//! and bounded trailers (passed on to the client), no body for HEAD/1xx/204/304, interim 1xx offered to the client ([`crate::interim`]), and a
//! connection reused only after a complete body with nothing unread behind it.

pub mod chunked;
pub mod conn;
pub mod head;
pub mod stream;
pub mod timer;

pub use chunked::{ChunkedDecoder, Decoded};
pub use conn::{BodyError, ExchangeError, ResponseBody, UpBody, UpConn};
pub use head::{Framing, HeadError, RequestHead, RequestTrailers, ResponseHead};
pub use stream::UpStream;
pub use timer::{Deadline, Due, ReusedTimer, TimedOut};
