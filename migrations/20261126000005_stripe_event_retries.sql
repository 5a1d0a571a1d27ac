-- An event whose effect cannot be applied yet (Stripe unreachable, or refusing) is retried
-- with backoff instead of blocking every event behind it in the inbox.
ALTER TABLE stripe_events
    ADD COLUMN attempts        INTEGER NOT NULL DEFAULT 0,
    ADD COLUMN next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    ADD COLUMN last_error      TEXT;
DROP INDEX stripe_events_pending_idx;
CREATE INDEX stripe_events_pending_idx ON stripe_events (next_attempt_at) WHERE applied_at IS NULL;
