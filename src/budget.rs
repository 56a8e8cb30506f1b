//! Run budgets: how many keys a run may look up, for how long, or until what time of day,
//! and the due-date window of the priority order; parsed from flags, decided purely (the
//! clock is always passed in).

use std::time::Duration;

use chrono::{DateTime, FixedOffset, NaiveTime, TimeZone, Utc};

/// Korea Standard Time, the default `--timezone`.
pub const KST_SECONDS: i32 = 9 * 3600;

/// What may stop a budgeted run before its last key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetStop {
    MaxLookups,
    TimeBudget,
    StopAt,
}

impl BudgetStop {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MaxLookups => "max_lookups",
            Self::TimeBudget => "time_budget",
            Self::StopAt => "stop_at",
        }
    }
}

/// A time of day in a fixed-offset zone (`--stop-at 06:00 --timezone +09:00`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopAt {
    pub time: NaiveTime,
    pub offset: FixedOffset,
}

impl StopAt {
    /// The first moment strictly after `now` at this time of day.
    pub fn next_after(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        let local = now.with_timezone(&self.offset);
        let mut day = local.date_naive();
        loop {
            let candidate = self
                .offset
                .from_local_datetime(&day.and_time(self.time))
                .single()
                .map(|t| t.with_timezone(&Utc));
            match candidate {
                Some(t) if t > now => return t,
                _ => match day.succ_opt() {
                    Some(next) => day = next,
                    None => return now,
                },
            }
        }
    }
}

/// The limits of one run; at least one is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Budget {
    /// Keys looked up at most (a key's retries and second pass count once).
    pub max_lookups: Option<u64>,
    /// Dispatching stops this long after the lookups start.
    pub time: Option<Duration>,
    pub stop_at: Option<StopAt>,
}

impl Budget {
    /// `None` when no limit is set (the run checks every key, in input order).
    pub fn if_any(self) -> Option<Self> {
        (self.max_lookups.is_some() || self.time.is_some() || self.stop_at.is_some())
            .then_some(self)
    }

    /// When dispatching must stop, and which limit that is: the earlier of the time budget
    /// and the next stop-at time, counted from `now`.
    pub fn deadline(&self, now: DateTime<Utc>) -> Option<(DateTime<Utc>, BudgetStop)> {
        let by_time = self.time.and_then(|d| {
            chrono::Duration::from_std(d)
                .ok()
                .and_then(|d| now.checked_add_signed(d))
                .map(|t| (t, BudgetStop::TimeBudget))
        });
        let by_clock = self
            .stop_at
            .map(|s| (s.next_after(now), BudgetStop::StopAt));
        match (by_time, by_clock) {
            (Some(a), Some(b)) => Some(if b.0 < a.0 { b } else { a }),
            (a, b) => a.or(b),
        }
    }
}

/// Where a key's next charge date comes from, and how soon counts as due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueSpec {
    pub column: String,
    pub within: Duration,
}

/// The last date (`YYYY-MM-DD`, in `offset`) that counts as due soon.
pub fn due_cutoff(now: DateTime<Utc>, within: Duration, offset: FixedOffset) -> String {
    let until = chrono::Duration::from_std(within)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(now);
    until
        .with_timezone(&offset)
        .date_naive()
        .format("%Y-%m-%d")
        .to_string()
}

/// A charge date as stored: the date part of `YYYY-MM-DD[...]`; `None` if it is not one.
pub fn normalize_due(raw: &str) -> Option<String> {
    let raw = raw.trim();
    let date = raw.get(..10)?;
    chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d")
        .ok()
        .map(|d| d.format("%Y-%m-%d").to_string())
}

/// `45s`, `90m`, `3h`, `2d`, or combined (`1h30m`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration (use e.g. 3h, 90m, 45s)".to_owned());
    }
    let mut total = 0u64;
    let mut digits = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(format!("{text:?}: unknown unit {c:?} (use s, m, h or d)")),
        };
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("{text:?}: a number must come before {c:?}"))?;
        total = n
            .checked_mul(unit)
            .and_then(|s| total.checked_add(s))
            .ok_or_else(|| format!("{text:?}: too long"))?;
        digits.clear();
    }
    if !digits.is_empty() {
        return Err(format!("{text:?}: a number needs a unit (s, m, h or d)"));
    }
    if total == 0 {
        return Err(format!("{text:?}: must be longer than zero"));
    }
    Ok(Duration::from_secs(total))
}

/// `HH:MM` (24-hour clock).
pub fn parse_time_of_day(text: &str) -> Result<NaiveTime, String> {
    NaiveTime::parse_from_str(text.trim(), "%H:%M")
        .map_err(|_| format!("{text:?} is not a time of day HH:MM (24-hour clock)"))
}

/// `KST`, `UTC` (or `Z`), or an offset `+09:00` / `-05:30`.
pub fn parse_timezone(text: &str) -> Result<FixedOffset, String> {
    let t = text.trim();
    let seconds = match t.to_ascii_uppercase().as_str() {
        "KST" | "ASIA/SEOUL" => Some(KST_SECONDS),
        "UTC" | "Z" | "GMT" => Some(0),
        _ => None,
    };
    if let Some(s) = seconds {
        return FixedOffset::east_opt(s).ok_or_else(|| format!("{t:?}: bad offset"));
    }
    let bad = || format!("{t:?} is not a time zone (use KST, UTC, or an offset like +09:00)");
    let (sign, rest) = match t.as_bytes().first() {
        Some(b'+') => (1, &t[1..]),
        Some(b'-') => (-1, &t[1..]),
        _ => return Err(bad()),
    };
    let (h, m) = rest.split_once(':').ok_or_else(bad)?;
    let (h, m): (i32, i32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if !(0..=14).contains(&h) || !(0..60).contains(&m) {
        return Err(bad());
    }
    FixedOffset::east_opt(sign * (h * 3600 + m * 60)).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn kst() -> FixedOffset {
        FixedOffset::east_opt(KST_SECONDS).unwrap()
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("3h").unwrap(), Duration::from_secs(10_800));
        assert_eq!(parse_duration("90m").unwrap(), Duration::from_secs(5_400));
        assert_eq!(parse_duration("45s").unwrap(), Duration::from_secs(45));
        assert_eq!(parse_duration("3d").unwrap(), Duration::from_secs(259_200));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5_400));
        for bad in ["", "3", "h", "0m", "3x", "-1h", "1.5h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn time_zones() {
        assert_eq!(parse_timezone("KST").unwrap(), kst());
        assert_eq!(parse_timezone("utc").unwrap().local_minus_utc(), 0);
        assert_eq!(parse_timezone("+09:00").unwrap(), kst());
        assert_eq!(parse_timezone("-05:30").unwrap().local_minus_utc(), -19_800);
        for bad in ["", "09:00", "+9", "+25:00", "Mars/Olympus"] {
            assert!(parse_timezone(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn stop_at_is_the_next_such_time_after_start() {
        let six_kst = StopAt {
            time: parse_time_of_day("06:00").unwrap(),
            offset: kst(),
        };
        // 02:30 KST on the 28th (17:30 UTC on the 27th): 06:00 KST the same morning.
        assert_eq!(
            six_kst.next_after(utc("2026-11-27T17:30:00Z")),
            utc("2026-11-27T21:00:00Z")
        );
        // 07:00 KST: already past, so tomorrow's.
        assert_eq!(
            six_kst.next_after(utc("2026-11-27T22:00:00Z")),
            utc("2026-11-28T21:00:00Z")
        );
        // Exactly 06:00: the next one, a day later.
        assert_eq!(
            six_kst.next_after(utc("2026-11-27T21:00:00Z")),
            utc("2026-11-28T21:00:00Z")
        );
        assert!(parse_time_of_day("24:00").is_err());
        assert!(parse_time_of_day("6").is_err());
    }

    #[test]
    fn deadline_is_the_earlier_limit() {
        let now = utc("2026-11-27T17:30:00Z");
        let both = Budget {
            max_lookups: None,
            time: Some(Duration::from_secs(3600)),
            stop_at: Some(StopAt {
                time: parse_time_of_day("03:00").unwrap(),
                offset: kst(),
            }),
        };
        // 03:00 KST is 18:00 UTC: before the hour's budget ends at 18:30.
        assert_eq!(
            both.deadline(now),
            Some((utc("2026-11-27T18:00:00Z"), BudgetStop::StopAt))
        );
        let hour = Budget {
            stop_at: None,
            ..both
        };
        assert_eq!(
            hour.deadline(now),
            Some((utc("2026-11-27T18:30:00Z"), BudgetStop::TimeBudget))
        );
        let count = Budget {
            max_lookups: Some(5),
            ..Budget::default()
        };
        assert_eq!(count.deadline(now), None);
        assert_eq!(count.if_any(), Some(count));
        assert_eq!(Budget::default().if_any(), None);
    }

    #[test]
    fn due_dates() {
        assert_eq!(normalize_due("2026-12-01").as_deref(), Some("2026-12-01"));
        assert_eq!(
            normalize_due(" 2026-12-01T09:00:00+09:00").as_deref(),
            Some("2026-12-01")
        );
        assert_eq!(normalize_due("2026-13-01"), None);
        assert_eq!(normalize_due("next week"), None);
        // 23:00 UTC on the 27th is the 28th in Seoul; three days on is the 1st.
        assert_eq!(
            due_cutoff(
                utc("2026-11-27T23:00:00Z"),
                Duration::from_secs(3 * 86_400),
                kst()
            ),
            "2026-12-01"
        );
    }
}
