//! The plugin's `config` table (JSON text from the host) with typed, erroring getters, so that
//! `init` can reject a bad config with a message the operator sees in `weir check`.

use serde_json::Value;

#[derive(Debug, Clone, Default)]
pub struct Config(Value);

impl Config {
    pub fn parse(text: &str) -> Result<Config, String> {
        let value: Value = if text.trim().is_empty() {
            Value::Object(Default::default())
        } else {
            serde_json::from_str(text).map_err(|e| format!("config is not valid JSON: {e}"))?
        };
        if !value.is_object() {
            return Err("config must be a table".to_string());
        }
        Ok(Config(value))
    }

    pub fn value(&self) -> &Value {
        &self.0
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key)
    }

    /// Fails on keys not in `known`: a typo must not silently fall back to a default.
    pub fn only(&self, known: &[&str]) -> Result<(), String> {
        if let Some(map) = self.0.as_object() {
            for key in map.keys() {
                if !known.contains(&key.as_str()) {
                    return Err(format!("unknown config key `{key}` (known: {})", known.join(", ")));
                }
            }
        }
        Ok(())
    }

    pub fn str_or(&self, key: &str, default: &str) -> Result<String, String> {
        match self.0.get(key) {
            None => Ok(default.to_string()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(format!("`{key}` must be a string, got {other}")),
        }
    }

    pub fn opt_str(&self, key: &str) -> Result<Option<String>, String> {
        match self.0.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(format!("`{key}` must be a string, got {other}")),
        }
    }

    pub fn u64_or(&self, key: &str, default: u64) -> Result<u64, String> {
        match self.0.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_u64()
                .ok_or_else(|| format!("`{key}` must be a non-negative integer, got {v}")),
        }
    }

    pub fn f64_or(&self, key: &str, default: f64) -> Result<f64, String> {
        match self.0.get(key) {
            None => Ok(default),
            Some(v) => v.as_f64().ok_or_else(|| format!("`{key}` must be a number, got {v}")),
        }
    }

    pub fn u64_list_or(&self, key: &str, default: &[u64]) -> Result<Vec<u64>, String> {
        match self.0.get(key) {
            None => Ok(default.to_vec()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_u64()
                        .ok_or_else(|| format!("`{key}` must be a list of integers, got {v}"))
                })
                .collect(),
            Some(other) => Err(format!("`{key}` must be a list, got {other}")),
        }
    }

    /// A duration written like the gateway's own (`"250ms"`, `"1h"`), in milliseconds.
    pub fn duration_ms_or(&self, key: &str, default_ms: u64) -> Result<u64, String> {
        let Some(text) = self.opt_str(key)? else {
            return Ok(default_ms);
        };
        let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
        let n: u64 = text[..split]
            .parse()
            .map_err(|_| format!("`{key}`: `{text}` is not a duration"))?;
        let factor = match &text[split..] {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(format!("`{key}`: `{text}` is not a duration (use ms, s, m, h, d)")),
        };
        Ok(n.saturating_mul(factor))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn getters() {
        let c = Config::parse(r#"{"a": "x", "n": 3, "f": 0.5, "l": [1, 2], "d": "2s"}"#).unwrap_or_default();
        assert_eq!(c.str_or("a", "y"), Ok("x".into()));
        assert_eq!(c.u64_or("n", 0), Ok(3));
        assert_eq!(c.f64_or("f", 0.0), Ok(0.5));
        assert_eq!(c.u64_list_or("l", &[]), Ok(vec![1, 2]));
        assert_eq!(c.duration_ms_or("d", 0), Ok(2000));
        assert!(c.u64_or("a", 0).is_err());
        assert!(c.only(&["a"]).is_err());
        assert!(Config::parse("[1]").is_err());
        assert!(Config::parse("").is_ok());
    }
}
