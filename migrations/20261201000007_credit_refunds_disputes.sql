-- What a credit grant was bought for, so a partial refund revokes its share (the grant's
-- credit_amount is what it is worth now). NULL on grants recorded before this column:
-- read as credit_amount.
ALTER TABLE billing_credits ADD COLUMN purchased_amount NUMERIC(12, 2) CHECK (purchased_amount >= 0);
ALTER TABLE billing_credits ADD CONSTRAINT billing_credits_worth_at_most_purchased
    CHECK (purchased_amount IS NULL OR credit_amount <= purchased_amount);
-- A lost dispute ends a grant like a refund.
ALTER TABLE billing_credits DROP CONSTRAINT billing_credits_closed_reason_check;
ALTER TABLE billing_credits ADD CONSTRAINT billing_credits_closed_reason_check
    CHECK (closed_reason IN ('billing_model_switch', 'refund', 'expired', 'dispute_lost'));
