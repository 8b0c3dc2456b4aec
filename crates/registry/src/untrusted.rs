//! Text that comes from the registry (keys, hosts, ids written by anyone with write access),
//! made safe to print: control characters escaped, so a key holding a newline cannot forge a
//! log line, and the length clipped, so a megabyte host name costs a line, not a megabyte.

use std::fmt;

/// How many characters of untrusted text are shown before it is clipped.
pub const SHOWN_CHARS: usize = 80;

/// Displays untrusted bytes quoted and escaped (`"a\nb"`), at most [`SHOWN_CHARS`]
/// characters of them, followed by the full length when clipped.
#[derive(Clone, Copy)]
pub struct Untrusted<'a>(pub &'a [u8]);

impl<'a> Untrusted<'a> {
    pub fn str(text: &'a str) -> Self {
        Untrusted(text.as_bytes())
    }
}

impl fmt::Display for Untrusted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = String::from_utf8_lossy(self.0);
        let mut chars = text.chars();
        f.write_str("\"")?;
        for c in chars.by_ref().take(SHOWN_CHARS) {
            write!(f, "{}", c.escape_debug())?;
        }
        f.write_str("\"")?;
        if chars.next().is_some() {
            write!(f, "... ({} bytes)", self.0.len())?;
        }
        Ok(())
    }
}

impl fmt::Debug for Untrusted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn control_characters_are_escaped_and_long_text_clipped() {
        assert_eq!(Untrusted::str("web-1").to_string(), "\"web-1\"");
        assert_eq!(
            Untrusted::str("a\nlevel=error forged").to_string(),
            "\"a\\nlevel=error forged\""
        );
        let long = "h".repeat(1_000_000);
        let shown = Untrusted::str(&long).to_string();
        assert!(shown.ends_with("... (1000000 bytes)"), "{shown}");
        assert!(shown.len() < 120, "{}", shown.len());
        assert_eq!(Untrusted(b"\xff\x00").to_string(), "\"\u{fffd}\\0\"");
    }

    proptest! {
        /// Whatever the registry holds, what is printed is one bounded line.
        #[test]
        fn printed_text_is_one_bounded_line(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let shown = Untrusted(&bytes).to_string();
            prop_assert!(!shown.chars().any(|c| c.is_control()));
            prop_assert!(shown.chars().count() <= 2 + SHOWN_CHARS * 10 + 30);
        }
    }
}
