//! Plain-text tables for a terminal: columns padded by display width (Hangul and other
//! wide characters take two cells), control and bidi characters shown as visible escapes
//! ([`super::neutral::terminal`]).

/// Columns between cells.
const GAP: &str = "  ";

/// How many terminal cells `s` takes: two for East Asian wide characters (Hangul, CJK,
/// full-width forms), none for combining marks, one otherwise.
pub fn display_width(s: &str) -> usize {
    s.chars().map(char_width).sum()
}

fn char_width(c: char) -> usize {
    let cp = u32::from(c);
    match cp {
        0x0300..=0x036F | 0x200B..=0x200F | 0xFE00..=0xFE0F => 0,
        0x1100..=0x115F
        | 0x2E80..=0x303E
        | 0x3041..=0x33FF
        | 0x3400..=0x4DBF
        | 0x4E00..=0x9FFF
        | 0xA000..=0xA4CF
        | 0xA960..=0xA97F
        | 0xAC00..=0xD7A3
        | 0xF900..=0xFAFF
        | 0xFE30..=0xFE4F
        | 0xFF00..=0xFF60
        | 0xFFE0..=0xFFE6
        | 0x1F300..=0x1F64F
        | 0x20000..=0x3FFFD => 2,
        _ => 1,
    }
}

/// A cell as a terminal may show it: control characters (newlines, escape sequences)
/// and bidirectional overrides become visible `\u{..}` escapes.
pub fn clean(cell: &str) -> String {
    super::neutral::terminal(cell).into_owned()
}

/// Column widths and alignment, fitted to a header and some rows; rows printed later
/// with the same layout stay aligned unless wider.
#[derive(Debug, Clone)]
pub struct Layout {
    widths: Vec<usize>,
    right: Vec<bool>,
}

impl Layout {
    /// Fits the columns to `header` and `rows`; `right[i]` right-aligns column `i`.
    pub fn fit(header: &[&str], rows: &[Vec<String>], right: &[bool]) -> Self {
        let mut widths: Vec<usize> = header.iter().map(|h| display_width(h)).collect();
        for row in rows {
            for (i, cell) in row.iter().enumerate() {
                if let Some(w) = widths.get_mut(i) {
                    *w = (*w).max(display_width(&clean(cell)));
                }
            }
        }
        Self {
            widths,
            right: right.to_vec(),
        }
    }

    /// One line (without newline); the last column is not padded.
    pub fn line<S: AsRef<str>>(&self, cells: &[S]) -> String {
        let mut out = String::new();
        let last = cells.len().saturating_sub(1);
        for (i, cell) in cells.iter().enumerate() {
            let cell = clean(cell.as_ref());
            let width = self.widths.get(i).copied().unwrap_or(0);
            let fill = " ".repeat(width.saturating_sub(display_width(&cell)));
            if i > 0 {
                out.push_str(GAP);
            }
            if self.right.get(i).copied().unwrap_or(false) {
                out.push_str(&fill);
                out.push_str(&cell);
            } else {
                out.push_str(&cell);
                if i != last {
                    out.push_str(&fill);
                }
            }
        }
        out.truncate(out.trim_end().len());
        out
    }

    /// The dashes under the header.
    pub fn rule(&self) -> String {
        self.widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .join(GAP)
    }
}

/// A whole table: header, rule, rows, each line ending in `\n`.
pub fn render(header: &[&str], rows: &[Vec<String>], right: &[bool]) -> String {
    let layout = Layout::fit(header, rows, right);
    let mut out = format!("{}\n{}\n", layout.line(header), layout.rule());
    for row in rows {
        out.push_str(&layout.line(row));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hangul_is_two_cells_wide() {
        assert_eq!(display_width("신한카드"), 8);
        assert_eq!(display_width("BC카드"), 6);
        assert_eq!(display_width("abc"), 3);
        assert_eq!(display_width(""), 0);
    }

    #[test]
    fn tables_line_up_korean_and_numbers() {
        let rows = vec![
            vec!["신한카드".to_owned(), "12".to_owned()],
            vec!["BC카드".to_owned(), "3".to_owned()],
        ];
        let text = render(&["card", "keys"], &rows, &[false, true]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "card      keys");
        assert_eq!(lines[1], "--------  ----");
        assert_eq!(lines[2], "신한카드    12");
        assert_eq!(lines[3], "BC카드       3");
        let widths: Vec<usize> = lines.iter().map(|l| display_width(l)).collect();
        assert!(widths.iter().all(|w| *w == widths[0]), "{widths:?}");
    }

    #[test]
    fn control_characters_cannot_reach_the_terminal() {
        let layout = Layout::fit(&["a", "b"], &[], &[false, false]);
        assert_eq!(
            layout.line(&["x\x1b[31m", "two\nlines\u{202E}"]),
            r"x\u{1b}[31m  two\u{a}lines\u{202e}"
        );
    }
}
