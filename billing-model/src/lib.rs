//! What tollgate's proxy and control plane must agree on: the plan catalog, money,
//! billing periods, overage, proration and credit burndown math, the entitlement
//! snapshot and its wire format, usage events, and Redis key names.
//!
//! Also the one admission decision both binaries make for a metered unit.
//!
//! Pure logic, no I/O: reading files, Redis, identity keys and logging live in
//! `tollgate-runtime`.

pub mod admission;
pub mod burndown;
pub mod catalog;
pub mod customer;
pub mod entitlement;
pub mod keys;
pub mod money;
pub mod overage;
pub mod period;
pub mod problem;
pub mod proration;
pub mod usage;

pub use burndown::{CreditGrant, DeductError, Deduction, balance, deduct_fifo, whole_units};
pub use catalog::{BillingModel, Catalog, CatalogError, CatalogProblem, Plan, PlanId, PlanIdError};
pub use customer::{CustomerId, CustomerIdError};
pub use entitlement::{
    AccessStatus, CounterScope, Enforcement, EntitlementSnapshot, EntitlementUpdate, RefusalCode,
};
pub use keys::{Counter, InvalidKeyPrefix, RedisKeys};
pub use money::{Money, MoneyError, MoneyOverflow, round_half_up_to_cents};
pub use overage::{overage_amount, overage_units};
pub use period::{BillingPeriod, PeriodError};
pub use problem::Problem;
pub use proration::{Proration, ProrationError, prorate_change};
pub use usage::{UsageBatch, UsageEvent, UsageType};
