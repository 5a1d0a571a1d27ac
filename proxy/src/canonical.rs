//! The canonical form of a request path: what routes are classified on and what is
//! forwarded to the upstream, so that no spelling of a metered route the upstream
//! would serve passes unmetered.
//!
//! Web frameworks route loosely: they percent-decode, merge slashes, resolve `.` and
//! `..`, and some ignore case or `;parameters`. tollgate therefore forwards one
//! spelling only, and matches routes loosely enough to cover what is left:
//!
//! 1. The path must start with `/`.
//! 2. Percent-encoded *unreserved* characters (`A-Z a-z 0-9 - . _ ~`) are decoded;
//!    every other percent-encoding is kept, with upper-case hex.
//! 3. Ambiguous spellings are refused (400): an encoded `/` (`%2F`), `\` (`%5C`) or `;`
//!    (`%3B`), a raw `\`, control characters raw or encoded (`%00`–`%1F`, `%7F`),
//!    malformed `%` escapes, bytes that do not decode to UTF-8, and non-ASCII letters
//!    whose Unicode case mapping is ASCII (the Kelvin sign `K` lower-cases to `k`; a
//!    framework that folds case would read `tic\u{212A}ets` as `tickets`).
//! 4. Empty segments are dropped (`//` → `/`), `.` segments removed and `..` segments
//!    resolved (RFC 3986 §5.2.4; never above the root). A segment that is `.` or `..`
//!    before a `;parameter` (`..;x`) is a dot segment too, as servlet containers read it.
//! 5. A trailing slash is kept (some upstreams tell `/x` from `/x/`); matching ignores it.
//!
//! Matching ([`crate::routes`]) then ignores letter case of literal segments (unless
//! `proxy.case_sensitive_routes`), a `;parameter` suffix of a segment, the trailing
//! slash, and the case of the method. Matching more spellings than the upstream serves
//! is harmless — only a 2xx consumes — while matching fewer would let one through free.

use std::borrow::Cow;

/// Why a path is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path must start with '/'")]
    NotAbsolute,
    #[error("the path contains an encoded '/' (%2F), whose meaning differs between servers")]
    EncodedSlash,
    #[error("the path contains an encoded ';' (%3B), whose meaning differs between servers")]
    EncodedSemicolon,
    #[error("the path contains a character whose case mapping is ASCII (e.g. U+212A KELVIN SIGN)")]
    CaseConfusable,
    #[error("the path contains a backslash, raw or encoded (%5C)")]
    Backslash,
    #[error("the path contains a control character, raw or encoded")]
    ControlCharacter,
    #[error("the path contains a malformed percent-encoding")]
    BadPercentEncoding,
    #[error("the path does not decode to UTF-8")]
    InvalidUtf8,
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Whether a segment is `.` or `..`, ignoring a `;parameter` suffix.
fn is_dot_segment(segment: &[u8]) -> bool {
    let name = segment
        .iter()
        .position(|&b| b == b';')
        .map_or(segment, |end| &segment[..end]);
    name == b"." || name == b".."
}

/// Whether `path` is already canonical, checked in one pass without allocating: no
/// `%`, no `\`, no control or non-ASCII bytes, no empty, `.` or `..` segment (a
/// trailing slash is fine).
fn already_canonical(path: &[u8]) -> bool {
    let mut segment_start = 1;
    for (i, &b) in path.iter().enumerate().skip(1) {
        match b {
            b'%' | b'\\' => return false,
            b if !(0x21..0x7f).contains(&b) => return false,
            b'/' => {
                let segment = &path[segment_start..i];
                if segment.is_empty() || is_dot_segment(segment) {
                    return false;
                }
                segment_start = i + 1;
            }
            _ => {}
        }
    }
    !is_dot_segment(&path[segment_start..])
}

/// Whether a non-ASCII character maps to an ASCII one under Unicode case mapping.
fn case_confusable(c: char) -> bool {
    !c.is_ascii()
        && (c.to_lowercase().any(|m| m.is_ascii()) || c.to_uppercase().any(|m| m.is_ascii()))
}

/// The canonical form of `path` (without the query string); borrowed when the path is
/// canonical already, which is the common case.
pub fn canonicalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    if already_canonical(bytes) {
        return Ok(Cow::Borrowed(path));
    }

    // Decode what may be decoded, validate what stays encoded, and check that the
    // whole path means UTF-8 text once fully decoded.
    let mut normalized = Vec::with_capacity(bytes.len());
    let mut fully_decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    bytes.get(i + 1).copied().and_then(hex_value),
                    bytes.get(i + 2).copied().and_then(hex_value),
                ) else {
                    return Err(PathError::BadPercentEncoding);
                };
                let decoded = hi << 4 | lo;
                match decoded {
                    b'/' => return Err(PathError::EncodedSlash),
                    b';' => return Err(PathError::EncodedSemicolon),
                    b'\\' => return Err(PathError::Backslash),
                    d if d < 0x20 || d == 0x7f => return Err(PathError::ControlCharacter),
                    d if is_unreserved(d) => normalized.push(d),
                    d => {
                        const HEX: &[u8; 16] = b"0123456789ABCDEF";
                        normalized.extend_from_slice(&[
                            b'%',
                            HEX[usize::from(d >> 4)],
                            HEX[usize::from(d & 0xf)],
                        ]);
                    }
                }
                fully_decoded.push(decoded);
                i += 3;
            }
            b'\\' => return Err(PathError::Backslash),
            b if b < 0x20 || b == 0x7f => return Err(PathError::ControlCharacter),
            b if b >= 0x80 => {
                // A raw non-ASCII byte goes upstream percent-encoded (a URI is ASCII).
                const HEX: &[u8; 16] = b"0123456789ABCDEF";
                normalized.extend_from_slice(&[
                    b'%',
                    HEX[usize::from(b >> 4)],
                    HEX[usize::from(b & 0xf)],
                ]);
                fully_decoded.push(b);
                i += 1;
            }
            b => {
                normalized.push(b);
                fully_decoded.push(b);
                i += 1;
            }
        }
    }
    match std::str::from_utf8(&fully_decoded) {
        Err(_) => return Err(PathError::InvalidUtf8),
        Ok(text) if text.chars().any(case_confusable) => return Err(PathError::CaseConfusable),
        Ok(_) => {}
    }
    // Only ASCII was decoded and the rest was copied from a `str`: still UTF-8.
    let normalized = String::from_utf8(normalized).map_err(|_| PathError::InvalidUtf8)?;

    let raw_segments: Vec<&str> = normalized.split('/').skip(1).collect();
    let mut segments: Vec<&str> = Vec::with_capacity(raw_segments.len());
    for segment in &raw_segments {
        if segment.is_empty() {
            continue;
        }
        match segment.split(';').next().unwrap_or("") {
            "." => {}
            ".." => {
                segments.pop();
            }
            _ => segments.push(segment),
        }
    }
    // A path that ends in `/`, `/.` or `/..` names a directory-like resource.
    let trailing = raw_segments
        .last()
        .is_some_and(|s| s.is_empty() || is_dot_segment(s.as_bytes()));
    let mut out = String::with_capacity(normalized.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing || segments.is_empty() {
        out.push('/');
    }
    Ok(Cow::Owned(out))
}

/// A query string as it may go into a URI: non-ASCII bytes percent-encoded, the rest
/// as sent (tollgate never classifies on the query).
pub fn ascii_query(query: &str) -> Cow<'_, str> {
    if query.is_ascii() {
        return Cow::Borrowed(query);
    }
    let mut out = String::with_capacity(query.len() * 2);
    for b in query.bytes() {
        if b.is_ascii() {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_paths_are_borrowed_unchanged() {
        for p in [
            "/",
            "/api/v1/tickets",
            "/api/v1/tickets/",
            "/a/.well-known/x",
            "/a..b/c.d",
            "/a;b/c",
        ] {
            assert!(
                matches!(canonicalize(p), Ok(Cow::Borrowed(q)) if q == p),
                "{p}"
            );
        }
    }

    /// Every spelling the outside test used to create tickets past a Free limit.
    #[test]
    fn spellings_of_the_ticket_route_become_one_path() {
        for (spelling, canonical) in [
            ("/api/v1//tickets", "/api/v1/tickets"),
            ("//api/v1/tickets", "/api/v1/tickets"),
            ("/api/v1/%74ickets", "/api/v1/tickets"),
            ("/api/v1/%74%69%63%6B%65%74%73", "/api/v1/tickets"),
            ("/api/v1/./tickets", "/api/v1/tickets"),
            ("/api/v1/x/../tickets", "/api/v1/tickets"),
            ("/api/v1/x/%2e%2e/tickets", "/api/v1/tickets"),
            ("/api/v1/x/.%2E/tickets", "/api/v1/tickets"),
            ("/../../api/v1/tickets", "/api/v1/tickets"),
            ("/api/v1/tickets/.", "/api/v1/tickets/"),
            ("/api/v1/tickets/x/..", "/api/v1/tickets/"),
            ("/api/v1/tickets//", "/api/v1/tickets/"),
            ("/api/v1/x/..;/tickets", "/api/v1/tickets"),
            ("/api/v1/.;x=1/tickets", "/api/v1/tickets"),
            ("/api/v1/x/..;y/tickets", "/api/v1/tickets"),
            ("/API/v1/TICKETS", "/API/v1/TICKETS"),
        ] {
            assert_eq!(canonicalize(spelling).unwrap(), canonical, "{spelling}");
        }
    }

    #[test]
    fn raw_non_ascii_is_forwarded_percent_encoded() {
        assert_eq!(
            canonicalize("/a/\u{e9}t\u{e9}").unwrap(),
            "/a/%C3%A9t%C3%A9"
        );
        assert_eq!(ascii_query("q=\u{e9}&x=1"), "q=%C3%A9&x=1");
        assert!(matches!(ascii_query("q=a%20b"), Cow::Borrowed(_)));
    }

    #[test]
    fn other_encodings_stay_encoded_in_upper_case() {
        assert_eq!(
            canonicalize("/a/%c3%a9t%c3%A9").unwrap(),
            "/a/%C3%A9t%C3%A9"
        );
        assert_eq!(canonicalize("/a%20b/%3f").unwrap(), "/a%20b/%3F");
        assert_eq!(
            canonicalize("/a/%25").unwrap(),
            "/a/%25",
            "an encoded % is not decoded twice"
        );
    }

    #[test]
    fn ambiguous_spellings_are_refused() {
        for (path, error) in [
            ("/api/v1/tickets%2F", PathError::EncodedSlash),
            ("/api/v1%2ftickets", PathError::EncodedSlash),
            ("/api/v1/tickets%5C", PathError::Backslash),
            ("/api\\v1/tickets", PathError::Backslash),
            ("/api/v1/tickets%00", PathError::ControlCharacter),
            ("/api/v1/tick\tets", PathError::ControlCharacter),
            ("/api/v1/%7f", PathError::ControlCharacter),
            ("/api/v1/%", PathError::BadPercentEncoding),
            ("/api/v1/%7", PathError::BadPercentEncoding),
            ("/api/v1/%zz", PathError::BadPercentEncoding),
            ("/api/v1/%ff%fe", PathError::InvalidUtf8),
            ("/api/v1/tickets%3Bx", PathError::EncodedSemicolon),
            ("/api/v1/tic%E2%84%AAets", PathError::CaseConfusable),
            ("/api/v1/t%C4%B1ckets", PathError::CaseConfusable),
            ("/api/v1/ticket%C5%BF", PathError::CaseConfusable),
            ("/api/v1/%c3", PathError::InvalidUtf8),
            ("api/v1/tickets", PathError::NotAbsolute),
            ("*", PathError::NotAbsolute),
            ("", PathError::NotAbsolute),
        ] {
            assert_eq!(canonicalize(path).unwrap_err(), error, "{path}");
        }
    }

    proptest::proptest! {
        #[test]
        fn canonicalizing_twice_changes_nothing(path in "/[a-zA-Z0-9./%~_-]{0,40}") {
            if let Ok(once) = canonicalize(&path) {
                let twice = canonicalize(&once).unwrap();
                proptest::prop_assert_eq!(&twice, &once);
            }
        }

        #[test]
        fn any_input_gives_a_path_or_an_error_never_a_panic(path in "\\PC{0,60}") {
            let _ = canonicalize(&path);
        }
    }
}
