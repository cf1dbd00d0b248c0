//! Text that comes from outside — a peer's messages and names, an mDNS
//! record, a file name on disk — on its way to a terminal, a log or a file:
//! one escaping rule for all of it, the characters a name may not contain,
//! and the length bound of a peer's free-text messages.
//!
//! Control characters (ESC, CR, BEL, …) could drive a terminal; bidi
//! controls and invisible format characters (U+202E RIGHT-TO-LEFT OVERRIDE,
//! U+200B ZERO WIDTH SPACE, …) make text look like other text without being
//! control characters (`char::is_control` is false for them). Both are
//! escaped as `\u{…}` before anything is shown, and refused in names.

/// Largest free-text message accepted from a peer (refusal reasons, file
/// results, close reasons), in bytes.
pub const MAX_MESSAGE: usize = 1024;

/// True for the bidi controls and invisible or blank-looking characters
/// that can disguise text: soft hyphen, combining grapheme joiner, Arabic
/// letter mark, the Hangul fillers, Khmer inherent vowels, Mongolian vowel
/// separator, zero-width space / non-joiner / joiner, LRM/RLM, the line and
/// paragraph separators, the embeddings and overrides U+202A–202E, word
/// joiner and invisible operators U+2060–2064, the isolates U+2066–2069, the
/// byte-order mark, the interlinear annotation characters and the tag
/// characters. Variation selectors (U+FE00–FE0F) are allowed: emoji need
/// them, and they do not reorder or hide text.
pub fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{061C}'
            | '\u{115F}'
            | '\u{1160}'
            | '\u{17B4}'
            | '\u{17B5}'
            | '\u{180E}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{3164}'
            | '\u{FFA0}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{2069}'
            | '\u{FEFF}'
            | '\u{FFF9}'..='\u{FFFB}'
            | '\u{E0001}'
            | '\u{E0020}'..='\u{E007F}'
    )
}

/// True when `c` may not appear in a name (file, node, alias): a control
/// character or an invisible one.
pub fn is_forbidden_in_name(c: char) -> bool {
    c.is_control() || is_invisible(c)
}

/// `s` with control and invisible characters escaped (`\n`, `\r`, `\t`,
/// else `\u{…}`), safe to print on a terminal or write to a log.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if is_forbidden_in_name(c) => out.extend(c.escape_unicode()),
            c => out.push(c),
        }
    }
    out
}

/// Like [`escape`], but keeps line breaks: the last guard on a multi-line
/// message (an error, whose parts are escaped already) on its way to a
/// terminal.
pub fn escape_lines(s: &str) -> String {
    s.split('\n').map(escape).collect::<Vec<_>>().join("\n")
}

/// `s` cut to at most `max` bytes on a character boundary, with `…` when
/// something was cut.
pub fn bounded(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// A byte count for people: exact below 1 KiB, else one decimal of the
/// largest binary unit (`1.5 MiB`).
pub fn human_bytes(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

/// Longest a peer-supplied name is shown inside a message, in bytes.
pub const MAX_SHOWN_NAME: usize = 200;

/// A peer-supplied name made safe to quote inside a message.
pub fn name_from_peer(s: &str) -> String {
    escape(&bounded(s, MAX_SHOWN_NAME))
}

/// A peer's free-text message made safe to show: bounded, then escaped.
pub fn from_peer(s: &str) -> String {
    escape(&bounded(s, MAX_MESSAGE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_terminal_controls_and_disguising_characters() {
        let hostile = "ok\r\u{1b}[8mreal fingerprint\u{202E}txt.exe\u{200B}\u{7}";
        let e = escape(hostile);
        assert!(!e.chars().any(is_forbidden_in_name), "{e:?}");
        assert!(e.contains("\\r") && e.contains("\\u{1b}") && e.contains("\\u{202e}"));
        assert_eq!(escape("plain name-1.txt ü 日本"), "plain name-1.txt ü 日本");
        for c in ['\u{202A}', '\u{2066}', '\u{2069}', '\u{FEFF}', '\u{200F}'] {
            assert!(is_invisible(c) && !c.is_control(), "{c:?}");
        }
    }

    #[test]
    fn escaping_lines_keeps_only_line_breaks() {
        let e = escape_lines("one\r\u{1b}[2J\ntwo\u{202e}");
        assert_eq!(e.lines().count(), 2);
        assert!(
            !e.chars().any(|c| c != '\n' && is_forbidden_in_name(c)),
            "{e:?}"
        );
        assert_eq!(escape_lines(&e), e, "idempotent");
    }

    #[test]
    fn bounds_on_a_character_boundary() {
        assert_eq!(bounded("abc", 3), "abc");
        assert_eq!(bounded("abcd", 3), "abc…");
        assert_eq!(bounded("ééé", 3), "é…");
        let big = "x".repeat(20 << 20);
        assert!(from_peer(&big).len() <= MAX_MESSAGE + 3);
    }
}
