-- Overage billed through Stripe: one row per customer and usage period, written after
-- the invoice item exists on the renewal draft. The item is created with an idempotency
-- key derived from (customer, period), so a rerun or a crash between Stripe and this
-- insert replays the same item instead of billing twice; this row makes later runs skip.
CREATE TABLE overage_charges (
    customer_id             TEXT NOT NULL CHECK (customer_id ~ '^[A-Za-z0-9._:@-]{1,128}$'),
    billing_period_start    TIMESTAMPTZ NOT NULL,
    billing_period_end      TIMESTAMPTZ NOT NULL CHECK (billing_period_end > billing_period_start),
    plan_type               VARCHAR(50) NOT NULL,
    units                   BIGINT NOT NULL CHECK (units > 0),
    unit_rate               NUMERIC(12, 2) NOT NULL CHECK (unit_rate > 0),
    amount                  NUMERIC(12, 2) NOT NULL CHECK (amount > 0),
    stripe_invoice_id       VARCHAR(255) NOT NULL,
    stripe_invoice_item_id  VARCHAR(255) NOT NULL UNIQUE,
    created_at              TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (customer_id, billing_period_start)
);

-- Outbound notifications to the ticket app: a durable outbox, delivered at least once
-- (the receiver dedupes on event_id). `dedupe_key` makes each threshold fire once per
-- period and each payment event once per invoice.
CREATE TABLE notification_outbox (
    event_id         UUID PRIMARY KEY,
    customer_id      TEXT NOT NULL,
    kind             VARCHAR(64) NOT NULL,
    dedupe_key       TEXT NOT NULL UNIQUE,
    payload          JSONB NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    delivered_at     TIMESTAMPTZ,
    last_error       TEXT
);
CREATE INDEX notification_outbox_due_idx
    ON notification_outbox (next_attempt_at) WHERE delivered_at IS NULL;

-- Where periodic jobs resume (e.g. the Stripe reconciliation's last event time).
CREATE TABLE job_cursors (
    job         TEXT PRIMARY KEY,
    position    BIGINT NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
