//! Customer identity: the bearer token both the proxy and the billing API accept, and
//! the one loader of the keys that verify it.
//!
//! Verification is local (no call to an identity provider per request). Keys come from
//! `identity.hs256_secret` and/or a JWKS (`identity.jwks_file` or `identity.jwks_url`).
//! The JWKS is read again every `identity.jwks_refresh_seconds`, and at once (at most
//! once per `identity.jwks_min_refresh_seconds`) when a token names a key id the set
//! does not hold, so an identity provider's key rotation never locks customers out.
//! A failed refresh keeps the keys already loaded.
//!
//! A token verified once is remembered (by its exact text, with its `exp` and `nbf`), so
//! the requests of one client cost a lookup instead of a signature check and two JSON
//! parses each. A remembered token is still refused once it expires, and the memory is
//! dropped whenever the keys change (a refresh), so a removed key stops working at once.

use crate::settings::IdentitySettings;
use arc_swap::ArcSwap;
use billing_model::CustomerId;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The claims tollgate issues (demo and test tokens). Verification reads only `sub`;
/// `exp`, `nbf`, `iss` and `aud` (a string or an array) are checked by the validator,
/// and `iat` may be absent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub iss: String,
    pub aud: String,
    pub exp: u64,
    pub iat: u64,
}

/// What verification deserializes: the subject and the times a remembered token is
/// checked against.
#[derive(Deserialize)]
struct Subject {
    sub: String,
    exp: u64,
    #[serde(default)]
    nbf: Option<u64>,
}

/// A token verified earlier: whose it is and until when.
#[derive(Clone)]
struct Verified {
    customer: CustomerId,
    exp: u64,
    nbf: Option<u64>,
}

/// How many verified tokens are remembered, and for how long at most.
const VERIFIED_CAPACITY: u64 = 4_096;
const VERIFIED_FOR: Duration = Duration::from_secs(300);

/// Why a token was refused. The messages are safe to show a client.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("no bearer token")]
    Missing,
    #[error("token is malformed")]
    Malformed,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token signature, issuer or audience is not accepted")]
    Rejected,
    #[error("token is signed with a key this service does not know")]
    UnknownKey,
    #[error("token subject is not a valid customer id")]
    BadSubject,
    #[error("identity configuration: {0}")]
    Config(String),
}

struct VerificationKey {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

/// Where the JWKS comes from.
#[derive(Debug, Clone)]
enum JwksSource {
    File(PathBuf),
    Url(String),
}

/// Verifies bearer tokens against the configured HS256 secret and/or JWKS keys, and
/// keeps the JWKS current.
pub struct IdentityVerifier {
    hs256: Option<VerificationKey>,
    jwks: ArcSwap<Vec<VerificationKey>>,
    source: Option<JwksSource>,
    http: reqwest::Client,
    /// One re-read at a time; callers that queue behind it find the new keys.
    refreshing: tokio::sync::Mutex<()>,
    /// Bounds the re-reads unknown key ids can trigger.
    unknown_kid_refreshes: DefaultDirectRateLimiter,
    refresh_every: Duration,
    issuer: String,
    audience: String,
    leeway: u64,
    /// Tokens verified against the keys loaded now (emptied when they change).
    verified: moka::sync::Cache<Arc<str>, Verified>,
}

impl IdentityVerifier {
    /// Builds a verifier from the settings, reading the JWKS file or fetching the JWKS
    /// URL once (an unreachable URL at start is an error: no keys, no service).
    pub async fn load(settings: &IdentitySettings) -> Result<Self, IdentityError> {
        let source = match (&settings.jwks_file, &settings.jwks_url) {
            (Some(_), Some(_)) => {
                return Err(IdentityError::Config(
                    "set identity.jwks_file or identity.jwks_url, not both".into(),
                ));
            }
            (Some(path), None) => Some(JwksSource::File(path.clone())),
            (None, Some(url)) => Some(JwksSource::Url(url.clone())),
            (None, None) => None,
        };
        let mut verifier = Self::build(settings, None)?;
        if let Some(source) = source {
            verifier.source = Some(source);
            let keys = verifier.read_jwks().await?;
            verifier.jwks.store(Arc::new(keys));
        }
        verifier.check_has_keys()?;
        Ok(verifier)
    }

    /// Builds a verifier from a JWKS document already in memory (tests, benchmarks);
    /// it is never re-read.
    pub fn new(settings: &IdentitySettings, jwks: Option<&str>) -> Result<Self, IdentityError> {
        let verifier = Self::build(settings, jwks)?;
        verifier.check_has_keys()?;
        Ok(verifier)
    }

    fn build(settings: &IdentitySettings, jwks: Option<&str>) -> Result<Self, IdentityError> {
        let hs256 = match &settings.hs256_secret {
            Some(secret) => {
                let secret = secret.expose_secret();
                if secret.len() < 32 {
                    return Err(IdentityError::Config(
                        "identity.hs256_secret must be at least 32 bytes".into(),
                    ));
                }
                Some(VerificationKey {
                    kid: None,
                    algorithm: Algorithm::HS256,
                    key: DecodingKey::from_secret(secret.as_bytes()),
                })
            }
            None => None,
        };
        let keys = jwks.map(parse_jwks).transpose()?.unwrap_or_default();
        let min_refresh = Duration::from_secs(settings.jwks_min_refresh_seconds.max(1));
        let quota = Quota::with_period(min_refresh)
            .ok_or_else(|| IdentityError::Config("jwks_min_refresh_seconds".into()))?;
        Ok(Self {
            hs256,
            jwks: ArcSwap::from_pointee(keys),
            source: None,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                // Fetches are rare and may run on different runtimes: no pooled
                // connections tied to one of them.
                .pool_max_idle_per_host(0)
                .build()
                .map_err(|e| IdentityError::Config(e.to_string()))?,
            refreshing: tokio::sync::Mutex::new(()),
            unknown_kid_refreshes: RateLimiter::direct(quota),
            refresh_every: Duration::from_secs(settings.jwks_refresh_seconds.max(1)),
            issuer: settings.issuer.clone(),
            audience: settings.audience.clone(),
            leeway: settings.leeway_seconds,
            verified: moka::sync::Cache::builder()
                .max_capacity(VERIFIED_CAPACITY)
                .time_to_live(VERIFIED_FOR)
                .build(),
        })
    }

    fn check_has_keys(&self) -> Result<(), IdentityError> {
        if self.hs256.is_none() && self.jwks.load().is_empty() {
            return Err(IdentityError::Config(
                "identity needs hs256_secret or a JWKS with RS256/ES256 keys".into(),
            ));
        }
        Ok(())
    }

    async fn read_jwks(&self) -> Result<Vec<VerificationKey>, IdentityError> {
        let text = match &self.source {
            None => return Ok(Vec::new()),
            Some(JwksSource::File(path)) => tokio::fs::read_to_string(path).await.map_err(|e| {
                IdentityError::Config(format!(
                    "reading identity.jwks_file {}: {e}",
                    path.display()
                ))
            })?,
            Some(JwksSource::Url(url)) => {
                let fetch = async {
                    self.http
                        .get(url)
                        .send()
                        .await?
                        .error_for_status()?
                        .text()
                        .await
                };
                fetch.await.map_err(|e| {
                    IdentityError::Config(format!("fetching identity.jwks_url {url}: {e}"))
                })?
            }
        };
        parse_jwks(&text)
    }

    /// Reads the JWKS again now and swaps it in; on failure the loaded keys stay.
    /// Returns how many JWKS keys are loaded.
    pub async fn refresh(&self) -> Result<usize, IdentityError> {
        let _one_at_a_time = self.refreshing.lock().await;
        let keys = self.read_jwks().await?;
        let count = keys.len();
        if self.source.is_some() {
            self.jwks.store(Arc::new(keys));
            // Verified against keys that may be gone now.
            self.verified.invalidate_all();
        }
        Ok(count)
    }

    /// Whether the JWKS has a source to re-read.
    pub fn refreshes(&self) -> bool {
        self.source.is_some()
    }

    /// Re-reads the JWKS every `identity.jwks_refresh_seconds` until `stop` resolves.
    pub async fn keep_fresh(self: Arc<Self>, stop: impl Future<Output = ()>) {
        if !self.refreshes() {
            return;
        }
        let mut stop = std::pin::pin!(stop);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.refresh_every) => {}
                _ = &mut stop => return,
            }
            match self.refresh().await {
                Ok(keys) => tracing::debug!(keys, "JWKS refreshed"),
                Err(e) => {
                    tracing::warn!(error = %e, "JWKS refresh failed; keeping the loaded keys")
                }
            }
        }
    }

    /// Verifies a bearer token and returns the customer it names. A key id the JWKS
    /// does not hold re-reads the JWKS once (rate limited) and tries again.
    pub async fn verify(&self, token: &str) -> Result<CustomerId, IdentityError> {
        match self.verify_loaded(token) {
            Err(IdentityError::UnknownKey)
                if self.refreshes() && self.unknown_kid_refreshes.check().is_ok() =>
            {
                if let Err(e) = self.refresh().await {
                    tracing::warn!(error = %e, "JWKS refresh for an unknown key id failed");
                }
                self.verify_loaded(token)
            }
            outcome => outcome,
        }
    }

    /// Verifies against the keys loaded right now, without re-reading anything.
    pub fn verify_loaded(&self, token: &str) -> Result<CustomerId, IdentityError> {
        let now = jsonwebtoken::get_current_timestamp();
        if let Some(known) = self.verified.get(token) {
            // The validator's own rules, with its leeway.
            if known.exp.saturating_add(self.leeway) < now {
                self.verified.invalidate(token);
                return Err(IdentityError::Expired);
            }
            if known
                .nbf
                .is_some_and(|nbf| nbf > now.saturating_add(self.leeway))
            {
                return Err(IdentityError::NotYetValid);
            }
            return Ok(known.customer);
        }
        let verified = self.verify_signature(token)?;
        let customer = verified.customer.clone();
        self.verified.insert(Arc::from(token), verified);
        Ok(customer)
    }

    fn verify_signature(&self, token: &str) -> Result<Verified, IdentityError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| IdentityError::Malformed)?;
        let jwks = self.jwks.load();
        let matches_kid = |k: &&VerificationKey| match (&header.kid, &k.kid) {
            (Some(want), Some(have)) => want == have,
            _ => true,
        };
        let mut candidates = self
            .hs256
            .iter()
            .chain(jwks.iter())
            .filter(|k| k.algorithm == header.alg)
            .filter(matches_kid)
            .peekable();
        if candidates.peek().is_none() {
            // A kid we do not hold, on an algorithm we take from a JWKS: perhaps a key
            // the identity provider rotated in.
            let from_jwks = matches!(header.alg, Algorithm::RS256 | Algorithm::ES256);
            return Err(if header.kid.is_some() && from_jwks {
                IdentityError::UnknownKey
            } else {
                IdentityError::Rejected
            });
        }
        let mut outcome = Err(IdentityError::Rejected);
        for candidate in candidates {
            let mut validation = Validation::new(candidate.algorithm);
            validation.set_issuer(&[&self.issuer]);
            validation.set_audience(&[&self.audience]);
            validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
            validation.validate_nbf = true;
            validation.leeway = self.leeway;
            match jsonwebtoken::decode::<Subject>(token, &candidate.key, &validation) {
                Ok(data) => {
                    let customer = CustomerId::parse(&data.claims.sub)
                        .map_err(|_| IdentityError::BadSubject)?;
                    return Ok(Verified {
                        customer,
                        exp: data.claims.exp,
                        nbf: data.claims.nbf,
                    });
                }
                Err(e) => {
                    use jsonwebtoken::errors::ErrorKind;
                    outcome = Err(match e.kind() {
                        ErrorKind::ExpiredSignature => IdentityError::Expired,
                        ErrorKind::ImmatureSignature => IdentityError::NotYetValid,
                        ErrorKind::InvalidToken | ErrorKind::Base64(_) | ErrorKind::Json(_) => {
                            IdentityError::Malformed
                        }
                        _ => IdentityError::Rejected,
                    });
                }
            }
        }
        outcome
    }
}

/// The RS256/ES256 keys of a JWKS document; other key types are skipped.
fn parse_jwks(text: &str) -> Result<Vec<VerificationKey>, IdentityError> {
    let set: JwkSet = serde_json::from_str(text)
        .map_err(|e| IdentityError::Config(format!("JWKS is not valid: {e}")))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        // `alg` is optional in a JWK: infer it from the key type when absent.
        let algorithm = match jwk.common.key_algorithm {
            Some(a) => a.to_string().parse::<Algorithm>().ok(),
            None => match &jwk.algorithm {
                jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Some(Algorithm::RS256),
                jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(ec)
                    if ec.curve == jsonwebtoken::jwk::EllipticCurve::P256 =>
                {
                    Some(Algorithm::ES256)
                }
                _ => None,
            },
        };
        let Some(algorithm) = algorithm else {
            continue;
        };
        if !matches!(algorithm, Algorithm::RS256 | Algorithm::ES256) {
            continue;
        }
        let key = DecodingKey::from_jwk(jwk)
            .map_err(|e| IdentityError::Config(format!("JWKS key unusable: {e}")))?;
        keys.push(VerificationKey {
            kid: jwk.common.key_id.clone(),
            algorithm,
            key,
        });
    }
    Ok(keys)
}

/// Issues HS256 tokens: the demo's and the tests' way to act as a customer.
pub struct TokenIssuer {
    key: EncodingKey,
    issuer: String,
    audience: String,
}

impl TokenIssuer {
    pub fn new(settings: &IdentitySettings) -> Result<Self, IdentityError> {
        let secret = settings.hs256_secret.as_ref().ok_or_else(|| {
            IdentityError::Config("issuing tokens needs identity.hs256_secret".into())
        })?;
        Ok(Self {
            key: EncodingKey::from_secret(secret.expose_secret().as_bytes()),
            issuer: settings.issuer.clone(),
            audience: settings.audience.clone(),
        })
    }

    /// A token for `customer`, valid for `ttl_seconds` from `now_unix`.
    pub fn issue(
        &self,
        customer: &CustomerId,
        now_unix: u64,
        ttl_seconds: u64,
    ) -> Result<String, IdentityError> {
        let claims = Claims {
            sub: customer.as_ref().to_owned(),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            iat: now_unix,
            exp: now_unix + ttl_seconds,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.key)
            .map_err(|e| IdentityError::Config(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "a-test-secret-that-is-long-enough-0123456789";

    fn settings(secret: &str) -> IdentitySettings {
        IdentitySettings {
            issuer: "tollgate-test".into(),
            audience: "ticket-api".into(),
            hs256_secret: Some(secret.to_owned().into()),
            jwks_file: None,
            jwks_url: None,
            jwks_refresh_seconds: 300,
            jwks_min_refresh_seconds: 10,
            leeway_seconds: 0,
            trusted_header: None,
        }
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn customer() -> CustomerId {
        CustomerId::parse("cust-42").expect("valid id")
    }

    #[test]
    fn a_token_issued_with_the_secret_verifies_to_its_customer() {
        let issuer = TokenIssuer::new(&settings(SECRET)).unwrap();
        let verifier = IdentityVerifier::new(&settings(SECRET), None).unwrap();
        let token = issuer.issue(&customer(), now(), 60).unwrap();
        assert_eq!(verifier.verify_loaded(&token).unwrap(), customer());
    }

    #[test]
    fn an_expired_token_is_refused() {
        let issuer = TokenIssuer::new(&settings(SECRET)).unwrap();
        let verifier = IdentityVerifier::new(&settings(SECRET), None).unwrap();
        let token = issuer.issue(&customer(), now() - 3600, 60).unwrap();
        assert_eq!(verifier.verify_loaded(&token), Err(IdentityError::Expired));
    }

    #[test]
    fn a_token_signed_with_another_secret_is_refused() {
        let other = "another-secret-that-is-long-enough-987654321";
        let issuer = TokenIssuer::new(&settings(other)).unwrap();
        let verifier = IdentityVerifier::new(&settings(SECRET), None).unwrap();
        let token = issuer.issue(&customer(), now(), 60).unwrap();
        assert_eq!(verifier.verify_loaded(&token), Err(IdentityError::Rejected));
    }

    #[test]
    fn a_token_for_another_audience_is_refused() {
        let mut foreign = settings(SECRET);
        foreign.audience = "some-other-api".into();
        let token = TokenIssuer::new(&foreign)
            .unwrap()
            .issue(&customer(), now(), 60)
            .unwrap();
        let verifier = IdentityVerifier::new(&settings(SECRET), None).unwrap();
        assert_eq!(verifier.verify_loaded(&token), Err(IdentityError::Rejected));
    }

    /// A throwaway P-256 key made for this test only.
    const ES256_TEST_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgcuSDofCSi7pqDc3W
UMVDbwlIW7l+AiApwggaM5ik2FuhRANCAAQleUKSlRFHaaqFCe98uBQkTc96Tb5M
84rQYE/UWz1NLaRs6x6anqoEeEhCk0XHphGrhaRRtXtyaejmsyBJ3Zjl
-----END PRIVATE KEY-----";

    fn es256_jwks(with_alg: bool) -> String {
        let key = EncodingKey::from_ec_pem(ES256_TEST_KEY.as_bytes()).unwrap();
        let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&key, Algorithm::ES256).unwrap();
        jwk.common.key_id = Some("k1".into());
        if !with_alg {
            jwk.common.key_algorithm = None;
        }
        serde_json::json!({ "keys": [jwk] }).to_string()
    }

    fn es256_token(kid: &str, aud: &str) -> String {
        let key = EncodingKey::from_ec_pem(ES256_TEST_KEY.as_bytes()).unwrap();
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.into());
        let claims = Claims {
            sub: "cust-42".into(),
            iss: "tollgate-test".into(),
            aud: aud.into(),
            iat: now(),
            exp: now() + 60,
        };
        jsonwebtoken::encode(&header, &claims, &key).unwrap()
    }

    fn jwks_only() -> IdentitySettings {
        let mut s = settings(SECRET);
        s.hs256_secret = None;
        s
    }

    #[test]
    fn an_es256_token_verifies_against_the_jwks() {
        for with_alg in [true, false] {
            let verifier =
                IdentityVerifier::new(&jwks_only(), Some(&es256_jwks(with_alg))).unwrap();
            assert_eq!(
                verifier
                    .verify_loaded(&es256_token("k1", "ticket-api"))
                    .unwrap(),
                customer()
            );
        }
    }

    #[test]
    fn an_es256_token_for_another_audience_or_unknown_key_is_refused() {
        let verifier = IdentityVerifier::new(&jwks_only(), Some(&es256_jwks(true))).unwrap();
        assert!(
            verifier
                .verify_loaded(&es256_token("k1", "elsewhere"))
                .is_err()
        );
        assert!(
            verifier
                .verify_loaded(&es256_token("other-key", "ticket-api"))
                .is_err()
        );
    }

    #[test]
    fn an_hs256_token_is_refused_when_only_a_jwks_is_configured() {
        // Algorithm confusion: an HS256 token must not be checked against a public key.
        let verifier = IdentityVerifier::new(&jwks_only(), Some(&es256_jwks(true))).unwrap();
        let token = TokenIssuer::new(&settings(SECRET))
            .unwrap()
            .issue(&customer(), now(), 60)
            .unwrap();
        assert_eq!(verifier.verify_loaded(&token), Err(IdentityError::Rejected));
    }

    #[test]
    fn garbage_is_malformed() {
        let verifier = IdentityVerifier::new(&settings(SECRET), None).unwrap();
        assert_eq!(
            verifier.verify_loaded("not.a.jwt"),
            Err(IdentityError::Malformed)
        );
    }

    #[test]
    fn a_short_secret_is_a_configuration_error() {
        assert!(matches!(
            IdentityVerifier::new(&settings("short"), None),
            Err(IdentityError::Config(_))
        ));
    }

    #[test]
    fn a_subject_that_is_not_a_customer_id_is_refused() {
        let issuer = TokenIssuer::new(&settings(SECRET)).unwrap();
        let verifier = IdentityVerifier::new(&settings(SECRET), None).unwrap();
        let claims = Claims {
            sub: "{evil}".into(),
            iss: "tollgate-test".into(),
            aud: "ticket-api".into(),
            iat: now(),
            exp: now() + 60,
        };
        let token =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &issuer.key).unwrap();
        assert_eq!(
            verifier.verify_loaded(&token),
            Err(IdentityError::BadSubject)
        );
    }

    fn hs256_with(claims: serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn a_token_before_its_nbf_is_refused_and_valid_after() {
        let verifier = IdentityVerifier::new(&settings(SECRET), None).unwrap();
        let claims = |nbf: u64| {
            serde_json::json!({"sub": "cust-42", "iss": "tollgate-test", "aud": "ticket-api",
                               "exp": now() + 600, "nbf": nbf})
        };
        assert_eq!(
            verifier.verify_loaded(&hs256_with(claims(now() + 300))),
            Err(IdentityError::NotYetValid)
        );
        assert_eq!(
            verifier.verify_loaded(&hs256_with(claims(now() - 1))),
            Ok(customer())
        );
    }

    #[test]
    fn an_audience_array_naming_us_is_accepted_and_one_without_us_is_not() {
        let verifier = IdentityVerifier::new(&settings(SECRET), None).unwrap();
        let with = |aud: serde_json::Value| {
            hs256_with(serde_json::json!({"sub": "cust-42", "iss": "tollgate-test",
                                          "aud": aud, "exp": now() + 60}))
        };
        assert_eq!(
            verifier.verify_loaded(&with(serde_json::json!(["billing", "ticket-api"]))),
            Ok(customer())
        );
        assert_eq!(
            verifier.verify_loaded(&with(serde_json::json!(["billing", "other"]))),
            Err(IdentityError::Rejected)
        );
    }

    #[test]
    fn a_token_without_iat_is_accepted() {
        let verifier = IdentityVerifier::new(&settings(SECRET), None).unwrap();
        let token = hs256_with(serde_json::json!({"sub": "cust-42", "iss": "tollgate-test",
                                                  "aud": "ticket-api", "exp": now() + 60}));
        assert_eq!(verifier.verify_loaded(&token), Ok(customer()));
    }

    /// A second throwaway P-256 key: the identity provider's rotated-in key.
    const ES256_ROTATED_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQggMvZgiQtssKnGThr
+iNEUgJTkexiEt/RSKiUA2PulxKhRANCAAS7Onj8La2IV42q+ZTOlhRvMKFNjM3u
9/8NMxCoI3D8E80Di5edDyYkrWQmOgjoL46D4VfwO2CGn0jO9GPGQk9I
-----END PRIVATE KEY-----";

    fn jwk_of(pem: &str, kid: &str) -> serde_json::Value {
        let key = EncodingKey::from_ec_pem(pem.as_bytes()).unwrap();
        let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&key, Algorithm::ES256).unwrap();
        jwk.common.key_id = Some(kid.into());
        serde_json::to_value(jwk).unwrap()
    }

    fn token_signed(pem: &str, kid: &str) -> String {
        let key = EncodingKey::from_ec_pem(pem.as_bytes()).unwrap();
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.into());
        let claims = serde_json::json!({"sub": "cust-42", "iss": "tollgate-test",
                                        "aud": "ticket-api", "exp": now() + 60});
        jsonwebtoken::encode(&header, &claims, &key).unwrap()
    }

    /// A JWKS endpoint whose document the test can swap, counting fetches.
    async fn jwks_server(
        document: Arc<std::sync::Mutex<serde_json::Value>>,
        fetches: Arc<std::sync::atomic::AtomicU64>,
    ) -> String {
        let app = axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || {
                let document = document.clone();
                let fetches = fetches.clone();
                async move {
                    fetches.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    axum::Json(document.lock().unwrap().clone())
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}/jwks.json")
    }

    fn url_settings(url: String) -> IdentitySettings {
        let mut s = jwks_only();
        s.jwks_url = Some(url);
        s.jwks_min_refresh_seconds = 3600;
        s
    }

    #[tokio::test]
    async fn a_key_rotated_in_at_the_provider_is_picked_up_on_first_use() {
        let document = Arc::new(std::sync::Mutex::new(
            serde_json::json!({"keys": [jwk_of(ES256_TEST_KEY, "k1")]}),
        ));
        let fetches = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let url = jwks_server(document.clone(), fetches.clone()).await;
        let verifier = IdentityVerifier::load(&url_settings(url)).await.unwrap();
        let old = token_signed(ES256_TEST_KEY, "k1");
        assert_eq!(verifier.verify(&old).await, Ok(customer()));
        assert_eq!(verifier.verify(&old).await, Ok(customer()), "remembered");

        // The provider rotates: k2 in, k1 out.
        *document.lock().unwrap() = serde_json::json!({"keys": [jwk_of(ES256_ROTATED_KEY, "k2")]});
        assert_eq!(
            verifier
                .verify(&token_signed(ES256_ROTATED_KEY, "k2"))
                .await,
            Ok(customer()),
            "an unknown kid re-reads the JWKS"
        );
        assert_eq!(
            verifier.verify_loaded(&token_signed(ES256_TEST_KEY, "k1")),
            Err(IdentityError::UnknownKey),
            "the retired key is gone"
        );
        assert_eq!(
            verifier.verify_loaded(&old),
            Err(IdentityError::UnknownKey),
            "a token remembered from before the rotation is not accepted after it"
        );
    }

    #[tokio::test]
    async fn a_remembered_token_is_refused_once_it_expires() {
        let issuer = TokenIssuer::new(&settings(SECRET)).unwrap();
        let verifier = IdentityVerifier::new(&settings(SECRET), None).unwrap();
        let token = issuer.issue(&customer(), now(), 1).unwrap();
        assert_eq!(verifier.verify_loaded(&token), Ok(customer()));
        assert_eq!(verifier.verify_loaded(&token), Ok(customer()));
        tokio::time::sleep(Duration::from_millis(2_100)).await;
        assert_eq!(verifier.verify_loaded(&token), Err(IdentityError::Expired));
        assert_eq!(verifier.verify_loaded(&token), Err(IdentityError::Expired));
    }

    #[tokio::test]
    async fn unknown_key_ids_cannot_force_a_fetch_per_request() {
        let document = Arc::new(std::sync::Mutex::new(
            serde_json::json!({"keys": [jwk_of(ES256_TEST_KEY, "k1")]}),
        ));
        let fetches = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let url = jwks_server(document, fetches.clone()).await;
        let verifier = IdentityVerifier::load(&url_settings(url)).await.unwrap();
        for i in 0..20 {
            let token = token_signed(ES256_ROTATED_KEY, &format!("attacker-{i}"));
            assert_eq!(
                verifier.verify(&token).await,
                Err(IdentityError::UnknownKey)
            );
        }
        // The start-up fetch plus one re-read: the rest were rate limited.
        assert_eq!(fetches.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn the_schedule_re_reads_a_jwks_file_and_a_failed_read_keeps_the_keys() {
        let path = std::env::temp_dir().join(format!("tg-jwks-{}.json", uuid::Uuid::new_v4()));
        std::fs::write(
            &path,
            serde_json::json!({"keys": [jwk_of(ES256_TEST_KEY, "k1")]}).to_string(),
        )
        .unwrap();
        let mut s = jwks_only();
        s.jwks_file = Some(path.clone());
        s.jwks_refresh_seconds = 1;
        let verifier = Arc::new(IdentityVerifier::load(&s).await.unwrap());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(verifier.clone().keep_fresh(async move {
            let _ = stop_rx.await;
        }));
        std::fs::write(
            &path,
            serde_json::json!({"keys": [jwk_of(ES256_ROTATED_KEY, "k2")]}).to_string(),
        )
        .unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(
            verifier.verify_loaded(&token_signed(ES256_ROTATED_KEY, "k2")),
            Ok(customer())
        );
        std::fs::write(&path, "not json").unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(
            verifier.verify_loaded(&token_signed(ES256_ROTATED_KEY, "k2")),
            Ok(customer()),
            "a broken file does not unload the keys"
        );
        let _ = stop_tx.send(());
        let _ = std::fs::remove_file(&path);
    }

    #[tokio::test]
    async fn both_a_jwks_file_and_url_is_a_configuration_error() {
        let mut s = jwks_only();
        s.jwks_file = Some("/tmp/x.json".into());
        s.jwks_url = Some("http://127.0.0.1:1/jwks".into());
        assert!(matches!(
            IdentityVerifier::load(&s).await,
            Err(IdentityError::Config(_))
        ));
    }
}
