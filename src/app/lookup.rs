//! `lookup`: a few keys looked up now, one JSON object per key on stdout.

use std::sync::Arc;

use futures::StreamExt;
use serde::Serialize;

use super::{AppError, payple_client, print_json};
use crate::domain::{KeyStatus, LookupOutcome, mask_payer_id};
use crate::exit::ExitStatus;
use crate::pipeline;
use crate::settings::LookupSettings;

/// One line of `lookup` output.
#[derive(Debug, Serialize)]
pub struct LookupLine {
    pub payer_id: String,
    pub status: KeyStatus,
    pub pay_type: Option<&'static str>,
    pub card_code: Option<String>,
    pub card_name: Option<String>,
    pub card_mask: Option<String>,
    pub bank_code: Option<String>,
    pub bank_name: Option<String>,
    pub bank_mask: Option<String>,
    pub bank_account_type: Option<String>,
    pub result_code: Option<String>,
    pub result_msg: Option<String>,
    pub attempts: u32,
}

impl LookupLine {
    pub fn new(raw: &str, mut outcome: LookupOutcome) -> Self {
        outcome.bound();
        let d = outcome.details;
        Self {
            payer_id: mask_payer_id(raw.trim()),
            status: outcome.status,
            pay_type: d.pay_type.map(|p| p.as_str()),
            card_code: d.card_code,
            card_name: d.card_name,
            card_mask: d.card_mask,
            bank_code: d.bank_code,
            bank_name: d.bank_name,
            bank_mask: d.bank_mask,
            bank_account_type: d.bank_account_type,
            result_code: outcome.result_code,
            result_msg: outcome.result_msg,
            attempts: outcome.attempts,
        }
    }
}

/// Authenticates once, then looks the keys up (at most `concurrency` at a time) and prints
/// them in the order given. Exit 2 when a key failed or was rejected.
pub(super) async fn lookup(settings: LookupSettings) -> Result<ExitStatus, AppError> {
    let (client, sim) = payple_client(&settings.payple).await?;
    let client = Arc::new(client);
    client
        .authenticate()
        .await
        .map_err(AppError::authenticating)?;
    let mut unresolved = false;
    let never = tokio_util::sync::CancellationToken::new();
    let mut lines = futures::stream::iter(settings.payer_ids)
        .map(|raw| {
            let client = Arc::clone(&client);
            let never = never.clone();
            async move {
                let outcome = pipeline::check_one(&client, &raw, &never).await;
                (raw, outcome)
            }
        })
        .buffered(settings.concurrency);
    while let Some((raw, outcome)) = lines.next().await {
        if let Some(outcome) = outcome? {
            unresolved |= matches!(outcome.status, KeyStatus::Failed | KeyStatus::Rejected);
            print_json(&LookupLine::new(&raw, outcome));
        }
    }
    if let Some(sim) = sim {
        sim.shutdown().await;
    }
    Ok(ExitStatus::of_keys(unresolved))
}
