-- A switch from fixed fee to credits turns the unused, paid-for time of the fixed-fee
-- period into tollgate credits (Stripe's own proration credit would sit in the customer's
-- Stripe balance, which only invoices consume, and credit packs have none). The grant names
-- the subscription it came from, once.
ALTER TABLE billing_credits ADD COLUMN converted_from_subscription VARCHAR(255) UNIQUE;
