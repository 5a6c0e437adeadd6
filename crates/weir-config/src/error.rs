//! Config errors that a person can act on: each names the file, line, column, key and the fix.
//!
//! Validation works on key paths (`listener[1].bind`); this module finds the path in the original
//! text (toml_edit keeps spans) so that semantic errors are located as precisely as syntax errors.

use std::fmt;
use std::path::{Path, PathBuf};

/// One step of a key path: a table key or an index into an array of tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// A key path such as `pool[0].endpoint[2].address`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyPath(pub Vec<Seg>);

impl KeyPath {
    pub fn root() -> Self {
        KeyPath(Vec::new())
    }

    pub fn key(&self, key: &str) -> Self {
        let mut segs = self.0.clone();
        segs.push(Seg::Key(key.to_string()));
        KeyPath(segs)
    }

    pub fn index(&self, index: usize) -> Self {
        let mut segs = self.0.clone();
        segs.push(Seg::Index(index));
        KeyPath(segs)
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if i == 0 => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// One problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based; 0 when the problem has no place in the text (e.g. the file cannot be read).
    pub line: usize,
    pub column: usize,
    /// The offending key path (`listener[1].bind`), empty for whole-file problems.
    pub key: String,
    pub message: String,
    /// How to fix it.
    pub help: Option<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if !self.key.is_empty() {
            write!(f, ": key `{}`", self.key)?;
        }
        write!(f, ": {}", self.message)?;
        if let Some(help) = &self.help {
            write!(f, "\n  help: {help}")?;
        }
        Ok(())
    }
}

/// Every problem of one config file, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "error: {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// A validation problem before it is located in the text.
#[derive(Debug, Clone)]
pub struct Issue {
    pub path: KeyPath,
    pub message: String,
    pub help: Option<String>,
}

impl Issue {
    pub fn new(path: KeyPath, message: impl Into<String>) -> Self {
        Issue {
            path,
            message: message.into(),
            help: None,
        }
    }

    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

/// Turns a byte offset into a 1-based (line, column), counting columns in characters.
pub fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(src.len());
    let before = src.get(..offset).unwrap_or(src);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let column = before.get(line_start..).map(|s| s.chars().count()).unwrap_or(0) + 1;
    (line, column)
}

/// Finds where `path` is written in `src`: the value's span if the key exists, else the
/// deepest enclosing table that does.
pub fn locate(src: &str, path: &KeyPath) -> Option<usize> {
    let doc = toml_edit::Document::parse(src).ok()?;
    let mut item = doc.as_item();
    let mut best = None;
    for seg in &path.0 {
        let next = match seg {
            Seg::Key(k) => {
                if let Some(key_span) = item.as_table_like().and_then(|t| key_span(t, k)) {
                    best = Some(key_span);
                }
                item.get(k.as_str())
            }
            Seg::Index(n) => item.get(*n),
        };
        match next {
            Some(found) => {
                item = found;
                if let Some(span) = found.span() {
                    best = Some(span.start);
                }
            }
            None => break,
        }
    }
    best
}

fn key_span(table: &dyn toml_edit::TableLike, key: &str) -> Option<usize> {
    table.get_key_value(key).and_then(|(k, _)| k.span()).map(|s| s.start)
}

/// The key path written at byte `offset` of `src`: the deepest key whose name or value covers it,
/// or whose table header does (`[pool.passive]` for an error about the whole table). The TOML
/// parser's schema errors carry only a span; this names the key they are about.
pub fn key_at(src: &str, offset: usize) -> Option<KeyPath> {
    let doc = toml_edit::Document::parse(src).ok()?;
    key_in_table(doc.as_table(), &KeyPath::root(), offset)
}

fn covers(span: Option<std::ops::Range<usize>>, offset: usize) -> bool {
    span.is_some_and(|s| s.start <= offset && offset < s.end.max(s.start + 1))
}

fn key_in_table(table: &dyn toml_edit::TableLike, path: &KeyPath, offset: usize) -> Option<KeyPath> {
    for (name, item) in table.iter() {
        let here = path.key(name);
        let key_span = table.get_key_value(name).and_then(|(k, _)| k.span());
        match item {
            toml_edit::Item::Value(value) => {
                if covers(value.span(), offset) {
                    return Some(key_in_value(value, &here, offset).unwrap_or(here));
                }
                if covers(key_span, offset) {
                    return Some(here);
                }
            }
            toml_edit::Item::Table(t) => {
                if let Some(found) = key_in_table(t, &here, offset) {
                    return Some(found);
                }
                if covers(t.span(), offset) || covers(key_span, offset) {
                    return Some(here);
                }
            }
            toml_edit::Item::ArrayOfTables(tables) => {
                for (i, t) in tables.iter().enumerate() {
                    let nth = here.index(i);
                    if let Some(found) = key_in_table(t, &nth, offset) {
                        return Some(found);
                    }
                    if covers(t.span(), offset) {
                        return Some(nth);
                    }
                }
            }
            toml_edit::Item::None => {}
        }
    }
    None
}

/// Inside an inline table or array value: the deepest element covering `offset`.
fn key_in_value(value: &toml_edit::Value, path: &KeyPath, offset: usize) -> Option<KeyPath> {
    match value {
        toml_edit::Value::InlineTable(t) => key_in_table(t, path, offset),
        toml_edit::Value::Array(a) => a.iter().enumerate().find_map(|(i, v)| {
            covers(v.span(), offset).then(|| {
                let nth = path.index(i);
                key_in_value(v, &nth, offset).unwrap_or(nth)
            })
        }),
        _ => None,
    }
}

pub(crate) fn locate_issue(src: &str, file: &Path, issue: Issue) -> ConfigError {
    let (line, column) = locate(src, &issue.path)
        .map(|offset| line_col(src, offset))
        .unwrap_or((0, 0));
    ConfigError {
        file: file.to_path_buf(),
        line,
        column,
        key: issue.path.to_string(),
        message: issue.message,
        help: issue.help,
    }
}

/// Converts a TOML syntax or schema error (which carries its own span) into a located error.
pub(crate) fn from_toml(src: &str, file: &Path, err: &toml::de::Error) -> ConfigError {
    let (line, column) = err.span().map(|s| line_col(src, s.start)).unwrap_or((0, 0));
    let key = err
        .span()
        .and_then(|s| key_at(src, s.start))
        .map(|path| path.to_string())
        .unwrap_or_default();
    let message = err.message().trim().to_string();
    let help = if message.contains("unknown field") {
        Some("remove the key or fix its spelling; the accepted keys are listed above".to_string())
    } else if message.contains("missing field") {
        Some("add the key; it has no default".to_string())
    } else if message.starts_with("invalid type") {
        Some(type_help(&message).to_string())
    } else {
        None
    };
    ConfigError {
        file: file.to_path_buf(),
        line,
        column,
        key,
        message,
        help,
    }
}

/// What to write instead, for serde's "invalid type: ..., expected ..." (which names Rust types).
fn type_help(message: &str) -> &'static str {
    let expected = message.rsplit("expected ").next().unwrap_or("").trim();
    let integer = ["u8", "u16", "u32", "u64", "usize", "i8", "i16", "i32", "i64"];
    if integer.contains(&expected) {
        "write a whole number without quotes, e.g. `3`"
    } else if expected.contains("string") {
        "write the value in double quotes, e.g. `\"5s\"`"
    } else if expected.contains("bool") {
        "write `true` or `false` without quotes"
    } else if expected.contains("sequence") {
        "write a list in square brackets, e.g. `[\"a\", \"b\"]`"
    } else if expected.contains("map") {
        "write a table, e.g. `config = { key = \"value\" }`"
    } else {
        "check the key's type in the schema (DESIGN §3)"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_from_one() {
        let src = "a = 1\nbb = 2\n";
        assert_eq!(line_col(src, 0), (1, 1));
        assert_eq!(line_col(src, 6), (2, 1));
        assert_eq!(line_col(src, 9), (2, 4));
    }

    #[test]
    fn locate_finds_array_of_tables_keys() {
        let src = "[[listener]]\nname = \"a\"\n\n[[listener]]\nname = \"b\"\nbind = \"x\"\n";
        let path = KeyPath::root().key("listener").index(1).key("bind");
        let offset = locate(src, &path).unwrap_or(0);
        assert_eq!(line_col(src, offset).0, 6);
    }
}
