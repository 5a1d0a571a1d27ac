//! `GET /api/v1/billing/export`: everything tollgate holds about the calling customer,
//! as JSON (the seed's data-export requirement). Only Stripe ids are stored; no card
//! data ever reaches tollgate.

use super::AppState;
use super::error::ApiError;
use super::extract::AuthenticatedCustomer;
use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(export))
}

#[utoipa::path(get, path = "/api/v1/billing/export", tag = "privacy", security(("customer_jwt" = [])), responses((status = 200, description = "all of the customer's billing data")))]
async fn export(
    AuthenticatedCustomer(customer): AuthenticatedCustomer,
    State(state): State<AppState>,
) -> Result<Json<Value>, ApiError> {
    let id = customer.as_str();
    let row = sqlx::query_scalar!(
        r#"SELECT json_build_object(
               'customer', (SELECT row_to_json(c) FROM customers c WHERE c.customer_id = $1),
               'subscriptions', COALESCE((SELECT json_agg(s ORDER BY s.created_at)
                                          FROM subscriptions s WHERE s.customer_id = $1), '[]'),
               'credit_grants', COALESCE((SELECT json_agg(g ORDER BY g.created_at)
                                          FROM billing_credits g WHERE g.customer_id = $1), '[]'),
               'usage_records', COALESCE((SELECT json_agg(u ORDER BY u.occurred_at)
                                          FROM usage_records u WHERE u.customer_id = $1), '[]'),
               'usage_period_totals', COALESCE((SELECT json_agg(t ORDER BY t.billing_period_start)
                                          FROM usage_period_totals t WHERE t.customer_id = $1), '[]')
           ) AS "export!""#,
        id
    )
    .fetch_one(&state.pool)
    .await?;
    Ok(Json(json!({ "customer_id": id, "data": row })))
}
