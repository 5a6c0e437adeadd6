//! How much of weir's log a plugin may write: its `host.log` lines go to weir's stderr
//! synchronously, from the worker serving the request, so a plugin logging on every call would
//! flood the log and, behind a slow reader (a pipe, journald), stall the workers. Each plugin
//! gets [`LINES_PER_SECOND`] lines a second, each cut to [`MAX_LINE`] bytes; the lines over the
//! budget are counted, and the count is logged with the plugin's next line that fits.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Lines a plugin may log per second (a burst of errors stays readable; a line per request
/// at 50,000 requests a second does not).
pub const LINES_PER_SECOND: u32 = 20;
/// Longest message kept, in bytes; longer ones are cut at a character boundary.
pub const MAX_LINE: usize = 1024;

/// One plugin's budget, shared by its instances on every worker (approximate under races:
/// a line or two more in a second is fine).
#[derive(Default)]
pub struct LogBudget {
    /// The second (on the caller's millisecond clock) the count is for.
    second: AtomicU64,
    lines: AtomicU32,
    suppressed: AtomicU64,
}

/// What to do with a line.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Write it; `suppressed` lines were dropped since the last one written.
    Write {
        suppressed: u64,
    },
    Drop,
}

impl LogBudget {
    pub fn take(&self, now_ms: u64) -> Verdict {
        let second = now_ms / 1000;
        let seen = self.second.load(Ordering::Relaxed);
        if second != seen
            && self
                .second
                .compare_exchange(seen, second, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.lines.store(0, Ordering::Relaxed);
        }
        if self.lines.fetch_add(1, Ordering::Relaxed) < LINES_PER_SECOND {
            Verdict::Write {
                suppressed: self.suppressed.swap(0, Ordering::Relaxed),
            }
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            Verdict::Drop
        }
    }
}

/// `msg` cut to [`MAX_LINE`] bytes (at a character boundary), saying how long it was.
pub fn bounded(msg: &str) -> std::borrow::Cow<'_, str> {
    if msg.len() <= MAX_LINE {
        return std::borrow::Cow::Borrowed(msg);
    }
    let mut end = MAX_LINE;
    while !msg.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!("{}… ({} bytes)", &msg[..end], msg.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twenty_lines_a_second_then_a_count_of_the_rest() {
        let b = LogBudget::default();
        let t = 5_000;
        for _ in 0..LINES_PER_SECOND {
            assert_eq!(b.take(t), Verdict::Write { suppressed: 0 });
        }
        for i in 0..30 {
            assert_eq!(b.take(t + 999 - i), Verdict::Drop);
        }
        // The next second: the first line reports the 30 dropped, the next none.
        assert_eq!(b.take(t + 1_000), Verdict::Write { suppressed: 30 });
        assert_eq!(b.take(t + 1_001), Verdict::Write { suppressed: 0 });
    }

    #[test]
    fn long_messages_are_cut_at_a_character_boundary() {
        assert_eq!(bounded("short"), "short");
        let long = "é".repeat(MAX_LINE); // 2 bytes each
        let cut = bounded(&long);
        assert!(cut.ends_with(&format!("… ({} bytes)", 2 * MAX_LINE)), "{cut}");
        assert!(cut.len() < MAX_LINE + 32);
    }
}
