//! The shipped configs with lines deleted, doubled or given odd values, and bytes broken:
//! whatever the text, `parse` answers without panicking, and every error it gives names the
//! file and a line of it, and says what is wrong. A config that still parses diffs cleanly
//! against the original (what a reload computes).

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use weir_config::{diff, parse};

/// Values that have broken parsers: out of range, wrong type, overflowing, empty, odd units.
const ODD_VALUES: &[&str] = &[
    "\"\"",
    "0",
    "-1",
    "1e400",
    "18446744073709551616",
    "9223372036854775807",
    "\"18446744073709551615s\"",
    "\"99999999999d\"",
    "\"366d\"",
    "\"0s\"",
    "\"5 s\"",
    "\"1µs\"",
    "\"99999999999999999999GiB\"",
    "\"16EiB\"",
    "true",
    "[]",
    "{}",
    "[[1]]",
    "\"0.0.0.0:99999\"",
    "\"256.0.0.1:80\"",
    "\"[::1]:0\"",
    "\"host:\"",
    "\":80\"",
    "\"\\u0000\"",
    "\"é\"",
    "0.5",
    "-0.0",
    "nan",
    "inf",
];

const SPECIAL: &[u8] = b"[]{}\"'=#,.\n \t\\0";

#[derive(Debug, Clone)]
enum Edit {
    Value(usize, usize),
    DeleteLine(usize),
    DoubleLine(usize),
    Byte(usize, u8),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        3 => (any::<usize>(), 0..ODD_VALUES.len()).prop_map(|(l, v)| Edit::Value(l, v)),
        1 => any::<usize>().prop_map(Edit::DeleteLine),
        1 => any::<usize>().prop_map(Edit::DoubleLine),
        1 => (any::<usize>(), prop::sample::select(SPECIAL)).prop_map(|(at, b)| Edit::Byte(at, b)),
    ]
}

fn apply(src: &str, edits: &[Edit]) -> String {
    let mut lines: Vec<String> = src.lines().map(String::from).collect();
    for e in edits {
        let n = lines.len().max(1);
        match e {
            Edit::Value(l, v) => {
                // The value of the `l`-th assignment, counting from line `l`.
                let at = (0..lines.len())
                    .map(|i| (l + i) % n)
                    .find(|&i| lines[i].contains(" = "));
                if let Some(i) = at
                    && let Some((key, _)) = lines[i].split_once(" = ")
                {
                    lines[i] = format!("{key} = {}", ODD_VALUES[*v]);
                }
            }
            Edit::DeleteLine(l) if !lines.is_empty() => {
                lines.remove(l % n);
            }
            Edit::DoubleLine(l) if !lines.is_empty() => {
                let line = lines[l % n].clone();
                lines.insert(l % n, line);
            }
            Edit::Byte(at, b) => {
                let mut bytes = lines.join("\n").into_bytes();
                let at = at % (bytes.len() + 1);
                bytes.insert(at, *b);
                lines = String::from_utf8_lossy(&bytes).lines().map(String::from).collect();
            }
            Edit::DeleteLine(_) | Edit::DoubleLine(_) => {}
        }
    }
    lines.join("\n") + "\n"
}

fn shipped_configs() -> Vec<(PathBuf, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config");
    let mut files = vec![root.join("weir.toml")];
    let mut examples: Vec<PathBuf> = std::fs::read_dir(root.join("examples"))
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    examples.sort();
    files.extend(
        examples
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "toml")),
    );
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, text)
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn broken_configs_get_located_errors_never_a_panic(which in any::<usize>(), edits in prop::collection::vec(edit(), 1..5)) {
        let configs = shipped_configs();
        prop_assert!(configs.len() >= 2, "the shipped configs were not found");
        let (path, original) = &configs[which % configs.len()];
        let src = apply(original, &edits);
        let lines = src.lines().count();
        let valid_toml = src.parse::<toml::Table>().is_ok();
        match parse(&src, path) {
            Ok(config) => {
                if let Ok(before) = parse(original, path) {
                    let _ = diff(&before, &config);
                }
            }
            Err(errors) => {
                prop_assert!(!errors.0.is_empty());
                for e in &errors.0 {
                    prop_assert_eq!(&e.file, path);
                    prop_assert!(e.line >= 1 && e.line <= lines + 1, "{} (of {} lines)\n{}", e, lines, src);
                    prop_assert!(e.column >= 1, "{}", e);
                    prop_assert!(!e.message.is_empty(), "{}", e);
                    // Past the syntax, every error is about a key, and names it.
                    prop_assert!(!valid_toml || !e.key.is_empty(), "{}\n{}", e, src);
                }
            }
        }
    }
}
