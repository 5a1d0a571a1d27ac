-- A part of a period's overage is decided and committed before Stripe is called: its
-- units, amount, description and where its invoice item goes are fixed while `pending`,
-- so a retry after a crash or a failed Stripe call sends Stripe the same request under
-- the same idempotency key (Stripe replays it) instead of a different amount under the
-- same key (Stripe refuses it) or a new key (billed twice). Usage that reaches the
-- ledger meanwhile becomes the next part.
ALTER TABLE overage_charges ADD COLUMN state VARCHAR(10) NOT NULL DEFAULT 'billed'
    CHECK (state IN ('pending', 'billed'));
-- renewal: on the renewal draft (or the next invoice); final: on an invoice of its own
-- for a subscription that ended; trueup: late usage of a billed period.
ALTER TABLE overage_charges ADD COLUMN kind VARCHAR(10) NOT NULL DEFAULT 'renewal'
    CHECK (kind IN ('renewal', 'final', 'trueup'));
-- draft:<invoice>:<subscription>, next:<subscription>, own:<subscription> or own:
ALTER TABLE overage_charges ADD COLUMN bill_to VARCHAR(600);
ALTER TABLE overage_charges ADD COLUMN description TEXT;
ALTER TABLE overage_charges ALTER COLUMN stripe_invoice_id DROP NOT NULL;
ALTER TABLE overage_charges DROP CONSTRAINT overage_charges_item_when_billed;
ALTER TABLE overage_charges ADD CONSTRAINT overage_charges_item_when_billed
    CHECK (state = 'pending' OR ((units = 0) = (stripe_invoice_item_id IS NULL)));
ALTER TABLE overage_charges ADD CONSTRAINT overage_charges_invoice_when_billed
    CHECK (state = 'pending' OR stripe_invoice_id IS NOT NULL);
ALTER TABLE overage_charges ADD CONSTRAINT overage_charges_pending_is_whole
    CHECK (state = 'billed' OR (bill_to IS NOT NULL AND description IS NOT NULL AND units > 0));
CREATE INDEX overage_charges_pending ON overage_charges (created_at) WHERE state = 'pending';
