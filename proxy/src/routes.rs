//! Which requests are metered, which are the chat interface, and which pass through.
//! Configured, not hard-coded; swapped atomically on reload.

use crate::config::{RouteKind, RouteSettings};
use billing_model::UsageType;
use http::Method;
use std::num::NonZeroU32;

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
}

impl RouteTable {
    pub fn from_settings(settings: &[RouteSettings]) -> Result<Self, RouteError> {
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
            let mut segments = Vec::new();
            for part in body.split('/').skip(1) {
                if part.contains('*') {
                    return Err(fail("'*' is only allowed as a final '/*'"));
                }
                if part.starts_with('{') && part.ends_with('}') && part.len() > 2 {
                    segments.push(Segment::Param);
                } else if part.contains(['{', '}']) {
                    return Err(fail("a parameter must be a whole segment, like {id}"));
                } else {
                    segments.push(Segment::Literal(part.to_owned()));
                }
            }
            let class = match s.kind {
                RouteKind::Chat => RouteClass::Chat,
                RouteKind::Metered => RouteClass::Metered {
                    usage_type: s
                        .usage_type
                        .ok_or_else(|| fail("a metered route needs usage_type"))?,
                    units: NonZeroU32::new(s.units)
                        .ok_or_else(|| fail("units must be at least 1"))?,
                },
            };
            rules.push(Rule {
                method,
                segments,
                prefix,
                class,
            });
        }
        Ok(Self { rules })
    }

    /// Classifies a request by method and path (without the query string).
    pub fn classify(&self, method: &Method, path: &str) -> RouteClass {
        self.rules
            .iter()
            .find(|rule| rule.method == method && rule.matches(path))
            .map(|rule| rule.class)
            .unwrap_or(RouteClass::Unmetered)
    }
}

impl Rule {
    fn matches(&self, path: &str) -> bool {
        // A trailing slash names the same resource for routing purposes.
        let path = path
            .strip_suffix('/')
            .filter(|p| !p.is_empty())
            .unwrap_or(path);
        let mut parts = path.split('/').skip(1);
        for segment in &self.segments {
            match (segment, parts.next()) {
                (Segment::Literal(want), Some(got)) if want == got => {}
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
        assert!(RouteTable::from_settings(&[rule("POST", "x", RouteKind::Chat)]).is_err());
        assert!(RouteTable::from_settings(&[rule("POST", "/a*b", RouteKind::Chat)]).is_err());
        assert!(RouteTable::from_settings(&[rule("P O", "/a", RouteKind::Chat)]).is_err());
    }
}
