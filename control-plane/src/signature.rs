//! Stripe webhook signatures: `Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>...]`, the
//! hex HMAC-SHA256 of `"<t>.<raw body>"` with the endpoint secret. Any `v1` matching any
//! configured secret is accepted (several during a secret rotation). tollgate signs its
//! own notifications to the ticket app the same way.

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("the Stripe-Signature header is missing")]
    Missing,
    #[error("the Stripe-Signature header is malformed")]
    Malformed,
    #[error("no signature matches a configured secret")]
    Mismatch,
    #[error("the signature timestamp is outside the tolerance")]
    OutsideTolerance,
}

impl SignatureError {
    /// The problem code answered to Stripe (and logged).
    pub fn code(&self) -> &'static str {
        match self {
            SignatureError::Missing => "missing_signature",
            SignatureError::Malformed => "malformed_signature",
            SignatureError::Mismatch => "invalid_signature",
            SignatureError::OutsideTolerance => "timestamp_outside_tolerance",
        }
    }
}

/// Verifies `header` for `body` at `now_unix`.
pub fn verify(
    header: Option<&str>,
    body: &[u8],
    secrets: &[SecretString],
    tolerance_seconds: u64,
    now_unix: i64,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => timestamp = t.parse::<i64>().ok(),
            Some(("v1", sig)) => {
                signatures.push(hex::decode(sig).map_err(|_| SignatureError::Malformed)?)
            }
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    if signatures.is_empty() {
        return Err(SignatureError::Malformed);
    }
    let matches = secrets.iter().any(|secret| {
        signatures.iter().any(|sig| {
            let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.expose_secret().as_bytes())
            else {
                return false;
            };
            mac.update(timestamp.to_string().as_bytes());
            mac.update(b".");
            mac.update(body);
            // Constant-time comparison.
            mac.verify_slice(sig).is_ok()
        })
    });
    if !matches {
        return Err(SignatureError::Mismatch);
    }
    // Checked after the signature so an attacker learns nothing from timing out.
    if now_unix.abs_diff(timestamp) > tolerance_seconds {
        return Err(SignatureError::OutsideTolerance);
    }
    Ok(())
}

/// Signs `body` like Stripe does (tests and the stand-in's counterpart).
pub fn sign(body: &[u8], secret: &str, timestamp: i64) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets(s: &[&str]) -> Vec<SecretString> {
        s.iter().map(|s| s.to_string().into()).collect()
    }

    const BODY: &[u8] = br#"{"id":"evt_1"}"#;

    #[test]
    fn a_correct_signature_verifies() {
        let h = sign(BODY, "whsec_a", 1_000);
        assert_eq!(
            verify(Some(&h), BODY, &secrets(&["whsec_a"]), 300, 1_100),
            Ok(())
        );
    }

    #[test]
    fn either_secret_verifies_during_a_rotation_and_any_v1_may_match() {
        let new = sign(BODY, "whsec_new", 1_000);
        let old_sig = sign(BODY, "whsec_old", 1_000);
        let both = format!("{new},{}", old_sig.split_once(',').unwrap().1);
        let rotating = secrets(&["whsec_old", "whsec_new"]);
        assert_eq!(verify(Some(&new), BODY, &rotating, 300, 1_000), Ok(()));
        assert_eq!(
            verify(Some(&both), BODY, &secrets(&["whsec_old"]), 300, 1_000),
            Ok(())
        );
    }

    #[test]
    fn a_tampered_body_wrong_secret_old_timestamp_or_missing_header_is_refused() {
        let h = sign(BODY, "whsec_a", 1_000);
        let s = secrets(&["whsec_a"]);
        assert_eq!(
            verify(Some(&h), b"{\"id\":\"evt_2\"}", &s, 300, 1_000),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(Some(&h), BODY, &secrets(&["whsec_b"]), 300, 1_000),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(Some(&h), BODY, &s, 300, 1_301),
            Err(SignatureError::OutsideTolerance)
        );
        assert_eq!(
            verify(None, BODY, &s, 300, 1_000),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            verify(Some("t=1000"), BODY, &s, 300, 1_000),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify(Some("v1=zz,t=1"), BODY, &s, 300, 1),
            Err(SignatureError::Malformed)
        );
    }
}
