//! weir's data plane: listeners and the strict HTTP front, the proxy path, upstream pools,
//! generations and the admin API. Knows nothing of wasmtime: policies come in through the
//! traits of [`policy`].

pub mod access_log;
pub mod admin;
pub mod body;
pub mod budget;
pub mod bufpool;
pub mod cert_expiry;
pub mod client_body;
pub mod dns;
pub mod error;
pub mod freed;
pub mod front;
pub mod gateway;
pub mod generation;
pub mod grpc_health;
pub mod h1client;
pub mod h2_send;
mod h2_server;
pub mod h2client;
pub mod hash;
pub mod headers;
pub mod health;
#[cfg(test)]
mod http1_gen;
pub mod idle_closes;
pub mod interim;
pub mod listener;
pub mod location;
pub mod metrics;
pub mod parking;
pub mod pin_box;
pub mod policy;
pub mod proxy;
pub mod proxy_protocol;
pub mod reload;
#[cfg(target_os = "linux")]
pub mod send_batch;
#[cfg(not(target_os = "linux"))]
/// io_uring is Linux's: elsewhere every send goes directly.
pub mod send_batch {
    pub fn enable() -> bool {
        false
    }
    pub async fn send(_fd: i32, _data: &[u8]) -> Option<std::io::Result<usize>> {
        None
    }
    pub static BATCHES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    pub static SENDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
}
pub mod slots;
pub mod state;
pub mod tls;
pub mod tunnel;
pub mod upgrade;
pub mod upstream;
pub mod upstream_tls;
pub mod watch;

pub use gateway::{Gateway, StartError};
pub use generation::{NativePolicies, PolicyFactory, PoolCtx};
