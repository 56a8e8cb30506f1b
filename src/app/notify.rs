//! `notify`: sends a run's notification again by hand (e.g. to try a webhook), whatever
//! `--notify-on` would decide; a webhook not reached fails the command, and a message
//! every webhook took is told by one JSON line on stdout.

use serde::Serialize;

use super::error::AppError;
use super::open::with_store;
use super::output::print_json;
use crate::exit::ExitStatus;
use crate::notify::{Notifier, NotifyOn};
use crate::report::ReportError;
use crate::report::deliver::{RunEnding, notify_run};
use crate::report::select::resolve_run;
use crate::settings::NotifyCmdSettings;

pub(super) async fn notify(settings: NotifyCmdSettings) -> Result<ExitStatus, AppError> {
    let NotifyCmdSettings {
        database,
        run,
        notify,
    } = settings;
    let notifier = Notifier::new(notify.notifier.clone()).map_err(AppError::Notify)?;
    with_store(&database.database_url, async |store| {
        let run = resolve_run(store, run).await?;
        let ending = RunEnding::default();
        let delivery = notify_run(
            store,
            &notifier,
            notify.format,
            NotifyOn::Always,
            &run,
            ending,
        )
        .await?
        .unwrap_or_default();
        if delivery.failed > 0 {
            return Err(ReportError::NotDelivered {
                sent: delivery.sent,
                total: delivery.sent + delivery.failed,
            });
        }
        print_json(&Notified {
            notified: true,
            run_id: run.id,
            webhooks: delivery.sent,
        });
        Ok(())
    })
    .await
}

/// What `notify` prints when every webhook took the message.
#[derive(Debug, Serialize)]
struct Notified {
    notified: bool,
    run_id: i64,
    /// The webhooks that took the message.
    webhooks: u32,
}
