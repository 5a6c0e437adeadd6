//! `fault-oom`: a test fixture whose `select` grows memory without bound. The host must stop
//! it at `plugins.memory_limit` and serve the request with the native balancer.

use weir_plugin_sdk::*;

struct FaultOom;

impl Plugin for FaultOom {
    const NAME: &'static str = "fault-oom";

    fn init(_config: &Config) -> Result<Self, String> {
        Ok(FaultOom)
    }

    fn select(&self, _pool: PoolView, key: SelectKey) -> SelectDecision {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            let mut block = vec![0u8; 1 << 20];
            block[0] = key.request_id as u8;
            hoard.push(std::hint::black_box(block));
            if hoard.len() == usize::MAX {
                return SelectDecision::HostDefault;
            }
        }
    }
}

plugin!(FaultOom);
