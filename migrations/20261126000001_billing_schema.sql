-- tollgate's ledger: the seed PRP's three tables, adapted, plus customers and stripe_events.
--
-- Why there are no foreign keys to `users` or `tickets`: those tables live in the ticket
-- API's own database, which tollgate neither owns nor connects to (it runs as a sidecar and
-- never touches the ticket API's code or data). tollgate keeps the ticket API's ids as
-- opaque text (`customer_id` is the ticket API's user id, `ticket_id` its ticket id).
-- Foreign keys are kept wherever both ends are tollgate's own tables.

-- The ticket API's user id <-> Stripe customer id. A customer row exists from the moment
-- tollgate first sees the user; Free customers never get a Stripe customer.
CREATE TABLE customers (
    customer_id         TEXT PRIMARY KEY CHECK (customer_id ~ '^[A-Za-z0-9._:@-]{1,128}$'),
    stripe_customer_id  VARCHAR(255) UNIQUE,
    -- A Free customer's billing periods run monthly from the day tollgate first saw them.
    free_period_anchor  TIMESTAMPTZ NOT NULL DEFAULT now(),
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE subscriptions (
    id                      UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    -- seed: user_id UUID REFERENCES users(id); see the note above.
    customer_id             TEXT NOT NULL REFERENCES customers (customer_id),
    stripe_subscription_id  VARCHAR(255) UNIQUE NOT NULL,
    stripe_customer_id      VARCHAR(255) NOT NULL,
    plan_type               VARCHAR(50) NOT NULL CHECK (plan_type ~ '^[a-z0-9_-]{1,32}$'),
    billing_model           VARCHAR(50) NOT NULL CHECK (billing_model IN ('fixed_fee', 'credit_burndown')),
    -- Stripe's subscription statuses, as last seen.
    status                  VARCHAR(50) NOT NULL CHECK (status IN (
                                'incomplete', 'incomplete_expired', 'trialing', 'active',
                                'past_due', 'canceled', 'unpaid', 'paused')),
    current_period_start    TIMESTAMPTZ,
    current_period_end      TIMESTAMPTZ,
    cancel_at_period_end    BOOLEAN NOT NULL DEFAULT false,
    -- A downgrade waits for the period end; the plan it will become.
    pending_plan_type       VARCHAR(50) CHECK (pending_plan_type ~ '^[a-z0-9_-]{1,32}$'),
    -- Dunning: set by invoice.payment_failed, cleared by invoice.paid.
    payment_failed_attempts INTEGER NOT NULL DEFAULT 0 CHECK (payment_failed_attempts >= 0),
    next_payment_attempt    TIMESTAMPTZ,
    grace_until             TIMESTAMPTZ,
    -- Ordering guard for webhooks (Stripe does not order deliveries): the `created`
    -- timestamp of the newest Stripe event (or fetch) whose state is stored here. An older
    -- event never overwrites a newer one.
    stripe_state_at         BIGINT NOT NULL DEFAULT 0,
    created_at              TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at              TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK (current_period_end IS NULL OR current_period_start IS NULL
           OR current_period_end > current_period_start)
);
CREATE INDEX subscriptions_customer_idx ON subscriptions (customer_id);

CREATE TABLE usage_records (
    id                    UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    -- The proxy's UUIDv7 for the consumed unit: delivery is at-least-once, so ingestion
    -- dedupes on it.
    event_id              UUID NOT NULL UNIQUE,
    -- seed: user_id UUID REFERENCES users(id). No FK to customers either: ingestion is one
    -- statement per batch and must not fail because a customer row is not there yet.
    customer_id           TEXT NOT NULL CHECK (customer_id ~ '^[A-Za-z0-9._:@-]{1,128}$'),
    subscription_id       UUID REFERENCES subscriptions (id),
    -- seed: ticket_id UUID REFERENCES tickets(id); the ticket API's id, kept as text.
    ticket_id             TEXT,
    usage_type            VARCHAR(50) NOT NULL CHECK (usage_type IN ('ticket_creation', 'agent_interaction')),
    quantity              INTEGER NOT NULL DEFAULT 1 CHECK (quantity > 0),
    billing_period_start  TIMESTAMPTZ NOT NULL,
    billing_period_end    TIMESTAMPTZ NOT NULL CHECK (billing_period_end > billing_period_start),
    occurred_at           TIMESTAMPTZ NOT NULL,
    recorded_at           TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX usage_records_customer_period_idx
    ON usage_records (customer_id, billing_period_start);

CREATE TABLE billing_credits (
    id                          UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    -- seed: user_id UUID REFERENCES users(id); see the note above.
    customer_id                 TEXT NOT NULL REFERENCES customers (customer_id),
    subscription_id             UUID REFERENCES subscriptions (id),
    credit_amount               NUMERIC(12, 2) NOT NULL CHECK (credit_amount >= 0),
    used_amount                 NUMERIC(12, 2) NOT NULL DEFAULT 0 CHECK (used_amount >= 0),
    remaining_amount            NUMERIC(12, 2) GENERATED ALWAYS AS (credit_amount - used_amount) STORED,
    -- Price of one ticket when the grant was bought: units = amount / unit_price.
    unit_price                  NUMERIC(12, 2) NOT NULL CHECK (unit_price > 0),
    stripe_invoice_id           VARCHAR(255),
    stripe_checkout_session_id  VARCHAR(255) UNIQUE,
    stripe_payment_intent_id    VARCHAR(255),
    expires_at                  TIMESTAMPTZ,
    -- Set when the rest of the grant stopped counting (model switch, refund, expiry),
    -- with the reason kept for the customer's history.
    closed_at                   TIMESTAMPTZ,
    closed_reason               TEXT CHECK (closed_reason IN ('billing_model_switch', 'refund', 'expired')),
    created_at                  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at                  TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- A grant can never be used below zero, whatever a buggy writer tries.
    CONSTRAINT billing_credits_remaining_never_negative CHECK (credit_amount - used_amount >= 0),
    CHECK ((closed_at IS NULL) = (closed_reason IS NULL))
);
CREATE INDEX billing_credits_customer_idx ON billing_credits (customer_id, expires_at);

-- Stripe events: the durable inbox and the at-most-once record. A row is written when a
-- verified event arrives; `applied_at` is set in the same transaction as the event's
-- effect, so a crash between receipt and apply leaves the event pending, never lost.
CREATE TABLE stripe_events (
    event_id        VARCHAR(255) PRIMARY KEY CHECK (event_id LIKE 'evt\_%'),
    event_type      VARCHAR(255) NOT NULL,
    stripe_created  BIGINT NOT NULL,
    payload         JSONB NOT NULL,
    received_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    applied_at      TIMESTAMPTZ,
    outcome         TEXT
);
CREATE INDEX stripe_events_pending_idx ON stripe_events (received_at) WHERE applied_at IS NULL;
