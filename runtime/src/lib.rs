//! What both tollgate binaries share that does I/O, so each rule has one implementation:
//!
//! - [`settings`]: the configuration sections both binaries read and how a file plus the
//!   environment become a typed configuration;
//! - [`catalog`]: reading the plan catalog file;
//! - [`identity`]: bearer-token verification and the JWKS loader (file or URL,
//!   refreshed on a schedule and on an unknown key id);
//! - [`counters`]: the Redis counter protocol (reserve, keep alive, commit, release);
//! - [`logging`]: structured logs.
//!
//! The pure rules (plans, money, periods, entitlements, the admission decision) live in
//! `billing-model`, which this crate builds on.

pub mod catalog;
pub mod counters;
pub mod identity;
pub mod logging;
pub mod settings;
