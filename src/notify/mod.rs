//! Notifications after a run: one message per run to each configured webhook, as
//! Slack-compatible incoming-webhook JSON or as a documented JSON document.
//!
//! # Architecture
//! A leaf: [`Notice`] is plain data about a run (the caller fills it from the store);
//! [`should_send`], [`slack_body`] and [`json_body`] are pure; [`post`] sends the body with
//! the process's one HTTP client builder, a bounded timeout and a few retries. Webhook
//! URLs are secrets ([`WebhookUrl`]): only their host is ever shown.

mod post;
mod webhook;

use crate::domain::RunState;
use serde::Serialize;
use serde_json::{Value, json};

pub use post::{Delivery, Notifier, NotifierConfig};
pub use webhook::{NotifyError, WebhookUrl};

/// How many newly gone customers a message lists.
pub const NEWLY_GONE_SHOWN: usize = 10;

/// The message format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NotifyFormat {
    /// Slack incoming-webhook JSON (`text` and `blocks`); also read by Mattermost and others.
    #[default]
    Slack,
    /// This job's own JSON document (see docs/reports.md).
    Json,
}

/// When a run is worth a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NotifyOn {
    /// After every run.
    Always,
    /// When something changed against the previous completed run, or the run did not
    /// complete cleanly.
    #[default]
    Changes,
    /// When the run did not complete cleanly, or keys newly went or newly fail.
    Problems,
}

/// Keys per status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct KeyCounts {
    pub active: i64,
    pub gone: i64,
    pub failed: i64,
    pub rejected: i64,
}

/// The changes against the previous completed run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ChangeCounts {
    /// The run compared with.
    pub since_run: i64,
    pub newly_gone: u64,
    pub newly_failing: u64,
    pub recovered: u64,
    pub card_changed: u64,
    pub account_changed: u64,
    pub new_keys: u64,
    pub missing_keys: u64,
}

impl ChangeCounts {
    pub fn total(&self) -> u64 {
        self.newly_gone
            + self.newly_failing
            + self.recovered
            + self.card_changed
            + self.account_changed
            + self.new_keys
            + self.missing_keys
    }
}

/// A newly gone key as a message shows it: the customer reference and the masked key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GoneKey {
    pub customer_ref: Option<String>,
    pub payer_id_masked: String,
}

/// What a message says about one run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Notice {
    /// `None` when the run could not start (no run was recorded).
    pub run_id: Option<i64>,
    pub run_key: Option<String>,
    pub state: RunState,
    pub exit_code: Option<i64>,
    pub keys: KeyCounts,
    pub duration_secs: Option<f64>,
    /// `None` when there is no previous completed run to compare with.
    pub changes: Option<ChangeCounts>,
    /// The first [`NEWLY_GONE_SHOWN`] newly gone keys.
    pub newly_gone: Vec<GoneKey>,
    /// Where the report was written, if one was.
    pub report: Option<String>,
    /// Why the run could not start or end, if it could not.
    pub error: Option<String>,
    /// Per-key events after the run (`--events-url`); `None` without.
    pub events: Option<crate::domain::EventTally>,
}

impl Notice {
    /// A run that could not start (or whose end could not be recorded): no counts.
    pub fn failed(run_id: Option<i64>, exit_code: i64, error: String) -> Self {
        Self {
            run_id,
            run_key: None,
            state: RunState::Failed,
            exit_code: Some(exit_code),
            keys: KeyCounts::default(),
            duration_secs: None,
            changes: None,
            newly_gone: Vec::new(),
            report: None,
            error: Some(error),
            events: None,
        }
    }

    /// Completed with every key resolved (exit 0).
    pub fn clean(&self) -> bool {
        self.state == RunState::Completed && self.exit_code == Some(0)
    }
}

/// Whether `notice` is worth a message under `on`.
pub fn should_send(on: NotifyOn, notice: &Notice) -> bool {
    let changes = notice.changes.unwrap_or_default();
    match on {
        NotifyOn::Always => true,
        NotifyOn::Changes => !notice.clean() || changes.total() > 0,
        NotifyOn::Problems => {
            !notice.clean() || changes.newly_gone > 0 || changes.newly_failing > 0
        }
    }
}

/// The body to post in `format`.
pub fn body(format: NotifyFormat, notice: &Notice) -> Value {
    match format {
        NotifyFormat::Slack => slack_body(notice),
        NotifyFormat::Json => json_body(notice),
    }
}

/// The json format: a versioned document (fields documented in docs/reports.md).
pub fn json_body(notice: &Notice) -> Value {
    let mut doc = json!({
        "type": "payple_reconcile.run",
        "version": 1,
        "run_id": notice.run_id,
        "run_key": notice.run_key,
        "state": notice.state,
        "exit_code": notice.exit_code,
        "clean": notice.clean(),
        "keys": notice.keys,
        "duration_secs": notice.duration_secs,
        "changes": notice.changes,
        "newly_gone": notice.newly_gone,
        "report": notice.report,
        "error": notice.error,
    });
    // Only with --events-url: a field added within version 1.
    if let (Some(events), Some(fields)) = (notice.events, doc.as_object_mut()) {
        fields.insert("events".to_owned(), json!(events));
    }
    doc
}

/// Slack's mrkdwn needs `&`, `<` and `>` escaped; control characters become spaces.
fn mrkdwn(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The first line: `Payple reconcile run 42 completed (exit 0): 12 newly gone`.
pub fn headline(notice: &Notice) -> String {
    let exit = notice
        .exit_code
        .map(|c| format!(" (exit {c})"))
        .unwrap_or_default();
    let changes = match &notice.changes {
        Some(c) if c.total() > 0 => format!(
            ": {} newly gone, {} newly failing, {} recovered",
            c.newly_gone, c.newly_failing, c.recovered
        ),
        Some(_) => ": no changes".to_owned(),
        None => String::new(),
    };
    match notice.run_id {
        Some(id) => format!(
            "Payple reconcile run {id} {}{exit}{changes}",
            notice.state.as_str()
        ),
        None => format!("Payple reconcile: the run could not start{exit}"),
    }
}

/// `0.4 s`, `42 s`, `14 min 5 s`, `2 h 3 min`.
pub fn human_duration(secs: f64) -> String {
    let whole = secs.max(0.0).round() as u64;
    match whole {
        _ if secs < 10.0 => format!("{:.1} s", secs.max(0.0)),
        0..60 => format!("{whole} s"),
        60..3600 => format!("{} min {} s", whole / 60, whole % 60),
        _ => format!("{} h {} min", whole / 3600, whole % 3600 / 60),
    }
}

/// The lines of the message body (Slack mrkdwn).
fn detail_lines(notice: &Notice) -> Vec<String> {
    if let Some(error) = &notice.error {
        return vec![format!("*Error:* {}", mrkdwn(error))];
    }
    let k = &notice.keys;
    let mut lines = vec![format!(
        "*Keys:* {} active, {} gone, {} failed, {} rejected",
        k.active, k.gone, k.failed, k.rejected
    )];
    if let Some(secs) = notice.duration_secs {
        lines.push(format!("*Duration:* {}", human_duration(secs)));
    }
    match &notice.changes {
        Some(c) => lines.push(format!(
            "*Changes since run {}:* {} newly gone, {} newly failing, {} recovered, \
             {} card changed, {} account changed, {} new, {} missing",
            c.since_run,
            c.newly_gone,
            c.newly_failing,
            c.recovered,
            c.card_changed,
            c.account_changed,
            c.new_keys,
            c.missing_keys
        )),
        None if notice.state != RunState::Completed => {
            lines.push("*Changes:* not compared: the run did not complete".to_owned());
        }
        None => lines.push("*Changes:* no previous completed run to compare with".to_owned()),
    }
    if let Some(report) = &notice.report {
        lines.push(format!("*Report:* {}", mrkdwn(report)));
    }
    if let Some(e) = notice.events {
        lines.push(format!(
            "*Events:* {} delivered, {} pending, {} expired",
            e.delivered, e.pending, e.expired
        ));
    }
    lines
}

/// The slack format: `text` (the fallback notifications show) and `blocks`.
pub fn slack_body(notice: &Notice) -> Value {
    let title = headline(notice);
    let mut blocks = vec![
        json!({"type": "header", "text": {"type": "plain_text", "text": title}}),
        json!({"type": "section", "text": {"type": "mrkdwn", "text": detail_lines(notice).join("\n")}}),
    ];
    if !notice.newly_gone.is_empty() {
        let total = notice.changes.map_or(0, |c| c.newly_gone);
        let mut text = format!(
            "*Newly gone* (first {} of {total}):",
            notice.newly_gone.len()
        );
        for key in &notice.newly_gone {
            let customer = key
                .customer_ref
                .as_deref()
                .unwrap_or("(no customer reference)");
            text.push_str(&format!(
                "\n• {} `{}`",
                mrkdwn(customer),
                key.payer_id_masked
            ));
        }
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": text}}));
    }
    json!({"text": title, "blocks": blocks})
}

#[cfg(test)]
mod tests;
