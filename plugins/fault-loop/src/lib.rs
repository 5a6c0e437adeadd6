//! `fault-loop`: a test fixture whose `select` never returns. The host must interrupt it at
//! `plugins.call_timeout` (epoch deadline) and serve the request with the native balancer.

use weir_plugin_sdk::*;

struct FaultLoop;

impl Plugin for FaultLoop {
    const NAME: &'static str = "fault-loop";

    fn init(_config: &Config) -> Result<Self, String> {
        Ok(FaultLoop)
    }

    fn select(&self, _pool: PoolView, key: SelectKey) -> SelectDecision {
        let mut x = key.request_id;
        while x != u64::MAX {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1)) | 1;
        }
        SelectDecision::HostDefault
    }
}

plugin!(FaultLoop);
