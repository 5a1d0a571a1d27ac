//! Who is calling: a locally verified JWT, or (only when configured) a header set by a
//! trusted auth gateway.

use billing_model::CustomerId;
use http::HeaderMap;
use http::header::{AUTHORIZATION, HeaderName};
use std::sync::Arc;
use tollgate_runtime::identity::{IdentityError, IdentityVerifier};

pub struct Identity {
    verifier: Option<Arc<IdentityVerifier>>,
    trusted_header: Option<HeaderName>,
}

impl Identity {
    pub fn new(
        verifier: Option<Arc<IdentityVerifier>>,
        trusted_header: Option<&str>,
    ) -> anyhow::Result<Self> {
        let trusted_header = trusted_header
            .map(|h| HeaderName::from_bytes(h.as_bytes()))
            .transpose()
            .map_err(|_| anyhow::anyhow!("identity.trusted_header is not a valid header name"))?;
        if verifier.is_none() && trusted_header.is_none() {
            anyhow::bail!("identity needs a JWT key or a trusted_header");
        }
        Ok(Self {
            verifier,
            trusted_header,
        })
    }

    /// The customer making the request.
    pub async fn customer(&self, headers: &HeaderMap) -> Result<CustomerId, IdentityError> {
        if let Some(name) = &self.trusted_header
            && let Some(value) = headers.get(name)
        {
            let value = value.to_str().map_err(|_| IdentityError::BadSubject)?;
            return CustomerId::parse(value).map_err(|_| IdentityError::BadSubject);
        }
        let verifier = self.verifier.as_ref().ok_or(IdentityError::Missing)?;
        let token = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .ok_or(IdentityError::Missing)?;
        verifier.verify(token.trim()).await
    }
}
