//! tollgate's proxy: identity, entitlement cache, enforcement and usage shipping in front
//! of the ticket API.

pub mod admin;
pub mod app;
pub mod canonical;
pub mod commits;
pub mod config;
pub mod entitlements;
pub mod identity;
pub mod metrics;
pub mod problem;
pub mod routes;
pub mod service;
pub mod shipper;
pub mod usage_log;
