//! Strict parsers for the textual units of the config: durations (`"250ms"`, `"1m30s"`) and byte
//! sizes (`"16MiB"`). No whitespace, no signs, no fractions: a value that could be misread is an error.

use std::time::Duration;

/// Parses `"<int><unit>"` segments, units `ns us ms s m h d`, e.g. `"5s"`, `"250ms"`, `"1h30m"`.
/// `"0"` alone means zero.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    if text.is_empty() {
        return Err("empty duration".into());
    }
    let bytes = text.as_bytes();
    let mut total = Duration::ZERO;
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if start == i {
            return Err(format!(
                "`{text}` is not a duration: expected a number at position {}",
                start + 1
            ));
        }
        let number: u64 = text[start..i]
            .parse()
            .map_err(|_| format!("`{text}`: number too large"))?;
        let unit_start = i;
        // Letters, and whole non-ASCII characters (`µs`): the slice ends on a char boundary.
        while i < bytes.len() && (bytes[i].is_ascii_alphabetic() || !bytes[i].is_ascii()) {
            i += 1;
        }
        let unit = &text[unit_start..i];
        let piece = match unit {
            "ns" => Duration::from_nanos(number),
            "us" | "µs" => Duration::from_micros(number),
            "ms" => Duration::from_millis(number),
            "s" => Duration::from_secs(number),
            "m" => Duration::from_secs(number.saturating_mul(60)),
            "h" => Duration::from_secs(number.saturating_mul(3600)),
            "d" => Duration::from_secs(number.saturating_mul(86400)),
            "" => {
                return Err(format!(
                    "`{text}` has no unit after {number}{}",
                    if i < bytes.len() { " (no spaces allowed)" } else { "" }
                ));
            }
            other => return Err(format!("`{text}`: unknown unit `{other}`")),
        };
        total = total
            .checked_add(piece)
            .ok_or_else(|| format!("`{text}` is too long a duration"))?;
    }
    Ok(total)
}

/// Parses a byte size: a bare integer or `<int><unit>` with `B KB MB GB KiB MiB GiB` (K/M/G accepted).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    if split == 0 {
        return Err(format!("`{text}` is not a size: expected a number first"));
    }
    let number: u64 = text[..split]
        .parse()
        .map_err(|_| format!("`{text}`: number too large"))?;
    let factor: u64 = match &text[split..] {
        "" | "B" => 1,
        "K" | "KB" | "k" | "kB" => 1000,
        "M" | "MB" => 1000 * 1000,
        "G" | "GB" => 1000 * 1000 * 1000,
        "KiB" | "Ki" => 1 << 10,
        "MiB" | "Mi" => 1 << 20,
        "GiB" | "Gi" => 1 << 30,
        other => {
            return Err(format!(
                "`{text}`: unknown size unit `{other}` (use B, KiB, MiB, GiB, KB, MB, GB)"
            ));
        }
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| format!("`{text}` is too large"))
}

/// Formats a duration back to the config's own syntax (for diagnostics and status output).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if d.subsec_nanos() == 0 && d.as_secs() > 0 {
        format!("{}s", d.as_secs())
    } else if d.subsec_nanos().is_multiple_of(1_000_000) {
        format!("{ms}ms")
    } else {
        format!("{}us", d.as_micros())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
    }

    #[test]
    fn micro_sign_is_a_unit() {
        assert_eq!(parse_duration("250µs"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert!(parse_duration("250µ").is_err_and(|e| e.contains("unknown unit")));
        assert!(parse_duration("5é").is_err_and(|e| e.contains("unknown unit")));
    }

    #[test]
    fn durations_reject_ambiguity() {
        for bad in ["5 s", "5", "-5s", "1.5s", "s", "", "5sec", " 5s", "5s "] {
            assert!(parse_duration(bad).is_err(), "{bad:?} must be rejected");
        }
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("16MiB"), Ok(16 << 20));
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("10MB"), Ok(10_000_000));
        for bad in ["", "MiB", "1.5MiB", "16 MiB", "-1", "16XB"] {
            assert!(parse_size(bad).is_err(), "{bad:?} must be rejected");
        }
    }

    #[test]
    fn format_roundtrips() {
        for text in ["5s", "250ms", "90s"] {
            let d = parse_duration(text).unwrap_or_default();
            assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }
    }
}
