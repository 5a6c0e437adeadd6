//! `fault-trap`: a test fixture whose `select` traps. The host must contain it: discard the
//! instance, count the trap, and serve the request with the native balancer.

use weir_plugin_sdk::*;

struct FaultTrap;

impl Plugin for FaultTrap {
    const NAME: &'static str = "fault-trap";

    fn init(_config: &Config) -> Result<Self, String> {
        Ok(FaultTrap)
    }

    fn select(&self, _pool: PoolView, key: SelectKey) -> SelectDecision {
        if key.request_id != u64::MAX {
            panic!("fault-trap: trapping on purpose");
        }
        SelectDecision::HostDefault
    }
}

plugin!(FaultTrap);
