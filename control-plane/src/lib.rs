//! tollgate's control plane: billing API, Stripe, webhooks, the usage ledger and the
//! entitlement updates it pushes to every proxy.

pub mod config;
pub mod credit_model;
pub mod customers;
pub mod db;
pub mod entitlements;
pub mod http;
pub mod intents;
pub mod jobs;
pub mod ledger;
pub mod metrics;
pub mod notifications;
pub mod overage;
pub mod signature;
pub mod startup;
pub mod state;
pub mod stripe;
pub mod subscription_store;
pub mod switches;
pub mod webhooks;
