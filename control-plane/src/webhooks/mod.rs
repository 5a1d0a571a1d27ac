//! Stripe webhooks. The endpoint (`http::stripe_webhooks`) verifies a delivery
//! ([`signature`]) and stores it in the durable inbox (`stripe_events`) before the 200; a
//! worker ([`worker`]) applies it afterwards, in one transaction with its `applied_at`, so
//! a crash between receipt and apply loses nothing and an event is applied at most once.
//! Pending re-fetch hints of one object are applied once ([`inbox`]).

mod apply;
mod credits;
mod dunning;
pub mod event;
pub mod inbox;
/// Verification of deliveries (shared with the signing of outbound notifications).
pub use crate::signature;
mod subscription_sync;
mod worker;

pub use subscription_sync::sync_subscription_now;
pub use worker::{apply_next, run_worker};
