//! Host-side bindings of `wit/policy.wit`, generated from the same file the SDK uses.

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "policy",
});

pub use exports::weir::policy::{balancer, failover, lifecycle, router};
pub use weir::policy::types;
