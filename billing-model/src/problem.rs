//! The body of every refusal both binaries give for a metered unit:
//! `application/problem+json` (RFC 9457) with tollgate's stable `code`, and for limit
//! refusals which limit, how much was used, when it resets and where to upgrade.

use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;

use crate::entitlement::{EntitlementSnapshot, RefusalCode};

/// A refusal's body. The proxy writes it as the whole response; the control plane's
/// `POST /usage/record` answers the same body for the same decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub code: String,
    pub detail: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used: Option<u64>,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_end: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade_url: Option<String>,
}

impl Problem {
    /// A problem without limit details.
    pub fn new(status: u16, code: &str, title: &str, detail: impl Into<String>) -> Self {
        Self {
            kind: format!("https://tollgate.dev/problems/{code}"),
            title: title.to_owned(),
            status,
            code: code.to_owned(),
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
        let plan = &snapshot.plan;
        let (status, title, detail) = match code {
            RefusalCode::UsageLimitExceeded => (
                403,
                "Usage limit exceeded",
                format!(
                    "The {plan} plan includes {limit} tickets per billing period; all are used. Upgrade your plan to continue."
                ),
            ),
            RefusalCode::ChatDisabled => (
                403,
                "Chat disabled",
                format!(
                    "Chat is disabled on the {plan} plan once its {limit} included tickets are used. Upgrade your plan to continue."
                ),
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
        p.plan = Some(plan.to_string());
        p.limit = Some(limit);
        p.used = Some(used);
        p.period_end = snapshot.period_end.format(&Rfc3339).ok();
        p.upgrade_url = snapshot.upgrade_url.clone();
        p
    }

    /// Redis cannot be asked and the failure policy is `deny`.
    pub fn usage_check_unavailable() -> Self {
        Problem::new(
            503,
            "usage_check_unavailable",
            "Service Unavailable",
            "Usage limits cannot be checked right now. Please retry shortly.",
        )
    }

    /// The customer's entitlement is not cached and the control plane cannot be asked.
    pub fn entitlement_unavailable() -> Self {
        Problem::new(
            503,
            "entitlement_unavailable",
            "Service Unavailable",
            "Your plan cannot be looked up right now. Please retry shortly.",
        )
    }

    /// The upstream succeeded but the unit could not be recorded, so the success is not
    /// delivered (a unit delivered must be a unit recorded and counted).
    pub fn usage_not_recorded() -> Self {
        Problem::new(
            503,
            "usage_not_recorded",
            "Service Unavailable",
            "Your request could not be recorded for billing, so its result is withheld. Please retry shortly.",
        )
    }

    /// The JSON body.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}
