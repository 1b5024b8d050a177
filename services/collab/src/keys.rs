//! `[auth]`: which token algorithms the gateways accept and where the
//! public keys of RS256 and EdDSA tokens come from (a JWKS), and building
//! a gateway's verifier from them. HS256 tokens are checked with
//! `jwt_secret`; both may be configured, and a token's `alg` and `kid`
//! pick the key (see the gateway's `auth` module).

use std::time::Duration;

use collab_gateway::{Auth, AuthOptions, JWKS_ALGORITHMS, JwksOptions, JwksSource, KeySetMetrics};
use jsonwebtoken::Algorithm;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tracing::info;

use crate::config::CollabConfig;
use crate::serve::ServeError;

/// The algorithms a token may be signed with, by name.
const KNOWN_ALGORITHMS: [(&str, Algorithm); 3] = [
    ("HS256", Algorithm::HS256),
    ("RS256", Algorithm::RS256),
    ("EdDSA", Algorithm::EdDSA),
];

/// `[auth]` of the configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// The public keys of RS256 and EdDSA tokens, a JWK Set:
    /// `file:PATH` or `https://…` (`http://…` with `jwks_allow_http`).
    /// Empty: none.
    pub jwks: String,
    /// Whether `jwks` may be a plain `http://` URL: whoever can change
    /// what it answers can mint tokens, so only on a network trusted for
    /// that.
    pub jwks_allow_http: bool,
    /// Seconds between reloads of the JWKS.
    pub jwks_refresh_secs: u64,
    /// The least seconds between two reloads asked for by tokens naming a
    /// `kid` the JWKS lacks.
    pub jwks_reload_gap_secs: u64,
    /// The `alg`s a token may have, comma-separated, of HS256, RS256 and
    /// EdDSA.
    pub algorithms: String,
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            jwks: String::new(),
            jwks_allow_http: false,
            jwks_refresh_secs: 300,
            jwks_reload_gap_secs: 10,
            algorithms: "HS256,RS256,EdDSA".to_owned(),
        }
    }
}

impl AuthSettings {
    /// Where the JWKS is, if one is configured.
    pub fn jwks_source(&self) -> Result<Option<JwksSource>, String> {
        if self.jwks.trim().is_empty() {
            return Ok(None);
        }
        JwksSource::parse(&self.jwks)
            .map(Some)
            .map_err(|e| e.to_string())
    }

    /// The accepted algorithms.
    pub fn algorithms(&self) -> Result<Vec<Algorithm>, String> {
        let mut algorithms = Vec::new();
        for name in self.algorithms.split(',').map(str::trim) {
            let Some((_, algorithm)) = KNOWN_ALGORITHMS.iter().find(|(n, _)| *n == name) else {
                return Err(format!(
                    "unknown algorithm {name:?} (HS256, RS256 or EdDSA, comma-separated)"
                ));
            };
            if !algorithms.contains(algorithm) {
                algorithms.push(*algorithm);
            }
        }
        Ok(algorithms)
    }

    /// What is wrong with these settings, given whether a `jwt_secret` is
    /// configured.
    pub(crate) fn issues(&self, has_secret: bool) -> Vec<(&'static str, String)> {
        let mut issues = Vec::new();
        let source = self.jwks_source();
        match &source {
            Err(e) => issues.push(("auth.jwks", e.clone())),
            Ok(Some(source)) if source.is_plain_http() && !self.jwks_allow_http => issues.push((
                "auth.jwks",
                "an http:// URL is not encrypted: whoever can change its answer on the way can mint tokens; use https://, or set auth.jwks_allow_http = true where the network is trusted for that".to_owned(),
            )),
            Ok(_) => {}
        }
        if self.jwks_refresh_secs == 0 {
            issues.push(("auth.jwks_refresh_secs", "must be at least 1".to_owned()));
        }
        match self.algorithms() {
            Err(e) => issues.push(("auth.algorithms", e)),
            Ok(algorithms) => {
                let jwks = matches!(source, Ok(Some(_)));
                if jwks && !JWKS_ALGORITHMS.iter().any(|a| algorithms.contains(a)) {
                    issues.push((
                        "auth.algorithms",
                        "accepts neither RS256 nor EdDSA, so the JWKS would verify nothing"
                            .to_owned(),
                    ));
                }
                if !jwks && !algorithms.contains(&Algorithm::HS256) {
                    let why = if has_secret {
                        "without a JWKS only HS256 tokens can be verified: include HS256 or set auth.jwks"
                    } else {
                        "dev mode signs its tokens with HS256: include HS256"
                    };
                    issues.push(("auth.algorithms", why.to_owned()));
                }
            }
        }
        issues
    }
}

/// The gateway's verifier: HS256 with `secret` (none: HS256 tokens are
/// refused), and the JWKS if one is configured, loaded now (a set that
/// cannot be loaded stops the start) and refreshed in the background.
/// Registers the JWKS metrics, at zero, whether or not there is one.
pub(crate) async fn gateway_auth(
    config: &CollabConfig,
    secret: Option<&[u8]>,
    dev_mode: bool,
    registry: &mut Registry,
) -> Result<Auth, ServeError> {
    let metrics = KeySetMetrics::register(registry);
    let settings = &config.auth;
    let jwks = settings
        .jwks_source()
        .map_err(ServeError::Internal)?
        .map(|source| JwksOptions {
            early_refresh_gap: Duration::from_secs(settings.jwks_reload_gap_secs),
            ..JwksOptions::new(source, Duration::from_secs(settings.jwks_refresh_secs))
        });
    if let Some(jwks) = &jwks {
        info!(jwks = %jwks.source, refresh_secs = settings.jwks_refresh_secs, "token keys from a jwks");
    }
    let options = AuthOptions {
        secret: secret.map(<[u8]>::to_vec),
        dev_mode,
        jwks,
        algorithms: settings.algorithms().map_err(ServeError::Internal)?,
    };
    Auth::build(options, metrics)
        .await
        .map_err(ServeError::Keys)
}
