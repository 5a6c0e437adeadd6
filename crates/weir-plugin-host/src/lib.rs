//! weir's plugin host: the only crate that touches wasmtime. It loads policy plugins
//! (`weir:policy@0.1.0` components), keeps long-lived instances of them, contains their failures,
//! and implements weir-core's policy traits with them ([`WasmPolicies`]).

pub mod bindings;
pub mod engine;
pub mod host_state;
pub mod loader;
pub mod log_budget;
pub mod policies;
pub mod quiet_io;
pub mod shared_state;
pub mod ticker;
pub mod version;

pub use policies::WasmPolicies;

#[cfg(test)]
mod vendored_wasmtime_tests;
