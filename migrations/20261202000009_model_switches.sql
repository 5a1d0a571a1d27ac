-- A switch from fixed fee to credits spans Stripe (the cancellation) and PostgreSQL (the
-- credit model, the expired grants, the unused fee as a grant). The intent is recorded
-- here before Stripe is asked, and completed exactly once in the transaction that stores
-- the cancellation (the API's own re-fetch, the webhook or reconciliation, whichever
-- comes first), so a crash in between loses nothing.
CREATE TABLE model_switches (
    stripe_subscription_id VARCHAR(255) PRIMARY KEY,
    customer_id            VARCHAR(255) NOT NULL,
    target_plan            VARCHAR(32)  NOT NULL,
    -- What the unused, paid-for time is worth, and the price of one credit on the target
    -- plan; NULL when nothing is owed.
    unused_fee             NUMERIC(12, 2),
    unit_price             NUMERIC(12, 2),
    requested_at           TIMESTAMPTZ  NOT NULL DEFAULT now(),
    completed_at           TIMESTAMPTZ,
    credits_expired        BIGINT
);
