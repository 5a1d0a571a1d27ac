-- A customer on the credit-burndown model has no Stripe subscription (no monthly charge):
-- their plan and model are a subscriptions row without a Stripe id, one per customer.
ALTER TABLE subscriptions ALTER COLUMN stripe_subscription_id DROP NOT NULL;
ALTER TABLE subscriptions ALTER COLUMN stripe_customer_id DROP NOT NULL;
CREATE UNIQUE INDEX subscriptions_one_credit_model_per_customer
    ON subscriptions (customer_id) WHERE stripe_subscription_id IS NULL;
