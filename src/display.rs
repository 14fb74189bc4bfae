//! Untrusted text made safe for a terminal or a log line: every control character (C0, DEL, C1,
//! so escape sequences), and the bidirectional overrides that reorder what a reader sees, is
//! shown as `\u{…}` instead of acting. A user, tool or resource name can then no longer erase
//! or disguise the line that flags it.

use std::borrow::Cow;

/// `s` with every character that could act on a terminal written out as `\u{hex}`; borrowed
/// when there is none (the usual case).
pub(crate) fn visible(s: &str) -> Cow<'_, str> {
    if !s.chars().any(acts) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if acts(c) {
            out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// A character that moves the cursor, starts an escape sequence or reorders text.
fn acts(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_act_no_more() {
        // ESC [ 1 A ESC [ 2 K: up one line, erase it (what hides a "delete, not confirmed").
        assert_eq!(
            visible("mallory\x1b[1A\x1b[2K"),
            "mallory\\u{1b}[1A\\u{1b}[2K"
        );
        assert_eq!(visible("a\tb\nc\r"), "a\\u{9}b\\u{a}c\\u{d}");
        assert_eq!(visible("evil\u{202e}txt.exe"), "evil\\u{202e}txt.exe");
        assert_eq!(visible("\u{9b}31m"), "\\u{9b}31m", "the 8-bit CSI too");
        assert!(matches!(visible("alice café ✓"), Cow::Borrowed(_)));
    }
}
