//! `lookup`: a few keys looked up now, one JSON object per key on stdout.

use std::sync::Arc;

use futures::StreamExt;
use serde::Serialize;

use super::error::AppError;
use super::open::payple_client;
use super::output::print_json;
use crate::domain::{KeyDetails, KeyStatus, LookupOutcome, mask_payer_id};
use crate::exit::ExitStatus;
use crate::pipeline;
use crate::settings::LookupSettings;

/// One line of `lookup` output.
#[derive(Debug, Serialize)]
pub struct LookupLine {
    pub payer_id: String,
    pub status: KeyStatus,
    /// The card or bank fields, in line with the others.
    #[serde(flatten)]
    pub details: KeyDetails,
    pub result_code: Option<String>,
    pub result_msg: Option<String>,
    pub attempts: u32,
}

impl LookupLine {
    pub fn new(raw: &str, mut outcome: LookupOutcome) -> Self {
        outcome.bound();
        Self {
            payer_id: mask_payer_id(raw.trim()),
            status: outcome.status,
            details: outcome.details,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::PayType;

    #[test]
    fn a_line_holds_the_card_and_bank_fields_in_order_and_no_payer_name_or_phone() {
        let outcome = LookupOutcome {
            status: KeyStatus::Active,
            details: KeyDetails {
                pay_type: Some(PayType::Card),
                card_code: Some("0200".to_owned()),
                card_name: Some("BC".to_owned()),
                card_mask: Some("4673-****-****-9734".to_owned()),
                bank_account_type: Some("personal".to_owned()),
                payer_name: Some("Hong Gildong".to_owned()),
                payer_phone_mask: Some("010-****-1234".to_owned()),
                is_tax: Some("N".to_owned()),
                ..KeyDetails::default()
            },
            result_code: Some("0000".to_owned()),
            result_msg: Some("ok".to_owned()),
            attempts: 1,
        };
        let line = LookupLine::new("NS9qNTgzU2xRNHR2RmFBWWFBTWk5UT09", outcome);
        assert_eq!(
            serde_json::to_string(&line).expect("serializes"),
            r#"{"payer_id":"NS9q****UT09","status":"active","pay_type":"card","card_code":"0200","card_name":"BC","card_mask":"4673-****-****-9734","bank_code":null,"bank_name":null,"bank_mask":null,"bank_account_type":"personal","result_code":"0000","result_msg":"ok","attempts":1}"#
        );
    }
}
