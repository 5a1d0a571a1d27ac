//! Catalog sync: creates or updates Stripe products and prices from `config/plans.toml`,
//! idempotently. Prices are found by lookup key; a price whose amount changed is replaced
//! by a new one that takes over the lookup key (Stripe prices are immutable).

use super::{GatewayError, StripeGateway, idempotency};
use billing_model::{Catalog, Plan};
use std::collections::HashMap;
use stripe::StripeRequest;
use stripe_product::price::{
    CreatePrice, CreatePriceRecurring, CreatePriceRecurringInterval, ListPrice,
};
use stripe_product::product::{CreateProduct, RetrieveProduct};

/// The lookup key of a plan's price: `kind` is `monthly` (the fixed fee) or `credit`
/// (one prepaid ticket, the plan's overage rate).
pub fn lookup_key(plan: &str, kind: &str) -> String {
    format!("tollgate_{plan}_{kind}")
}

/// The plan whose monthly price has `key` (the inverse of `lookup_key(plan, "monthly")`).
pub fn monthly_plan_of(key: &str) -> Option<&str> {
    key.strip_prefix("tollgate_")?.strip_suffix("_monthly")
}

fn product_id(plan: &Plan) -> String {
    format!("tollgate_{}", plan.id())
}

/// What a sync did.
#[derive(Debug, Default, Clone, serde::Serialize, PartialEq, Eq)]
pub struct CatalogSync {
    pub products_created: Vec<String>,
    pub prices_created: Vec<String>,
    pub prices_unchanged: Vec<String>,
}

impl StripeGateway {
    pub async fn sync_catalog(&self, catalog: &Catalog) -> Result<CatalogSync, GatewayError> {
        let mut report = CatalogSync::default();
        for plan in catalog
            .iter()
            .filter(|p| !p.monthly_fee().is_zero() || p.overage_rate().is_some())
        {
            let product = product_id(plan);
            if RetrieveProduct::new(product.as_str())
                .send(&self.client)
                .await
                .is_err()
            {
                CreateProduct::new(plan.name())
                    .id(product.as_str())
                    .metadata(HashMap::from([(
                        "tollgate_plan".to_owned(),
                        plan.id().to_string(),
                    )]))
                    .customize()
                    .request_strategy(idempotency(&["product", &product]))
                    .send(&self.client)
                    .await?;
                report.products_created.push(product.clone());
            }
            if !plan.monthly_fee().is_zero() {
                self.ensure_price(
                    &mut report,
                    plan,
                    &product,
                    "monthly",
                    plan.monthly_fee().to_cents(),
                    true,
                )
                .await?;
            }
            if let Some(rate) = plan.credit_unit_price() {
                self.ensure_price(
                    &mut report,
                    plan,
                    &product,
                    "credit",
                    rate.to_cents(),
                    false,
                )
                .await?;
            }
        }
        self.forget_prices().await;
        Ok(report)
    }

    async fn ensure_price(
        &self,
        report: &mut CatalogSync,
        plan: &Plan,
        product: &str,
        kind: &str,
        cents: i64,
        recurring: bool,
    ) -> Result<(), GatewayError> {
        let key = lookup_key(plan.id().as_str(), kind);
        let existing = ListPrice::new()
            .lookup_keys(vec![key.clone()])
            .active(true)
            .send(&self.client)
            .await?;
        if existing
            .data
            .iter()
            .any(|p| p.unit_amount == Some(cents) && p.recurring.is_some() == recurring)
        {
            report.prices_unchanged.push(key);
            return Ok(());
        }
        let mut request = CreatePrice::new(stripe_types::Currency::USD)
            .product(product)
            .unit_amount(cents)
            .lookup_key(key.as_str())
            .transfer_lookup_key(true)
            .metadata(HashMap::from([
                ("tollgate_plan".to_owned(), plan.id().to_string()),
                ("tollgate_kind".to_owned(), kind.to_owned()),
            ]));
        if recurring {
            request = request.recurring(CreatePriceRecurring::new(
                CreatePriceRecurringInterval::Month,
            ));
        }
        request
            .customize()
            .request_strategy(idempotency(&["price", &key, &cents.to_string()]))
            .send(&self.client)
            .await?;
        report.prices_created.push(key);
        Ok(())
    }
}

#[cfg(test)]
mod lookup_key_tests {
    use super::{lookup_key, monthly_plan_of};

    #[test]
    fn a_monthly_lookup_key_names_its_plan_and_nothing_else_does() {
        assert_eq!(
            monthly_plan_of(&lookup_key("premium", "monthly")),
            Some("premium")
        );
        assert_eq!(monthly_plan_of(&lookup_key("premium", "credit")), None);
        assert_eq!(monthly_plan_of("price_premium_monthly"), None);
    }
}
