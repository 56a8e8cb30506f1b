//! The notification flags validated (`run --notify`), and the `notify` subcommand's
//! settings.

use std::time::Duration;

use super::database::{DatabaseSettings, database_settings};
use super::error::{ConfigError, invalid};
use crate::cli::{NotifyArgs, NotifyCmdArgs, NotifyFormatArg, NotifyOnArg};
use crate::notify::{NotifierConfig, NotifyFormat, NotifyOn, WebhookUrl};
use crate::report::RunSelector;

/// Where and how run notifications go.
#[derive(Debug, Clone)]
pub struct NotifySettings {
    pub notifier: NotifierConfig,
    pub format: NotifyFormat,
    pub on: NotifyOn,
}

/// Validates the notification flags: `None` when no URL is given. A bad URL is a
/// configuration error naming its host only (the URL is a secret).
pub fn notify_settings(
    args: &NotifyArgs,
    on: NotifyOnArg,
) -> Result<Option<NotifySettings>, ConfigError> {
    let mut urls = Vec::new();
    for value in &args.notify {
        urls.extend(WebhookUrl::parse_list(value).map_err(|e| invalid("--notify", e.to_string()))?);
    }
    if urls.is_empty() {
        return Ok(None);
    }
    if !(args.notify_timeout > 0.0 && args.notify_timeout <= 120.0) {
        return Err(invalid(
            "--notify-timeout",
            "must be within (0, 120] seconds",
        ));
    }
    Ok(Some(NotifySettings {
        notifier: NotifierConfig {
            urls,
            timeout: Duration::from_secs_f64(args.notify_timeout),
            attempts: 3,
            backoff: Duration::from_millis(args.notify_backoff_ms),
        },
        format: match args.notify_format {
            NotifyFormatArg::Slack => NotifyFormat::Slack,
            NotifyFormatArg::Json => NotifyFormat::Json,
        },
        on: match on {
            NotifyOnArg::Always => NotifyOn::Always,
            NotifyOnArg::Changes => NotifyOn::Changes,
            NotifyOnArg::Problems => NotifyOn::Problems,
        },
    }))
}
/// `notify`, validated: a webhook is required.
#[derive(Debug, Clone)]
pub struct NotifyCmdSettings {
    pub database: DatabaseSettings,
    pub run: RunSelector,
    pub notify: NotifySettings,
}

pub(super) fn notify_cmd_settings(args: NotifyCmdArgs) -> Result<NotifyCmdSettings, ConfigError> {
    let notify = notify_settings(&args.notify, NotifyOnArg::Always)?
        .ok_or_else(|| invalid("--notify", "give a webhook URL (or set PAYPLE_NOTIFY_URL)"))?;
    Ok(NotifyCmdSettings {
        database: database_settings(args.database),
        run: RunSelector::parse(&args.run)?,
        notify,
    })
}
