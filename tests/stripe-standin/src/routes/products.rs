//! `/v1/products`.

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::Value;

use super::customers::previous_attributes;
use super::{answer, created_filter, page};
use crate::errors::{ApiError, ApiResult};
use crate::form::merge_metadata;
use crate::state::{Product, new_id};
use crate::{App, StripeRequest, billing, clock, objects};

pub fn router() -> Router<App> {
    Router::new()
        .route("/v1/products", get(list).post(create))
        .route(
            "/v1/products/{id}",
            get(retrieve).post(update).delete(delete),
        )
}

const KNOWN: &[&str] = &[
    "id",
    "name",
    "active",
    "description",
    "metadata",
    "images",
    "marketing_features",
    "package_dimensions",
    "shippable",
    "statement_descriptor",
    "tax_code",
    "unit_label",
    "url",
    "default_price",
];

async fn create(State(app): State<App>, req: StripeRequest) -> ApiResult<Json<Value>> {
    let p = &req.params;
    p.only(KNOWN)?;
    let name = p.required_str("name")?.to_string();
    let metadata = p.metadata("metadata")?.unwrap_or_default();
    let active = p.bool("active")?.unwrap_or(true);
    app.run(&req.info, |store| {
        let id = p
            .str("id")
            .map(str::to_string)
            .unwrap_or_else(|| new_id("prod"));
        if store.products.contains_key(&id) {
            return Err(ApiError::invalid(
                "id",
                format!("Product already exists: {id}"),
            ));
        }
        let now = clock::wall_now();
        let seq = store.next_seq();
        let product = Product {
            seq,
            id: id.clone(),
            created: now,
            updated: now,
            name,
            description: p.str("description").map(str::to_string),
            active,
            metadata,
            default_price: None,
        };
        store.products.insert(id.clone(), product);
        let obj = objects::product(&store.products[&id]);
        billing::emit(store, "product.created", obj.clone(), None, now);
        Ok(Json(answer(store, obj, p)))
    })
}

async fn retrieve(
    State(app): State<App>,
    Path(id): Path<String>,
    req: StripeRequest,
) -> ApiResult<Json<Value>> {
    app.run(&req.info, |store| {
        let product = store
            .products
            .get(&id)
            .ok_or_else(|| ApiError::missing_resource("product", &id, "id"))?;
        Ok(Json(answer(store, objects::product(product), &req.params)))
    })
}

async fn update(
    State(app): State<App>,
    Path(id): Path<String>,
    req: StripeRequest,
) -> ApiResult<Json<Value>> {
    let p = &req.params;
    p.only(KNOWN)?;
    let metadata = p.metadata("metadata")?;
    let active = p.bool("active")?;
    app.run(&req.info, |store| {
        let default_price = p.nullable_str("default_price");
        if let Some(Some(price)) = default_price
            && !store.prices.contains_key(price)
        {
            return Err(ApiError::missing_resource("price", price, "default_price"));
        }
        let product = store
            .products
            .get_mut(&id)
            .ok_or_else(|| ApiError::missing_resource("product", &id, "id"))?;
        let before = objects::product(product);
        if let Some(name) = p.str("name") {
            product.name = name.to_string();
        }
        if let Some(d) = p.nullable_str("description") {
            product.description = d.map(str::to_string);
        }
        if let Some(a) = active {
            product.active = a;
        }
        if let Some(m) = metadata {
            merge_metadata(&mut product.metadata, m);
        }
        if let Some(dp) = default_price {
            product.default_price = dp.map(str::to_string);
        }
        let now = clock::wall_now();
        product.updated = now;
        let after = objects::product(product);
        billing::emit(
            store,
            "product.updated",
            after.clone(),
            Some(previous_attributes(&before, &after)),
            now,
        );
        Ok(Json(answer(store, after, p)))
    })
}

async fn delete(
    State(app): State<App>,
    Path(id): Path<String>,
    req: StripeRequest,
) -> ApiResult<Json<Value>> {
    app.run(&req.info, |store| {
        let product = store
            .products
            .get(&id)
            .ok_or_else(|| ApiError::missing_resource("product", &id, "id"))?;
        if store.prices.values().any(|p| p.product == id) {
            return Err(ApiError::bad_request(
                "This product cannot be deleted because it has one or more user-created prices.",
            ));
        }
        let obj = objects::product(product);
        store.products.remove(&id);
        billing::emit(store, "product.deleted", obj, None, clock::wall_now());
        Ok(Json(objects::deleted(&id, "product")))
    })
}

async fn list(State(app): State<App>, req: StripeRequest) -> ApiResult<Json<Value>> {
    let p = &req.params;
    p.only(&[
        "active",
        "ids",
        "limit",
        "starting_after",
        "ending_before",
        "created",
        "shippable",
        "url",
    ])?;
    let active = p.bool("active")?;
    let ids = p.strings("ids");
    let created = created_filter(p, "created")?;
    app.run(&req.info, |store| {
        let rows = store
            .products
            .values()
            .filter(|x| active.is_none_or(|a| x.active == a))
            .filter(|x| ids.is_empty() || ids.contains(&x.id))
            .filter(|x| created(x.created))
            .map(|x| (x.seq, x.id.clone(), objects::product(x)))
            .collect();
        Ok(Json(page(store, rows, p, "/v1/products")?))
    })
}
