//! The one typed configuration of the `collab` process and its loader.
//!
//! Layers, each overriding the one before: the defaults, a TOML file
//! (`--config FILE` or `COLLAB_CONFIG`; nothing is loaded implicitly, so
//! `config/collab.toml` stays a reference), the `COLLAB_*` environment, and
//! the command-line flags. A nested key is spelled with `__` in the
//! environment: `[gateway] max_unacked_ops` is `COLLAB_GATEWAY__MAX_UNACKED_OPS`.
//!
//! The loader takes the environment as an argument, so tests hand it a map
//! instead of mutating the process's, and it reports every bad key and value
//! at once rather than one per attempt. Unknown keys in the file are errors;
//! unknown `COLLAB_*` variables are not (see [`unknown_env`]).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use collab_ephemeral::RedisOptions;
use collab_gateway::GatewayConfig;
use collab_protocol::{Limits, NodeId};
use collab_room_node::RoomNodeConfig;
use collab_store::CqlOptions;
use collab_webhooks::{WebhookConfig, Webhooks};
use serde::{Deserialize, Serialize};

use crate::keys::AuthSettings;

/// Prefix of every environment variable the loader reads.
pub const ENV_PREFIX: &str = "COLLAB_";
/// The environment variable naming the config file (when `--config` is not
/// given).
pub const CONFIG_FILE_ENV: &str = "COLLAB_CONFIG";
/// Separates the levels of a nested key in an environment variable name.
const ENV_NESTING: &str = "__";

/// Everything `collab` can be told.
///
/// Scalars come before sections so the struct serializes to valid TOML.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CollabConfig {
    /// Address the HTTP and WebSocket server listens on.
    pub listen: SocketAddr,
    /// A second address, for `/metrics` alone (with `/healthz` and
    /// `/readyz`); when set, `listen` no longer serves `/metrics`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<SocketAddr>,
    /// Where the embedded store (and, in dev mode, the generated secret)
    /// lives.
    pub data_dir: PathBuf,
    /// Where rooms are stored: `embedded` (a file in `data_dir`) or a CQL
    /// cluster, `cql://host:port[,host:port…]/keyspace[?option=value…]`.
    pub store: String,
    /// Where the gateways keep the state they share (rate limits, revoked
    /// tokens, who is online, room expiry): `redis://[user:password@]host:port[/db]`.
    /// Empty: in this process's memory, which suits `collab serve` alone;
    /// every gateway of a cluster needs the same Redis.
    pub redis: String,
    /// The HS256 secret tokens are signed with. Unset, and no
    /// `auth.jwks` either: dev mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt_secret: Option<Secret>,
    pub log_format: LogFormat,
    /// How long SIGTERM waits for rooms to finish their batches and
    /// snapshot, and for sockets to close.
    pub drain_grace_secs: u64,
    pub gateway: GatewayConfig,
    /// Token algorithms and the JWKS of RS256/EdDSA public keys.
    pub auth: AuthSettings,
    pub rooms: RoomSettings,
    /// How `collab gateway` and `collab room-node` find each other.
    pub cluster: ClusterSettings,
    /// Endpoints that get the rooms' events (`[[webhooks]]`; see
    /// docs/integrate.md). Sent by the room node that owns each room.
    pub webhooks: Vec<WebhookConfig>,
}

impl Default for CollabConfig {
    fn default() -> Self {
        CollabConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            metrics_listen: None,
            data_dir: PathBuf::from("./data"),
            store: EMBEDDED_STORE.to_owned(),
            redis: String::new(),
            jwt_secret: None,
            log_format: LogFormat::Text,
            drain_grace_secs: 10,
            gateway: GatewayConfig::default(),
            auth: AuthSettings::default(),
            rooms: RoomSettings::default(),
            cluster: ClusterSettings::default(),
            webhooks: Vec::new(),
        }
    }
}

/// The `store` setting that selects the embedded store.
pub const EMBEDDED_STORE: &str = "embedded";

/// Which store the `store` setting selects.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreLocation {
    /// The embedded store in `data_dir`.
    Embedded,
    /// A ScyllaDB or Cassandra cluster.
    Cql(CqlOptions),
}

impl CollabConfig {
    /// The store the `store` setting names (validated when loading).
    pub fn store_location(&self) -> Result<StoreLocation, String> {
        if self.store == EMBEDDED_STORE {
            Ok(StoreLocation::Embedded)
        } else if self.store.starts_with("cql://") {
            CqlOptions::from_url(&self.store).map(StoreLocation::Cql)
        } else {
            Err(format!(
                "`{}`: `{EMBEDDED_STORE}` or cql://host:port/keyspace",
                self.store
            ))
        }
    }

    /// The Redis URL, when the shared state is in Redis.
    pub fn redis_url(&self) -> Option<&str> {
        let url = self.redis.trim();
        (!url.is_empty()).then_some(url)
    }

    /// Dev mode: neither a secret nor a JWKS is configured.
    pub fn dev_mode(&self) -> bool {
        self.jwt_secret.is_none() && self.auth.jwks.trim().is_empty()
    }

    pub fn drain_grace(&self) -> Duration {
        Duration::from_secs(self.drain_grace_secs)
    }

    /// The settings of this process's gateway: `[gateway]`, with what it
    /// takes from elsewhere (the rooms' default time to live, whether
    /// `/metrics` has a listener of its own, and two member TTLs for an
    /// unset `bus_lost_close_ms`).
    pub fn gateway_config(&self) -> GatewayConfig {
        let mut config = self.gateway.clone();
        if config.bus_lost_close_ms == 0 {
            config.bus_lost_close_ms = self.cluster.member_ttl_ms.saturating_mul(2);
        }
        config.metrics_elsewhere = self.metrics_listen.is_some();
        config.default_room_ttl_secs = self.rooms.default_ttl_secs;
        config
    }

    /// The configured webhooks with their metrics on `registry`; `None`
    /// when there are none.
    pub fn webhooks_of(
        &self,
        registry: &mut prometheus_client::registry::Registry,
    ) -> Option<Webhooks> {
        (!self.webhooks.is_empty()).then(|| Webhooks::register(self.webhooks.clone(), registry))
    }

    /// The settings of this process's room node. Its limits are the
    /// gateway's: one process, one set of limits.
    pub fn room_node_config(&self, node: NodeId) -> RoomNodeConfig {
        self.rooms
            .room_node_config(node, self.gateway.limits.clone())
    }
}

/// A secret that never shows up in `Debug` output (and so in logs).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(secret: impl Into<String>) -> Self {
        Secret(secret.into())
    }

    pub fn expose(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// How log lines are written (to stderr).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for production log pipelines.
    Json,
}

/// The configurable part of the room actors' settings (a serde mirror of
/// [`RoomNodeConfig`], with durations in whole seconds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoomSettings {
    /// Snapshot a room after this many ops since its last snapshot…
    pub snapshot_every_ops: u64,
    /// …or this many seconds after a change, whichever comes first.
    pub snapshot_every_secs: u64,
    /// Stop a room nobody used for this long (after a snapshot).
    pub idle_after_secs: u64,
    /// Most ops in one commit batch.
    pub max_batch: usize,
    /// Recent ops kept in memory for `join` with `since`.
    pub tail_len: usize,
    /// Requests waiting for one room above which new ones get
    /// `rate_limited`.
    pub mailbox_high_water: usize,
    /// How long a commit may take before its outcome counts as unknown.
    pub commit_timeout_secs: u64,
    /// How long a user gets to come back to their open strokes before they
    /// are ended for them: after a room loads, and after a connection that
    /// joined with `resume_strokes` drops.
    pub orphan_grace_secs: u64,
    /// The time to live of a room created without `ttl_secs`: unused for
    /// this long, it is deleted with its history. 0: such rooms never
    /// expire.
    pub default_ttl_secs: u64,
    /// How often a room node looks for rooms whose time to live ran out.
    pub expiry_sweep_secs: u64,
}

impl Default for RoomSettings {
    /// The same values as `RoomConfig::new` (a unit test keeps them equal).
    fn default() -> Self {
        RoomSettings {
            snapshot_every_ops: 2000,
            snapshot_every_secs: 30,
            idle_after_secs: 60,
            max_batch: 512,
            tail_len: 1024,
            mailbox_high_water: 10_000,
            commit_timeout_secs: 10,
            orphan_grace_secs: 10,
            default_ttl_secs: 0,
            expiry_sweep_secs: 30,
        }
    }
}

impl RoomSettings {
    pub fn room_node_config(&self, node: NodeId, limits: Limits) -> RoomNodeConfig {
        let mut config = RoomNodeConfig::new(node);
        config.limits = limits;
        config.snapshot_every_ops = self.snapshot_every_ops;
        config.snapshot_every = Duration::from_secs(self.snapshot_every_secs);
        config.idle_after = Duration::from_secs(self.idle_after_secs);
        config.max_batch = self.max_batch;
        config.tail_len = self.tail_len;
        config.mailbox_high_water = self.mailbox_high_water;
        config.commit_timeout = Duration::from_secs(self.commit_timeout_secs);
        config.orphan_grace = Duration::from_secs(self.orphan_grace_secs);
        config
    }

    pub fn expiry_sweep(&self) -> Duration {
        Duration::from_secs(self.expiry_sweep_secs)
    }
}

/// The settings of a cluster member (`collab gateway`, `collab room-node`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterSettings {
    /// NATS server URLs, comma-separated.
    pub nats_url: String,
    /// This process's id in the cluster: unique among the live members
    /// (a pod name is a good one), `[A-Za-z0-9_-]`. Empty: one is made up
    /// from the role and the process. A gateway's connections are named
    /// after it.
    pub node_id: String,
    /// Prefix of every NATS subject (and of the members bucket); clusters
    /// sharing one NATS account need different ones.
    pub subject_prefix: String,
    /// How often a member renews its membership record.
    pub heartbeat_interval_ms: u64,
    /// How long a record stands without renewal: a member that stopped
    /// (crashed, frozen, cut off) is out after this long, and its rooms
    /// move. At least 1000.
    pub member_ttl_ms: u64,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            nats_url: "nats://127.0.0.1:4222".into(),
            node_id: String::new(),
            subject_prefix: collab_protocol::subjects::DEFAULT_PREFIX.into(),
            heartbeat_interval_ms: 1000,
            member_ttl_ms: 3000,
        }
    }
}

impl ClusterSettings {
    /// The configured node id, or one made up from `role` and this
    /// process (the time it started, which also tells restarts apart).
    pub fn node_id(&self, role: &str) -> Result<NodeId, String> {
        let id = if self.node_id.is_empty() {
            let started = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis());
            format!("{role}-{}-{started:x}", std::process::id())
        } else {
            self.node_id.clone()
        };
        let node = NodeId::parse(&id).map_err(|e| e.to_string())?;
        collab_protocol::subjects::check_node_id(&node).map_err(|e| e.to_string())?;
        Ok(node)
    }

    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }

    pub fn member_ttl(&self) -> Duration {
        Duration::from_millis(self.member_ttl_ms)
    }
}

// === loading ===

/// The settings the command line can give (the highest layer). Values stay
/// strings here so that a bad one is reported with every other bad setting.
#[derive(Debug, Clone, Default)]
pub struct Flags {
    /// `--config FILE`.
    pub config: Option<PathBuf>,
    pub listen: Option<String>,
    pub metrics_listen: Option<String>,
    pub data_dir: Option<String>,
    pub store: Option<String>,
    /// `--redis`.
    pub redis: Option<String>,
    pub jwt_secret: Option<String>,
    pub log_format: Option<String>,
    /// `--nats`: `cluster.nats_url`.
    pub nats_url: Option<String>,
    /// `--node-id`: `cluster.node_id`.
    pub node_id: Option<String>,
}

impl Flags {
    fn settings(&self) -> Vec<(&'static [&'static str], &'static str, &String)> {
        [
            (&["listen"][..], "--listen", &self.listen),
            (
                &["metrics_listen"],
                "--metrics-listen",
                &self.metrics_listen,
            ),
            (&["data_dir"], "--data-dir", &self.data_dir),
            (&["store"], "--store", &self.store),
            (&["redis"], "--redis", &self.redis),
            (&["jwt_secret"], "--jwt-secret", &self.jwt_secret),
            (&["log_format"], "--log-format", &self.log_format),
            (&["cluster", "nats_url"], "--nats", &self.nats_url),
            (&["cluster", "node_id"], "--node-id", &self.node_id),
        ]
        .into_iter()
        .filter_map(|(key, flag, value)| value.as_ref().map(|v| (key, flag, v)))
        .collect()
    }
}

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    File(PathBuf),
    Env(String),
    Flag(&'static str),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File(path) => write!(f, "file {}", path.display()),
            Origin::Env(name) => write!(f, "environment variable {name}"),
            Origin::Flag(flag) => write!(f, "flag {flag}"),
        }
    }
}

/// One bad setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// The setting's dotted key (`gateway.limits.max_points`), or empty
    /// when the problem is the source as a whole (an unreadable file).
    pub key: String,
    pub origin: Option<Origin>,
    pub message: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.key.is_empty(), &self.origin) {
            (true, Some(origin)) => write!(f, "{origin}: {}", self.message),
            (true, None) => f.write_str(&self.message),
            (false, Some(origin)) => write!(f, "`{}` (from {origin}): {}", self.key, self.message),
            (false, None) => write!(f, "`{}`: {}", self.key, self.message),
        }
    }
}

/// Every problem found in the configuration, not just the first.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub issues: Vec<ConfigIssue>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration ({} problems)", self.issues.len())?;
        for issue in &self.issues {
            write!(f, "\n  - {issue}")?;
        }
        Ok(())
    }
}

/// Loads the configuration: defaults < file < `COLLAB_*` in `env` < `flags`.
///
/// The file is `flags.config`, else `env["COLLAB_CONFIG"]`, else none.
pub fn load(flags: &Flags, env: &HashMap<String, String>) -> Result<CollabConfig, ConfigError> {
    let defaults = default_table();
    let mut issues = Vec::new();
    // Each setting's effective value and its origin, by dotted key; a
    // later layer replaces an earlier one.
    let mut settings: BTreeMap<Vec<String>, (toml::Value, Origin)> = BTreeMap::new();

    let file = flags
        .config
        .clone()
        .or_else(|| env.get(CONFIG_FILE_ENV).map(PathBuf::from));
    if let Some(path) = file {
        match read_file(&path) {
            Ok(table) => {
                let mut leaves = Vec::new();
                flatten(&defaults, &table, &mut Vec::new(), &mut leaves);
                for (key, value) in leaves {
                    settings.insert(key, (value, Origin::File(path.clone())));
                }
            }
            Err(message) => issues.push(ConfigIssue {
                key: String::new(),
                origin: Some(Origin::File(path)),
                message,
            }),
        }
    }

    for (name, key) in env_settings(env) {
        let raw = &env[&name];
        match env_value(lookup(&defaults, &key), raw) {
            Ok(value) => {
                settings.insert(key, (value, Origin::Env(name)));
            }
            Err(message) => issues.push(ConfigIssue {
                key: key.join("."),
                origin: Some(Origin::Env(name)),
                message,
            }),
        }
    }

    for (key, flag, value) in flags.settings() {
        settings.insert(
            key.iter().map(|k| (*k).to_owned()).collect(),
            (toml::Value::String(value.clone()), Origin::Flag(flag)),
        );
    }

    // Each setting is checked on its own against the defaults, so one bad
    // value does not hide the next; the good ones are then checked together
    // against the rules, so a bad type does not hide a broken rule either.
    let mut merged = defaults.clone();
    for (key, (value, origin)) in &settings {
        let mut probe = defaults.clone();
        insert(&mut probe, key, value.clone());
        match probe.try_into::<CollabConfig>() {
            Ok(_) => insert(&mut merged, key, value.clone()),
            Err(e) => issues.push(ConfigIssue {
                key: key.join("."),
                origin: Some(origin.clone()),
                message: clean_message(&e.to_string()),
            }),
        }
    }
    let config = match merged.try_into::<CollabConfig>() {
        Ok(config) => config,
        Err(e) => {
            issues.push(ConfigIssue {
                key: String::new(),
                origin: None,
                message: clean_message(&e.to_string()),
            });
            return Err(ConfigError { issues });
        }
    };
    for (key, message) in validate(&config) {
        let path: Vec<String> = key.split('.').map(str::to_owned).collect();
        issues.push(ConfigIssue {
            key: key.to_owned(),
            origin: settings.get(&path).map(|(_, origin)| origin.clone()),
            message,
        });
    }
    if issues.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError { issues })
    }
}

/// The `COLLAB_*` variables of `env` that name a setting, with the
/// setting's key, sorted (so issues come out in the same order every time).
fn env_settings(env: &HashMap<String, String>) -> Vec<(String, Vec<String>)> {
    let schema = schema_table();
    let mut settings: Vec<(String, Vec<String>)> = env
        .keys()
        .filter_map(|name| Some((name, env_key(name)?)))
        .filter(|(_, key)| lookup(&schema, key).is_some())
        .map(|(name, key)| (name.clone(), key))
        .collect();
    settings.sort();
    settings
}

/// `COLLAB_*` variables that name no setting. They are not errors: the
/// environment is shared with other software (Kubernetes, for one, adds
/// `COLLAB_SERVICE_HOST`, `COLLAB_PORT`… for a Service named `collab`), so
/// `collab serve` only warns about them, which also catches a misspelt name.
pub fn unknown_env(env: &HashMap<String, String>) -> Vec<String> {
    let schema = schema_table();
    let mut unknown: Vec<String> = env
        .keys()
        .filter(|name| env_key(name).is_some_and(|key| lookup(&schema, &key).is_none()))
        .cloned()
        .collect();
    unknown.sort();
    unknown
}

/// The setting key a `COLLAB_*` variable would set (`COLLAB_CONFIG`, which
/// names the file, is none).
fn env_key(name: &str) -> Option<Vec<String>> {
    let rest = name.strip_prefix(ENV_PREFIX)?;
    if name == CONFIG_FILE_ENV {
        return None;
    }
    Some(
        rest.to_ascii_lowercase()
            .split(ENV_NESTING)
            .map(str::to_owned)
            .collect(),
    )
}

/// The process environment as the loader wants it (variables that are not
/// valid UTF-8 cannot be `COLLAB_*` settings and are left out).
pub fn process_env() -> HashMap<String, String> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

/// The defaults, as the TOML tree every layer is laid over.
fn default_table() -> toml::Table {
    // Serializing plain data with string keys cannot fail; an empty table
    // would only make every key look unknown, which a unit test catches.
    toml::Table::try_from(CollabConfig::default()).unwrap_or_default()
}

/// Every key there is: the defaults plus the optional settings, which
/// have no default.
fn schema_table() -> toml::Table {
    let defaults = CollabConfig::default();
    let full = CollabConfig {
        jwt_secret: Some(Secret::new("")),
        metrics_listen: Some(defaults.listen),
        ..defaults
    };
    toml::Table::try_from(full).unwrap_or_default()
}

fn read_file(path: &Path) -> Result<toml::Table, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read it: {e}"))?;
    text.parse::<toml::Table>()
        .map_err(|e| format!("not valid TOML: {}", clean_message(&e.to_string())))
}

/// Splits `table` into its settings: a sub-table is descended into where
/// the defaults have a section, and is one (bad) value anywhere else.
fn flatten(
    defaults: &toml::Table,
    table: &toml::Table,
    prefix: &mut Vec<String>,
    out: &mut Vec<(Vec<String>, toml::Value)>,
) {
    for (name, value) in table {
        prefix.push(name.clone());
        match (value, defaults.get(name)) {
            (toml::Value::Table(inner), Some(toml::Value::Table(inner_defaults))) => {
                flatten(inner_defaults, inner, prefix, out);
            }
            _ => out.push((prefix.clone(), value.clone())),
        }
        prefix.pop();
    }
}

fn lookup<'a>(table: &'a toml::Table, key: &[String]) -> Option<&'a toml::Value> {
    let (first, rest) = key.split_first()?;
    let value = table.get(first)?;
    match (rest.is_empty(), value) {
        (true, value) => Some(value),
        (false, toml::Value::Table(inner)) => lookup(inner, rest),
        (false, _) => None,
    }
}

fn insert(table: &mut toml::Table, key: &[String], value: toml::Value) {
    let Some((first, rest)) = key.split_first() else {
        return;
    };
    if rest.is_empty() {
        table.insert(first.clone(), value);
        return;
    }
    let entry = table
        .entry(first.clone())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if !entry.is_table() {
        // A value where a section belongs: the section replaces it, and the
        // check of the setting reports the key as unknown.
        *entry = toml::Value::Table(toml::Table::new());
    }
    if let toml::Value::Table(inner) = entry {
        insert(inner, rest, value);
    }
}

/// Types an environment variable's text by the default it overrides; a key
/// without a default (unknown, or optional like `jwt_secret`) stays a
/// string and the per-setting check judges it.
fn env_value(default: Option<&toml::Value>, raw: &str) -> Result<toml::Value, String> {
    let raw = raw.trim();
    match default {
        Some(toml::Value::Integer(_)) => raw
            .parse::<i64>()
            .map(toml::Value::Integer)
            .map_err(|_| format!("expected an integer, got {raw:?}")),
        Some(toml::Value::Float(_)) => raw
            .parse::<f64>()
            .map(toml::Value::Float)
            .map_err(|_| format!("expected a number, got {raw:?}")),
        Some(toml::Value::Boolean(_)) => raw
            .parse::<bool>()
            .map(toml::Value::Boolean)
            .map_err(|_| format!("expected true or false, got {raw:?}")),
        Some(toml::Value::Table(_)) => {
            Err("is a section: set its keys, joined with `__` (COLLAB_SECTION__KEY)".into())
        }
        Some(toml::Value::Array(_)) => Err("cannot be set from the environment".into()),
        _ => Ok(toml::Value::String(raw.to_owned())),
    }
}

/// Deserializer messages span lines and repeat the key ("in `listen`"),
/// which the issue names anyway; issues are printed one per line.
fn clean_message(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .filter(|l| !(l.starts_with("in `") && l.ends_with('`')))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Rules a well-typed value can still break.
fn validate(config: &CollabConfig) -> Vec<(&'static str, String)> {
    let mut issues = Vec::new();
    let mut at_least_one = |key: &'static str, value: u64| {
        if value == 0 {
            issues.push((key, "must be at least 1".to_owned()));
        }
    };
    let r = &config.rooms;
    at_least_one("rooms.snapshot_every_ops", r.snapshot_every_ops);
    at_least_one("rooms.snapshot_every_secs", r.snapshot_every_secs);
    at_least_one("rooms.idle_after_secs", r.idle_after_secs);
    at_least_one("rooms.max_batch", r.max_batch as u64);
    at_least_one("rooms.tail_len", r.tail_len as u64);
    at_least_one("rooms.mailbox_high_water", r.mailbox_high_water as u64);
    at_least_one("rooms.commit_timeout_secs", r.commit_timeout_secs);
    at_least_one("rooms.expiry_sweep_secs", r.expiry_sweep_secs);

    let g = &config.gateway;
    at_least_one("gateway.max_unacked_ops", g.max_unacked_ops as u64);
    at_least_one("gateway.outbound_queue", g.outbound_queue as u64);
    at_least_one("gateway.ping_interval_secs", g.ping_interval_secs);
    at_least_one("gateway.idle_timeout_secs", g.idle_timeout_secs);
    at_least_one("gateway.request_timeout_secs", g.request_timeout_secs);
    at_least_one("gateway.max_token_lifetime_secs", g.max_token_lifetime_secs);
    at_least_one("gateway.presence_ttl_secs", g.presence_ttl_secs);
    at_least_one("gateway.handshake_timeout_secs", g.handshake_timeout_secs);
    let l = &g.limits;
    at_least_one(
        "gateway.limits.max_message_bytes",
        l.max_message_bytes as u64,
    );
    at_least_one("gateway.limits.max_points", l.max_points as u64);
    at_least_one("gateway.limits.max_text_chars", l.max_text_chars as u64);

    let q = &g.rate_limits;
    for (key, value) in [
        ("gateway.rate_limits.ops_per_sec", q.ops_per_sec),
        ("gateway.rate_limits.ops_burst", q.ops_burst),
        ("gateway.rate_limits.cursors_per_sec", q.cursors_per_sec),
        ("gateway.rate_limits.cursors_burst", q.cursors_burst),
        ("gateway.rate_limits.joins_per_sec", q.joins_per_sec),
        ("gateway.rate_limits.joins_burst", q.joins_burst),
        ("gateway.rate_limits.rooms_per_min", q.rooms_per_min),
        ("gateway.rate_limits.rooms_burst", q.rooms_burst),
        ("gateway.rate_limits.http_per_sec", q.http_per_sec),
        ("gateway.rate_limits.http_burst", q.http_burst),
    ] {
        if !(value.is_finite() && value > 0.0) {
            issues.push((key, format!("must be a positive number, got {value}")));
        }
    }
    if config.rooms.default_ttl_secs > collab_protocol::http::MAX_ROOM_TTL_SECS {
        issues.push((
            "rooms.default_ttl_secs",
            format!(
                "must be from 0 (off) to {}",
                collab_protocol::http::MAX_ROOM_TTL_SECS
            ),
        ));
    }
    for origin in g.allowed_origins.split(',').map(str::trim) {
        let well_formed = origin == "*"
            || origin.is_empty()
            || ["http://", "https://"].iter().any(|scheme| {
                origin.strip_prefix(scheme).is_some_and(|rest| {
                    !rest.trim_end_matches('/').is_empty()
                        && !rest.trim_end_matches('/').contains('/')
                })
            });
        if !well_formed {
            issues.push((
                "gateway.allowed_origins",
                format!("{origin:?} is not an origin (scheme://host[:port]) nor *"),
            ));
        }
    }
    if g.gateway_id.trim().is_empty() {
        issues.push(("gateway.gateway_id", "must not be empty".to_owned()));
    }
    if let Some(metrics) = config.metrics_listen
        && same_port(metrics, config.listen)
    {
        issues.push((
            "metrics_listen",
            format!("must not be the address `listen` has ({})", config.listen),
        ));
    }
    if config.data_dir.as_os_str().is_empty() {
        issues.push(("data_dir", "must not be empty".to_owned()));
    }
    if let Err(e) = config.store_location() {
        issues.push(("store", e));
    }
    if let Some(url) = config.redis_url()
        && let Err(e) = RedisOptions::check_url(url)
    {
        issues.push((
            "redis",
            format!("{e} (redis://[user:password@]host:port[/db], or empty for none)"),
        ));
    }
    let c = &config.cluster;
    if c.nats_url.trim().is_empty() {
        issues.push(("cluster.nats_url", "must not be empty".to_owned()));
    }
    if !c.node_id.is_empty()
        && let Err(e) = c.node_id("node")
    {
        issues.push(("cluster.node_id", e));
    }
    if let Err(e) = collab_protocol::subjects::Subjects::new(c.subject_prefix.clone()) {
        issues.push(("cluster.subject_prefix", e.to_string()));
    }
    if c.member_ttl_ms < 1000 {
        issues.push((
            "cluster.member_ttl_ms",
            "must be at least 1000 (the server counts TTLs in seconds)".to_owned(),
        ));
    }
    if c.heartbeat_interval_ms == 0 || c.heartbeat_interval_ms >= c.member_ttl_ms {
        issues.push((
            "cluster.heartbeat_interval_ms",
            "must be above 0 and below cluster.member_ttl_ms".to_owned(),
        ));
    }
    if config.jwt_secret.as_ref().is_some_and(|s| s.0.is_empty()) {
        issues.push((
            "jwt_secret",
            "must not be empty (leave it unset for dev mode)".to_owned(),
        ));
    }
    issues.extend(config.auth.issues(config.jwt_secret.is_some()));
    for problem in collab_webhooks::config::check(&config.webhooks) {
        issues.push(("webhooks", problem));
    }
    issues
}

/// Whether binding both addresses would take the same port (port 0 picks
/// a free one each time, so it never clashes).
fn same_port(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

#[cfg(test)]
mod tests;
