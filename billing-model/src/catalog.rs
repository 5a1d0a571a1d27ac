//! The plan catalog, read from `config/plans.toml` and validated once at start-up.
//!
//! The file is walked by hand rather than derived with serde so that every rejection
//! names the exact key (`plans.premium.overage_rate`) and says what is wrong in
//! billing terms; a generic "invalid type" from a deserializer would not.

use std::collections::HashSet;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};
use toml::{Table, Value};

use crate::money::{Money, MoneyError};

/// The longest plan id accepted, in characters.
pub const MAX_PLAN_ID_LEN: usize = 32;

/// A plan's stable identifier: 1 to 32 characters of `[a-z0-9_-]`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct PlanId(String);

/// Why a text is not a valid plan id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanIdError {
    /// The id is empty.
    #[error("plan id must not be empty")]
    Empty,
    /// The id is longer than [`MAX_PLAN_ID_LEN`].
    #[error("plan id is {0} characters long, more than the {MAX_PLAN_ID_LEN} allowed")]
    TooLong(usize),
    /// The id holds a character outside `[a-z0-9_-]`.
    #[error("plan id contains {0:?}; only lowercase letters, digits, _ and - are allowed")]
    InvalidChar(char),
}

impl PlanId {
    /// Validates a plan id.
    pub fn parse(text: &str) -> Result<PlanId, PlanIdError> {
        if text.is_empty() {
            return Err(PlanIdError::Empty);
        }
        if let Some(bad) = text
            .chars()
            .find(|&c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-'))
        {
            return Err(PlanIdError::InvalidChar(bad));
        }
        if text.len() > MAX_PLAN_ID_LEN {
            return Err(PlanIdError::TooLong(text.len()));
        }
        Ok(PlanId(text.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for PlanId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PlanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for PlanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PlanId({})", self.0)
    }
}

impl<'de> Deserialize<'de> for PlanId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<PlanId, D::Error> {
        let text = String::deserialize(deserializer)?;
        PlanId::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// How a customer on a plan pays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BillingModel {
    /// A monthly subscription fee with included units, then overage (if the plan has
    /// an overage rate) or a hard stop (if it has none).
    FixedFee,
    /// Prepaid credit packs burned down per ticket at the plan's overage rate; no
    /// monthly charge, hard stop when the credits run out.
    CreditBurndown,
}

impl BillingModel {
    /// The name used in config files and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            BillingModel::FixedFee => "fixed_fee",
            BillingModel::CreditBurndown => "credit_burndown",
        }
    }

    /// The model with this config/wire name.
    pub fn from_name(name: &str) -> Option<BillingModel> {
        match name {
            "fixed_fee" => Some(BillingModel::FixedFee),
            "credit_burndown" => Some(BillingModel::CreditBurndown),
            _ => None,
        }
    }
}

impl fmt::Display for BillingModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One plan of the catalog. Only [`Catalog`] constructs plans, after validation, so a
/// `Plan` in hand is always internally consistent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    id: PlanId,
    name: String,
    monthly_fee: Money,
    included_units: u32,
    overage_rate: Option<Money>,
    billing_models: Vec<BillingModel>,
    credit_pack_units: Vec<u32>,
}

impl Plan {
    /// The plan's id.
    pub fn id(&self) -> &PlanId {
        &self.id
    }

    /// The name shown to customers.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The subscription fee per billing period (fixed-fee model).
    pub fn monthly_fee(&self) -> Money {
        self.monthly_fee
    }

    /// Units (tickets) included in each period of the fixed-fee model.
    pub fn included_units(&self) -> u32 {
        self.included_units
    }

    /// Price per unit beyond the included units; `None` means the plan blocks instead.
    pub fn overage_rate(&self) -> Option<Money> {
        self.overage_rate
    }

    /// The billing models this plan can be bought with.
    pub fn billing_models(&self) -> &[BillingModel] {
        &self.billing_models
    }

    /// Sizes, in units, of the credit packs on sale for this plan.
    pub fn credit_pack_units(&self) -> &[u32] {
        &self.credit_pack_units
    }

    /// A plan without overage blocks at its limit (and disables chat) instead of
    /// charging for more.
    pub fn blocks_at_limit(&self) -> bool {
        self.overage_rate.is_none()
    }

    /// What one credit unit costs: credit burndown charges the overage rate per ticket.
    pub fn credit_unit_price(&self) -> Option<Money> {
        self.overage_rate
    }

    /// Whether the plan can be bought with `model`.
    pub fn supports(&self, model: BillingModel) -> bool {
        self.billing_models.contains(&model)
    }
}

/// The validated plan catalog, plans in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalog {
    plans: Vec<Plan>,
    // Index into `plans`; validation guarantees it is in bounds.
    default_index: usize,
}

impl Catalog {
    /// Parses and validates catalog TOML; `source` names the file in error messages.
    pub fn from_toml_str(source: &str, text: &str) -> Result<Catalog, CatalogError> {
        Reader { source }.catalog(text)
    }

    /// The plan with this id.
    pub fn get(&self, id: &PlanId) -> Option<&Plan> {
        self.plans.iter().find(|plan| plan.id == *id)
    }

    /// The plan unknown customers are on (validated to be free of charge).
    pub fn default_plan(&self) -> &Plan {
        &self.plans[self.default_index]
    }

    /// The free plan: the default plan, whose limits also apply to lapsed customers.
    pub fn free_plan(&self) -> &Plan {
        self.default_plan()
    }

    /// All plans in the order the file lists them (the order to show them in).
    pub fn iter(&self) -> std::slice::Iter<'_, Plan> {
        self.plans.iter()
    }

    /// All plans in file order.
    pub fn plans(&self) -> &[Plan] {
        &self.plans
    }
}

impl<'a> IntoIterator for &'a Catalog {
    type Item = &'a Plan;
    type IntoIter = std::slice::Iter<'a, Plan>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// A catalog file that cannot be used: which file, which key, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct CatalogError {
    /// The file (or other source) the catalog came from.
    pub source_name: String,
    /// The dotted key path, e.g. `plans.premium.overage_rate`; empty when the problem
    /// is not about one key (syntax errors, unreadable file).
    pub key: String,
    /// What is wrong.
    pub problem: CatalogProblem,
}

impl fmt::Display for CatalogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.source_name, self.problem)
        } else {
            write!(f, "{}: {}: {}", self.source_name, self.key, self.problem)
        }
    }
}

/// What is wrong with a catalog file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogProblem {
    /// The file could not be read.
    #[error("cannot read the file: {0}")]
    Unreadable(String),
    /// The file is not valid TOML.
    #[error("TOML syntax error at line {line}, column {column}: {message}")]
    Syntax {
        /// 1-based line of the error.
        line: usize,
        /// 1-based column (in characters) of the error.
        column: usize,
        /// The parser's description.
        message: String,
    },
    /// A key the catalog does not know (often a typo).
    #[error("unknown key")]
    UnknownKey,
    /// A required key is absent.
    #[error("missing required key")]
    MissingKey,
    /// A value of the wrong TOML type.
    #[error("expected {expected}, found {found}")]
    WrongType {
        /// What the key needs.
        expected: &'static str,
        /// The TOML type given.
        found: &'static str,
    },
    /// Money written as a TOML number, which would pass through binary floating point.
    #[error("money must be a quoted decimal string like \"1.99\", not {}", with_article(.found))]
    MoneyNotString {
        /// The TOML type given (`float`, `integer`, ...).
        found: &'static str,
    },
    /// A money string that does not parse.
    #[error("{0}")]
    InvalidMoney(MoneyError),
    /// A negative fee or rate.
    #[error("price must not be negative, got {0}")]
    NegativePrice(Money),
    /// An overage rate of zero, which would mean unlimited free usage.
    #[error("overage_rate must be greater than 0.00; leave it out to block at the limit")]
    ZeroOverageRate,
    /// An integer outside the allowed range.
    #[error("must be an integer from {min} to {max}, got {got}")]
    IntegerOutOfRange {
        /// Smallest allowed value.
        min: i64,
        /// Largest allowed value.
        max: i64,
        /// The value given.
        got: i64,
    },
    /// An invalid plan id.
    #[error("{0}")]
    InvalidPlanId(PlanIdError),
    /// Two plans with the same id.
    #[error("duplicate plan id \"{0}\"")]
    DuplicatePlanId(PlanId),
    /// A blank plan name.
    #[error("plan name must not be empty")]
    EmptyName,
    /// A billing model name that is not `fixed_fee` or `credit_burndown`.
    #[error("unknown billing model \"{0}\"; expected \"fixed_fee\" or \"credit_burndown\"")]
    UnknownBillingModel(String),
    /// The same billing model listed twice.
    #[error("billing model \"{0}\" is listed twice")]
    DuplicateBillingModel(BillingModel),
    /// A plan nobody could buy.
    #[error("a plan needs at least one billing model")]
    NoBillingModels,
    /// A plan that blocks at its limit but includes nothing.
    #[error("included_units is 0 on a plan without overage_rate: every request would be refused")]
    ZeroIncludedUnitsWithoutOverage,
    /// Credit burndown offered without a price per credit.
    #[error(
        "offers credit_burndown but has no overage_rate; credits are charged at the overage rate"
    )]
    CreditBurndownWithoutOverage,
    /// A free fixed-fee plan that would charge overage.
    #[error(
        "a fixed_fee plan with monthly_fee 0.00 cannot charge overage: without a paid subscription there is no invoice to add overage to; set a monthly_fee or remove overage_rate"
    )]
    FreeFixedFeeWithOverage,
    /// Credit burndown offered with nothing to buy.
    #[error("offers credit_burndown but lists no credit_pack_units to buy")]
    CreditBurndownWithoutPacks,
    /// Credit packs on a plan that cannot burn credits.
    #[error("lists credit_pack_units but does not offer credit_burndown")]
    CreditPacksWithoutCreditBurndown,
    /// A default plan id that no plan has.
    #[error("default plan \"{0}\" is not one of the plans")]
    DefaultPlanMissing(PlanId),
    /// A default plan that costs money, though unknown customers land on it unasked.
    #[error("default plan \"{0}\" must be free: monthly_fee 0.00, no overage_rate, and fixed_fee")]
    DefaultPlanNotFree(PlanId),
    /// No plans at all.
    #[error("the catalog has no plans; add at least one [[plans]] table")]
    NoPlans,
}

const TOP_LEVEL_KEYS: [&str; 2] = ["default_plan", "plans"];
const PLAN_KEYS: [&str; 7] = [
    "id",
    "name",
    "monthly_fee",
    "included_units",
    "overage_rate",
    "billing_models",
    "credit_pack_units",
];

/// Walks the parsed TOML, producing errors that carry the source name.
struct Reader<'a> {
    source: &'a str,
}

type Parsed<T> = Result<T, CatalogError>;

impl Reader<'_> {
    fn error(&self, key: impl Into<String>, problem: CatalogProblem) -> CatalogError {
        CatalogError {
            source_name: self.source.to_owned(),
            key: key.into(),
            problem,
        }
    }

    fn catalog(&self, text: &str) -> Parsed<Catalog> {
        let root: Table = toml::from_str(text).map_err(|e| self.syntax_error(text, &e))?;
        self.reject_unknown_keys(&root, "", &TOP_LEVEL_KEYS)?;

        let plans = match root.get("plans") {
            None => return Err(self.error("plans", CatalogProblem::NoPlans)),
            Some(Value::Array(items)) => items,
            Some(other) => {
                return Err(self.error(
                    "plans",
                    CatalogProblem::WrongType {
                        expected: "an array of [[plans]] tables",
                        found: other.type_str(),
                    },
                ));
            }
        };
        if plans.is_empty() {
            return Err(self.error("plans", CatalogProblem::NoPlans));
        }

        let mut seen = HashSet::new();
        let mut parsed = Vec::with_capacity(plans.len());
        for (index, item) in plans.iter().enumerate() {
            let plan = self.plan(index, item)?;
            if !seen.insert(plan.id.clone()) {
                return Err(self.error(
                    format!("plans.{}.id", plan.id),
                    CatalogProblem::DuplicatePlanId(plan.id.clone()),
                ));
            }
            parsed.push(plan);
        }

        let default_id = match root.get("default_plan") {
            None => return Err(self.error("default_plan", CatalogProblem::MissingKey)),
            Some(value) => self.plan_id("default_plan", value)?,
        };
        let Some(default_index) = parsed.iter().position(|plan| plan.id == default_id) else {
            return Err(self.error(
                "default_plan",
                CatalogProblem::DefaultPlanMissing(default_id),
            ));
        };
        let default = &parsed[default_index];
        // Unknown customers are put on the default plan without being asked, and lapsed
        // customers fall back to its limits: it must never charge anything.
        if !default.monthly_fee.is_zero()
            || default.overage_rate.is_some()
            || !default.supports(BillingModel::FixedFee)
        {
            return Err(self.error(
                "default_plan",
                CatalogProblem::DefaultPlanNotFree(default_id),
            ));
        }

        Ok(Catalog {
            plans: parsed,
            default_index,
        })
    }

    fn syntax_error(&self, text: &str, error: &toml::de::Error) -> CatalogError {
        let offset = error.span().map_or(0, |span| span.start).min(text.len());
        let before = text.get(..offset).unwrap_or(text);
        let line = before.matches('\n').count() + 1;
        let column = before
            .rsplit('\n')
            .next()
            .map_or(0, |tail| tail.chars().count())
            + 1;
        self.error(
            "",
            CatalogProblem::Syntax {
                line,
                column,
                message: error.message().trim().to_owned(),
            },
        )
    }

    fn reject_unknown_keys(&self, table: &Table, prefix: &str, known: &[&str]) -> Parsed<()> {
        match table.keys().find(|key| !known.contains(&key.as_str())) {
            Some(unknown) => Err(self.error(join(prefix, unknown), CatalogProblem::UnknownKey)),
            None => Ok(()),
        }
    }

    fn plan(&self, index: usize, item: &Value) -> Parsed<Plan> {
        let at_index = format!("plans[{index}]");
        let Value::Table(table) = item else {
            return Err(self.error(
                at_index,
                CatalogProblem::WrongType {
                    expected: "a [[plans]] table",
                    found: item.type_str(),
                },
            ));
        };
        // Until the id is known the plan can only be named by its position.
        let id = match table.get("id") {
            None => return Err(self.error(join(&at_index, "id"), CatalogProblem::MissingKey)),
            Some(value) => self.plan_id(&join(&at_index, "id"), value)?,
        };
        let prefix = format!("plans.{id}");
        let key = |name: &str| join(&prefix, name);
        self.reject_unknown_keys(table, &prefix, &PLAN_KEYS)?;

        let name = self.string(&key("name"), self.required(table, &prefix, "name")?)?;
        if name.trim().is_empty() {
            return Err(self.error(key("name"), CatalogProblem::EmptyName));
        }
        let monthly_fee = self.price(
            &key("monthly_fee"),
            self.required(table, &prefix, "monthly_fee")?,
        )?;
        let included_units = self.u32_value(
            &key("included_units"),
            self.required(table, &prefix, "included_units")?,
            0,
        )?;
        let overage_rate = match table.get("overage_rate") {
            None => None,
            Some(value) => {
                let rate = self.price(&key("overage_rate"), value)?;
                if rate.is_zero() {
                    return Err(self.error(key("overage_rate"), CatalogProblem::ZeroOverageRate));
                }
                Some(rate)
            }
        };
        let billing_models = self.billing_models(
            &key("billing_models"),
            self.required(table, &prefix, "billing_models")?,
        )?;
        let credit_pack_units = match table.get("credit_pack_units") {
            None => Vec::new(),
            Some(value) => self.credit_packs(&key("credit_pack_units"), value)?,
        };

        let plan = Plan {
            id,
            name: name.to_owned(),
            monthly_fee,
            included_units,
            overage_rate,
            billing_models,
            credit_pack_units,
        };
        self.check_consistency(&plan, &prefix)?;
        Ok(plan)
    }

    fn check_consistency(&self, plan: &Plan, prefix: &str) -> Parsed<()> {
        let key = |name: &str| join(prefix, name);
        let burndown = plan.supports(BillingModel::CreditBurndown);
        if plan.blocks_at_limit() && plan.included_units == 0 {
            return Err(self.error(
                key("included_units"),
                CatalogProblem::ZeroIncludedUnitsWithoutOverage,
            ));
        }
        if burndown && plan.overage_rate.is_none() {
            return Err(self.error(
                key("billing_models"),
                CatalogProblem::CreditBurndownWithoutOverage,
            ));
        }
        if plan.supports(BillingModel::FixedFee)
            && plan.monthly_fee.is_zero()
            && plan.overage_rate.is_some()
        {
            return Err(self.error(key("overage_rate"), CatalogProblem::FreeFixedFeeWithOverage));
        }
        if burndown && plan.credit_pack_units.is_empty() {
            return Err(self.error(
                key("credit_pack_units"),
                CatalogProblem::CreditBurndownWithoutPacks,
            ));
        }
        if !burndown && !plan.credit_pack_units.is_empty() {
            return Err(self.error(
                key("credit_pack_units"),
                CatalogProblem::CreditPacksWithoutCreditBurndown,
            ));
        }
        Ok(())
    }

    fn required<'t>(&self, table: &'t Table, prefix: &str, name: &str) -> Parsed<&'t Value> {
        table
            .get(name)
            .ok_or_else(|| self.error(join(prefix, name), CatalogProblem::MissingKey))
    }

    fn string<'v>(&self, key: &str, value: &'v Value) -> Parsed<&'v str> {
        value.as_str().ok_or_else(|| {
            self.error(
                key,
                CatalogProblem::WrongType {
                    expected: "a string",
                    found: value.type_str(),
                },
            )
        })
    }

    fn plan_id(&self, key: &str, value: &Value) -> Parsed<PlanId> {
        PlanId::parse(self.string(key, value)?)
            .map_err(|e| self.error(key, CatalogProblem::InvalidPlanId(e)))
    }

    fn price(&self, key: &str, value: &Value) -> Parsed<Money> {
        let Value::String(text) = value else {
            return Err(self.error(
                key,
                CatalogProblem::MoneyNotString {
                    found: value.type_str(),
                },
            ));
        };
        let amount =
            Money::parse(text).map_err(|e| self.error(key, CatalogProblem::InvalidMoney(e)))?;
        if amount.is_negative() {
            return Err(self.error(key, CatalogProblem::NegativePrice(amount)));
        }
        Ok(amount)
    }

    fn u32_value(&self, key: &str, value: &Value, min: u32) -> Parsed<u32> {
        let Value::Integer(number) = value else {
            return Err(self.error(
                key,
                CatalogProblem::WrongType {
                    expected: "an integer",
                    found: value.type_str(),
                },
            ));
        };
        u32::try_from(*number)
            .ok()
            .filter(|n| *n >= min)
            .ok_or_else(|| {
                self.error(
                    key,
                    CatalogProblem::IntegerOutOfRange {
                        min: i64::from(min),
                        max: i64::from(u32::MAX),
                        got: *number,
                    },
                )
            })
    }

    fn array<'v>(
        &self,
        key: &str,
        value: &'v Value,
        expected: &'static str,
    ) -> Parsed<&'v [Value]> {
        match value {
            Value::Array(items) => Ok(items),
            other => Err(self.error(
                key,
                CatalogProblem::WrongType {
                    expected,
                    found: other.type_str(),
                },
            )),
        }
    }

    fn billing_models(&self, key: &str, value: &Value) -> Parsed<Vec<BillingModel>> {
        let items = self.array(key, value, "an array of billing model names")?;
        if items.is_empty() {
            return Err(self.error(key, CatalogProblem::NoBillingModels));
        }
        let mut models = Vec::with_capacity(items.len());
        for item in items {
            let name = self.string(key, item)?;
            let model = BillingModel::from_name(name).ok_or_else(|| {
                self.error(key, CatalogProblem::UnknownBillingModel(name.to_owned()))
            })?;
            if models.contains(&model) {
                return Err(self.error(key, CatalogProblem::DuplicateBillingModel(model)));
            }
            models.push(model);
        }
        Ok(models)
    }

    fn credit_packs(&self, key: &str, value: &Value) -> Parsed<Vec<u32>> {
        self.array(key, value, "an array of pack sizes in units")?
            .iter()
            .map(|item| self.u32_value(key, item, 1))
            .collect()
    }
}

fn with_article(noun: &str) -> String {
    let article = if noun.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    };
    format!("{article} {noun}")
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{prefix}.{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REAL_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/plans.toml");

    const VALID: &str = r#"
default_plan = "free"

[[plans]]
id = "free"
name = "Free"
monthly_fee = "0.00"
included_units = 10
billing_models = ["fixed_fee"]

[[plans]]
id = "premium"
name = "Premium"
monthly_fee = "199.00"
included_units = 100
overage_rate = "1.99"
billing_models = ["fixed_fee", "credit_burndown"]
credit_pack_units = [100, 500]
"#;

    fn money(text: &str) -> Money {
        Money::parse(text).unwrap()
    }

    fn plan_id(text: &str) -> PlanId {
        PlanId::parse(text).unwrap()
    }

    fn parse(text: &str) -> Result<Catalog, CatalogError> {
        Catalog::from_toml_str("test.toml", text)
    }

    /// The valid catalog with one line of the premium plan replaced.
    fn premium_with(old_line: &str, new_line: &str) -> String {
        assert!(VALID.contains(old_line), "fixture lacks {old_line:?}");
        VALID.replacen(old_line, new_line, 1)
    }

    fn rejection(text: &str) -> CatalogError {
        match parse(text) {
            Ok(catalog) => panic!("expected a rejection, got {catalog:?}"),
            Err(error) => error,
        }
    }

    #[test]
    fn real_plans_file_has_free_premium_and_enterprise() {
        let catalog =
            Catalog::from_toml_str(REAL_FILE, include_str!("../../config/plans.toml")).unwrap();
        let ids: Vec<&str> = catalog.iter().map(|plan| plan.id().as_str()).collect();
        assert_eq!(ids, ["free", "premium", "enterprise"]);

        let free = catalog.free_plan();
        assert_eq!(free.id(), &plan_id("free"));
        assert_eq!(free.name(), "Free");
        assert_eq!(free.monthly_fee(), Money::ZERO);
        assert_eq!(free.included_units(), 10);
        assert_eq!(free.overage_rate(), None);
        assert!(free.blocks_at_limit());
        assert_eq!(free.billing_models(), [BillingModel::FixedFee]);
        assert!(free.credit_pack_units().is_empty());

        let premium = catalog.get(&plan_id("premium")).unwrap();
        assert_eq!(premium.name(), "Premium");
        assert_eq!(premium.monthly_fee(), money("199.00"));
        assert_eq!(premium.included_units(), 100);
        assert_eq!(premium.overage_rate(), Some(money("1.99")));
        assert_eq!(premium.credit_unit_price(), Some(money("1.99")));
        assert!(premium.supports(BillingModel::FixedFee));
        assert!(premium.supports(BillingModel::CreditBurndown));
        assert_eq!(premium.credit_pack_units(), [100, 500]);

        let enterprise = catalog.get(&plan_id("enterprise")).unwrap();
        assert_eq!(enterprise.name(), "Enterprise");
        assert_eq!(enterprise.monthly_fee(), money("599.00"));
        assert_eq!(enterprise.included_units(), 400);
        assert_eq!(enterprise.overage_rate(), Some(money("1.25")));
        assert!(enterprise.supports(BillingModel::CreditBurndown));
        assert_eq!(enterprise.credit_pack_units(), [400, 2000]);
    }

    #[test]
    fn valid_catalog_keeps_file_order_and_finds_the_default() {
        let catalog = parse(VALID).unwrap();
        assert_eq!(catalog.plans().len(), 2);
        assert_eq!(catalog.default_plan().id(), &plan_id("free"));
        assert_eq!(catalog.iter().nth(1).unwrap().id(), &plan_id("premium"));
        assert!(catalog.get(&plan_id("gold")).is_none());
        assert!(!catalog.get(&plan_id("premium")).unwrap().blocks_at_limit());
    }

    #[test]
    fn toml_syntax_error_names_file_line_and_column() {
        let error = rejection("default_plan = \"free\"\n[[plans]]\nid = = 3\n");
        assert_eq!(error.key, "");
        let CatalogProblem::Syntax { line, column, .. } = &error.problem else {
            panic!("expected a syntax error, got {error}");
        };
        assert_eq!(*line, 3);
        assert!(*column >= 5, "column {column}");
        assert!(
            error
                .to_string()
                .starts_with("test.toml: TOML syntax error at line 3")
        );
    }

    #[test]
    fn unknown_plan_key_is_rejected_with_its_path() {
        let error = rejection(&premium_with(
            "overage_rate = \"1.99\"",
            "overage_rat = \"1.99\"",
        ));
        assert_eq!(error.key, "plans.premium.overage_rat");
        assert_eq!(error.problem, CatalogProblem::UnknownKey);
        assert_eq!(
            error.to_string(),
            "test.toml: plans.premium.overage_rat: unknown key"
        );
    }

    #[test]
    fn unknown_top_level_key_is_rejected() {
        let error = rejection(&format!("currency = \"usd\"\n{VALID}"));
        assert_eq!(error.key, "currency");
        assert_eq!(error.problem, CatalogProblem::UnknownKey);
    }

    #[test]
    fn money_as_a_toml_float_is_rejected() {
        let error = rejection(&premium_with(
            "overage_rate = \"1.99\"",
            "overage_rate = 1.99",
        ));
        assert_eq!(error.key, "plans.premium.overage_rate");
        assert_eq!(
            error.problem,
            CatalogProblem::MoneyNotString { found: "float" }
        );
        assert_eq!(
            error.to_string(),
            "test.toml: plans.premium.overage_rate: money must be a quoted decimal string like \"1.99\", not a float"
        );
    }

    #[test]
    fn money_as_a_toml_integer_is_rejected() {
        let error = rejection(&premium_with(
            "monthly_fee = \"199.00\"",
            "monthly_fee = 199",
        ));
        assert_eq!(error.key, "plans.premium.monthly_fee");
        assert_eq!(
            error.problem,
            CatalogProblem::MoneyNotString { found: "integer" }
        );
        assert!(error.to_string().ends_with("not an integer"));
    }

    #[test]
    fn negative_price_is_rejected() {
        let error = rejection(&premium_with(
            "monthly_fee = \"199.00\"",
            "monthly_fee = \"-199.00\"",
        ));
        assert_eq!(error.key, "plans.premium.monthly_fee");
        assert_eq!(
            error.problem,
            CatalogProblem::NegativePrice(money("-199.00"))
        );
    }

    #[test]
    fn price_with_more_than_two_decimal_places_is_rejected() {
        let error = rejection(&premium_with(
            "overage_rate = \"1.99\"",
            "overage_rate = \"1.995\"",
        ));
        assert_eq!(error.key, "plans.premium.overage_rate");
        assert_eq!(
            error.problem,
            CatalogProblem::InvalidMoney(MoneyError::TooManyDecimals("1.995".into()))
        );
    }

    #[test]
    fn garbage_price_is_rejected() {
        let error = rejection(&premium_with(
            "overage_rate = \"1.99\"",
            "overage_rate = \"$1.99\"",
        ));
        assert_eq!(error.key, "plans.premium.overage_rate");
        assert!(matches!(
            error.problem,
            CatalogProblem::InvalidMoney(MoneyError::Malformed(_))
        ));
    }

    #[test]
    fn zero_overage_rate_is_rejected() {
        let error = rejection(&premium_with(
            "overage_rate = \"1.99\"",
            "overage_rate = \"0.00\"",
        ));
        assert_eq!(error.key, "plans.premium.overage_rate");
        assert_eq!(error.problem, CatalogProblem::ZeroOverageRate);
    }

    #[test]
    fn unknown_billing_model_is_rejected() {
        let error = rejection(&premium_with(
            "billing_models = [\"fixed_fee\", \"credit_burndown\"]",
            "billing_models = [\"fixed_fee\", \"pay_as_you_go\"]",
        ));
        assert_eq!(error.key, "plans.premium.billing_models");
        assert_eq!(
            error.problem,
            CatalogProblem::UnknownBillingModel("pay_as_you_go".into())
        );
    }

    #[test]
    fn empty_or_repeated_billing_models_are_rejected() {
        let error = rejection(&premium_with(
            "billing_models = [\"fixed_fee\", \"credit_burndown\"]",
            "billing_models = []",
        ));
        assert_eq!(error.problem, CatalogProblem::NoBillingModels);
        let error = rejection(&premium_with(
            "billing_models = [\"fixed_fee\", \"credit_burndown\"]",
            "billing_models = [\"fixed_fee\", \"credit_burndown\", \"fixed_fee\"]",
        ));
        assert_eq!(
            error.problem,
            CatalogProblem::DuplicateBillingModel(BillingModel::FixedFee)
        );
    }

    #[test]
    fn duplicate_plan_id_is_rejected() {
        let text = format!(
            "{VALID}\n[[plans]]\nid = \"free\"\nname = \"Free again\"\nmonthly_fee = \"0\"\nincluded_units = 5\nbilling_models = [\"fixed_fee\"]\n"
        );
        let error = rejection(&text);
        assert_eq!(error.key, "plans.free.id");
        assert_eq!(
            error.problem,
            CatalogProblem::DuplicatePlanId(plan_id("free"))
        );
    }

    #[test]
    fn invalid_plan_id_is_named_by_position() {
        let error = rejection(&VALID.replacen("id = \"premium\"", "id = \"Premium\"", 1));
        assert_eq!(error.key, "plans[1].id");
        assert_eq!(
            error.problem,
            CatalogProblem::InvalidPlanId(PlanIdError::InvalidChar('P'))
        );
    }

    #[test]
    fn missing_required_key_is_rejected() {
        let error = rejection(&premium_with("included_units = 100\n", ""));
        assert_eq!(error.key, "plans.premium.included_units");
        assert_eq!(error.problem, CatalogProblem::MissingKey);
    }

    #[test]
    fn zero_included_units_on_a_plan_that_blocks_is_rejected() {
        let error = rejection(&VALID.replacen("included_units = 10\n", "included_units = 0\n", 1));
        assert_eq!(error.key, "plans.free.included_units");
        assert_eq!(
            error.problem,
            CatalogProblem::ZeroIncludedUnitsWithoutOverage
        );
    }

    #[test]
    fn zero_included_units_on_a_plan_with_overage_is_fine() {
        let catalog = parse(&premium_with("included_units = 100", "included_units = 0")).unwrap();
        assert_eq!(
            catalog.get(&plan_id("premium")).unwrap().included_units(),
            0
        );
    }

    #[test]
    fn negative_included_units_are_out_of_range() {
        let error = rejection(&premium_with("included_units = 100", "included_units = -1"));
        assert_eq!(error.key, "plans.premium.included_units");
        assert!(matches!(
            error.problem,
            CatalogProblem::IntegerOutOfRange { got: -1, .. }
        ));
    }

    #[test]
    fn default_plan_that_does_not_exist_is_rejected() {
        let error =
            rejection(&VALID.replacen("default_plan = \"free\"", "default_plan = \"basic\"", 1));
        assert_eq!(error.key, "default_plan");
        assert_eq!(
            error.problem,
            CatalogProblem::DefaultPlanMissing(plan_id("basic"))
        );
        assert_eq!(
            error.to_string(),
            "test.toml: default_plan: default plan \"basic\" is not one of the plans"
        );
    }

    #[test]
    fn missing_default_plan_key_is_rejected() {
        let error = rejection(&VALID.replacen("default_plan = \"free\"", "", 1));
        assert_eq!(error.key, "default_plan");
        assert_eq!(error.problem, CatalogProblem::MissingKey);
    }

    #[test]
    fn paid_default_plan_is_rejected() {
        let error =
            rejection(&VALID.replacen("default_plan = \"free\"", "default_plan = \"premium\"", 1));
        assert_eq!(error.key, "default_plan");
        assert_eq!(
            error.problem,
            CatalogProblem::DefaultPlanNotFree(plan_id("premium"))
        );
    }

    #[test]
    fn credit_burndown_without_overage_rate_is_rejected() {
        let error = rejection(&premium_with("overage_rate = \"1.99\"\n", ""));
        assert_eq!(error.key, "plans.premium.billing_models");
        assert_eq!(error.problem, CatalogProblem::CreditBurndownWithoutOverage);
    }

    #[test]
    fn free_fixed_fee_plan_with_overage_rate_is_rejected_and_says_why() {
        let error = rejection(&premium_with(
            "monthly_fee = \"199.00\"",
            "monthly_fee = \"0.00\"",
        ));
        assert_eq!(error.key, "plans.premium.overage_rate");
        assert_eq!(error.problem, CatalogProblem::FreeFixedFeeWithOverage);
        assert!(error.to_string().contains("no invoice to add overage to"));
    }

    #[test]
    fn credit_only_plan_with_zero_fee_and_overage_rate_is_fine() {
        let text = premium_with(
            "billing_models = [\"fixed_fee\", \"credit_burndown\"]",
            "billing_models = [\"credit_burndown\"]",
        )
        .replacen("monthly_fee = \"199.00\"", "monthly_fee = \"0\"", 1);
        let catalog = parse(&text).unwrap();
        let premium = catalog.get(&plan_id("premium")).unwrap();
        assert!(!premium.supports(BillingModel::FixedFee));
        assert_eq!(premium.credit_unit_price(), Some(money("1.99")));
    }

    #[test]
    fn credit_packs_must_match_the_credit_burndown_model() {
        let error = rejection(&premium_with("credit_pack_units = [100, 500]\n", ""));
        assert_eq!(error.key, "plans.premium.credit_pack_units");
        assert_eq!(error.problem, CatalogProblem::CreditBurndownWithoutPacks);

        let error = rejection(&premium_with(
            "billing_models = [\"fixed_fee\", \"credit_burndown\"]",
            "billing_models = [\"fixed_fee\"]",
        ));
        assert_eq!(error.key, "plans.premium.credit_pack_units");
        assert_eq!(
            error.problem,
            CatalogProblem::CreditPacksWithoutCreditBurndown
        );

        let error = rejection(&premium_with(
            "credit_pack_units = [100, 500]",
            "credit_pack_units = [100, 0]",
        ));
        assert_eq!(error.key, "plans.premium.credit_pack_units");
        assert!(matches!(
            error.problem,
            CatalogProblem::IntegerOutOfRange { min: 1, got: 0, .. }
        ));
    }

    #[test]
    fn catalog_without_plans_is_rejected() {
        let error = rejection("default_plan = \"free\"\n");
        assert_eq!(error.key, "plans");
        assert_eq!(error.problem, CatalogProblem::NoPlans);
        let error = rejection("default_plan = \"free\"\nplans = []\n");
        assert_eq!(error.problem, CatalogProblem::NoPlans);
    }

    #[test]
    fn plans_written_as_named_tables_get_a_hint_about_the_shape() {
        let error = rejection("default_plan = \"free\"\n[plans.free]\nname = \"Free\"\n");
        assert_eq!(error.key, "plans");
        assert_eq!(
            error.problem,
            CatalogProblem::WrongType {
                expected: "an array of [[plans]] tables",
                found: "table"
            }
        );
    }

    #[test]
    fn blank_name_is_rejected() {
        let error = rejection(&premium_with("name = \"Premium\"", "name = \"  \""));
        assert_eq!(error.key, "plans.premium.name");
        assert_eq!(error.problem, CatalogProblem::EmptyName);
    }

    #[test]
    fn plan_id_parse_enforces_alphabet_and_length() {
        assert!(PlanId::parse("pro-2024_v2").is_ok());
        assert_eq!(PlanId::parse(""), Err(PlanIdError::Empty));
        assert_eq!(PlanId::parse("Pro"), Err(PlanIdError::InvalidChar('P')));
        assert_eq!(PlanId::parse("a b"), Err(PlanIdError::InvalidChar(' ')));
        assert!(PlanId::parse(&"a".repeat(32)).is_ok());
        assert_eq!(
            PlanId::parse(&"a".repeat(33)),
            Err(PlanIdError::TooLong(33))
        );
    }

    #[test]
    fn billing_model_uses_snake_case_names() {
        assert_eq!(
            serde_json::to_string(&BillingModel::CreditBurndown).unwrap(),
            "\"credit_burndown\""
        );
        assert_eq!(
            serde_json::from_str::<BillingModel>("\"fixed_fee\"").unwrap(),
            BillingModel::FixedFee
        );
        assert_eq!(
            BillingModel::from_name("credit_burndown"),
            Some(BillingModel::CreditBurndown)
        );
    }
}
