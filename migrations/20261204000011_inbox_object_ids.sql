-- The Stripe object an inbox event is about (`data.object.id`), stored beside the payload
-- so pending events of one object can be found (and coalesced) without reading payloads,
-- and so it survives the payload being encrypted or purged later.
ALTER TABLE stripe_events ADD COLUMN object_id TEXT;

UPDATE stripe_events SET object_id = payload -> 'data' -> 'object' ->> 'id'
WHERE applied_at IS NULL;

CREATE INDEX stripe_events_pending_object_idx ON stripe_events (object_id)
    WHERE applied_at IS NULL;
