//! End-to-end tests: the real binaries, real PostgreSQL and Redis, over real sockets.
//! One test binary (z2p style) so the workspace links it once.

mod enforcement;
mod foundation;
mod proxy;
