//! Usage events: what the proxy ships to the control plane's ledger for every unit a
//! successful request consumed.
//!
//! Delivery is at-least-once, so each event carries an id minted once at the proxy;
//! the ledger deduplicates on it. UUIDv7 ids sort by creation time, which keeps the
//! ledger's index append-mostly.

use std::num::NonZeroU32;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::catalog::BillingModel;
use crate::customer::CustomerId;
use crate::period::BillingPeriod;

/// What kind of metered request consumed the units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UsageType {
    /// A ticket was created.
    TicketCreation,
    /// An agent (chat) interaction.
    AgentInteraction,
}

/// One consumption of units by one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageEvent {
    /// Idempotency key of the event (UUIDv7, minted once at the proxy).
    pub event_id: Uuid,
    /// Who consumed the units.
    pub customer_id: CustomerId,
    /// What consumed them.
    pub usage_type: UsageType,
    /// How many units (at least one; zero is rejected on the way in).
    pub quantity: NonZeroU32,
    /// When the upstream answered successfully.
    #[serde(with = "time::serde::rfc3339")]
    pub occurred_at: OffsetDateTime,
    /// Start of the billing period the units count against.
    #[serde(with = "time::serde::rfc3339")]
    pub period_start: OffsetDateTime,
    /// End of that period, exclusive.
    #[serde(with = "time::serde::rfc3339")]
    pub period_end: OffsetDateTime,
    /// The ticket the request created or worked on, when the upstream says.
    #[serde(default)]
    pub ticket_id: Option<String>,
    /// How the units are paid for, as the entitlement that admitted them said. A unit
    /// admitted on credits burns credits when it reaches the ledger; one admitted on the
    /// fixed fee (or Free) counts against its period, even when it arrives after the
    /// customer switched to credits. Absent from events written before the field existed
    /// (the ledger then goes by the period: see `ledger::burn_credits`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub billing_model: Option<BillingModel>,
}

impl UsageEvent {
    /// An event occurring now, with a fresh UUIDv7 id.
    pub fn new_now(
        customer_id: CustomerId,
        usage_type: UsageType,
        quantity: NonZeroU32,
        period: BillingPeriod,
        ticket_id: Option<String>,
    ) -> UsageEvent {
        UsageEvent {
            event_id: Uuid::now_v7(),
            customer_id,
            usage_type,
            quantity,
            occurred_at: OffsetDateTime::now_utc(),
            period_start: period.start(),
            period_end: period.end(),
            ticket_id,
            billing_model: None,
        }
    }
}

/// A batch of events shipped in one request to the ledger.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageBatch {
    /// The events, in the order they occurred at the proxy.
    pub events: Vec<UsageEvent>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn period() -> BillingPeriod {
        BillingPeriod::nth(datetime!(2024-05-01 00:00:00 UTC), 0).unwrap()
    }

    fn event() -> UsageEvent {
        UsageEvent::new_now(
            CustomerId::parse("cust-1").unwrap(),
            UsageType::TicketCreation,
            NonZeroU32::MIN,
            period(),
            Some("T-42".into()),
        )
    }

    #[test]
    fn new_event_has_a_v7_id_and_the_period_bounds() {
        let event = event();
        assert_eq!(event.event_id.get_version_num(), 7);
        assert_eq!(event.period_start, period().start());
        assert_eq!(event.period_end, period().end());
        assert_eq!(event.occurred_at.offset(), time::UtcOffset::UTC);
    }

    #[test]
    fn ids_of_successive_events_differ_and_increase() {
        let first = event().event_id;
        let second = event().event_id;
        assert!(first < second);
    }

    #[test]
    fn wire_format_uses_snake_case_and_rfc3339() {
        let value = serde_json::to_value(event()).unwrap();
        assert_eq!(value["usage_type"], "ticket_creation");
        assert_eq!(value["customer_id"], "cust-1");
        assert_eq!(value["quantity"], 1);
        assert_eq!(value["period_start"], "2024-05-01T00:00:00Z");
        assert_eq!(value["ticket_id"], "T-42");
        assert_eq!(
            serde_json::to_value(UsageType::AgentInteraction).unwrap(),
            "agent_interaction"
        );
    }

    #[test]
    fn batch_round_trips_through_json() {
        let batch = UsageBatch {
            events: vec![event(), event()],
        };
        let json = serde_json::to_string(&batch).unwrap();
        assert_eq!(serde_json::from_str::<UsageBatch>(&json).unwrap(), batch);
    }

    #[test]
    fn zero_quantity_is_rejected_on_the_way_in() {
        let mut value = serde_json::to_value(event()).unwrap();
        value["quantity"] = 0.into();
        assert!(serde_json::from_value::<UsageEvent>(value).is_err());
    }

    #[test]
    fn missing_ticket_id_reads_as_none() {
        let mut value = serde_json::to_value(event()).unwrap();
        value.as_object_mut().unwrap().remove("ticket_id");
        assert_eq!(
            serde_json::from_value::<UsageEvent>(value)
                .unwrap()
                .ticket_id,
            None
        );
    }
}
