//! Which requests are metered, which are the chat interface, and which pass through.
//! Configured, not hard-coded; swapped atomically on reload.
//!
//! Requests are classified on their canonical path ([`crate::canonical`]). Matching is
//! deliberately loose where web frameworks are: letter case of literal segments
//! (unless `proxy.case_sensitive_routes`), a `;parameter` suffix on a segment, a
//! trailing slash, the case of the method, and `HEAD` for a `GET` rule.

use crate::config::{RouteKind, RouteSettings};
use billing_model::UsageType;
use http::Method;
use std::num::NonZeroU32;
use tollgate_runtime::counters::leases::MAX_LEASE_UNITS;

/// What a request is, as far as tollgate is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteClass {
    /// Consumes `units` of `usage_type` when the upstream answers 2xx.
    Metered {
        usage_type: UsageType,
        units: NonZeroU32,
    },
    /// The chat interface: free to use, closed once a Free customer is at the limit.
    Chat,
    /// Everything else: straight through, no identity needed.
    Unmetered,
}

impl RouteClass {
    /// A label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            RouteClass::Metered { .. } => "metered",
            RouteClass::Chat => "chat",
            RouteClass::Unmetered => "unmetered",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `{name}`: exactly one segment.
    Param,
}

#[derive(Debug, Clone)]
struct Rule {
    /// Upper case.
    method: Method,
    segments: Vec<Segment>,
    /// A trailing `/*`: any (possibly empty) rest.
    prefix: bool,
    class: RouteClass,
}

/// A route rule that cannot be used; names the rule and what is wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("proxy.routes[{index}] ({method} {path}): {problem}")]
pub struct RouteError {
    pub index: usize,
    pub method: String,
    pub path: String,
    pub problem: String,
}

/// The configured rules; the first rule that matches decides.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    rules: Vec<Rule>,
    case_sensitive: bool,
}

impl RouteTable {
    /// Rules that ignore the letter case of literal segments.
    pub fn from_settings(settings: &[RouteSettings]) -> Result<Self, RouteError> {
        Self::build(settings, false)
    }

    pub fn build(settings: &[RouteSettings], case_sensitive: bool) -> Result<Self, RouteError> {
        let mut rules = Vec::with_capacity(settings.len());
        for (index, s) in settings.iter().enumerate() {
            let fail = |problem: &str| RouteError {
                index,
                method: s.method.clone(),
                path: s.path.clone(),
                problem: problem.to_owned(),
            };
            let method = Method::from_bytes(s.method.to_ascii_uppercase().as_bytes())
                .map_err(|_| fail("not an HTTP method"))?;
            if !s.path.starts_with('/') {
                return Err(fail("path must start with '/'"));
            }
            let (body, prefix) = match s.path.strip_suffix("/*") {
                Some(body) => (body, true),
                None => (s.path.as_str(), false),
            };
            // Rules are written the way requests are matched: canonical.
            let body = crate::canonical::canonicalize(body)
                .map_err(|e| fail(&format!("not a usable path: {e}")))?;
            let body = body.strip_suffix('/').unwrap_or(&body);
            let mut segments = Vec::new();
            for part in body.split('/').skip(1) {
                if part.contains('*') {
                    return Err(fail("'*' is only allowed as a final '/*'"));
                }
                if part.starts_with('{') && part.ends_with('}') && part.len() > 2 {
                    segments.push(Segment::Param);
                } else if part.contains(['{', '}']) {
                    return Err(fail("a parameter must be a whole segment, like {id}"));
                } else if case_sensitive {
                    segments.push(Segment::Literal(part.to_owned()));
                } else {
                    segments.push(Segment::Literal(part.to_ascii_lowercase()));
                }
            }
            let class = match s.kind {
                RouteKind::Chat => RouteClass::Chat,
                RouteKind::Metered => RouteClass::Metered {
                    usage_type: s
                        .usage_type
                        .ok_or_else(|| fail("a metered route needs usage_type"))?,
                    units: NonZeroU32::new(s.units)
                        .filter(|u| u.get() <= MAX_LEASE_UNITS)
                        .ok_or_else(|| fail("units must be between 1 and 64"))?,
                },
            };
            rules.push(Rule {
                method,
                segments,
                prefix,
                class,
            });
        }
        Ok(Self {
            rules,
            case_sensitive,
        })
    }

    /// Classifies a request by method and canonical path (without the query string).
    pub fn classify(&self, method: &Method, path: &str) -> RouteClass {
        self.rules
            .iter()
            .find(|rule| rule.accepts(method) && rule.matches(path, self.case_sensitive))
            .map(|rule| rule.class)
            .unwrap_or(RouteClass::Unmetered)
    }
}

impl Rule {
    fn accepts(&self, method: &Method) -> bool {
        let name = method.as_str();
        // Some frameworks upper-case the method, and all serve HEAD with the GET handler.
        name.eq_ignore_ascii_case(self.method.as_str())
            || (self.method == Method::GET && name.eq_ignore_ascii_case("HEAD"))
    }

    fn matches(&self, path: &str, case_sensitive: bool) -> bool {
        // A trailing slash names the same resource for routing purposes.
        let path = path
            .strip_suffix('/')
            .filter(|p| !p.is_empty())
            .unwrap_or(path);
        let mut parts = path.split('/').skip(1).map(|part| {
            // `;parameters` (servlet containers strip them before routing).
            part.split_once(';').map_or(part, |(name, _)| name)
        });
        for segment in &self.segments {
            match (segment, parts.next()) {
                (Segment::Literal(want), Some(got))
                    if if case_sensitive {
                        want == got
                    } else {
                        want.eq_ignore_ascii_case(got)
                    } => {}
                (Segment::Param, Some(got)) if !got.is_empty() => {}
                _ => return false,
            }
        }
        self.prefix || parts.next().is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(method: &str, path: &str, kind: RouteKind) -> RouteSettings {
        RouteSettings {
            method: method.into(),
            path: path.into(),
            kind,
            usage_type: (kind == RouteKind::Metered).then_some(UsageType::TicketCreation),
            units: 1,
        }
    }

    fn table() -> RouteTable {
        RouteTable::from_settings(&[
            rule("POST", "/api/v1/tickets", RouteKind::Metered),
            rule("POST", "/api/v1/chat", RouteKind::Chat),
            rule("POST", "/api/v1/tickets/{id}/replies", RouteKind::Metered),
            rule("POST", "/api/v1/agents/*", RouteKind::Chat),
        ])
        .unwrap()
    }

    #[test]
    fn ticket_creation_is_metered_but_listing_tickets_is_not() {
        let t = table();
        assert!(matches!(
            t.classify(&Method::POST, "/api/v1/tickets"),
            RouteClass::Metered { .. }
        ));
        assert_eq!(
            t.classify(&Method::GET, "/api/v1/tickets"),
            RouteClass::Unmetered
        );
    }

    #[test]
    fn a_trailing_slash_does_not_escape_metering() {
        assert!(matches!(
            table().classify(&Method::POST, "/api/v1/tickets/"),
            RouteClass::Metered { .. }
        ));
    }

    #[test]
    fn a_longer_path_does_not_match_an_exact_rule() {
        assert_eq!(
            table().classify(&Method::POST, "/api/v1/tickets/123"),
            RouteClass::Unmetered
        );
    }

    #[test]
    fn a_parameter_matches_exactly_one_segment() {
        let t = table();
        assert!(matches!(
            t.classify(&Method::POST, "/api/v1/tickets/42/replies"),
            RouteClass::Metered { .. }
        ));
        assert_eq!(
            t.classify(&Method::POST, "/api/v1/tickets/42/x/replies"),
            RouteClass::Unmetered
        );
    }

    #[test]
    fn a_prefix_rule_matches_everything_below_it() {
        let t = table();
        assert_eq!(
            t.classify(&Method::POST, "/api/v1/agents/a/b"),
            RouteClass::Chat
        );
        assert_eq!(
            t.classify(&Method::POST, "/api/v1/agents"),
            RouteClass::Chat
        );
        assert_eq!(
            t.classify(&Method::POST, "/api/v1/agentsx"),
            RouteClass::Unmetered
        );
    }

    #[test]
    fn a_metered_rule_without_usage_type_is_rejected_naming_it() {
        let mut bad = rule("POST", "/x", RouteKind::Metered);
        bad.usage_type = None;
        let err = RouteTable::from_settings(&[bad]).unwrap_err();
        assert_eq!(err.index, 0);
        assert!(err.to_string().contains("usage_type"), "{err}");
    }

    #[test]
    fn zero_units_and_bad_paths_are_rejected() {
        let mut zero = rule("POST", "/x", RouteKind::Metered);
        zero.units = 0;
        assert!(RouteTable::from_settings(&[zero]).is_err());
        // A hard limit admits from leases, which track at most 64 units.
        let mut many = rule("POST", "/x", RouteKind::Metered);
        many.units = 65;
        assert!(RouteTable::from_settings(&[many.clone()]).is_err());
        many.units = 64;
        assert!(RouteTable::from_settings(&[many]).is_ok());
        assert!(RouteTable::from_settings(&[rule("POST", "x", RouteKind::Chat)]).is_err());
        assert!(RouteTable::from_settings(&[rule("POST", "/a*b", RouteKind::Chat)]).is_err());
        assert!(RouteTable::from_settings(&[rule("P O", "/a", RouteKind::Chat)]).is_err());
    }

    fn canonical_class(t: &RouteTable, method: &str, raw: &str) -> Option<RouteClass> {
        let path = crate::canonical::canonicalize(raw).ok()?;
        Some(t.classify(&Method::from_bytes(method.as_bytes()).unwrap(), &path))
    }

    /// No spelling of the metered route that a loosely routing upstream would serve
    /// as ticket creation is classified unmetered: it is metered, or refused (400).
    #[test]
    fn every_spelling_of_a_metered_route_is_metered_or_refused() {
        let t = table();
        for raw in [
            "/api/v1/tickets",
            "/api/v1//tickets",
            "/api/v1/%74ickets",
            "/api/v1/./tickets",
            "/API/v1/tickets",
            "/api/v1/TICKETS",
            "//api/v1/tickets",
            "/api/v1/x/../tickets",
            "/api/v1/tickets/",
            "/api/v1/tickets;jsessionid=1",
            "/api/v1/tickets/.",
        ] {
            for method in ["POST", "post", "Post"] {
                assert!(
                    matches!(
                        canonical_class(&t, method, raw),
                        Some(RouteClass::Metered { .. })
                    ),
                    "{method} {raw}"
                );
            }
        }
        assert_eq!(canonical_class(&t, "POST", "/api/v1/tickets%2F"), None);
        assert_eq!(canonical_class(&t, "POST", "/api/v1/tickets%00"), None);
    }

    #[test]
    fn case_sensitive_routes_match_only_the_written_case() {
        let t = RouteTable::build(&[rule("POST", "/api/v1/Tickets", RouteKind::Metered)], true)
            .unwrap();
        assert!(matches!(
            t.classify(&Method::POST, "/api/v1/Tickets"),
            RouteClass::Metered { .. }
        ));
        assert_eq!(
            t.classify(&Method::POST, "/api/v1/tickets"),
            RouteClass::Unmetered
        );
    }

    #[test]
    fn a_get_rule_covers_head() {
        let t = RouteTable::from_settings(&[rule("GET", "/api/v1/report", RouteKind::Metered)])
            .unwrap();
        assert!(matches!(
            t.classify(&Method::HEAD, "/api/v1/report"),
            RouteClass::Metered { .. }
        ));
    }

    #[test]
    fn a_rule_path_is_canonicalized_and_an_ambiguous_one_rejected() {
        let t =
            RouteTable::from_settings(&[rule("POST", "/api//v1/./tickets/", RouteKind::Metered)])
                .unwrap();
        assert!(matches!(
            t.classify(&Method::POST, "/api/v1/tickets"),
            RouteClass::Metered { .. }
        ));
        assert!(RouteTable::from_settings(&[rule("POST", "/a%2Fb", RouteKind::Chat)]).is_err());
    }
}
