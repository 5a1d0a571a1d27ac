//! The usage ledger: every consumed unit is one row, whatever how often it is delivered.

use billing_model::UsageEvent;
use sqlx::PgPool;

/// What one batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct IngestOutcome {
    /// Events stored now.
    pub inserted: u64,
    /// Events already stored (a retry or a duplicate within the batch).
    pub duplicates: u64,
}

/// Stores a batch in one statement; events already stored are skipped by event id.
pub async fn ingest(pool: &PgPool, events: &[UsageEvent]) -> Result<IngestOutcome, sqlx::Error> {
    if events.is_empty() {
        return Ok(IngestOutcome {
            inserted: 0,
            duplicates: 0,
        });
    }
    let n = events.len();
    let mut ids = Vec::with_capacity(n);
    let mut customers = Vec::with_capacity(n);
    let mut types = Vec::with_capacity(n);
    let mut quantities = Vec::with_capacity(n);
    let mut starts = Vec::with_capacity(n);
    let mut ends = Vec::with_capacity(n);
    let mut occurred = Vec::with_capacity(n);
    let mut tickets: Vec<Option<String>> = Vec::with_capacity(n);
    for e in events {
        ids.push(e.event_id);
        customers.push(e.customer_id.as_str().to_owned());
        types.push(
            serde_json::to_value(e.usage_type)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
        );
        quantities.push(i32::try_from(e.quantity.get()).unwrap_or(i32::MAX));
        starts.push(e.period_start);
        ends.push(e.period_end);
        occurred.push(e.occurred_at);
        tickets.push(e.ticket_id.clone());
    }
    let result = sqlx::query!(
        r#"INSERT INTO usage_records
               (event_id, customer_id, usage_type, quantity,
                billing_period_start, billing_period_end, occurred_at, ticket_id)
           SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::int4[],
                                $5::timestamptz[], $6::timestamptz[], $7::timestamptz[], $8::text[])
           ON CONFLICT (event_id) DO NOTHING"#,
        &ids,
        &customers,
        &types,
        &quantities,
        &starts,
        &ends,
        &occurred,
        &tickets as &[Option<String>],
    )
    .execute(pool)
    .await?;
    let inserted = result.rows_affected();
    Ok(IngestOutcome {
        inserted,
        duplicates: n as u64 - inserted,
    })
}
