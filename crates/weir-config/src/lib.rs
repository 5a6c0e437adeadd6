//! weir's configuration: the TOML contract of DESIGN §3.
//!
//! Two layers: [`raw`] mirrors the file with serde (`deny_unknown_fields`), [`validate`] applies
//! defaults, parses units and checks cross-key rules. Every error is located: file, line, column,
//! key and a hint ([`ConfigError`]). [`diff`] compares two validated configs for reloads.
//! No tokio, no wasmtime: this crate is cheap to depend on.

pub mod diff;
pub mod error;
pub mod model;
pub mod raw;
pub mod units;
pub mod validate;

use std::path::Path;

pub use diff::{ConfigDiff, ListenerChange, PoolChange, diff};
pub use error::{ConfigError, ConfigErrors, KeyPath};
pub use model::*;
pub use units::{format_duration, parse_duration, parse_size};

/// Reads, parses and validates the config file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let src = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.to_path_buf(),
            line: 0,
            column: 0,
            key: String::new(),
            message: format!("cannot read the config file: {e}"),
            help: Some("pass the path with --config".to_string()),
        }])
    })?;
    parse(&src, path)
}

/// Parses and validates `src` as if read from `file` (relative paths resolve against its folder).
pub fn parse(src: &str, file: &Path) -> Result<Config, ConfigErrors> {
    let raw: raw::RawConfig = toml::from_str(src).map_err(|e| ConfigErrors(vec![error::from_toml(src, file, &e)]))?;
    let base_dir = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let ctx = validate::Context { base_dir, file, src };
    match validate::validate(raw, &ctx) {
        Ok(mut config) => {
            config.source = Some(file.to_path_buf());
            Ok(config)
        }
        Err(issues) => {
            let mut errors: Vec<ConfigError> = issues.into_iter().map(|i| error::locate_issue(src, file, i)).collect();
            errors.sort_by_key(|e| (e.line, e.column));
            Err(ConfigErrors(errors))
        }
    }
}
