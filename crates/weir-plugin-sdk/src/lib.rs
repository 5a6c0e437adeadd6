//! The weir plugin SDK: what a plugin author depends on.
//!
//! A plugin is a type implementing [`Plugin`] (every hook has a default, so implement only the
//! ones you need) and one line, `weir_plugin_sdk::plugin!(MyType);`, that exports it as a
//! `weir:policy@0.1.0` component. Build with `cargo build --release --target wasm32-wasip2`.
//!
//! ```ignore
//! use weir_plugin_sdk::*;
//!
//! struct First;
//! impl Plugin for First {
//!     const NAME: &'static str = "first-healthy";
//!     fn init(_config: &Config) -> Result<Self, String> { Ok(First) }
//!     fn select(&self, pool: PoolView, key: SelectKey) -> SelectDecision {
//!         match (0..pool.health.len()).find(|&i| eligible(&pool, &key, i)) {
//!             Some(i) => SelectDecision::Endpoint(i as u32),
//!             None => SelectDecision::Unavailable,
//!         }
//!     }
//! }
//! plugin!(First);
//! ```

extern crate self as weir_plugin_sdk;

/// Generated bindings of `wit/policy.wit` (world `policy`).
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "policy",
        pub_export_macro: true,
        export_macro_name: "__export_policy",
        default_bindings_module: "weir_plugin_sdk::bindings",
        runtime_path: "weir_plugin_sdk::__rt",
    });
}

#[doc(hidden)]
pub use wit_bindgen::rt as __rt;

pub use bindings::exports::weir::policy::{balancer, failover, lifecycle, router};
pub use bindings::weir::policy::pools::{EndpointInfo, PoolStatic};
pub use bindings::weir::policy::types::*;
pub use bindings::weir::policy::{host, metrics, pools, shared};

mod config;
mod pool;

/// `AttemptInfo::endpoint_index` when the pool has no endpoint left to try: `on_failure` is
/// asked whether the request moves to another pool (only `Failover` is acted on).
pub const NO_ENDPOINT: u32 = u32::MAX;

pub use config::Config;
pub use pool::{PerPool, PoolCache, eligible, healthy, untried};

/// What a plugin declares about itself once, from `init` (see `plugin-info` in the WIT).
#[derive(Debug, Clone, Default)]
pub struct Manifest {
    /// "client-ip", "path", "header:NAME" or "cookie:NAME": the host hashes it into
    /// `affinity_hash` for every request.
    pub affinity_key: Option<String>,
    /// Request headers copied into `ReqInfo::headers` (lower-case names).
    pub want_headers: Vec<String>,
    /// A cookie the host sets when absent; its value becomes the affinity key.
    pub sticky_cookie: Option<String>,
    /// `select` reads `PoolView::in_flight` / `ewma_latency_us` (else they arrive empty).
    pub wants_load: bool,
}

/// A policy plugin. Implement the hooks for the roles it plays; the others keep their
/// defaults, which hand the decision back to the host.
pub trait Plugin: Sized + 'static {
    const NAME: &'static str;
    const VERSION: &'static str = "0.1.0";

    /// Called once per instance with the `config` table of the gateway config. An error rejects
    /// this plugin version (the running one stays).
    fn init(config: &Config) -> Result<Self, String>;

    fn manifest(&self) -> Manifest {
        Manifest::default()
    }

    /// Router: where a request goes.
    fn route(&self, _req: ReqInfo) -> RouteDecision {
        RouteDecision::DefaultRoute
    }

    /// Balancer: which endpoint of the pool.
    fn select(&self, _pool: PoolView, _key: SelectKey) -> SelectDecision {
        SelectDecision::HostDefault
    }

    /// Failover: what to do after a failed attempt.
    fn on_failure(&self, _attempt: AttemptInfo) -> FailureDecision {
        FailureDecision::Fail
    }
}

#[doc(hidden)]
pub mod __glue {
    use super::*;

    pub fn info<P: Plugin>(plugin: &P) -> PluginInfo {
        let m = plugin.manifest();
        PluginInfo {
            name: P::NAME.to_string(),
            version: P::VERSION.to_string(),
            affinity_key: m.affinity_key,
            want_headers: m.want_headers,
            sticky_cookie: m.sticky_cookie,
            wants_load: m.wants_load,
        }
    }

    pub fn parse_config(config: &str) -> Result<Config, String> {
        Config::parse(config)
    }
}

/// Exports a [`Plugin`] implementation as the plugin's component.
#[macro_export]
macro_rules! plugin {
    ($ty:ty) => {
        ::std::thread_local! {
            static __WEIR_PLUGIN: ::core::cell::RefCell<::core::option::Option<$ty>> =
                const { ::core::cell::RefCell::new(::core::option::Option::None) };
        }

        struct __WeirGlue;

        impl $crate::lifecycle::Guest for __WeirGlue {
            fn init(config: ::std::string::String) -> ::core::result::Result<$crate::PluginInfo, ::std::string::String> {
                let config = $crate::__glue::parse_config(&config)?;
                let plugin = <$ty as $crate::Plugin>::init(&config)?;
                let info = $crate::__glue::info(&plugin);
                __WEIR_PLUGIN.with(|cell| *cell.borrow_mut() = ::core::option::Option::Some(plugin));
                ::core::result::Result::Ok(info)
            }
        }

        impl $crate::router::Guest for __WeirGlue {
            fn route(req: $crate::ReqInfo) -> $crate::RouteDecision {
                __WEIR_PLUGIN.with(|cell| match &*cell.borrow() {
                    ::core::option::Option::Some(p) => $crate::Plugin::route(p, req),
                    ::core::option::Option::None => $crate::RouteDecision::DefaultRoute,
                })
            }
        }

        impl $crate::balancer::Guest for __WeirGlue {
            fn select(pool: $crate::PoolView, key: $crate::SelectKey) -> $crate::SelectDecision {
                __WEIR_PLUGIN.with(|cell| match &*cell.borrow() {
                    ::core::option::Option::Some(p) => $crate::Plugin::select(p, pool, key),
                    ::core::option::Option::None => $crate::SelectDecision::HostDefault,
                })
            }
        }

        impl $crate::failover::Guest for __WeirGlue {
            fn on_failure(attempt: $crate::AttemptInfo) -> $crate::FailureDecision {
                __WEIR_PLUGIN.with(|cell| match &*cell.borrow() {
                    ::core::option::Option::Some(p) => $crate::Plugin::on_failure(p, attempt),
                    ::core::option::Option::None => $crate::FailureDecision::Fail,
                })
            }
        }

        $crate::bindings::__export_policy!(__WeirGlue with_types_in $crate::bindings);
    };
}
