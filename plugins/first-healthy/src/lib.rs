//! `first-healthy`: every request goes to the first eligible endpoint in config order
//! (active/passive failover). The example of plugins/README.md.

use weir_plugin_sdk::*;

struct FirstHealthy;

impl Plugin for FirstHealthy {
    const NAME: &'static str = "first-healthy";

    fn init(config: &Config) -> Result<Self, String> {
        config.only(&[])?;
        Ok(FirstHealthy)
    }

    fn select(&self, pool: PoolView, key: SelectKey) -> SelectDecision {
        match (0..pool.health.len()).find(|&i| eligible(&pool, &key, i)) {
            Some(i) => SelectDecision::Endpoint(i as u32),
            None => SelectDecision::Unavailable,
        }
    }
}

plugin!(FirstHealthy);
