//! The client-facing HTTP/1 front: weir's own server ([`server`]) with strict head validation
//! ([`head`]), request bodies read off the connection ([`body`]) and response heads
//! ([`response`]); a refused request never reaches the proxy.

pub mod body;
pub mod chunked;
pub mod head;
pub mod io;
pub mod response;
pub mod server;

pub use body::RequestBody;
pub use head::HeadLimits;
pub use io::ClientIo;
pub use server::{Settings, Tunnel, TunnelSlot};
