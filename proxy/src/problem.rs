//! Writing what a refused or unidentified client receives: the shared problem body
//! ([`billing_model::Problem`], `application/problem+json`) and the draft-11 RateLimit
//! headers every metered response carries.

use billing_model::Problem;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::Session;

/// Writes `problem` as the whole response; the upstream is never contacted.
pub async fn respond(
    session: &mut Session,
    problem: &Problem,
    extra_headers: &[(&'static str, String)],
) -> Result<()> {
    let body = Bytes::from(problem.to_json());
    let mut header = ResponseHeader::build(problem.status, Some(4 + extra_headers.len()))?;
    header.insert_header("content-type", "application/problem+json")?;
    header.insert_header("content-length", body.len().to_string())?;
    header.insert_header("cache-control", "no-store")?;
    for (name, value) in extra_headers {
        header.insert_header(*name, value.as_str())?;
    }
    session
        .write_response_header(Box::new(header), false)
        .await?;
    session.write_response_body(Some(body), true).await?;
    Ok(())
}

/// The quota name used in the RateLimit headers.
pub fn quota_name(credits: bool) -> &'static str {
    if credits { "credits" } else { "tickets" }
}

/// `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers-11): the quota and, for
/// period limits, its window in seconds.
pub fn policy_header(name: &str, quota: u64, window_seconds: Option<i64>) -> String {
    match window_seconds {
        Some(w) => format!("\"{name}\";q={quota};w={w}"),
        None => format!("\"{name}\";q={quota}"),
    }
}

/// `RateLimit`: what remains and, for period limits, seconds until it resets.
pub fn ratelimit_header(name: &str, remaining: u64, reset_seconds: Option<i64>) -> String {
    match reset_seconds {
        Some(t) => format!("\"{name}\";r={remaining};t={t}"),
        None => format!("\"{name}\";r={remaining}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_follow_the_draft_structured_field_syntax() {
        assert_eq!(
            policy_header("tickets", 10, Some(2_592_000)),
            "\"tickets\";q=10;w=2592000"
        );
        assert_eq!(
            ratelimit_header("tickets", 3, Some(3600)),
            "\"tickets\";r=3;t=3600"
        );
        assert_eq!(ratelimit_header("credits", 0, None), "\"credits\";r=0");
    }
}
