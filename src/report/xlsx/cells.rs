//! How the sheets' cells look: the formats they share, and times as Excel date-times
//! (KST, or UTC).

use chrono::{DateTime, Datelike, Timelike, Utc};
use rust_xlsxwriter::{Color, ExcelDateTime, Format};

use super::super::csv::KST;

/// How Excel shows the check times.
pub const DATETIME_FORMAT: &str = "yyyy-mm-dd hh:mm:ss";

/// The formats the sheets share.
pub(crate) struct Formats {
    pub header: Format,
    pub datetime: Format,
    pub title: Format,
    active: Format,
    gone: Format,
    failed: Format,
    rejected: Format,
}

impl Formats {
    pub(super) fn new() -> Self {
        let fill = |bg: u32, fg: u32| {
            Format::new()
                .set_background_color(Color::RGB(bg))
                .set_font_color(Color::RGB(fg))
        };
        Self {
            header: Format::new()
                .set_bold()
                .set_background_color(Color::RGB(0xD9E1F2)),
            datetime: Format::new().set_num_format(DATETIME_FORMAT),
            title: Format::new().set_bold().set_font_size(14),
            active: fill(0xC6EFCE, 0x006100),
            gone: fill(0xFFC7CE, 0x9C0006),
            failed: fill(0xFFEB9C, 0x9C5700),
            rejected: fill(0xD9D9D9, 0x404040),
        }
    }

    /// The fill of a status cell.
    pub fn status(&self, status: &str) -> Option<&Format> {
        match status {
            "active" => Some(&self.active),
            "gone" => Some(&self.gone),
            "failed" => Some(&self.failed),
            "rejected" => Some(&self.rejected),
            _ => None,
        }
    }
}

/// A time as an Excel date-time in KST; `None` outside Excel's years.
pub fn excel_kst(t: DateTime<Utc>) -> Option<ExcelDateTime> {
    excel_time(&t.with_timezone(&KST).naive_local())
}

/// A time as an Excel date-time in UTC.
pub(super) fn excel_utc(t: DateTime<Utc>) -> Option<ExcelDateTime> {
    excel_time(&t.naive_utc())
}

fn excel_time(t: &chrono::NaiveDateTime) -> Option<ExcelDateTime> {
    let seconds = f64::from(t.second()) + f64::from(t.nanosecond() / 1_000_000) / 1000.0;
    ExcelDateTime::from_ymd(
        u16::try_from(t.year()).ok()?,
        u8::try_from(t.month()).ok()?,
        u8::try_from(t.day()).ok()?,
    )
    .and_then(|d| {
        d.and_hms(
            u16::try_from(t.hour()).ok().unwrap_or(0),
            t.minute() as u8,
            seconds,
        )
    })
    .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_become_kst_date_times() {
        let at = |text| crate::store::time::parse_time(text).expect("a time");
        let t = excel_kst(at("2026-11-26T17:05:03.250Z")).unwrap();
        let expected = ExcelDateTime::from_ymd(2026, 11, 27)
            .unwrap()
            .and_hms(2, 5, 3.25)
            .unwrap();
        assert_eq!(t.to_excel(), expected.to_excel());
        let utc = excel_utc(at("2026-11-26T17:05:03Z")).unwrap();
        let expected = ExcelDateTime::from_ymd(2026, 11, 26)
            .unwrap()
            .and_hms(17, 5, 3)
            .unwrap();
        assert_eq!(utc.to_excel(), expected.to_excel());
    }
}
