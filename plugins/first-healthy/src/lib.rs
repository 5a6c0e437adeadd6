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
            Some(i) => {
                // Past the first endpoint: a failover, counted in weir's /metrics as
                // weir_plugin_counter_total{plugin="first-healthy",name="failovers"}, and how
                // far down the list it went as weir_plugin_observations{...,name="skipped"}.
                if i > 0 {
                    metrics::counter_inc("failovers", 1);
                    metrics::histogram_record("skipped", i as f64);
                }
                SelectDecision::Endpoint(i as u32)
            }
            None => SelectDecision::Unavailable,
        }
    }
}

plugin!(FirstHealthy);
