//! Customer identity: the bearer token both the proxy and the billing API accept.
//! Verification is local (no call to an identity provider per request).

use crate::customer::CustomerId;
use crate::settings::IdentitySettings;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};

/// The claims tollgate reads. `sub` is the ticket API's user id.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub iss: String,
    pub aud: String,
    pub exp: u64,
    pub iat: u64,
}

/// Why a token was refused. The messages are safe to show a client.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("no bearer token")]
    Missing,
    #[error("token is malformed")]
    Malformed,
    #[error("token has expired")]
    Expired,
    #[error("token signature, issuer or audience is not accepted")]
    Rejected,
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

/// Verifies bearer tokens against the configured HS256 secret and/or JWKS keys.
pub struct IdentityVerifier {
    keys: Vec<VerificationKey>,
    issuer: String,
    audience: String,
    leeway: u64,
}

impl IdentityVerifier {
    /// Builds a verifier; `jwks` is the JWKS document text when one is configured
    /// (reading it from a file or URL is the caller's I/O).
    pub fn new(settings: &IdentitySettings, jwks: Option<&str>) -> Result<Self, IdentityError> {
        let mut keys = Vec::new();
        if let Some(secret) = &settings.hs256_secret {
            let secret = secret.expose_secret();
            if secret.len() < 32 {
                return Err(IdentityError::Config(
                    "identity.hs256_secret must be at least 32 bytes".into(),
                ));
            }
            keys.push(VerificationKey {
                kid: None,
                algorithm: Algorithm::HS256,
                key: DecodingKey::from_secret(secret.as_bytes()),
            });
        }
        if let Some(text) = jwks {
            let set: JwkSet = serde_json::from_str(text)
                .map_err(|e| IdentityError::Config(format!("JWKS is not valid: {e}")))?;
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
        }
        if keys.is_empty() {
            return Err(IdentityError::Config(
                "identity needs hs256_secret or a JWKS with RS256/ES256 keys".into(),
            ));
        }
        Ok(Self {
            keys,
            issuer: settings.issuer.clone(),
            audience: settings.audience.clone(),
            leeway: settings.leeway_seconds,
        })
    }

    /// Verifies a bearer token and returns the customer it names.
    pub fn verify(&self, token: &str) -> Result<CustomerId, IdentityError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| IdentityError::Malformed)?;
        let candidates = self.keys.iter().filter(|k| {
            k.algorithm == header.alg
                && match (&header.kid, &k.kid) {
                    (Some(want), Some(have)) => want == have,
                    _ => true,
                }
        });
        let mut outcome = Err(IdentityError::Rejected);
        for candidate in candidates {
            let mut validation = Validation::new(candidate.algorithm);
            validation.set_issuer(&[&self.issuer]);
            validation.set_audience(&[&self.audience]);
            validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
            validation.leeway = self.leeway;
            match jsonwebtoken::decode::<Claims>(token, &candidate.key, &validation) {
                Ok(data) => {
                    return CustomerId::parse(&data.claims.sub)
                        .map_err(|_| IdentityError::BadSubject);
                }
                Err(e) => {
                    use jsonwebtoken::errors::ErrorKind;
                    outcome = Err(match e.kind() {
                        ErrorKind::ExpiredSignature => IdentityError::Expired,
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
        assert_eq!(verifier.verify(&token).unwrap(), customer());
    }

    #[test]
    fn an_expired_token_is_refused() {
        let issuer = TokenIssuer::new(&settings(SECRET)).unwrap();
        let verifier = IdentityVerifier::new(&settings(SECRET), None).unwrap();
        let token = issuer.issue(&customer(), now() - 3600, 60).unwrap();
        assert_eq!(verifier.verify(&token), Err(IdentityError::Expired));
    }

    #[test]
    fn a_token_signed_with_another_secret_is_refused() {
        let other = "another-secret-that-is-long-enough-987654321";
        let issuer = TokenIssuer::new(&settings(other)).unwrap();
        let verifier = IdentityVerifier::new(&settings(SECRET), None).unwrap();
        let token = issuer.issue(&customer(), now(), 60).unwrap();
        assert_eq!(verifier.verify(&token), Err(IdentityError::Rejected));
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
        assert_eq!(verifier.verify(&token), Err(IdentityError::Rejected));
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
                verifier.verify(&es256_token("k1", "ticket-api")).unwrap(),
                customer()
            );
        }
    }

    #[test]
    fn an_es256_token_for_another_audience_or_unknown_key_is_refused() {
        let verifier = IdentityVerifier::new(&jwks_only(), Some(&es256_jwks(true))).unwrap();
        assert!(verifier.verify(&es256_token("k1", "elsewhere")).is_err());
        assert!(
            verifier
                .verify(&es256_token("other-key", "ticket-api"))
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
        assert_eq!(verifier.verify(&token), Err(IdentityError::Rejected));
    }

    #[test]
    fn garbage_is_malformed() {
        let verifier = IdentityVerifier::new(&settings(SECRET), None).unwrap();
        assert_eq!(verifier.verify("not.a.jwt"), Err(IdentityError::Malformed));
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
        assert_eq!(verifier.verify(&token), Err(IdentityError::BadSubject));
    }
}
