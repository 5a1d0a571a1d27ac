//! tollgate's proxy: identity, entitlement cache, enforcement and usage shipping in front
//! of the ticket API.

pub mod admin;
pub mod config;
pub mod service;
