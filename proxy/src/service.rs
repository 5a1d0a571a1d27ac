//! The proxy service: the hot path of a request, top to bottom.
//!
//! 1. Classify the route; unmetered requests pass straight through.
//! 2. Identify the customer (JWT or trusted header); none → 401.
//! 3. Look the entitlement up in memory (a miss fills once from the control plane).
//! 4. Paid overage admits without a reservation. Hard limits reserve in Redis (one
//!    round trip), unless the customer is known to be exhausted (refused from memory).
//! 5. On a 2xx from the upstream: log the usage event (before the response leaves) and
//!    commit the reservation. Otherwise, or if no response comes: release it.
//!
//! No per-request call to PostgreSQL or to the control plane.

use crate::config::FailurePolicy;
use crate::entitlements::{Entitlement, Entitlements};
use crate::identity::Identity;
use crate::metrics::ProxyMetrics;
use crate::problem::{self, Problem};
use crate::routes::{RouteClass, RouteTable};
use crate::usage_log::UsageLog;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use billing_model::counters::{CounterError, CounterRef, Counters};
use billing_model::identity::IdentityError;
use billing_model::{
    Counter, CounterScope, CustomerId, Enforcement, RedisKeys, RefusalCode, UsageEvent, UsageType,
};
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use time::OffsetDateTime;

/// The ticket API's reverse proxy.
pub struct TollgateProxy {
    pub upstream: SocketAddr,
    pub upstream_timeout: Duration,
    pub routes: Arc<ArcSwap<RouteTable>>,
    pub identity: Arc<Identity>,
    pub entitlements: Arc<Entitlements>,
    pub counters: Counters,
    pub keys: RedisKeys,
    pub usage_log: Arc<UsageLog>,
    pub metrics: Arc<ProxyMetrics>,
    pub redis_budget: Duration,
    pub failure_policy: FailurePolicy,
    pub reservation_ttl: Duration,
    /// Where commits and releases run, off the request path.
    pub background: tokio::runtime::Handle,
    pub pending_commits: Arc<AtomicU64>,
    /// Admitted metered requests not yet consumed or released (the drain waits for them).
    pub unsettled: Arc<AtomicU64>,
}

/// A metered request that was let through and has not been settled yet.
struct Admission {
    event_id: uuid::Uuid,
    customer: CustomerId,
    entitlement: Arc<Entitlement>,
    usage_type: UsageType,
    units: NonZeroU32,
    counter: CounterRef,
    /// Whether a unit is held in Redis for this request (hard limits).
    reserved: bool,
}

/// Per-request state.
#[derive(Default)]
pub struct RequestCtx {
    /// The client's `x-request-id`, or one minted here; sent upstream, returned to the
    /// client and on every log line about the request.
    request_id: String,
    class: Option<RouteClass>,
    /// Time spent in tollgate's own phases.
    spent: Duration,
    admission: Option<Admission>,
    /// `RateLimit-Policy` and `RateLimit` values for the response.
    ratelimit: Option<(String, String)>,
}

impl TollgateProxy {
    fn decision(&self, class: RouteClass, outcome: &str) {
        self.metrics
            .decisions
            .with_label_values(&[class.label(), outcome])
            .inc();
    }

    async fn refuse(
        &self,
        session: &mut Session,
        class: RouteClass,
        outcome: &str,
        problem: &Problem,
        headers: &[(&'static str, String)],
    ) -> Result<bool> {
        self.decision(class, outcome);
        // Keep-alive would be fine, but a refused client is often a retrying one; a
        // fresh connection keeps misbehaving clients from pinning workers.
        session.set_keepalive(None);
        problem::respond(session, problem, headers).await?;
        Ok(true)
    }

    fn counter_for(
        &self,
        entitlement: &Entitlement,
        customer: &CustomerId,
        scope: CounterScope,
        now: OffsetDateTime,
    ) -> CounterRef {
        let s = &entitlement.snapshot;
        CounterRef::new(
            &self.keys,
            customer,
            Counter::for_scope(scope, s.period_start),
            s.used(scope),
            s.period_end,
            now,
        )
    }

    /// Headers for a hard limit with `remaining` units left.
    fn limit_headers(
        entitlement: &Entitlement,
        scope: CounterScope,
        limit: u64,
        remaining: u64,
        now: OffsetDateTime,
    ) -> (String, String) {
        let s = &entitlement.snapshot;
        let credits = scope == CounterScope::Credits;
        let name = problem::quota_name(credits);
        let window = (!credits).then(|| (s.period_end - s.period_start).whole_seconds());
        let reset = (!credits).then(|| problem::seconds_until(s.period_end, now));
        (
            problem::policy_header(name, limit, window),
            problem::ratelimit_header(name, remaining, reset),
        )
    }

    async fn identify(
        &self,
        session: &mut Session,
        class: RouteClass,
    ) -> Result<std::result::Result<CustomerId, bool>> {
        match self.identity.customer(&session.req_header().headers) {
            Ok(c) => Ok(Ok(c)),
            Err(e) => {
                let code = if e == IdentityError::Missing {
                    "unauthorized"
                } else {
                    "invalid_token"
                };
                let p = Problem::new(401, code, "Unauthorized", e.to_string());
                let headers = [("www-authenticate", "Bearer".to_owned())];
                self.refuse(session, class, "unauthorized", &p, &headers)
                    .await
                    .map(Err)
            }
        }
    }

    /// The chat route: open unless the control plane closed it or a period hard limit
    /// (the Free plan, a lapsed payment) is used up.
    async fn chat(
        &self,
        session: &mut Session,
        customer: &CustomerId,
        entitlement: &Arc<Entitlement>,
        now: OffsetDateTime,
    ) -> Result<bool> {
        let s = &entitlement.snapshot;
        let class = RouteClass::Chat;
        if let Enforcement::HardLimit {
            limit,
            counter: CounterScope::Period,
            ..
        } = s.enforcement()
        {
            let exhausted = if entitlement.is_known_exhausted() {
                true
            } else {
                let counter = self.counter_for(entitlement, customer, CounterScope::Period, now);
                let started = Instant::now();
                let committed = self.counters.committed(&counter, self.redis_budget).await;
                self.redis_observe("chat_check", started, committed.as_ref().err());
                match committed {
                    Ok(used) if used >= limit => {
                        entitlement.mark_exhausted();
                        true
                    }
                    Ok(_) => false,
                    // Chat consumes nothing: an unreachable Redis does not close it.
                    Err(_) => false,
                }
            };
            if exhausted || !s.chat_enabled {
                let p = Problem::refusal(RefusalCode::ChatDisabled, s, limit, limit);
                return self.refuse(session, class, "refused_chat", &p, &[]).await;
            }
        } else if !s.chat_enabled {
            let limit = s.included_units;
            let p = Problem::refusal(RefusalCode::ChatDisabled, s, limit, s.units_used);
            return self.refuse(session, class, "refused_chat", &p, &[]).await;
        }
        self.decision(class, "admitted");
        Ok(false)
    }

    fn redis_observe(&self, op: &str, started: Instant, error: Option<&CounterError>) {
        self.metrics
            .redis_seconds
            .with_label_values(&[op])
            .observe(started.elapsed().as_secs_f64());
        if let Some(e) = error {
            let kind = match e {
                CounterError::Timeout => "timeout",
                CounterError::Redis(_) => "error",
            };
            self.metrics
                .redis_errors
                .with_label_values(&[op, kind])
                .inc();
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn metered(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        customer: CustomerId,
        entitlement: Arc<Entitlement>,
        usage_type: UsageType,
        units: NonZeroU32,
        now: OffsetDateTime,
    ) -> Result<bool> {
        let class = RouteClass::Metered { usage_type, units };
        let event_id = uuid::Uuid::now_v7();
        let s = &entitlement.snapshot;
        let (limit, scope, code) = match s.enforcement() {
            Enforcement::PaidOverage => {
                let counter = self.counter_for(&entitlement, &customer, CounterScope::Period, now);
                let used = s.units_used.max(entitlement.observed_used());
                ctx.ratelimit = Some(Self::limit_headers(
                    &entitlement,
                    CounterScope::Period,
                    s.included_units,
                    s.included_units.saturating_sub(used),
                    now,
                ));
                self.admit(
                    ctx,
                    Admission {
                        event_id,
                        customer,
                        entitlement,
                        usage_type,
                        units,
                        counter,
                        reserved: false,
                    },
                );
                self.decision(class, "admitted_overage");
                return Ok(false);
            }
            Enforcement::HardLimit {
                limit,
                counter,
                code,
            } => (limit, counter, code),
        };

        let retry_after = |committed_only: bool| -> Vec<(&'static str, String)> {
            if !committed_only {
                // Held only by requests in flight: one of them may give its unit back.
                vec![("retry-after", "1".to_owned())]
            } else if code == RefusalCode::UsageLimitExceeded {
                vec![(
                    "retry-after",
                    problem::seconds_until(s.period_end, now).to_string(),
                )]
            } else {
                Vec::new()
            }
        };

        if entitlement.is_known_exhausted() {
            let p = Problem::refusal(code, s, limit, limit);
            let (policy, rl) = Self::limit_headers(&entitlement, scope, limit, 0, now);
            let mut headers = retry_after(true);
            headers.push(("ratelimit-policy", policy));
            headers.push(("ratelimit", rl));
            return self
                .refuse(session, class, "refused_from_memory", &p, &headers)
                .await;
        }

        let counter = self.counter_for(&entitlement, &customer, scope, now);
        let started = Instant::now();
        let reservation = self
            .counters
            .reserve(
                &counter,
                limit,
                &event_id.simple().to_string(),
                units.get(),
                self.redis_budget,
            )
            .await;
        self.redis_observe("reserve", started, reservation.as_ref().err());
        match reservation {
            Ok(r) if r.admitted => {
                let remaining = limit.saturating_sub(r.committed + r.in_flight);
                ctx.ratelimit = Some(Self::limit_headers(
                    &entitlement,
                    scope,
                    limit,
                    remaining,
                    now,
                ));
                self.admit(
                    ctx,
                    Admission {
                        event_id,
                        customer,
                        entitlement,
                        usage_type,
                        units,
                        counter,
                        reserved: true,
                    },
                );
                self.decision(class, "admitted");
                Ok(false)
            }
            Ok(r) => {
                let committed_only = r.committed + u64::from(units.get()) > limit;
                if r.committed >= limit {
                    entitlement.mark_exhausted();
                }
                let p = Problem::refusal(code, s, limit, r.committed);
                let remaining = limit.saturating_sub(r.committed + r.in_flight);
                let (policy, rl) = Self::limit_headers(&entitlement, scope, limit, remaining, now);
                let mut headers = retry_after(committed_only);
                headers.push(("ratelimit-policy", policy));
                headers.push(("ratelimit", rl));
                let outcome = match code {
                    RefusalCode::CreditsExhausted => "refused_credits",
                    RefusalCode::PaymentRequired => "refused_payment",
                    _ => "refused_limit",
                };
                self.refuse(session, class, outcome, &p, &headers).await
            }
            Err(e) => match self.failure_policy {
                FailurePolicy::Deny => {
                    tracing::warn!(error = %e, customer = %customer, request_id = %ctx.request_id, "usage check unavailable; refusing (policy deny)");
                    let p = Problem::new(
                        503,
                        "usage_check_unavailable",
                        "Service Unavailable",
                        "Usage limits cannot be checked right now. Please retry shortly.",
                    );
                    self.refuse(
                        session,
                        class,
                        "fail_closed",
                        &p,
                        &[("retry-after", "1".to_owned())],
                    )
                    .await
                }
                FailurePolicy::Allow => {
                    tracing::warn!(error = %e, customer = %customer, request_id = %ctx.request_id, "usage check unavailable; admitting (policy allow)");
                    self.admit(
                        ctx,
                        Admission {
                            event_id,
                            customer,
                            entitlement,
                            usage_type,
                            units,
                            counter,
                            reserved: false,
                        },
                    );
                    self.decision(class, "fail_open");
                    Ok(false)
                }
            },
        }
    }

    fn admit(&self, ctx: &mut RequestCtx, admission: Admission) {
        self.unsettled.fetch_add(1, Ordering::Relaxed);
        ctx.admission = Some(admission);
    }

    /// The upstream succeeded: the usage event goes to the log now (before the response
    /// leaves), and the counter is committed off the request path.
    fn consume(&self, admission: Admission) {
        self.unsettled.fetch_sub(1, Ordering::Relaxed);
        let event = UsageEvent {
            event_id: admission.event_id,
            customer_id: admission.customer,
            usage_type: admission.usage_type,
            quantity: admission.units,
            occurred_at: OffsetDateTime::now_utc(),
            period_start: admission.entitlement.snapshot.period_start,
            period_end: admission.entitlement.snapshot.period_end,
            ticket_id: None,
        };
        match self.usage_log.append(&event) {
            Ok(()) => self.metrics.usage_logged.inc(),
            Err(e) => {
                self.metrics.usage_log_failures.inc();
                tracing::error!(error = %e, event_id = %event.event_id, customer = %event.customer_id, "usage event could not be logged");
            }
        }
        let counters = self.counters.clone();
        let metrics = self.metrics.clone();
        let pending = self.pending_commits.clone();
        let give_up = self.reservation_ttl;
        let reservation = admission
            .reserved
            .then(|| admission.event_id.simple().to_string());
        let entitlement = admission.entitlement;
        let counter = admission.counter;
        let units = admission.units.get();
        pending.fetch_add(1, Ordering::Relaxed);
        self.background.spawn(async move {
            let started = Instant::now();
            let mut delay = Duration::from_millis(20);
            loop {
                match counters
                    .commit(&counter, reservation.as_deref(), units)
                    .await
                {
                    Ok(used) => {
                        entitlement.observe_used(used);
                        break;
                    }
                    Err(e) if started.elapsed() < give_up => {
                        metrics.commit_retries.inc();
                        tracing::warn!(error = %e, "counter commit failed; retrying");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(2));
                    }
                    Err(e) => {
                        // The event is in the usage log; reconciliation restores the
                        // counter from the ledger.
                        tracing::error!(error = %e, "counter commit abandoned");
                        break;
                    }
                }
            }
            pending.fetch_sub(1, Ordering::Relaxed);
        });
    }

    /// Gives a reservation back (upstream failed, or no response came).
    fn release(&self, admission: Admission) {
        self.unsettled.fetch_sub(1, Ordering::Relaxed);
        if !admission.reserved {
            return;
        }
        let counters = self.counters.clone();
        let id = admission.event_id.simple().to_string();
        let units = admission.units.get();
        self.background.spawn(async move {
            // On failure the reservation expires on its own.
            if let Err(e) = counters.release(&admission.counter, &id, units).await {
                tracing::warn!(error = %e, "reservation release failed; it will expire");
            }
        });
    }
}

#[async_trait]
impl ProxyHttp for TollgateProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> Self::CTX {
        RequestCtx::default()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        let started = Instant::now();
        let class = {
            let req = session.req_header();
            ctx.request_id = req
                .headers
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.is_empty() && v.len() <= 128)
                .map(str::to_owned)
                .unwrap_or_else(|| uuid::Uuid::now_v7().simple().to_string());
            self.routes.load().classify(&req.method, req.uri.path())
        };
        ctx.class = Some(class);
        let done = match class {
            RouteClass::Unmetered => {
                self.decision(class, "passthrough");
                false
            }
            RouteClass::Chat | RouteClass::Metered { .. } => {
                let customer = match self.identify(session, class).await? {
                    Ok(c) => c,
                    Err(done) => {
                        ctx.spent += started.elapsed();
                        return Ok(done);
                    }
                };
                let now = OffsetDateTime::now_utc();
                match self.entitlements.get(&customer, now).await {
                    Err(e) => {
                        tracing::warn!(error = %e, customer = %customer, request_id = %ctx.request_id, "entitlement unavailable");
                        let p = Problem::new(
                            503,
                            "entitlement_unavailable",
                            "Service Unavailable",
                            "Your plan cannot be looked up right now. Please retry shortly.",
                        );
                        let headers = [("retry-after", "1".to_owned())];
                        self.refuse(session, class, "entitlement_unavailable", &p, &headers)
                            .await?
                    }
                    Ok(entitlement) => match class {
                        RouteClass::Metered { usage_type, units } => {
                            self.metered(
                                session,
                                ctx,
                                customer,
                                entitlement,
                                usage_type,
                                units,
                                now,
                            )
                            .await?
                        }
                        _ => self.chat(session, &customer, &entitlement, now).await?,
                    },
                }
            }
        };
        ctx.spent += started.elapsed();
        Ok(done)
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut pingora::http::RequestHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        upstream_request.insert_header("x-request-id", ctx.request_id.as_str())?;
        Ok(())
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        let mut peer = HttpPeer::new(self.upstream, false, String::new());
        peer.options.read_timeout = Some(self.upstream_timeout);
        peer.options.connection_timeout = Some(Duration::from_secs(5));
        Ok(Box::new(peer))
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        let status = upstream_response.status.as_u16();
        if status < 200 {
            // An interim response (100 Continue); the final one is still to come.
            return Ok(());
        }
        let started = Instant::now();
        if let Some(admission) = ctx.admission.take() {
            if (200..300).contains(&status) {
                self.consume(admission);
            } else {
                self.release(admission);
            }
        }
        upstream_response.insert_header("x-request-id", ctx.request_id.as_str())?;
        if let Some((policy, ratelimit)) = ctx.ratelimit.take() {
            upstream_response.insert_header("ratelimit-policy", policy)?;
            upstream_response.insert_header("ratelimit", ratelimit)?;
        }
        ctx.spent += started.elapsed();
        Ok(())
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Self::CTX) {
        tracing::debug!(
            request_id = %ctx.request_id,
            customer = ctx.admission.as_ref().map(|a| a.customer.as_str()).unwrap_or(""),
            route_class = ctx.class.map(|c| c.label()).unwrap_or("none"),
            status = session.response_written().map(|r| r.status.as_u16()).unwrap_or(0),
            error = e.map(|e| e.to_string()),
            "request done"
        );
        // No upstream response ever came (connect failure, timeout, client gone):
        // nothing was consumed.
        if let Some(admission) = ctx.admission.take() {
            self.release(admission);
        }
        if let Some(class) = ctx.class {
            self.metrics
                .added_latency
                .with_label_values(&[class.label()])
                .observe(ctx.spent.as_secs_f64());
        }
    }
}
