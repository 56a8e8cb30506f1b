//! Stored text made harmless before it is shown: in a spreadsheet cell ([`neutralise`]:
//! control characters become spaces, bidirectional formatting characters are dropped, a
//! leading formula character is escaped, [`escape_formula`], OWASP CSV injection), and
//! on a terminal ([`terminal`]: each control or bidirectional formatting character is shown
//! as a visible `\u{..}` escape, so an escape sequence or a right-to-left override in a
//! stored run key or name is seen, never obeyed).

use std::borrow::Cow;

/// Escapes a cell a spreadsheet would read as a formula (it begins with `=`, `+`, `-`,
/// `@`, a tab or a carriage return) by prefixing a single quote (OWASP CSV injection).
pub fn escape_formula(cell: &str) -> Cow<'_, str> {
    match cell.chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r') => Cow::Owned(format!("'{cell}")),
        _ => Cow::Borrowed(cell),
    }
}

/// Whether `c` is a Unicode bidirectional formatting character (embeddings, overrides,
/// isolates, directional marks).
fn is_bidi_control(c: char) -> bool {
    matches!(
        c,
        '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
    )
}

/// Whether a terminal could act on `c`: C0 and C1 controls (ESC, BEL, CSI U+009B, NEL,
/// newlines, tabs, DEL), the bidirectional formatting characters, and the Unicode line and
/// paragraph separators.
fn is_terminal_unsafe(c: char) -> bool {
    c.is_control() || is_bidi_control(c) || matches!(c, '\u{2028}' | '\u{2029}')
}

/// `text` as a terminal may show it: every character a terminal could act on is written
/// as a Rust-style escape (`ESC[31m` becomes `\u{1b}[31m`, U+202E becomes `\u{202e}`);
/// anything else, Hangul included, is unchanged. For one line of stored text: a newline
/// in it is escaped too.
pub fn terminal(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_terminal_unsafe) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if is_terminal_unsafe(c) {
            out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// `cell` with control characters (newlines, tabs, escapes) replaced by a space and
/// bidirectional controls removed: what a terminal table shows.
pub fn strip_controls(cell: &str) -> Cow<'_, str> {
    if cell.chars().any(|c| c.is_control() || is_bidi_control(c)) {
        Cow::Owned(
            cell.chars()
                .filter(|c| !is_bidi_control(*c))
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect::<String>(),
        )
    } else {
        Cow::Borrowed(cell)
    }
}

/// `cell` as a spreadsheet (or the CSV) may show it: [`strip_controls`], then
/// formula-escaped.
pub fn neutralise(cell: &str) -> Cow<'_, str> {
    match strip_controls(cell) {
        Cow::Borrowed(s) => escape_formula(s),
        Cow::Owned(s) => Cow::Owned(escape_formula(&s).into_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_borrowed_unchanged() {
        for safe in ["", "홍길동상사", "CUST-00001", "4518-****-****-1234", "a b"] {
            assert!(matches!(neutralise(safe), Cow::Borrowed(s) if s == safe));
        }
    }

    #[test]
    fn controls_bidi_and_formulas_are_neutralised() {
        assert_eq!(neutralise("line one\nline two"), "line one line two");
        assert_eq!(neutralise("a\u{1b}[31mb"), "a [31mb");
        assert_eq!(neutralise("abc\u{202E}fdp.exe"), "abcfdp.exe");
        assert_eq!(neutralise("\u{2066}x\u{2069}\u{200F}"), "x");
        assert_eq!(neutralise("=HYPERLINK(\"x\")"), "'=HYPERLINK(\"x\")");
        assert_eq!(neutralise("@SUM(A1)"), "'@SUM(A1)");
        // A tab first becomes a space, which no spreadsheet reads as a formula.
        assert_eq!(neutralise("\t=1"), " =1");
        // Hiding the formula behind a bidi control does not help.
        assert_eq!(neutralise("\u{202E}=1+2"), "'=1+2");
    }

    #[test]
    fn terminal_text_shows_controls_and_bidi_as_escapes() {
        for safe in ["", "홍길동상사", "2026-11-27", "a b", "back\\slash"] {
            assert!(matches!(terminal(safe), Cow::Borrowed(s) if s == safe));
        }
        assert_eq!(terminal("a\u{1b}[31mb"), r"a\u{1b}[31mb");
        assert_eq!(terminal("\u{1b}]0;t\u{7}"), r"\u{1b}]0;t\u{7}");
        assert_eq!(terminal("x\u{9b}2J\u{85}\u{7f}"), r"x\u{9b}2J\u{85}\u{7f}");
        assert_eq!(terminal("abc\u{202E}fdp.exe"), r"abc\u{202e}fdp.exe");
        assert_eq!(
            terminal("\u{2066}x\u{2069}\u{200F}\u{61C}"),
            r"\u{2066}x\u{2069}\u{200f}\u{61c}"
        );
        assert_eq!(
            terminal("one\ntwo\r\t\u{2028}"),
            r"one\u{a}two\u{d}\u{9}\u{2028}"
        );
    }

    #[test]
    fn formula_cells_are_escaped_and_others_left_alone() {
        for risky in [
            "=1+2",
            "+82",
            "-5",
            "@SUM(A1)",
            "\tx",
            "\rx",
            "=HYPERLINK(\"x\")",
        ] {
            assert_eq!(escape_formula(risky), format!("'{risky}"), "{risky:?}");
        }
        for safe in [
            "",
            "CUST-1",
            "4518-****-****-1234",
            "신한카드",
            " =x",
            "'=x",
            "#5",
        ] {
            assert!(
                matches!(escape_formula(safe), Cow::Borrowed(s) if s == safe),
                "{safe:?}"
            );
        }
    }
}
