//! What a refused or unidentified client receives: `application/problem+json` with a
//! stable code, plus the draft-11 RateLimit headers on every metered response.

use billing_model::{EntitlementSnapshot, RefusalCode};
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::Session;
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// A refusal's body (RFC 9457 problem details plus tollgate's fields).
#[derive(Debug, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: &'static str,
    pub status: u16,
    pub code: &'static str,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub used: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub period_end: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upgrade_url: Option<String>,
}

impl Problem {
    pub fn new(
        status: u16,
        code: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            kind: format!("https://tollgate.dev/problems/{code}"),
            title,
            status,
            code,
            detail: detail.into(),
            plan: None,
            limit: None,
            used: None,
            period_end: None,
            upgrade_url: None,
        }
    }

    /// A limit refusal for `snapshot`: which limit, how much was used, where to upgrade.
    pub fn refusal(
        code: RefusalCode,
        snapshot: &EntitlementSnapshot,
        limit: u64,
        used: u64,
    ) -> Self {
        let (status, title, detail) = match code {
            RefusalCode::UsageLimitExceeded => (
                403,
                "Usage limit exceeded",
                format!("The {} plan includes {limit} tickets per billing period; all are used. Upgrade your plan to continue.", snapshot.plan),
            ),
            RefusalCode::ChatDisabled => (
                403,
                "Chat disabled",
                format!("Chat is disabled on the {} plan once its {limit} included tickets are used. Upgrade your plan to continue.", snapshot.plan),
            ),
            RefusalCode::CreditsExhausted => (
                402,
                "Credits exhausted",
                "Your prepaid ticket credits are used up. Buy more credits to continue.".to_owned(),
            ),
            RefusalCode::PaymentRequired => (
                402,
                "Payment required",
                "Your last payment did not go through and the grace period has ended; the free allowance is used up. Update your payment method to continue.".to_owned(),
            ),
        };
        let mut p = Problem::new(status, code.as_str(), title, detail);
        p.plan = Some(snapshot.plan.to_string());
        p.limit = Some(limit);
        p.used = Some(used);
        p.period_end = snapshot.period_end.format(&Rfc3339).ok();
        p.upgrade_url = snapshot.upgrade_url.clone();
        p
    }
}

/// Writes `problem` as the whole response; the upstream is never contacted.
pub async fn respond(
    session: &mut Session,
    problem: &Problem,
    extra_headers: &[(&'static str, String)],
) -> Result<()> {
    let body = Bytes::from(serde_json::to_vec(problem).unwrap_or_default());
    let mut header = ResponseHeader::build(problem.status, Some(4 + extra_headers.len()))?;
    header.insert_header("content-type", "application/problem+json")?;
    header.insert_header("content-length", body.len().to_string())?;
    header.insert_header("cache-control", "no-store")?;
    for (name, value) in extra_headers {
        header.insert_header(*name, value.as_str())?;
    }
    session
        .write_response_header(Box::new(header), false)
        .await?;
    session.write_response_body(Some(body), true).await?;
    Ok(())
}

/// The quota name used in the RateLimit headers.
pub fn quota_name(credits: bool) -> &'static str {
    if credits { "credits" } else { "tickets" }
}

/// `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers-11): the quota and, for
/// period limits, its window in seconds.
pub fn policy_header(name: &str, quota: u64, window_seconds: Option<i64>) -> String {
    match window_seconds {
        Some(w) => format!("\"{name}\";q={quota};w={w}"),
        None => format!("\"{name}\";q={quota}"),
    }
}

/// `RateLimit`: what remains and, for period limits, seconds until it resets.
pub fn ratelimit_header(name: &str, remaining: u64, reset_seconds: Option<i64>) -> String {
    match reset_seconds {
        Some(t) => format!("\"{name}\";r={remaining};t={t}"),
        None => format!("\"{name}\";r={remaining}"),
    }
}

/// Seconds from `now` until `end`, at least 0.
pub fn seconds_until(end: OffsetDateTime, now: OffsetDateTime) -> i64 {
    (end - now).whole_seconds().max(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_follow_the_draft_structured_field_syntax() {
        assert_eq!(
            policy_header("tickets", 10, Some(2_592_000)),
            "\"tickets\";q=10;w=2592000"
        );
        assert_eq!(
            ratelimit_header("tickets", 3, Some(3600)),
            "\"tickets\";r=3;t=3600"
        );
        assert_eq!(ratelimit_header("credits", 0, None), "\"credits\";r=0");
    }
}
