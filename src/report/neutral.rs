//! Cell text made harmless for a spreadsheet: control characters become spaces,
//! bidirectional formatting characters are dropped (they can make a cell read backwards),
//! and a leading formula character is escaped ([`escape_formula`], OWASP CSV injection);
//! the CSV report and the workbook both write cells through it.

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
