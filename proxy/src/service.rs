//! The proxy service: the hot path of a request, top to bottom.
//!
//! 1. Canonicalise the path (an ambiguous one is refused with 400) and classify the
//!    route on it; the canonical path is what goes upstream. Unmetered requests pass
//!    straight through.
//! 2. Identify the customer (JWT or trusted header); none → 401.
//! 3. Look the entitlement up in memory (a miss fills once from the control plane).
//! 4. Decide ([`billing_model::admission`]): paid overage admits without a reservation;
//!    hard limits take a unit from a block this proxy leased in Redis (a round trip only
//!    when no lease has one left; see `tollgate_runtime::counters::leases`) unless the
//!    customer is known to be exhausted (refused from memory). The unit is held, and
//!    renewed, for as long as the request runs.
//! 5. On a 2xx from the upstream: note whether the hold may have been lost (counted all
//!    the same: the unit was delivered), log the usage event (before the response
//!    leaves) and commit the reservation off the request path. If the unit cannot be
//!    logged, the success is withheld: a unit delivered is a unit recorded and counted. Otherwise, or if no
//!    response comes: hand it back to its lease (no round trip).
//!
//! No per-request call to PostgreSQL or to the control plane.

use crate::canonical;
use crate::commits::{Commit, Committer};
use crate::entitlements::{Entitlement, Entitlements};
use crate::identity::Identity;
use crate::metrics::ProxyMetrics;
use crate::problem::{self, respond};
use crate::routes::{RouteClass, RouteTable};
use crate::usage_log::{CommitTicket, UsageLog};
use arc_swap::ArcSwap;
use async_trait::async_trait;
use billing_model::admission::{
    self, CounterAnswer, Decision, FailurePolicy, Outcome, Quota, Step,
};
use billing_model::{
    Counter, CounterScope, CustomerId, Enforcement, Problem, RedisKeys, UsageEvent, UsageType,
};
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use std::borrow::Cow;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use tollgate_runtime::counters::leases::{Acquired, Leases, Slot};
use tollgate_runtime::counters::{CounterError, CounterRef, Counters};
use tollgate_runtime::identity::IdentityError;

/// Headers that make some frameworks treat a request as another method (a `GET` served
/// as the metered `POST`); never forwarded.
const METHOD_OVERRIDE_HEADERS: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// The ticket API's reverse proxy.
pub struct TollgateProxy {
    pub upstream: SocketAddr,
    pub upstream_timeout: Duration,
    pub routes: Arc<ArcSwap<RouteTable>>,
    pub identity: Arc<Identity>,
    pub entitlements: Arc<Entitlements>,
    pub counters: Counters,
    /// Hard-limit units leased from Redis, admitted from locally, renewed while their
    /// requests run.
    pub leases: Arc<Leases>,
    pub keys: RedisKeys,
    pub usage_log: Arc<UsageLog>,
    pub metrics: Arc<ProxyMetrics>,
    pub redis_budget: Duration,
    pub failure_policy: FailurePolicy,
    /// Where releases run, off the request path.
    pub background: tokio::runtime::Handle,
    /// Counter commits, batched off the request path.
    pub committer: Committer,
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
    /// The leased unit this request holds while it runs (hard limits).
    hold: Option<Slot>,
    /// Under a hard limit (held, or admitted by policy `allow`).
    hard_limit: bool,
}

/// Per-request state.
#[derive(Default)]
pub struct RequestCtx {
    /// The client's `x-request-id`, or one minted here; sent upstream, returned to the
    /// client and on every log line about the request.
    request_id: String,
    class: Option<RouteClass>,
    /// The canonical path and query, when it differs from what the client sent.
    forward: Option<String>,
    /// Time spent in tollgate's own phases.
    spent: Duration,
    admission: Option<Admission>,
    /// `RateLimit-Policy` and `RateLimit` values for the response.
    ratelimit: Option<(String, String)>,
    /// The upstream's success is not delivered; this problem is answered instead.
    withheld: Option<Problem>,
    /// A success was withheld (logged where decided, not again as a proxy error).
    was_withheld: bool,
}

fn ratelimit_headers(quota: &Quota) -> (String, String) {
    let name = problem::quota_name(quota.scope == CounterScope::Credits);
    (
        problem::policy_header(name, quota.limit, quota.window_seconds),
        problem::ratelimit_header(name, quota.remaining, quota.reset_seconds),
    )
}

impl TollgateProxy {
    fn decision(&self, class: RouteClass, outcome: Outcome) {
        self.metrics
            .decisions
            .with_label_values(&[class.label(), outcome.label()])
            .inc();
    }

    async fn refuse(
        &self,
        session: &mut Session,
        class: RouteClass,
        outcome: Outcome,
        problem: &Problem,
        headers: &[(&'static str, String)],
    ) -> Result<bool> {
        self.decision(class, outcome);
        // Keep-alive would be fine, but a refused client is often a retrying one; a
        // fresh connection keeps misbehaving clients from pinning workers.
        session.set_keepalive(None);
        respond(session, problem, headers).await?;
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

    async fn identify(
        &self,
        session: &mut Session,
        class: RouteClass,
    ) -> Result<std::result::Result<CustomerId, bool>> {
        match self.identity.customer(&session.req_header().headers).await {
            Ok(c) => Ok(Ok(c)),
            Err(e) => {
                let code = if e == IdentityError::Missing {
                    "unauthorized"
                } else {
                    "invalid_token"
                };
                let p = Problem::new(401, code, "Unauthorized", e.to_string());
                let headers = [("www-authenticate", "Bearer".to_owned())];
                self.refuse(session, class, Outcome::Unauthorized, &p, &headers)
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
        let class = RouteClass::Chat;
        let mut exhausted = entitlement.is_known_exhausted();
        if let Some(limit) = admission::chat_needs_counter(&entitlement.snapshot, exhausted) {
            let counter = self.counter_for(entitlement, customer, CounterScope::Period, now);
            let started = Instant::now();
            let committed = self.counters.committed(&counter, self.redis_budget).await;
            self.redis_observe("chat_check", started, committed.as_ref().err());
            // Chat consumes nothing: an unreachable Redis does not close it.
            if matches!(committed, Ok(used) if used >= limit) {
                entitlement.mark_exhausted();
                exhausted = true;
            }
        }
        if let Some(p) = admission::chat(&entitlement.snapshot, exhausted) {
            return self
                .refuse(session, class, Outcome::RefusedChat, &p, &[])
                .await;
        }
        self.decision(class, Outcome::Admitted);
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
                CounterError::Redis(_) | CounterError::TooManyUnits(_) => "error",
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
        let (scope, hard) = match s.enforcement() {
            Enforcement::PaidOverage => (CounterScope::Period, false),
            Enforcement::HardLimit { counter, .. } => (counter, true),
        };
        let counter = self.counter_for(&entitlement, &customer, scope, now);
        let mut slot: Option<Slot> = None;
        let answer = match admission::first_step(s, entitlement.is_known_exhausted()) {
            Step::DecideWithoutCounter => CounterAnswer::NotAsked,
            Step::Reserve { limit, .. } => {
                let started = Instant::now();
                let acquired = self
                    .leases
                    .acquire(&counter, limit, units.get(), self.redis_budget)
                    .await;
                match &acquired {
                    Ok((_, false)) => {}
                    Ok((_, true)) => self.redis_observe("lease", started, None),
                    Err(e) => self.redis_observe("lease", started, Some(e)),
                }
                match acquired {
                    Ok((
                        Acquired::Admitted {
                            slot: taken,
                            committed,
                            in_flight,
                        },
                        _,
                    )) => {
                        slot = Some(taken);
                        CounterAnswer::Reserved {
                            admitted: true,
                            committed,
                            in_flight,
                        }
                    }
                    Ok((
                        Acquired::Refused {
                            committed,
                            in_flight,
                        },
                        _,
                    )) => CounterAnswer::Reserved {
                        admitted: false,
                        committed,
                        in_flight,
                    },
                    Err(e) => {
                        tracing::warn!(error = %e, customer = %customer, request_id = %ctx.request_id, policy = ?self.failure_policy, "usage check unavailable");
                        CounterAnswer::Unavailable
                    }
                }
            }
        };
        let Decision {
            outcome,
            refusal,
            quota,
            retry_after,
            exhausted,
        } = admission::decide(
            s,
            units.get(),
            answer,
            self.failure_policy,
            entitlement.observed_used(),
            now,
        );
        if exhausted {
            entitlement.mark_exhausted();
        }
        let ratelimit = quota.as_ref().map(ratelimit_headers);
        // Only an admission holds a unit (a slot taken for any other outcome goes back).
        let hold = slot.filter(|_| outcome.holds_a_unit());
        if let Some(p) = refusal {
            let mut headers = Vec::with_capacity(3);
            if let Some(seconds) = retry_after {
                headers.push(("retry-after", seconds.to_string()));
            }
            if let Some((policy, rl)) = ratelimit {
                headers.push(("ratelimit-policy", policy));
                headers.push(("ratelimit", rl));
            }
            return self.refuse(session, class, outcome, &p, &headers).await;
        }
        ctx.ratelimit = ratelimit;
        self.unsettled.fetch_add(1, Ordering::Relaxed);
        ctx.admission = Some(Admission {
            event_id,
            customer,
            entitlement,
            usage_type,
            units,
            counter,
            hold,
            hard_limit: hard,
        });
        self.decision(class, outcome);
        Ok(false)
    }

    /// The upstream succeeded. The unit must be logged before the response may leave;
    /// `Err` is the problem to answer instead.
    fn consume(&self, mut admission: Admission) -> std::result::Result<(), Box<Problem>> {
        if let Some(guard) = &admission.hold
            && guard.in_doubt()
        {
            // Redis lost the hold, or could not renew it for most of the TTL: its unit
            // may have gone to another request. The work is done and delivered, so it
            // is counted all the same (past the limit if the unit was taken); measured.
            self.metrics
                .holds_lost
                .with_label_values(&["delivered_in_doubt"])
                .inc();
        }
        let event = UsageEvent {
            event_id: admission.event_id,
            customer_id: admission.customer.clone(),
            usage_type: admission.usage_type,
            quantity: admission.units,
            occurred_at: OffsetDateTime::now_utc(),
            period_start: admission.entitlement.snapshot.period_start,
            period_end: admission.entitlement.snapshot.period_end,
            ticket_id: None,
            billing_model: Some(admission.entitlement.snapshot.billing_model),
        };
        let ticket = match self.usage_log.append(&event) {
            Ok(ticket) => ticket,
            Err(e) => {
                // A unit served must be a unit recorded: without a record it is not
                // handed out (the client may retry), and its hold is given back.
                self.metrics.usage_log_failures.inc();
                tracing::error!(error = %e, event_id = %event.event_id, customer = %event.customer_id, "usage event could not be logged; withholding the response");
                let hold = admission.hold.take();
                self.release_hold(&admission, hold);
                self.unsettled.fetch_sub(1, Ordering::Relaxed);
                return Err(Box::new(Problem::usage_not_recorded()));
            }
        };
        self.metrics.usage_logged.inc();
        self.commit(admission, ticket);
        // Settled only once its commit is counted as pending: the shutdown drain never
        // sees neither while the unit is on its way.
        self.unsettled.fetch_sub(1, Ordering::Relaxed);
        Ok(())
    }

    /// Commits the counter off the request path (batched, see [`crate::commits`]); the
    /// ticket keeps the event's segment from shipping until the commit is done (or
    /// abandoned: then the ledger raises the counter).
    fn commit(&self, admission: Admission, ticket: CommitTicket) {
        self.committer.submit(Commit {
            counter: admission.counter,
            units: admission.units.get(),
            // Held, or admitted by policy `allow`.
            hard_limit: admission.hard_limit,
            slot: admission.hold,
            entitlement: admission.entitlement,
            ticket,
        });
    }

    /// Gives a reservation back (upstream failed, or no response came).
    fn release(&self, mut admission: Admission) {
        self.unsettled.fetch_sub(1, Ordering::Relaxed);
        let hold = admission.hold.take();
        self.release_hold(&admission, hold);
    }

    fn release_hold(&self, admission: &Admission, hold: Option<Slot>) {
        let Some(slot) = hold else {
            return;
        };
        // Back to its lease; only a lease that hands out nothing more needs Redis.
        let members = slot.give_back();
        if members.is_empty() {
            return;
        }
        let counters = self.counters.clone();
        let counter = admission.counter.clone();
        self.background.spawn(async move {
            // On failure the units expire on their own once no longer renewed.
            if let Err(e) = counters.release_members(&counter, &members).await {
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
        let classified = {
            let req = session.req_header();
            ctx.request_id = req
                .headers
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.is_empty() && v.len() <= 128)
                .map(str::to_owned)
                .unwrap_or_else(|| uuid::Uuid::now_v7().simple().to_string());
            // Origin-form (`/path`) is classified on the bytes as sent (pingora's URI
            // may have replaced what is not UTF-8); absolute-form (`http://host/path`)
            // on its path, and forwarded in origin-form; any other request target (`*`,
            // `x:/path`) has no path tollgate could classify.
            let raw = req.raw_path();
            let origin_form = raw.first() == Some(&b'/');
            let absolute_form = matches!(req.uri.scheme_str(), Some("http" | "https"))
                && req.uri.authority().is_some();
            let target = if origin_form {
                match std::str::from_utf8(raw) {
                    Ok(text) if req.raw_path_is_utf8() => Ok(text
                        .split_once('?')
                        .map_or((text, None), |(p, q)| (p, Some(q)))),
                    _ => Err(canonical::PathError::InvalidUtf8),
                }
            } else if absolute_form {
                Ok((req.uri.path(), req.uri.query()))
            } else {
                Err(canonical::PathError::NotAbsolute)
            };
            target.and_then(|(path, query)| {
                canonical::canonicalize(path).map(|canonical| {
                    let class = self.routes.load().classify(&req.method, &canonical);
                    if matches!(canonical, Cow::Owned(_)) || !origin_form {
                        ctx.forward = Some(match query {
                            Some(q) => format!("{canonical}?{}", canonical::ascii_query(q)),
                            None => canonical.into_owned(),
                        });
                    }
                    class
                })
            })
        };
        let class = match classified {
            Ok(class) => class,
            Err(e) => {
                let p = Problem::new(400, "invalid_path", "Bad Request", e.to_string());
                let done = self
                    .refuse(session, RouteClass::Unmetered, Outcome::BadPath, &p, &[])
                    .await?;
                ctx.spent += started.elapsed();
                return Ok(done);
            }
        };
        ctx.class = Some(class);
        let done = match class {
            RouteClass::Unmetered => {
                self.decision(class, Outcome::Passthrough);
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
                        let p = Problem::entitlement_unavailable();
                        let headers = [("retry-after", "1".to_owned())];
                        self.refuse(
                            session,
                            class,
                            Outcome::EntitlementUnavailable,
                            &p,
                            &headers,
                        )
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
        if let Some(forward) = ctx.forward.take() {
            let uri = forward
                .parse::<http::Uri>()
                .explain_err(ErrorType::InternalError, |e| {
                    format!("canonical path is not a URI: {e}")
                })?;
            upstream_request.set_uri(uri);
        }
        for name in METHOD_OVERRIDE_HEADERS {
            upstream_request.remove_header(name);
        }
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
                if let Err(problem) = self.consume(admission) {
                    ctx.spent += started.elapsed();
                    let status = problem.status;
                    ctx.withheld = Some(*problem);
                    ctx.was_withheld = true;
                    // fail_to_proxy answers the problem; the upstream's answer is dropped.
                    return Error::e_explain(
                        ErrorType::HTTPStatus(status),
                        "upstream success withheld",
                    );
                }
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

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Self::CTX,
    ) -> FailToProxy {
        let Some(problem) = ctx.withheld.take() else {
            return default_fail_to_proxy(session, e).await;
        };
        if let Some(class) = ctx.class {
            self.decision(class, Outcome::Withheld);
        }
        session.set_keepalive(None);
        let headers = [
            ("retry-after", "1".to_owned()),
            ("x-request-id", ctx.request_id.clone()),
        ];
        if let Err(e) = respond(session, &problem, &headers).await {
            tracing::warn!(error = %e, "could not answer the withheld response");
        }
        FailToProxy {
            error_code: problem.status,
            can_reuse_downstream: false,
        }
    }

    fn suppress_error_log(&self, _session: &Session, ctx: &Self::CTX, _error: &Error) -> bool {
        // A withheld success is logged where it is decided.
        ctx.was_withheld
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

/// pingora's own error answer, for every failure that is not a withheld success.
async fn default_fail_to_proxy(session: &mut Session, e: &Error) -> FailToProxy {
    use pingora::ErrorSource;
    let code = match e.etype() {
        ErrorType::HTTPStatus(code) => *code,
        _ => match e.esource() {
            ErrorSource::Upstream => 502,
            ErrorSource::Downstream => match e.etype() {
                ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                _ => 400,
            },
            ErrorSource::Internal | ErrorSource::Unset => 500,
        },
    };
    if code > 0
        && let Err(e) = session.respond_error(code).await
    {
        tracing::warn!(error = %e, "failed to send error response to downstream");
    }
    FailToProxy {
        error_code: code,
        can_reuse_downstream: false,
    }
}
