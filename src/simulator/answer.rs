//! What the simulator answers: partner authentication and a lookup's answer for a key
//! (success, gone, error or a mismatching id), before encoding.

use axum::http::HeaderMap;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::faults::Faults;
use super::keys::{SimKey, SimKind};
use super::lock::lock;
use super::php::{
    INTERNAL_ERROR_PAGE, LOOKUP_URL, WORK, field, json_bytes, php_response, too_many,
};
use super::state::{Counters, LogLine, Shared};
use super::tokens::{Issued, Triple};
use crate::domain::stable_hash;
use axum::http::StatusCode;
use axum::response::Response;

impl Shared {
    /// The answer of a fault episode (or `always_code`) covering lookup number `n`.
    pub(super) fn episode(
        &self,
        faults: &Faults,
        n: u64,
        now: Instant,
        log: &mut LogLine,
    ) -> Option<Response> {
        let e = &self.episodes;
        if let Some(t) = &faults.throttle
            && t.covers(n, now, &e.throttle)
        {
            Counters::bump(&self.counters.throttled);
            log.http_status = Some(429);
            log.fault = "throttle";
            return Some(too_many(&t.what.max(1).to_string()));
        }
        if let Some(o) = &faults.outage
            && o.covers(n, now, &e.outage)
        {
            Counters::bump(&self.counters.outage);
            log.http_status = Some(o.what);
            log.fault = "outage";
            let status = StatusCode::from_u16(o.what).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            return Some(php_response(
                status,
                INTERNAL_ERROR_PAGE.as_bytes().to_vec(),
            ));
        }
        let (code, msg, fault) = if let Some(code) = &faults.always_code {
            Counters::bump(&self.counters.always_code);
            (code, "가맹점 인증에 실패했습니다.", "always_code")
        } else if let Some(storm) = &faults.storm
            && storm.covers(n, now, &e.storm)
        {
            Counters::bump(&self.counters.storm);
            (&storm.what, "시스템 점검 중입니다", "storm")
        } else {
            return None;
        };
        log.fault = fault;
        log.code = Some(code.clone());
        let answer = Answer::error(code, msg, None);
        Some(php_response(
            StatusCode::OK,
            json_bytes(&answer.body, false),
        ))
    }

    /// Partner authentication: the answer and the code for the log.
    pub(super) fn authenticate(
        &self,
        headers: &HeaderMap,
        request: &Value,
    ) -> (Value, &'static str) {
        let index = match self.partner_of(headers, request) {
            Ok(index) => index,
            Err((code, msg)) => {
                return (
                    json!({"result": "error", "result_msg": format!("{code} : {msg}")}),
                    code,
                );
            }
        };
        let work = field(request, "PCD_PAY_WORK");
        if work != WORK {
            return (
                json!({
                    "result": "error",
                    "result_msg": "요청 작업구분(PCD_PAY_WORK)이 올바르지 않습니다."
                }),
                "bad_work",
            );
        }
        let issued = Issued {
            partner: index,
            expires: Instant::now() + self.token_ttl,
        };
        let triple = lock(&self.tokens).issue(issued);
        (
            json!({
                "server_name": self.server_name,
                "result": "success",
                "result_msg": "사용자 인증 완료!!",
                "cst_id": triple.cst_id,
                "custKey": triple.cust_key,
                "AuthKey": triple.auth_key,
                "PCD_PAY_HOST": self.pay_host,
                "PCD_PAY_URL": LOOKUP_URL,
                "return_url": format!("{}{}", self.pay_host, LOOKUP_URL),
            }),
            "success",
        )
    }

    /// The partner the request authenticates as (its index), or the code and message
    /// Payple refuses it with.
    fn partner_of(
        &self,
        headers: &HeaderMap,
        request: &Value,
    ) -> Result<usize, (&'static str, &'static str)> {
        let cst_id = field(request, "cst_id");
        let cust_key = field(request, "custKey");
        if cst_id.trim().is_empty() {
            return Err(("AUTH0001", "파트너 아이디(cst_id)가 없습니다."));
        }
        if cust_key.trim().is_empty() {
            return Err(("AUTH0002", "파트너 인증키(custKey)가 없습니다."));
        }
        let unknown = ("AUTH0003", "파트너 정보가 없습니다.");
        let (index, partner) = self
            .partners
            .iter()
            .enumerate()
            .find(|(_, (p, _))| p.cst_id == cst_id)
            .map(|(i, (p, _))| (i, p))
            .ok_or(unknown)?;
        if !self.referer_matches(headers, partner) {
            return Err(("AUTH0004", "CONNECT SERVER ERROR!!"));
        }
        if partner.cust_key != cust_key {
            return Err(unknown);
        }
        Ok(index)
    }

    /// The protocol answer to a lookup that passed the fault stage.
    pub(super) fn answer(&self, headers: &HeaderMap, request: &Value, payer_id: &str) -> Answer {
        let now = Instant::now();
        let presented = Triple {
            cst_id: field(request, "PCD_CST_ID"),
            cust_key: field(request, "PCD_CUST_KEY"),
            auth_key: field(request, "PCD_AUTH_KEY"),
        };
        let issued = lock(&self.tokens).find(&presented);
        let referer_ok = match issued {
            Some(issued) => self
                .partners
                .get(issued.partner)
                .is_some_and(|(p, _)| self.referer_matches(headers, p)),
            None => self.referer_matches_any(headers),
        };
        if !referer_ok {
            return Answer::error("AUTH0004", "CONNECT SERVER ERROR!!", None);
        }
        match issued {
            None => {
                Counters::bump(&self.counters.bad_token_lookups);
                return Answer::error("SPAY0001", "가맹점 인증에 실패했습니다.", None);
            }
            Some(issued) if now >= issued.expires => {
                Counters::bump(&self.counters.expired_token_lookups);
                let mut answer = Answer::error(
                    "SPAY0001",
                    "가맹점 인증 시간이 만료되었습니다. 다시 인증해 주세요.",
                    None,
                );
                answer.expired_token = true;
                return answer;
            }
            Some(_) => {}
        }
        if payer_id.trim().is_empty() {
            return Answer::error("SPCD0001", "결제키(PCD_PAYER_ID)가 없습니다.", None);
        }
        let key = self.keys.get(payer_id);
        let mut answer = match key.kind {
            SimKind::Card | SimKind::Transfer => Answer::success(&key, payer_id),
            SimKind::Mismatch => Answer::success(&key, &other_payer_id(payer_id)),
            SimKind::Gone | SimKind::Error => Answer::error(&key.code, &key.msg, Some(payer_id)),
        };
        answer.bom = key.bom;
        answer
    }
}
/// A lookup answer before encoding.
pub(super) struct Answer {
    pub(super) body: Value,
    pub(super) code: String,
    pub(super) bom: bool,
    pub(super) expired_token: bool,
}

impl Answer {
    pub(super) fn error(code: &str, msg: &str, payer_id: Option<&str>) -> Self {
        let mut body = json!({
            "PCD_PAY_RST": "error",
            "PCD_PAY_CODE": code,
            "PCD_PAY_MSG": msg,
            "PCD_PAY_WORK": WORK,
        });
        if let (Some(id), Some(map)) = (payer_id, body.as_object_mut()) {
            map.insert("PCD_PAYER_ID".to_owned(), Value::from(id));
        }
        Self {
            body,
            code: code.to_owned(),
            bom: false,
            expired_token: false,
        }
    }

    /// A success answer echoing `echoed_id`, with every field of both pay types (the other
    /// type's empty), an unknown field or two, and numeric codes for some keys.
    pub(super) fn success(key: &SimKey, echoed_id: &str) -> Self {
        let code_value = |code: &str| -> Value {
            match code.parse::<u64>() {
                Ok(n) if key.numeric_codes => Value::from(n),
                _ => Value::from(code),
            }
        };
        let mut body = json!({
            "PCD_PAY_RST": "success",
            "PCD_PAY_CODE": key.code,
            "PCD_PAY_MSG": key.msg,
            "PCD_PAY_WORK": WORK,
            "PCD_PAY_TYPE": key.pay_type,
            "PCD_PAY_BANKACCTYPE": key.bank_account_type,
            "PCD_PAYER_ID": echoed_id,
            "PCD_PAYER_NAME": key.payer_name,
            "PCD_PAYER_HP": key.payer_phone_mask,
            "PCD_PAYER_EMAIL": "",
            "PCD_PAY_CARD": code_value(&key.card_code),
            "PCD_PAY_CARDNAME": key.card_name,
            "PCD_PAY_CARDNUM": key.card_mask,
            "PCD_PAY_BANK": code_value(&key.bank_code),
            "PCD_PAY_BANKNAME": key.bank_name,
            "PCD_PAY_BANKNUM": key.bank_mask,
            "PCD_PAY_ISTAX": key.is_tax,
            "PCD_REGULER_FLAG": "N",
        });
        if key.numeric_codes
            && let Some(map) = body.as_object_mut()
        {
            map.insert(
                "PCD_PAYER_META".to_owned(),
                json!({"grade": 1, "tags": [], "since": 20240101}),
            );
        }
        Self {
            body,
            code: key.code.clone(),
            bom: false,
            expired_token: false,
        }
    }
}

/// Another key's id, as a mismatching answer echoes it.
pub(super) fn other_payer_id(payer_id: &str) -> String {
    let a = stable_hash(format!("mismatch:{payer_id}").as_bytes());
    let b = stable_hash(format!("{payer_id}:mismatch").as_bytes());
    let other = format!("{a:016x}{b:016x}");
    if other == payer_id {
        format!("{other}0")
    } else {
        other
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_answers_carry_both_pay_types() {
        let mut key = super::super::derive_key("payer-000001");
        key.kind = SimKind::Card;
        key.pay_type = "card".to_owned();
        key.card_code = "0200".to_owned();
        key.bank_code = String::new();
        key.numeric_codes = true;
        let answer = Answer::success(&key, "payer-000001");
        assert_eq!(answer.body["PCD_PAY_CARD"], json!(200));
        assert_eq!(answer.body["PCD_PAY_BANK"], json!(""));
        assert_eq!(answer.body["PCD_PAY_BANKNUM"], json!(""));
        assert!(answer.body.get("PCD_PAYER_META").is_some());
        key.numeric_codes = false;
        let answer = Answer::success(&key, "payer-000001");
        assert_eq!(answer.body["PCD_PAY_CARD"], json!("0200"));
    }
    #[test]
    fn mismatch_ids_differ() {
        for id in ["a", "payer-1", ""] {
            assert_ne!(other_payer_id(id), id);
        }
    }
}
