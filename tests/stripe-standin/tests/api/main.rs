//! Drives the stand-in with async-stripe 1.0.0-rc.10, unchanged except for its base URL.

mod catalog;
mod errors_and_idempotency;
mod helpers;
mod listing;
mod stripe_2026;
mod subscriptions;
mod webhooks;
