//! `[metrics]`: the address of the listener that serves `/metrics`, validated
//! against the site's (`[server]`) so the two never share a port.

use super::ConfigError;
use super::check::Ctx;
use super::raw::RawMetrics;
use super::resolve::ServerConfig;
use std::net::SocketAddr;
use toml::Spanned;

/// `[metrics]`, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsConfig {
    /// Where `/metrics` is served.
    pub listen: SocketAddr,
    /// A request head (or the next one on a kept-alive connection) must arrive
    /// within this (`head_timeout_ms`, default [`DEFAULT_HEAD_TIMEOUT_MS`]).
    pub head_timeout: std::time::Duration,
}

/// `[metrics].head_timeout_ms` by default.
pub const DEFAULT_HEAD_TIMEOUT_MS: u64 = 10_000;

/// `[metrics]` checked: `listen` is an address, not on the site's port. (Port 0, a
/// free port the kernel picks, is allowed: `status` tells which.)
pub(super) fn resolve(
    ctx: &Ctx,
    raw: Option<Spanned<RawMetrics>>,
    server: Option<&ServerConfig>,
) -> Result<Option<MetricsConfig>, ConfigError> {
    let Some(raw) = raw else { return Ok(None) };
    let at = raw.span().start;
    let raw = raw.into_inner();
    let head_timeout_ms = match raw.head_timeout_ms {
        Some(ms) if *ms.get_ref() == 0 => {
            return ctx.err(ms.span().start, "head_timeout_ms must be at least 1");
        }
        Some(ms) => ms.into_inner(),
        None => DEFAULT_HEAD_TIMEOUT_MS,
    };
    let Some(listen) = raw.listen else {
        return ctx.err(at, "[metrics] needs `listen`, an address like \"127.0.0.1:9187\"");
    };
    let at = listen.span().start;
    let Ok(addr) = listen.get_ref().parse::<SocketAddr>() else {
        return ctx.err(
            at,
            format!(
                "listen {:?} is not an address like \"127.0.0.1:9187\"",
                listen.get_ref()
            ),
        );
    };
    if let Some(site) = server
        && shares_port(addr, site.listen)
    {
        return ctx.err(
            at,
            format!(
                "[metrics] `listen` {addr} is the site's port ([server] listen {}): \
                 the metrics get a port of their own, so a public site never exposes them",
                site.listen
            ),
        );
    }
    Ok(Some(MetricsConfig {
        listen: addr,
        head_timeout: std::time::Duration::from_millis(head_timeout_ms),
    }))
}

/// Whether two listening addresses would take the same port: the same port on the
/// same address, or on any address when either is the wildcard. (Port 0 is a free
/// port the kernel picks, never the other's.)
fn shares_port(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}
