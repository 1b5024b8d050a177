//! Which web pages may open a WebSocket here.
//!
//! A browser sends the `Origin` of the page that opens a WebSocket, and
//! lets any page open one to any server: without this check, a page on
//! any site could connect in the name of whoever holds a token it can
//! reach. Allowed are the page served by this server itself (an `Origin`
//! whose host and port are the request's `Host`), the origins listed in
//! `allowed_origins` (`*`: every one), and in dev mode any page on a
//! loopback host (`localhost`, `127.0.0.1`, `[::1]`), where the web app
//! under development runs. A request without `Origin` comes from no
//! browser (an SDK, a backend, a CLI) and is let through: the check
//! protects browsers' users, and anything else can send whatever `Origin`
//! it likes anyway.

use std::net::IpAddr;

/// The origins allowed to connect, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AllowedOrigins {
    any: bool,
    listed: Vec<String>,
    loopback: bool,
}

impl AllowedOrigins {
    /// `setting`: `allowed_origins`, a comma-separated list of origins
    /// (`scheme://host[:port]`) or `*`; `dev_mode`: loopback pages too.
    pub fn new(setting: &str, dev_mode: bool) -> Self {
        let listed: Vec<String> = setting
            .split(',')
            .map(normalize)
            .filter(|origin| !origin.is_empty())
            .collect();
        AllowedOrigins {
            any: listed.iter().any(|origin| origin == "*"),
            listed,
            loopback: dev_mode,
        }
    }

    /// Whether a page at `origin` may connect with a request for `host`
    /// (its `Host` header).
    pub fn allows(&self, origin: &str, host: Option<&str>) -> bool {
        if self.any {
            return true;
        }
        let origin = normalize(origin);
        if self.listed.contains(&origin) {
            return true;
        }
        // `null` (a sandboxed page, a file) has no authority: only a list
        // naming it lets it in.
        let Some((_scheme, authority)) = origin.split_once("://") else {
            return false;
        };
        if host.is_some_and(|host| host.eq_ignore_ascii_case(authority)) {
            return true;
        }
        self.loopback && is_loopback(authority)
    }
}

/// Origins compare case-insensitively, without a trailing slash.
fn normalize(origin: &str) -> String {
    origin.trim().trim_end_matches('/').to_ascii_lowercase()
}

/// Whether `authority` (`host[:port]`) names this machine.
fn is_loopback(authority: &str) -> bool {
    let host = match authority.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => authority.split(':').next().unwrap_or_default(),
    };
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_and_same_origin_pages_are_allowed_and_others_are_not() {
        let origins = AllowedOrigins::new(" https://App.example.com/ , https://b.example", false);
        let host = Some("collab.example.com");
        assert!(origins.allows("https://app.example.com", host));
        assert!(origins.allows("https://B.example/", host));
        assert!(origins.allows("https://collab.example.com", host));
        assert!(!origins.allows("https://evil.example", host));
        assert!(!origins.allows("http://app.example.com", host));
        assert!(!origins.allows("https://app.example.com:8443", host));
        assert!(!origins.allows("null", host));
        // Loopback pages only in dev mode.
        assert!(!origins.allows("http://localhost:5173", host));
        assert!(!origins.allows("http://127.0.0.1:5173", None));
    }

    #[test]
    fn dev_mode_allows_loopback_pages_and_a_star_allows_every_page() {
        let dev = AllowedOrigins::new("", true);
        for origin in [
            "http://localhost:5173",
            "http://127.0.0.1:8080",
            "http://127.0.0.2",
            "http://[::1]:3000",
        ] {
            assert!(dev.allows(origin, Some("127.0.0.1:8080")), "{origin}");
        }
        assert!(!dev.allows("http://localhost.evil.example", None));
        assert!(!dev.allows("http://192.168.1.5:5173", None));
        assert!(!dev.allows("null", None));
        let any = AllowedOrigins::new("*", false);
        assert!(any.allows("https://anything.example", None));
        assert!(any.allows("null", None));
    }
}
