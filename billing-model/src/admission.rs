//! The one admission decision for a metered unit, made by the proxy for ticket traffic
//! and by the control plane's `POST /usage/record` for usage reported directly.
//!
//! It is split in two pure steps around the only I/O, the shared counter:
//! [`first_step`] says whether the counter must be asked (a hard limit) or not (paid
//! overage; a limit known to be used up), and [`decide`] turns the entitlement, what
//! the counter answered, the failure policy and the time into admit or refuse, with
//! the refusal body, the quota to report and the one [`Outcome`] the metrics count.

use serde::Deserialize;
use time::OffsetDateTime;

use crate::entitlement::{CounterScope, Enforcement, EntitlementSnapshot, RefusalCode};
use crate::problem::Problem;

/// What hard-limited requests get while the counter cannot be asked.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FailurePolicy {
    /// Refuse (503 `usage_check_unavailable`): never over the limit.
    #[default]
    Deny,
    /// Admit and record: never refuse a paying customer for tollgate's outage.
    Allow,
}

/// Every way a request through tollgate can end; its label is the metrics'
/// `outcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Not a metered or chat route.
    Passthrough,
    /// No valid identity on a route that needs one.
    Unauthorized,
    /// A path whose spelling is ambiguous (400).
    BadPath,
    /// The plan is not cached and the control plane cannot be asked.
    EntitlementUnavailable,
    /// Paid overage: admitted without a reservation.
    AdmittedOverage,
    /// A hard limit had room: admitted holding a unit.
    Admitted,
    /// The counter could not be asked; policy `allow` admitted it.
    FailOpen,
    /// The counter could not be asked; policy `deny` refused it.
    FailClosed,
    /// The limit is known to be used up: refused without asking the counter.
    RefusedFromMemory,
    RefusedLimit,
    RefusedCredits,
    RefusedPayment,
    /// Chat closed for this customer.
    RefusedChat,
    /// The upstream succeeded but the unit could not be recorded or held, so the
    /// success was not delivered.
    Withheld,
}

impl Outcome {
    /// The metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Passthrough => "passthrough",
            Outcome::Unauthorized => "unauthorized",
            Outcome::BadPath => "bad_path",
            Outcome::EntitlementUnavailable => "entitlement_unavailable",
            Outcome::AdmittedOverage => "admitted_overage",
            Outcome::Admitted => "admitted",
            Outcome::FailOpen => "fail_open",
            Outcome::FailClosed => "fail_closed",
            Outcome::RefusedFromMemory => "refused_from_memory",
            Outcome::RefusedLimit => "refused_limit",
            Outcome::RefusedCredits => "refused_credits",
            Outcome::RefusedPayment => "refused_payment",
            Outcome::RefusedChat => "refused_chat",
            Outcome::Withheld => "withheld",
        }
    }

    /// Every outcome, so metrics can export each from the first scrape.
    pub const ALL: [Outcome; 14] = [
        Outcome::Passthrough,
        Outcome::Unauthorized,
        Outcome::BadPath,
        Outcome::EntitlementUnavailable,
        Outcome::AdmittedOverage,
        Outcome::Admitted,
        Outcome::FailOpen,
        Outcome::FailClosed,
        Outcome::RefusedFromMemory,
        Outcome::RefusedLimit,
        Outcome::RefusedCredits,
        Outcome::RefusedPayment,
        Outcome::RefusedChat,
        Outcome::Withheld,
    ];

    /// Whether the request goes on to the upstream (or is recorded).
    pub fn admits(self) -> bool {
        matches!(
            self,
            Outcome::AdmittedOverage | Outcome::Admitted | Outcome::FailOpen | Outcome::Passthrough
        )
    }

    /// Whether a unit is held in the counter for the request.
    pub fn holds_a_unit(self) -> bool {
        self == Outcome::Admitted
    }
}

/// What to do before deciding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Decide now, without the counter (paid overage, or a limit known used up).
    DecideWithoutCounter,
    /// Reserve `units` under `limit` on `scope`, then decide.
    Reserve { limit: u64, scope: CounterScope },
}

/// Whether the counter must be asked for this entitlement.
pub fn first_step(snapshot: &EntitlementSnapshot, known_exhausted: bool) -> Step {
    match snapshot.enforcement() {
        Enforcement::PaidOverage => Step::DecideWithoutCounter,
        Enforcement::HardLimit { .. } if known_exhausted => Step::DecideWithoutCounter,
        Enforcement::HardLimit { limit, counter, .. } => Step::Reserve {
            limit,
            scope: counter,
        },
    }
}

/// What the shared counter answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CounterAnswer {
    /// Not asked ([`Step::DecideWithoutCounter`]).
    NotAsked,
    /// The reservation's outcome.
    Reserved {
        admitted: bool,
        committed: u64,
        in_flight: u64,
    },
    /// Unreachable, or slower than the budget.
    Unavailable,
}

/// The allowance to report (RateLimit headers, `remaining` in the API).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub scope: CounterScope,
    pub limit: u64,
    pub remaining: u64,
    /// The billing period's length in seconds (period limits only).
    pub window_seconds: Option<i64>,
    /// Seconds until the period ends (period limits only).
    pub reset_seconds: Option<i64>,
}

/// Admit or refuse, and everything the response needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub outcome: Outcome,
    /// The body of a refusal (`None` when admitted).
    pub refusal: Option<Problem>,
    pub quota: Option<Quota>,
    /// `Retry-After` seconds for a refusal that can clear on its own.
    pub retry_after: Option<i64>,
    /// Committed units alone reach the limit: later requests can be refused from
    /// memory until a new snapshot or period.
    pub exhausted: bool,
}

fn seconds_until(end: OffsetDateTime, now: OffsetDateTime) -> i64 {
    (end - now).whole_seconds().max(0)
}

fn quota(
    snapshot: &EntitlementSnapshot,
    scope: CounterScope,
    limit: u64,
    remaining: u64,
    now: OffsetDateTime,
) -> Quota {
    let period = scope == CounterScope::Period;
    Quota {
        scope,
        limit,
        remaining,
        window_seconds: period
            .then(|| (snapshot.period_end - snapshot.period_start).whole_seconds()),
        reset_seconds: period.then(|| seconds_until(snapshot.period_end, now)),
    }
}

fn refused_outcome(code: RefusalCode) -> Outcome {
    match code {
        RefusalCode::CreditsExhausted => Outcome::RefusedCredits,
        RefusalCode::PaymentRequired => Outcome::RefusedPayment,
        RefusalCode::ChatDisabled => Outcome::RefusedChat,
        RefusalCode::UsageLimitExceeded => Outcome::RefusedLimit,
    }
}

/// The decision for `units` units of a metered request.
///
/// `observed_used` is the highest committed count this caller has seen for the period
/// (paid overage reports its remaining included units from it without asking Redis).
pub fn decide(
    snapshot: &EntitlementSnapshot,
    units: u32,
    answer: CounterAnswer,
    policy: FailurePolicy,
    observed_used: u64,
    now: OffsetDateTime,
) -> Decision {
    let (limit, scope, code) = match snapshot.enforcement() {
        Enforcement::PaidOverage => {
            let used = snapshot.units_used.max(observed_used);
            return Decision {
                outcome: Outcome::AdmittedOverage,
                refusal: None,
                quota: Some(quota(
                    snapshot,
                    CounterScope::Period,
                    snapshot.included_units,
                    snapshot.included_units.saturating_sub(used),
                    now,
                )),
                retry_after: None,
                exhausted: false,
            };
        }
        Enforcement::HardLimit {
            limit,
            counter,
            code,
        } => (limit, counter, code),
    };
    // A refusal only time can clear: the period limit resets at the period end;
    // credits and payment need the customer to act.
    let until_reset =
        (code == RefusalCode::UsageLimitExceeded).then(|| seconds_until(snapshot.period_end, now));
    match answer {
        CounterAnswer::NotAsked => Decision {
            outcome: Outcome::RefusedFromMemory,
            refusal: Some(Problem::refusal(code, snapshot, limit, limit)),
            quota: Some(quota(snapshot, scope, limit, 0, now)),
            retry_after: until_reset,
            exhausted: true,
        },
        CounterAnswer::Reserved {
            admitted,
            committed,
            in_flight,
        } => {
            let remaining = limit.saturating_sub(committed + in_flight);
            if admitted {
                return Decision {
                    outcome: Outcome::Admitted,
                    refusal: None,
                    quota: Some(quota(snapshot, scope, limit, remaining, now)),
                    retry_after: None,
                    exhausted: false,
                };
            }
            // Held only by requests still in flight: one of them may give its unit
            // back within a second or so.
            let committed_only = committed + u64::from(units) > limit;
            Decision {
                outcome: refused_outcome(code),
                refusal: Some(Problem::refusal(code, snapshot, limit, committed)),
                quota: Some(quota(snapshot, scope, limit, remaining, now)),
                retry_after: if committed_only { until_reset } else { Some(1) },
                exhausted: committed >= limit,
            }
        }
        CounterAnswer::Unavailable => match policy {
            FailurePolicy::Deny => Decision {
                outcome: Outcome::FailClosed,
                refusal: Some(Problem::usage_check_unavailable()),
                quota: None,
                retry_after: Some(1),
                exhausted: false,
            },
            FailurePolicy::Allow => Decision {
                outcome: Outcome::FailOpen,
                refusal: None,
                quota: None,
                retry_after: None,
                exhausted: false,
            },
        },
    }
}

/// The chat route: free to use, closed when the control plane closed it or a period
/// hard limit (Free, a lapsed payment) is used up (`exhausted`: known, or the counter
/// says so). `None` admits.
pub fn chat(snapshot: &EntitlementSnapshot, exhausted: bool) -> Option<Problem> {
    match snapshot.enforcement() {
        Enforcement::HardLimit {
            limit,
            counter: CounterScope::Period,
            ..
        } if exhausted || !snapshot.chat_enabled => Some(Problem::refusal(
            RefusalCode::ChatDisabled,
            snapshot,
            limit,
            limit,
        )),
        _ if !snapshot.chat_enabled => Some(Problem::refusal(
            RefusalCode::ChatDisabled,
            snapshot,
            snapshot.included_units,
            snapshot.units_used,
        )),
        _ => None,
    }
}

/// Whether the chat decision needs the period counter (a period hard limit not yet
/// known to be used up, with chat otherwise open).
pub fn chat_needs_counter(snapshot: &EntitlementSnapshot, known_exhausted: bool) -> Option<u64> {
    match snapshot.enforcement() {
        Enforcement::HardLimit {
            limit,
            counter: CounterScope::Period,
            ..
        } if !known_exhausted && snapshot.chat_enabled => Some(limit),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{BillingModel, Catalog, PlanId};
    use crate::customer::CustomerId;
    use crate::entitlement::AccessStatus;
    use crate::period::BillingPeriod;
    use time::macros::datetime;

    fn catalog() -> Catalog {
        Catalog::from_toml_str("config/plans.toml", include_str!("../../config/plans.toml"))
            .unwrap()
    }

    const NOW: OffsetDateTime = datetime!(2024-05-11 00:00:00 UTC);

    fn free() -> EntitlementSnapshot {
        let period = BillingPeriod::nth(datetime!(2024-05-01 00:00:00 UTC), 0).unwrap();
        EntitlementSnapshot::free_default(CustomerId::parse("c").unwrap(), &catalog(), period)
    }

    fn premium() -> EntitlementSnapshot {
        EntitlementSnapshot {
            plan: PlanId::parse("premium").unwrap(),
            included_units: 100,
            overage_allowed: true,
            units_used: 30,
            ..free()
        }
    }

    fn credits(purchased: u64) -> EntitlementSnapshot {
        EntitlementSnapshot {
            billing_model: BillingModel::CreditBurndown,
            credit_units_purchased: purchased,
            ..premium()
        }
    }

    fn reserved(admitted: bool, committed: u64, in_flight: u64) -> CounterAnswer {
        CounterAnswer::Reserved {
            admitted,
            committed,
            in_flight,
        }
    }

    /// The decision table: entitlement × counter answer × policy → outcome, status,
    /// code, retry-after.
    #[test]
    fn the_decision_table() {
        let lapsed = EntitlementSnapshot {
            status: AccessStatus::Lapsed,
            included_units: 10,
            ..premium()
        };
        #[allow(clippy::type_complexity)]
        let table: Vec<(
            &str,
            EntitlementSnapshot,
            CounterAnswer,
            FailurePolicy,
            Outcome,
            Option<(u16, &str)>,
            Option<i64>,
        )> = vec![
            (
                "paid overage needs no counter",
                premium(),
                CounterAnswer::NotAsked,
                FailurePolicy::Deny,
                Outcome::AdmittedOverage,
                None,
                None,
            ),
            (
                "paid overage ignores an outage",
                premium(),
                CounterAnswer::Unavailable,
                FailurePolicy::Deny,
                Outcome::AdmittedOverage,
                None,
                None,
            ),
            (
                "free with room",
                free(),
                reserved(true, 3, 1),
                FailurePolicy::Deny,
                Outcome::Admitted,
                None,
                None,
            ),
            (
                "free used up",
                free(),
                reserved(false, 10, 0),
                FailurePolicy::Deny,
                Outcome::RefusedLimit,
                Some((403, "usage_limit_exceeded")),
                Some(21 * 86_400),
            ),
            (
                "free held by in-flight",
                free(),
                reserved(false, 8, 2),
                FailurePolicy::Deny,
                Outcome::RefusedLimit,
                Some((403, "usage_limit_exceeded")),
                Some(1),
            ),
            (
                "free known used up",
                free(),
                CounterAnswer::NotAsked,
                FailurePolicy::Deny,
                Outcome::RefusedFromMemory,
                Some((403, "usage_limit_exceeded")),
                Some(21 * 86_400),
            ),
            (
                "free, Redis down, deny",
                free(),
                CounterAnswer::Unavailable,
                FailurePolicy::Deny,
                Outcome::FailClosed,
                Some((503, "usage_check_unavailable")),
                Some(1),
            ),
            (
                "free, Redis down, allow",
                free(),
                CounterAnswer::Unavailable,
                FailurePolicy::Allow,
                Outcome::FailOpen,
                None,
                None,
            ),
            (
                "credits left",
                credits(37),
                reserved(true, 36, 1),
                FailurePolicy::Deny,
                Outcome::Admitted,
                None,
                None,
            ),
            (
                "credits used up",
                credits(37),
                reserved(false, 37, 0),
                FailurePolicy::Deny,
                Outcome::RefusedCredits,
                Some((402, "credits_exhausted")),
                None,
            ),
            (
                "lapsed at the free limit",
                lapsed.clone(),
                reserved(false, 10, 0),
                FailurePolicy::Deny,
                Outcome::RefusedPayment,
                Some((402, "payment_required")),
                None,
            ),
            (
                "lapsed known used up",
                lapsed,
                CounterAnswer::NotAsked,
                FailurePolicy::Allow,
                Outcome::RefusedFromMemory,
                Some((402, "payment_required")),
                None,
            ),
        ];
        for (name, snapshot, answer, policy, outcome, refusal, retry_after) in table {
            let d = decide(&snapshot, 1, answer, policy, 0, NOW);
            assert_eq!(d.outcome, outcome, "{name}");
            assert_eq!(d.outcome.admits(), refusal.is_none(), "{name}");
            assert_eq!(
                d.refusal.as_ref().map(|p| (p.status, p.code.as_str())),
                refusal,
                "{name}"
            );
            assert_eq!(d.retry_after, retry_after, "{name}");
        }
    }

    #[test]
    fn only_a_hard_limit_not_known_used_up_asks_the_counter() {
        assert_eq!(first_step(&premium(), false), Step::DecideWithoutCounter);
        assert_eq!(
            first_step(&free(), false),
            Step::Reserve {
                limit: 10,
                scope: CounterScope::Period
            }
        );
        assert_eq!(first_step(&free(), true), Step::DecideWithoutCounter);
        assert_eq!(
            first_step(&credits(5), false),
            Step::Reserve {
                limit: 5,
                scope: CounterScope::Credits
            }
        );
    }

    #[test]
    fn a_limit_refusal_says_which_limit_how_much_was_used_and_where_to_upgrade() {
        let mut snapshot = free();
        snapshot.upgrade_url = Some("https://example.com/billing".into());
        let d = decide(
            &snapshot,
            1,
            reserved(false, 10, 0),
            FailurePolicy::Deny,
            0,
            NOW,
        );
        let p = d.refusal.unwrap();
        assert_eq!(p.plan.as_deref(), Some("free"));
        assert_eq!((p.limit, p.used), (Some(10), Some(10)));
        assert_eq!(p.period_end.as_deref(), Some("2024-06-01T00:00:00Z"));
        assert_eq!(
            p.upgrade_url.as_deref(),
            Some("https://example.com/billing")
        );
        assert!(d.exhausted);
        let q = d.quota.unwrap();
        assert_eq!(
            (q.limit, q.remaining, q.window_seconds),
            (10, 0, Some(31 * 86_400))
        );
    }

    #[test]
    fn quotas_report_what_is_left() {
        let d = decide(
            &free(),
            1,
            reserved(true, 3, 2),
            FailurePolicy::Deny,
            0,
            NOW,
        );
        assert_eq!(d.quota.unwrap().remaining, 5);
        let d = decide(
            &premium(),
            1,
            CounterAnswer::NotAsked,
            FailurePolicy::Deny,
            45,
            NOW,
        );
        assert_eq!(
            d.quota.unwrap().remaining,
            55,
            "the higher of snapshot and observed"
        );
        let d = decide(
            &credits(37),
            1,
            reserved(true, 30, 1),
            FailurePolicy::Deny,
            0,
            NOW,
        );
        let q = d.quota.unwrap();
        assert_eq!(
            (q.remaining, q.window_seconds, q.reset_seconds),
            (6, None, None)
        );
    }

    #[test]
    fn a_multi_unit_request_that_cannot_fit_in_committed_room_is_not_retried_soon() {
        // 8 committed, limit 10, a 3-unit request: no in-flight unit can make room.
        let d = decide(
            &free(),
            3,
            reserved(false, 8, 0),
            FailurePolicy::Deny,
            0,
            NOW,
        );
        assert_eq!(d.retry_after, Some(21 * 86_400));
        assert!(!d.exhausted);
    }

    #[test]
    fn chat_closes_with_the_free_limit_and_when_the_control_plane_closes_it() {
        assert_eq!(chat(&free(), false), None);
        assert_eq!(chat_needs_counter(&free(), false), Some(10));
        assert_eq!(chat_needs_counter(&free(), true), None);
        assert_eq!(chat(&free(), true).unwrap().code, "chat_disabled");
        assert_eq!(chat(&premium(), true), None, "paid plans keep chat");
        let closed = EntitlementSnapshot {
            chat_enabled: false,
            ..premium()
        };
        assert_eq!(chat(&closed, false).unwrap().status, 403);
    }

    #[test]
    fn every_outcome_has_a_distinct_label() {
        let labels: std::collections::HashSet<_> = Outcome::ALL.iter().map(|o| o.label()).collect();
        assert_eq!(labels.len(), Outcome::ALL.len());
    }
}
