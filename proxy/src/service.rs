//! The proxy service: what each phase of a request does.

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session};
use std::net::SocketAddr;

/// The ticket API's reverse proxy.
pub struct TollgateProxy {
    upstream: SocketAddr,
}

impl TollgateProxy {
    pub fn new(upstream: SocketAddr) -> Self {
        Self { upstream }
    }
}

/// Per-request state.
#[derive(Default)]
pub struct RequestCtx {}

#[async_trait]
impl ProxyHttp for TollgateProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> Self::CTX {
        RequestCtx::default()
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}
