//! The reference model: what the pricing rules say a customer is charged and holds.
//!
//! Written from the product's pricing rules and the README's billing rules alone —
//! prices, allowances and rates are spelled out here, proration is Stripe's documented
//! rule (by the second, each line rounded half-up to the cent) — and never from
//! tollgate's billing code, so a mistake in one does not hide in the other. It knows
//! nothing of Stripe objects or tollgate's tables: only money in cents and tickets.

/// A paid plan, from the pricing rules: Premium $199/month with 100 tickets and $1.99 per
/// extra ticket; Enterprise $599/month with 400 tickets and $1.25 per extra ticket. A
/// credit costs what an extra ticket does; packs are 100/500 and 400/2,000 credits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    Premium,
    Enterprise,
}

impl Tier {
    pub fn id(self) -> &'static str {
        match self {
            Tier::Premium => "premium",
            Tier::Enterprise => "enterprise",
        }
    }

    pub fn fee(self) -> i64 {
        match self {
            Tier::Premium => 19_900,
            Tier::Enterprise => 59_900,
        }
    }

    pub fn included(self) -> i64 {
        match self {
            Tier::Premium => 100,
            Tier::Enterprise => 400,
        }
    }

    /// Per extra ticket on the fixed fee, and per credit.
    pub fn rate(self) -> i64 {
        match self {
            Tier::Premium => 199,
            Tier::Enterprise => 125,
        }
    }

    pub fn packs(self) -> [i64; 2] {
        match self {
            Tier::Premium => [100, 500],
            Tier::Enterprise => [400, 2_000],
        }
    }
}

/// A period's overage: every ticket beyond the allowance at the plan's rate.
pub fn overage(tier: Tier, used: i64) -> i64 {
    (used - tier.included()).max(0) * tier.rate()
}

/// `amount × part / whole`, rounded half-up on the cent (Stripe's proration line).
pub fn share(amount: i64, part: i64, whole: i64) -> i64 {
    assert!(whole > 0 && (0..=whole).contains(&part), "{part}/{whole}");
    let exact = i128::from(amount) * i128::from(part);
    let whole = i128::from(whole);
    let rounded = (2 * exact + whole) / (2 * whole);
    i64::try_from(rounded).expect("cents fit")
}

/// A fixed-fee subscription's current period.
#[derive(Debug, Clone)]
pub struct Fixed {
    /// The plan paid for this period (during a pending downgrade, the higher one).
    pub paid: Tier,
    /// A downgrade that takes effect at the period end.
    pub pending: Option<Tier>,
    pub cancel_at_end: bool,
    pub start: i64,
    pub end: i64,
    pub used: i64,
}

/// One credit grant, in cents.
#[derive(Debug, Clone)]
pub struct Grant {
    pub amount: i64,
    pub used: i64,
    /// What the pack cost (`None` for converted unused fee, which cannot be refunded).
    pub price: Option<i64>,
    pub refunded: i64,
    pub closed: bool,
}

impl Grant {
    fn left(&self) -> i64 {
        if self.closed {
            0
        } else {
            self.amount - self.used
        }
    }
}

#[derive(Debug, Clone)]
pub struct Credits {
    pub tier: Tier,
    /// In the order they were granted: credits are spent oldest first (none expire).
    pub grants: Vec<Grant>,
}

impl Credits {
    pub fn balance(&self) -> i64 {
        self.grants.iter().map(Grant::left).sum()
    }

    /// Tickets the balance still pays for.
    pub fn units(&self) -> i64 {
        self.balance() / self.tier.rate()
    }
}

#[derive(Debug, Clone)]
pub enum Plan {
    Free,
    Fixed(Fixed),
    Credits(Credits),
}

/// The fixed-fee period that ended last: tickets of it that reach the ledger late are
/// billed afterwards (trued up) at the plan it was paid for.
#[derive(Debug, Clone)]
pub struct Ended {
    pub tier: Tier,
    pub start: i64,
    pub end: i64,
    pub used: i64,
}

/// What a customer has been charged and holds.
#[derive(Debug, Clone)]
pub struct Model {
    pub plan: Plan,
    pub ended: Option<Ended>,
    /// Late overage waiting for the live subscription's next invoice, in cents (the
    /// README's billing rule: trued up on the next invoice while the subscription lives,
    /// which is the renewal, an upgrade's invoice or the final one of any ending,
    /// whichever comes first).
    pub pending: i64,
    /// Every invoice that charges something, in cents, in the order they are issued.
    pub invoices: Vec<i64>,
    /// Credit pack payments (no invoice: Checkout in payment mode), in cents.
    pub pack_payments: Vec<i64>,
}

impl Default for Model {
    fn default() -> Self {
        Model {
            plan: Plan::Free,
            ended: None,
            pending: 0,
            invoices: Vec::new(),
            pack_payments: Vec::new(),
        }
    }
}

impl Model {
    fn invoice(&mut self, cents: i64) {
        if cents != 0 {
            self.invoices.push(cents);
        }
    }

    pub fn fixed(&mut self) -> &mut Fixed {
        match &mut self.plan {
            Plan::Fixed(f) => f,
            other => panic!("not on a fixed fee: {other:?}"),
        }
    }

    pub fn credits(&mut self) -> &mut Credits {
        match &mut self.plan {
            Plan::Credits(c) => c,
            other => panic!("not on credits: {other:?}"),
        }
    }

    /// The plan the customer's entitlements name.
    pub fn plan_id(&self) -> &'static str {
        match &self.plan {
            Plan::Free => "free",
            Plan::Fixed(f) => f.paid.id(),
            Plan::Credits(c) => c.tier.id(),
        }
    }

    /// Subscribing charges the first period's fee at once. Credits the customer held
    /// expire (a billing-model switch).
    pub fn subscribe(&mut self, tier: Tier, start: i64, end: i64) {
        self.invoice(tier.fee());
        self.plan = Plan::Fixed(Fixed {
            paid: tier,
            pending: None,
            cancel_at_end: false,
            start,
            end,
            used: 0,
        });
    }

    /// An upgrade at `at`: the unused time of the old fee is credited and the remaining
    /// time of the new fee charged, both invoiced now (with any late overage waiting for
    /// the next invoice); the allowance and rate of the new plan apply to the whole
    /// period's usage from then on. Returns the invoice total.
    pub fn upgrade(&mut self, to: Tier, at: i64) -> i64 {
        let f = self.fixed();
        let (left, whole) = (f.end - at, f.end - f.start);
        let proration = share(to.fee(), left, whole) - share(f.paid.fee(), left, whole);
        f.paid = to;
        // The change's invoice also collects what waits for the next invoice.
        let total = proration + std::mem::take(&mut self.pending);
        self.invoice(total);
        total
    }

    /// The period ends and renews: the next period's fee (the downgraded plan's, if one
    /// is pending) plus the ended period's overage, priced by the plan paid for, plus any
    /// late overage waiting for the next invoice.
    pub fn renew(&mut self, next_start: i64, next_end: i64) -> i64 {
        let f = self.fixed().clone();
        assert!(!f.cancel_at_end);
        let next = f.pending.unwrap_or(f.paid);
        let total = next.fee() + overage(f.paid, f.used) + std::mem::take(&mut self.pending);
        self.invoice(total);
        self.ended = Some(Ended {
            tier: f.paid,
            start: f.start,
            end: f.end,
            used: f.used,
        });
        self.plan = Plan::Fixed(Fixed {
            paid: next,
            pending: None,
            cancel_at_end: false,
            start: next_start,
            end: next_end,
            used: 0,
        });
        total
    }

    /// The subscription ends (at its period end or now): the period's overage so far (and
    /// late overage waiting for the next invoice) is billed on its own invoice; nothing
    /// of the fee comes back.
    pub fn end(&mut self) {
        let f = self.fixed().clone();
        let pending = std::mem::take(&mut self.pending);
        self.invoice(overage(f.paid, f.used) + pending);
        self.ended_now(&f);
        self.plan = Plan::Free;
    }

    fn ended_now(&mut self, f: &Fixed) {
        self.ended = Some(Ended {
            tier: f.paid,
            start: f.start,
            end: f.end,
            used: f.used,
        });
    }

    /// `n` tickets of the period that ended last reach the ledger late: the overage they
    /// add, at the plan that period was paid for, goes on the live subscription's next
    /// invoice, or (none lives on past its period) on an invoice of its own now. Returns
    /// the amount.
    pub fn late(&mut self, n: i64) -> i64 {
        let e = self.ended.as_mut().expect("a period ended");
        let extra = overage(e.tier, e.used + n) - overage(e.tier, e.used);
        e.used += n;
        match &self.plan {
            Plan::Fixed(f) if !f.cancel_at_end => self.pending += extra,
            _ => self.invoice(extra),
        }
        extra
    }

    /// Fixed fee → credits of `to` at `at`: the period's overage (with late overage
    /// waiting for the next invoice) is billed on the final invoice, and the
    /// unused, paid-for time of the fee becomes a credit grant worth exactly that.
    /// Returns the grant's amount.
    pub fn switch_to_credits(&mut self, to: Tier, at: i64) -> i64 {
        let f = self.fixed().clone();
        // The period's overage, and what waits for the next invoice, on the final one.
        let pending = std::mem::take(&mut self.pending);
        self.invoice(overage(f.paid, f.used) + pending);
        self.ended_now(&f);
        let unused = share(f.paid.fee(), f.end - at, f.end - f.start);
        let grants = if unused > 0 {
            vec![Grant {
                amount: unused,
                used: 0,
                price: None,
                refunded: 0,
                closed: false,
            }]
        } else {
            Vec::new()
        };
        self.plan = Plan::Credits(Credits { tier: to, grants });
        unused
    }

    pub fn enter_credits(&mut self, tier: Tier) {
        self.plan = Plan::Credits(Credits {
            tier,
            grants: Vec::new(),
        });
    }

    /// A pack of `units` credits, paid at the credit price.
    pub fn buy_pack(&mut self, units: i64) -> usize {
        let c = self.credits();
        let price = units * c.tier.rate();
        c.grants.push(Grant {
            amount: price,
            used: 0,
            price: Some(price),
            refunded: 0,
            closed: false,
        });
        let index = c.grants.len() - 1;
        self.pack_payments.push(price);
        index
    }

    /// `n` tickets asked for on credits; each is admitted while the balance pays for one
    /// whole ticket, spending the oldest grants first. Returns how many were admitted.
    pub fn use_credits(&mut self, n: i64) -> i64 {
        let c = self.credits();
        let rate = c.tier.rate();
        let mut admitted = 0;
        for _ in 0..n {
            if c.balance() < rate {
                break;
            }
            let mut due = rate;
            for g in c.grants.iter_mut() {
                let take = g.left().min(due);
                g.used += take;
                due -= take;
                if due == 0 {
                    break;
                }
            }
            admitted += 1;
        }
        admitted
    }

    /// `cents` more of grant `index`'s payment refunded: the grant keeps the whole
    /// credits its unrefunded share buys, never less than was used; refunded in full,
    /// it ends (what was used stays used).
    pub fn refund(&mut self, index: usize, cents: i64) {
        let c = self.credits();
        let rate = c.tier.rate();
        let g = &mut c.grants[index];
        let price = g.price.expect("a pack");
        g.refunded += cents;
        assert!(g.refunded <= price);
        if g.refunded == price {
            g.amount = g.used;
            g.closed = true;
        } else {
            g.amount = (((price - g.refunded) / rate) * rate).max(g.used);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_rounds_half_up_on_the_cent() {
        assert_eq!(share(19_900, 1, 2), 9_950);
        assert_eq!(share(1, 1, 2), 1);
        assert_eq!(share(1, 1, 3), 0);
        assert_eq!(share(59_900, 0, 10), 0);
    }

    #[test]
    fn the_pricing_rules_in_numbers() {
        assert_eq!(overage(Tier::Premium, 137), 7_363);
        assert_eq!(overage(Tier::Enterprise, 399), 0);
        let mut m = Model::default();
        m.subscribe(Tier::Premium, 0, 100);
        m.fixed().used = 120;
        assert_eq!(m.upgrade(Tier::Enterprise, 50), 29_950 - 9_950);
        assert_eq!(m.renew(100, 200), 59_900);
        m.enter_credits(Tier::Premium);
        m.buy_pack(100);
        assert_eq!(m.use_credits(10), 10);
        m.refund(0, 9_950);
        assert_eq!(m.credits().units(), 40);
        m.refund(0, 9_950);
        assert_eq!(m.credits().units(), 0);
    }
}
