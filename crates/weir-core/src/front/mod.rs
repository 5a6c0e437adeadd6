//! The client-facing HTTP/1 front: strict head validation, body framing and connection timers,
//! all below hyper so that a refused request never reaches the proxy.

pub mod chunked;
pub mod guard;
pub mod head;

pub use guard::{ActivityToken, ConnActivity, GuardConfig, H1Guard};
pub use head::HeadLimits;
