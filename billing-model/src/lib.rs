//! What tollgate's proxy and control plane must agree on: the plan catalog, money,
//! billing periods, overage, proration and credit burndown math, the entitlement
//! snapshot and its wire format, usage events, and Redis key names.
//!
//! Also the configuration sections and the bearer-token format both binaries share.
//!
//! Pure logic: the only I/O is reading configuration files ([`Catalog::load`],
//! [`settings::load_config`]).

pub mod burndown;
pub mod catalog;
#[cfg(feature = "counters")]
pub mod counters;
pub mod customer;
pub mod entitlement;
pub mod identity;
pub mod keys;
pub mod money;
pub mod overage;
pub mod period;
pub mod proration;
pub mod settings;
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
pub use proration::{Proration, ProrationError, prorate_change};
pub use usage::{UsageBatch, UsageEvent, UsageType};
