//! `fault-abi`: a test fixture built against `weir:policy@0.2.0` (its own copy of the WIT with
//! another version). weir speaks 0.1.0 and must refuse it at load with a clear error.

wit_bindgen::generate!({ path: "wit", world: "balancer-plugin" });

use exports::weir::policy::balancer::Guest as Balancer;
use exports::weir::policy::lifecycle::Guest as Lifecycle;
use weir::policy::types::{PluginInfo, PoolView, SelectDecision, SelectKey};

struct FaultAbi;

impl Lifecycle for FaultAbi {
    fn init(_config: String) -> Result<PluginInfo, String> {
        Ok(PluginInfo {
            name: "fault-abi".into(),
            version: "0.2.0".into(),
            affinity_key: None,
            want_headers: Vec::new(),
            sticky_cookie: None,
            wants_load: false,
        })
    }
}

impl Balancer for FaultAbi {
    fn select(_pool: PoolView, _key: SelectKey) -> SelectDecision {
        SelectDecision::HostDefault
    }
}

export!(FaultAbi);
