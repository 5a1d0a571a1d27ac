-- Purchase intents: one row per thing a customer means to buy (a Checkout Session, a
-- direct subscription). A retry of the same intent reuses its Stripe idempotency key, so
-- Stripe replays instead of repeating; a new purchase gets a new intent and a new key, so
-- a completed session is never handed out again.
CREATE TABLE purchase_intents (
    id                      UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    customer_id             TEXT NOT NULL CHECK (customer_id ~ '^[A-Za-z0-9._:@-]{1,128}$'),
    -- The billing API operation (checkout, subscribe, ...).
    operation               VARCHAR(50) NOT NULL,
    -- The caller's `Idempotency-Key` header, when it sent one.
    client_key              VARCHAR(255),
    -- SHA-256 of the fields that define the purchase: the same key with other fields is
    -- refused (as Stripe refuses it).
    fingerprint             CHAR(64) NOT NULL,
    stripe_idempotency_key  VARCHAR(255) NOT NULL UNIQUE,
    -- What Stripe created for it (cs_..., sub_...).
    stripe_object_id        VARCHAR(255),
    -- NULL while open; completed, failed or expired once it ended.
    outcome                 VARCHAR(20) CHECK (outcome IN ('completed', 'failed', 'expired')),
    created_at              TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at             TIMESTAMPTZ,
    CHECK ((outcome IS NULL) = (finished_at IS NULL)),
    UNIQUE (customer_id, operation, client_key)
);
CREATE INDEX purchase_intents_open ON purchase_intents (customer_id, operation, fingerprint, created_at DESC)
    WHERE finished_at IS NULL AND client_key IS NULL;
CREATE INDEX purchase_intents_object ON purchase_intents (stripe_object_id);

-- Overage of one period may be billed in parts: the first when the period ends (renewal
-- draft, or the final invoice of a subscription that ended), then true-ups for usage that
-- reached the ledger later. Each part is billed once (its own idempotency key). A period
-- that ended within its allowance gets a part of zero units (no invoice item), so usage
-- that arrives later is still trued up.
ALTER TABLE overage_charges ADD COLUMN part INTEGER NOT NULL DEFAULT 0 CHECK (part >= 0);
ALTER TABLE overage_charges DROP CONSTRAINT overage_charges_pkey;
ALTER TABLE overage_charges ADD PRIMARY KEY (customer_id, billing_period_start, part);
ALTER TABLE overage_charges DROP CONSTRAINT overage_charges_units_check;
ALTER TABLE overage_charges ADD CONSTRAINT overage_charges_units_check CHECK (units >= 0);
ALTER TABLE overage_charges DROP CONSTRAINT overage_charges_amount_check;
ALTER TABLE overage_charges ADD CONSTRAINT overage_charges_amount_check CHECK (amount >= 0);
ALTER TABLE overage_charges ALTER COLUMN stripe_invoice_item_id DROP NOT NULL;
ALTER TABLE overage_charges ADD CONSTRAINT overage_charges_item_when_billed
    CHECK ((units = 0) = (stripe_invoice_item_id IS NULL));
