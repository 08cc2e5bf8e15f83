//! Which `Host` and `Origin` a request may carry, as pure checks (the refusals are
//! made by [`super`]'s routing).
//!
//! - DNS rebinding: a page on the attacker's name, which then resolves to
//!   127.0.0.1, could read a server on this machine as its own origin. A server
//!   with `allowed_hosts` (`execlibd serve` always has it) therefore answers only a
//!   `Host` of `localhost`, a name under `.localhost`, an IP literal, or a listed
//!   name ([`host_allowed`]). Without it any `Host` is answered: a server behind a
//!   reverse proxy gets the public name the proxy passes on.
//! - Cross-site LiveReload: any page the developer visits could open the WebSocket
//!   and read build output and changed file names. A browser always sends `Origin`
//!   on a WebSocket handshake, so one is accepted only when its authority is the
//!   request's own `Host`, or it is one of `livereload_origins`
//!   ([`origin_allowed`]); a client without `Origin` is no browser page.

/// The most names `allowed_hosts` may list.
pub const MAX_ALLOWED_HOSTS: usize = 64;
/// The most origins `livereload_origins` may list.
pub const MAX_LIVERELOAD_ORIGINS: usize = 64;

/// What a server accepts besides its own name (from `[server]`).
#[derive(Debug, Clone, Default)]
pub struct Guard {
    /// `allowed_hosts`, lower case: when set, [`host_allowed`] applies.
    pub allowed_hosts: Option<Vec<String>>,
    /// `livereload_origins`, normalized by [`normalize_origin`].
    pub livereload_origins: Vec<String>,
}

impl Guard {
    /// Whether a request whose `Host` is `host` (`None`: none, or empty) is answered.
    pub fn host(&self, host: Option<&str>) -> bool {
        match &self.allowed_hosts {
            None => true,
            Some(allowed) => host.is_none_or(|h| host_allowed(h, allowed)),
        }
    }

    /// Whether a LiveReload handshake with `origin` and `host` may take a seat.
    pub fn origin(&self, origin: Option<&str>, host: Option<&str>) -> bool {
        origin.is_none_or(|o| origin_allowed(o, host, &self.livereload_origins))
    }
}

/// `host[:port]` as its host (an IPv6 literal keeps its brackets) and port.
fn split_authority(authority: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = match authority.rfind(':') {
        Some(i) if !authority[i..].contains(']') => (&authority[..i], Some(&authority[i + 1..])),
        _ => (authority, None),
    };
    let port = match port {
        None => None,
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => Some(p.parse().ok()?),
        Some(_) => return None,
    };
    (!host.is_empty()).then_some((host, port))
}

/// Whether `host` is an IPv4 literal or a bracketed IPv6 one.
fn is_ip_literal(host: &str) -> bool {
    match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => host.parse::<std::net::Ipv4Addr>().is_ok(),
    }
}

/// Whether `name` is a DNS name: dot-separated labels of letters, digits and `-`,
/// each 1 to 63 bytes, 253 in all.
pub fn is_dns_name(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len()) && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Whether a server on loopback answers `Host: host` (`host[:port]`): `localhost`,
/// `*.localhost`, an IP literal, or a name of `allowed` (lower case), with any port
/// and at most one trailing dot.
pub fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let Some((name, _)) = split_authority(host) else {
        return false;
    };
    if is_ip_literal(name) {
        return true;
    }
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost") || allowed.contains(&name)
}

/// `scheme://host[:port]` (`http` or `https`; the host a DNS name or IP literal)
/// in lower case, or `None` when it is not such an origin.
pub fn normalize_origin(origin: &str) -> Option<String> {
    let (scheme, authority) = origin.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let (host, port) = split_authority(authority)?;
    if !is_ip_literal(host) && !is_dns_name(host) || port == Some(0) {
        return None;
    }
    let host = host.to_ascii_lowercase();
    Some(match port {
        Some(port) => format!("{scheme}://{host}:{port}"),
        None => format!("{scheme}://{host}"),
    })
}

/// Whether a LiveReload handshake from `origin` is accepted: it is one of `listed`
/// (normalized), or its host and port are those of `host` (the request's `Host`; an
/// origin without a port has its scheme's default).
pub fn origin_allowed(origin: &str, host: Option<&str>, listed: &[String]) -> bool {
    let Some(origin) = normalize_origin(origin) else {
        return false;
    };
    if listed.contains(&origin) {
        return true;
    }
    let Some((own, own_port)) = host.and_then(split_authority) else {
        return false;
    };
    let (scheme, authority) = origin.split_once("://").expect("normalized");
    let (name, port) = split_authority(authority).expect("normalized");
    let default = if scheme == "https" { 443 } else { 80 };
    let same_port = port == own_port || (port.is_none() && own_port == Some(default));
    name.eq_ignore_ascii_case(own) && same_port
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_names_ip_literals_and_listed_hosts_are_allowed() {
        let listed = vec!["dev.example.test".to_owned()];
        for ok in [
            "localhost",
            "localhost:8778",
            "LocalHost.:1",
            "app.localhost:3000",
            "127.0.0.1:8778",
            "10.1.2.3",
            "[::1]:8778",
            "[::1]",
            "dev.example.test:8778",
            "DEV.example.test",
        ] {
            assert!(host_allowed(ok, &listed), "{ok}");
        }
        for bad in [
            "evil.example:8778",
            "evil.example",
            "localhost.evil.example",
            "evillocalhost",
            "127.0.0.1.evil.example",
            "2130706433",
            "::1",
            "[::1",
            "localhost:",
            "localhost:99999",
            "localhost:+80",
            "example.test",
            "",
        ] {
            assert!(!host_allowed(bad, &listed), "{bad}");
        }
    }

    #[test]
    fn origins_normalize_only_when_scheme_host_and_port() {
        let n = |s| normalize_origin(s);
        assert_eq!(
            n("HTTPS://Dev.Example.com").as_deref(),
            Some("https://dev.example.com")
        );
        assert_eq!(
            n("http://127.0.0.1:8778").as_deref(),
            Some("http://127.0.0.1:8778")
        );
        assert_eq!(n("http://[::1]:80").as_deref(), Some("http://[::1]:80"));
        for bad in [
            "null",
            "dev.example.com",
            "ftp://dev.example.com",
            "https://dev.example.com/",
            "https://dev.example.com/path",
            "https://user@dev.example.com",
            "https://dev.example.com:0",
            "https://dev.example.com:65536",
            "https://",
            "https://:80",
        ] {
            assert_eq!(n(bad), None, "{bad}");
        }
    }

    #[test]
    fn an_origin_is_allowed_when_it_is_the_host_or_listed() {
        let listed = vec!["https://dev.example.com".to_owned()];
        let ok = |origin, host| origin_allowed(origin, host, &listed);
        assert!(ok("http://127.0.0.1:8778", Some("127.0.0.1:8778")));
        assert!(ok("http://LOCALHOST:8778", Some("localhost:8778")));
        assert!(ok("http://site.test", Some("site.test")));
        assert!(ok("http://site.test", Some("site.test:80")));
        assert!(ok("https://dev.example.com", Some("127.0.0.1:8778")));
        assert!(!ok("http://evil.example", Some("127.0.0.1:8778")));
        assert!(
            !ok("http://127.0.0.1:9999", Some("127.0.0.1:8778")),
            "another port"
        );
        assert!(
            !ok("http://localhost:8778", Some("127.0.0.1:8778")),
            "another name"
        );
        assert!(!ok("https://site.test", Some("site.test:80")));
        assert!(!ok("null", Some("127.0.0.1:8778")));
        assert!(!ok("http://127.0.0.1:8778", None));
        assert!(!ok("https://dev.example.com:8443", Some("127.0.0.1:8778")));
    }

    #[test]
    fn a_guard_with_allowed_hosts_checks_hosts_and_any_guard_checks_origins() {
        let guard = Guard {
            allowed_hosts: Some(Vec::new()),
            ..Guard::default()
        };
        assert!(guard.host(None), "no Host: no browser");
        assert!(!guard.host(Some("evil.example")));
        let public = Guard::default();
        assert!(
            public.host(Some("evil.example")),
            "without allowed_hosts (behind a proxy) any name"
        );
        assert!(
            public.origin(None, Some("site.test")),
            "no Origin: no browser page"
        );
        assert!(!public.origin(Some("http://evil.example"), Some("site.test")));
    }
}
