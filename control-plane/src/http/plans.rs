//! `GET /api/v1/billing/plans`: the public catalog.

use super::AppState;
use axum::Json;
use axum::extract::State;
use billing_model::{BillingModel, Money, Plan};
use serde::Serialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list))
}

#[derive(Debug, Serialize)]
pub struct PlanView {
    pub id: String,
    pub name: String,
    pub monthly_fee: Money,
    pub currency: &'static str,
    pub included_tickets: u32,
    /// `null`: the plan blocks at its limit instead of charging overage.
    pub overage_rate: Option<Money>,
    pub billing_models: Vec<BillingModel>,
    pub chat_disabled_at_limit: bool,
}

impl From<&Plan> for PlanView {
    fn from(plan: &Plan) -> Self {
        Self {
            id: plan.id().to_string(),
            name: plan.name().to_owned(),
            monthly_fee: plan.monthly_fee(),
            currency: "usd",
            included_tickets: plan.included_units(),
            overage_rate: plan.overage_rate(),
            billing_models: plan.billing_models().to_vec(),
            chat_disabled_at_limit: plan.blocks_at_limit(),
        }
    }
}

#[utoipa::path(get, path = "/api/v1/billing/plans", tag = "plans", responses((status = 200, description = "the catalog: prices, included tickets, overage rates, models")))]
async fn list(State(state): State<AppState>) -> Json<Vec<PlanView>> {
    Json(state.catalog.iter().map(PlanView::from).collect())
}
