-- Retention: raw usage records older than the configured age are folded into
-- per-period totals, so history and invoices stay correct after the raw rows are gone.
CREATE TABLE usage_period_totals (
    customer_id           TEXT NOT NULL CHECK (customer_id ~ '^[A-Za-z0-9._:@-]{1,128}$'),
    usage_type            VARCHAR(50) NOT NULL CHECK (usage_type IN ('ticket_creation', 'agent_interaction')),
    billing_period_start  TIMESTAMPTZ NOT NULL,
    billing_period_end    TIMESTAMPTZ NOT NULL CHECK (billing_period_end > billing_period_start),
    quantity              BIGINT NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (customer_id, billing_period_start, usage_type)
);
