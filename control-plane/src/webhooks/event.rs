//! A Stripe event as tollgate acts on it, parsed once from its type and object. The one
//! list of the event types tollgate handles lives here: the webhook worker dispatches on
//! [`StripeEvent`], reconciliation asks Stripe for exactly [`HANDLED`], and the metrics
//! pre-register the same list, so the three cannot drift apart.

use serde_json::Value;

/// Every Stripe event type tollgate applies; anything else is counted and ignored.
pub const HANDLED: &[&str] = &[
    "checkout.session.completed",
    "checkout.session.async_payment_succeeded",
    "checkout.session.async_payment_failed",
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
    "invoice.created",
    "invoice.paid",
    "invoice.payment_failed",
    "invoice.payment_action_required",
    "charge.refunded",
    "charge.dispute.closed",
];

/// The handled types whose whole effect is "re-fetch this object from Stripe and store
/// what it holds now": pending events of one object among these are applied once (see
/// `inbox::coalesce`). An invoice payment also records the payment it reports, and a
/// Checkout completion grants: those are applied one by one.
pub const REFETCH_ONLY: &[&str] = &[
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
];

/// What an invoice payment event says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentOutcome {
    Paid,
    Failed,
    ActionRequired,
}

/// A handled event, borrowing the object it came with.
#[derive(Debug)]
pub enum StripeEvent<'a> {
    /// A Checkout Session completed, or its delayed payment succeeded: the purchase is
    /// done (and paid, if `payment_status` says so).
    CheckoutCompleted { session: &'a Value },
    /// A Checkout Session's delayed payment failed.
    CheckoutPaymentFailed { session: &'a Value },
    /// A subscription changed: a hint to re-fetch it.
    SubscriptionChanged { subscription: &'a str },
    /// An invoice of a subscription was paid or not.
    InvoicePayment {
        outcome: PaymentOutcome,
        invoice: &'a Value,
        subscription: &'a str,
    },
    /// An invoice was created (a renewal draft carries the ended period's overage).
    InvoiceCreated { invoice: &'a Value },
    /// A charge was refunded, in full or in part (`amount_refunded` is cumulative).
    ChargeRefunded { charge: &'a Value },
    /// A dispute closed as lost.
    DisputeLost { dispute: &'a Value },
    /// Not handled, or nothing to act on (a dispute won, an invoice without subscription).
    Ignored,
}

impl<'a> StripeEvent<'a> {
    pub fn parse(kind: &str, object: &'a Value) -> StripeEvent<'a> {
        match kind {
            "checkout.session.completed" | "checkout.session.async_payment_succeeded" => {
                StripeEvent::CheckoutCompleted { session: object }
            }
            "checkout.session.async_payment_failed" => {
                StripeEvent::CheckoutPaymentFailed { session: object }
            }
            "customer.subscription.created"
            | "customer.subscription.updated"
            | "customer.subscription.deleted" => match object["id"].as_str() {
                Some(subscription) => StripeEvent::SubscriptionChanged { subscription },
                None => StripeEvent::Ignored,
            },
            "invoice.paid" | "invoice.payment_failed" | "invoice.payment_action_required" => {
                let outcome = match kind {
                    "invoice.paid" => PaymentOutcome::Paid,
                    "invoice.payment_failed" => PaymentOutcome::Failed,
                    _ => PaymentOutcome::ActionRequired,
                };
                match invoice_subscription(object) {
                    Some(subscription) => StripeEvent::InvoicePayment {
                        outcome,
                        invoice: object,
                        subscription,
                    },
                    None => StripeEvent::Ignored,
                }
            }
            "invoice.created" => StripeEvent::InvoiceCreated { invoice: object },
            "charge.refunded" => StripeEvent::ChargeRefunded { charge: object },
            "charge.dispute.closed" if object["status"] == "lost" => {
                StripeEvent::DisputeLost { dispute: object }
            }
            _ => StripeEvent::Ignored,
        }
    }
}

/// The subscription an invoice belongs to (`parent.subscription_details` since the
/// 2025-03-31 API, `subscription` before).
pub fn invoice_subscription(invoice: &Value) -> Option<&str> {
    invoice["parent"]["subscription_details"]["subscription"]
        .as_str()
        .or_else(|| invoice["subscription"].as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// An object every handled type acts on.
    fn actionable(kind: &str) -> Value {
        match kind {
            k if k.starts_with("customer.subscription.") => json!({"id": "sub_1"}),
            k if k.starts_with("invoice.") => {
                json!({"id": "in_1", "parent": {"subscription_details": {"subscription": "sub_1"}}})
            }
            "charge.dispute.closed" => json!({"id": "dp_1", "status": "lost"}),
            _ => json!({"id": "x_1"}),
        }
    }

    #[test]
    fn every_handled_type_is_acted_on() {
        for kind in HANDLED {
            let object = actionable(kind);
            assert!(
                !matches!(StripeEvent::parse(kind, &object), StripeEvent::Ignored),
                "{kind} is listed as handled but parses to nothing"
            );
        }
    }

    #[test]
    fn every_type_acted_on_is_listed_as_handled() {
        // Every event type of the Stripe fixtures tollgate might receive: those parsed to
        // something must be in HANDLED (or reconciliation would never repair them).
        let candidates = [
            "checkout.session.completed",
            "checkout.session.async_payment_succeeded",
            "checkout.session.async_payment_failed",
            "checkout.session.expired",
            "customer.created",
            "customer.updated",
            "customer.subscription.created",
            "customer.subscription.updated",
            "customer.subscription.deleted",
            "customer.subscription.paused",
            "customer.subscription.resumed",
            "customer.subscription.trial_will_end",
            "invoice.created",
            "invoice.finalized",
            "invoice.paid",
            "invoice.payment_succeeded",
            "invoice.payment_failed",
            "invoice.payment_action_required",
            "invoice.upcoming",
            "invoice.voided",
            "charge.succeeded",
            "charge.refunded",
            "charge.dispute.created",
            "charge.dispute.closed",
            "payment_intent.succeeded",
        ];
        for kind in candidates {
            let object = actionable(kind);
            if !matches!(StripeEvent::parse(kind, &object), StripeEvent::Ignored) {
                assert!(HANDLED.contains(&kind), "{kind} is applied but not listed");
            }
        }
    }

    #[test]
    fn events_coalesced_as_re_fetches_are_exactly_the_subscription_changes() {
        for kind in HANDLED {
            let object = actionable(kind);
            let refetch = matches!(
                StripeEvent::parse(kind, &object),
                StripeEvent::SubscriptionChanged { .. }
            );
            assert_eq!(REFETCH_ONLY.contains(kind), refetch, "{kind}");
        }
    }

    #[test]
    fn a_won_dispute_and_an_invoice_without_subscription_change_nothing() {
        let won = json!({"id": "dp_1", "status": "won"});
        assert!(matches!(
            StripeEvent::parse("charge.dispute.closed", &won),
            StripeEvent::Ignored
        ));
        let standalone = json!({"id": "in_1", "parent": null});
        assert!(matches!(
            StripeEvent::parse("invoice.paid", &standalone),
            StripeEvent::Ignored
        ));
        let legacy = json!({"id": "in_1", "subscription": "sub_9"});
        assert!(matches!(
            StripeEvent::parse("invoice.paid", &legacy),
            StripeEvent::InvoicePayment {
                subscription: "sub_9",
                outcome: PaymentOutcome::Paid,
                ..
            }
        ));
    }
}
