//! `fault-chatty`: a test fixture whose `select` logs a warning on every call, with a long
//! message, and leaves the choice to weir. The host must keep such a plugin from flooding its
//! log (and blocking its workers on stderr): a few lines a second per plugin, cut to a bounded
//! length, and a count of the rest.

use weir_plugin_sdk::*;

struct FaultChatty;

impl Plugin for FaultChatty {
    const NAME: &'static str = "fault-chatty";

    fn init(_config: &Config) -> Result<Self, String> {
        Ok(FaultChatty)
    }

    fn select(&self, _pool: PoolView, key: SelectKey) -> SelectDecision {
        let filler = "x".repeat(10_000);
        host::log(host::Level::Warn, &format!("chatty select {} {filler}", key.request_id));
        SelectDecision::HostDefault
    }
}

plugin!(FaultChatty);
