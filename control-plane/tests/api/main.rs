//! The control plane's API tests: the real app in-process on port 0, a fresh database per
//! test, a unique Redis key prefix. One test binary (z2p `tests/api/main.rs`).

mod checkout;
mod config;
mod credits;
mod enforcement;
mod health;
mod helpers;
mod intents;
mod internal;
mod jobs;
mod journeys;
mod layering;
mod lifecycle;
mod notifications;
mod period_endings;
mod purchases;
mod schema;
mod subscriptions;
mod surface;
mod usage;
mod webhooks;
