//! Times as the store keeps them: UTC RFC 3339 text with milliseconds
//! (`2026-11-28T09:00:00.123Z`, which sorts as it reads), formatted once where a row is
//! written and parsed once where it is read.

use chrono::{DateTime, SecondsFormat, Utc};

/// `t` as stored.
pub fn time_text(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A stored time, or `None` if the text is not RFC 3339.
pub fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text.trim())
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// A stored time read from column `index` (`column`) of a row of run `run_id`; a text
/// that does not parse is a decoding error naming the run and the column.
pub(super) fn read_time(
    index: usize,
    column: &str,
    run_id: i64,
    text: &str,
) -> Result<DateTime<Utc>, sqlx::Error> {
    parse_time(text).ok_or_else(|| sqlx::Error::ColumnDecode {
        index: format!("{index} ({column})"),
        source: format!("run {run_id}: {text:?} is not a stored time").into(),
    })
}

/// A stored time that may be absent (`NULL`), read back as [`read_time`] does.
pub(super) fn read_optional_time(
    index: usize,
    column: &str,
    run_id: i64,
    text: Option<String>,
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    text.map(|t| read_time(index, column, run_id, &t))
        .transpose()
}

/// Serialises a time as stored (for rows printed as JSON).
pub fn serialize<S: serde::Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&time_text(*t))
}

/// Serialises an optional time as stored, `null` when absent.
pub fn serialize_optional<S: serde::Serializer>(
    t: &Option<DateTime<Utc>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => serialize(t, s),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_stored_as_utc_rfc_3339_with_milliseconds() {
        let text = time_text(Utc::now());
        let parsed = chrono::NaiveDateTime::parse_from_str(&text, "%Y-%m-%dT%H:%M:%S%.3fZ")
            .expect("the stored format");
        assert_eq!(parsed.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(), text);
        assert_eq!(text.len(), "2026-11-28T09:00:00.123Z".len(), "{text}");
    }

    #[test]
    fn stored_times_read_back_to_the_same_text() {
        for text in ["2026-11-28T05:28:04.250Z", "2026-01-01T00:00:00.000Z"] {
            let t = parse_time(text).expect("parses");
            assert_eq!(time_text(t), text);
        }
        let t = parse_time("2026-11-28T14:28:04+09:00").expect("an offset parses");
        assert_eq!(time_text(t), "2026-11-28T05:28:04.000Z");
    }

    #[test]
    fn a_bad_stored_time_names_its_row_and_column() {
        let err = read_time(2, "started_at", 7, "yesterday").expect_err("not a time");
        let text = err.to_string();
        assert!(
            text.contains("run 7") && text.contains("started_at"),
            "{text}"
        );
        assert!(text.contains("yesterday"), "{text}");
    }
}
