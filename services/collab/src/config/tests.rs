use std::collections::HashMap;
use std::io::Write;

use super::*;

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().expect("temp file");
    f.write_all(text.as_bytes()).expect("writes");
    f
}

/// Loads a configuration from `text` as the only file, nothing else given.
fn load_text(text: &str) -> Result<CollabConfig, ConfigError> {
    let f = file(text);
    load(
        &Flags {
            config: Some(f.path().to_owned()),
            ..Flags::default()
        },
        &HashMap::new(),
    )
}

fn issue_keys(err: &ConfigError) -> Vec<&str> {
    err.issues.iter().map(|i| i.key.as_str()).collect()
}

#[test]
fn nothing_given_means_the_defaults() {
    let config = load(&Flags::default(), &HashMap::new()).expect("defaults load");
    assert_eq!(config, CollabConfig::default());
    assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(config.data_dir, PathBuf::from("./data"));
    assert_eq!(config.jwt_secret, None);
    assert_eq!(config.drain_grace_secs, 10);
    // Variables outside the prefix are none of the loader's business.
    let config =
        load(&Flags::default(), &env(&[("HOME", "/x"), ("COLLABX", "1")])).expect("defaults load");
    assert_eq!(config, CollabConfig::default());
}

#[test]
fn the_default_tree_has_every_section() {
    let table = default_table();
    for key in ["listen", "data_dir", "log_format", "drain_grace_secs"] {
        assert!(table.contains_key(key), "{key} missing");
    }
    assert!(
        lookup(
            &table,
            &["gateway".into(), "limits".into(), "max_points".into()]
        )
        .is_some()
    );
    assert!(lookup(&table, &["rooms".into(), "tail_len".into()]).is_some());
}

#[test]
fn file_then_environment_then_flags() {
    let f = file(
        r#"
        listen = "127.0.0.1:1111"
        data_dir = "/from/file"
        drain_grace_secs = 3
        [gateway]
        max_unacked_ops = 7
        outbound_queue = 9
        [gateway.rate_limits]
        ops_per_sec = 5
        [rooms]
        snapshot_every_ops = 11
        "#,
    );
    let environment = env(&[
        ("COLLAB_CONFIG", f.path().to_str().expect("utf-8 path")),
        ("COLLAB_LISTEN", "127.0.0.1:2222"),
        ("COLLAB_DATA_DIR", "/from/env"),
        ("COLLAB_GATEWAY__OUTBOUND_QUEUE", "99"),
        ("COLLAB_GATEWAY__RATE_LIMITS__OPS_BURST", "2.5"),
        ("COLLAB_ROOMS__TAIL_LEN", "12"),
        ("COLLAB_LOG_FORMAT", "json"),
    ]);
    let flags = Flags {
        listen: Some("127.0.0.1:3333".into()),
        ..Flags::default()
    };
    let config = load(&flags, &environment).expect("loads");
    assert_eq!(config.listen.to_string(), "127.0.0.1:3333", "flag wins");
    assert_eq!(
        config.data_dir,
        PathBuf::from("/from/env"),
        "env beats file"
    );
    assert_eq!(config.drain_grace_secs, 3, "file beats default");
    assert_eq!(config.gateway.max_unacked_ops, 7);
    assert_eq!(config.gateway.outbound_queue, 99);
    assert_eq!(config.gateway.rate_limits.ops_per_sec, 5.0);
    assert_eq!(config.gateway.rate_limits.ops_burst, 2.5);
    assert_eq!(
        config.gateway.rate_limits.http_per_sec,
        collab_gateway::RateLimits::default().http_per_sec,
        "untouched keys of a touched section keep their defaults"
    );
    assert_eq!(config.rooms.snapshot_every_ops, 11);
    assert_eq!(config.rooms.tail_len, 12);
    assert_eq!(config.log_format, LogFormat::Json);
}

#[test]
fn the_config_flag_beats_the_config_variable() {
    let from_env = file("drain_grace_secs = 1");
    let from_flag = file("drain_grace_secs = 2");
    let flags = Flags {
        config: Some(from_flag.path().to_path_buf()),
        ..Flags::default()
    };
    let environment = env(&[(
        "COLLAB_CONFIG",
        from_env.path().to_str().expect("utf-8 path"),
    )]);
    assert_eq!(
        load(&flags, &environment).expect("loads").drain_grace_secs,
        2
    );
}

#[test]
fn the_secret_comes_from_any_layer_and_is_never_printed() {
    let config = load(
        &Flags::default(),
        &env(&[("COLLAB_JWT_SECRET", "env-secret")]),
    )
    .expect("loads");
    assert_eq!(
        config.jwt_secret.as_ref().map(Secret::expose),
        Some(&b"env-secret"[..])
    );
    let flags = Flags {
        jwt_secret: Some("flag-secret".into()),
        ..Flags::default()
    };
    let config = load(&flags, &env(&[("COLLAB_JWT_SECRET", "env-secret")])).expect("loads");
    assert_eq!(
        config.jwt_secret.as_ref().map(Secret::expose),
        Some(&b"flag-secret"[..])
    );
    let debug = format!("{config:?}");
    assert!(!debug.contains("flag-secret"), "{debug}");
    // A secret made of digits is still a string, not an integer.
    let config = load(&Flags::default(), &env(&[("COLLAB_JWT_SECRET", "12345")])).expect("loads");
    assert_eq!(
        config.jwt_secret.as_ref().map(Secret::expose),
        Some(&b"12345"[..])
    );
}

#[test]
fn every_bad_key_and_value_is_reported_at_once() {
    let f = file(
        r#"
        lissten = "127.0.0.1:1"
        drain_grace_secs = "soon"
        [gateway]
        max_unacked_ops = -1
        [rooms]
        bogus = 1
        "#,
    );
    let environment = env(&[
        ("COLLAB_LISTEN", "not an address"),
        ("COLLAB_GATEWAY__OUTBOUND_QUEUE", "lots"),
        ("COLLAB_NO_SUCH_THING", "1"),
        ("COLLAB_SERVICE_HOST", "10.0.0.1"),
        ("COLLAB_GATEWAY", "x"),
        ("COLLAB_ROOMS__MAX_BATCH", "0"),
    ]);
    let flags = Flags {
        config: Some(f.path().to_path_buf()),
        log_format: Some("xml".into()),
        ..Flags::default()
    };
    let err = load(&flags, &environment).expect_err("bad config");
    let mut keys = issue_keys(&err);
    keys.sort();
    assert_eq!(
        keys,
        [
            "drain_grace_secs",
            "gateway",
            "gateway.max_unacked_ops",
            "gateway.outbound_queue",
            "lissten",
            "listen",
            "log_format",
            "rooms.bogus",
            "rooms.max_batch",
        ],
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.starts_with("invalid configuration (9 problems)"),
        "{text}"
    );
    assert!(
        text.contains("`listen` (from environment variable COLLAB_LISTEN)"),
        "{text}"
    );
    assert!(
        text.contains("`log_format` (from flag --log-format)"),
        "{text}"
    );
    assert!(text.contains("`rooms.bogus` (from file "), "{text}");
    assert!(text.contains("unknown field `bogus`"), "{text}");
    assert!(
        text.contains(
            "`listen` (from environment variable COLLAB_LISTEN): invalid socket address syntax\n"
        ),
        "{text}"
    );
}

#[test]
fn unknown_variables_are_listed_not_refused() {
    let environment = env(&[
        ("COLLAB_SERVICE_HOST", "10.0.0.1"),
        ("COLLAB_PORT", "tcp://10.0.0.1:8080"),
        ("COLLAB_LISTN", "127.0.0.1:1"),
        ("COLLAB_CONFIG", "/not/read/here"),
        ("COLLAB_LISTEN", "127.0.0.1:9"),
        ("COLLAB_JWT_SECRET", "s"),
        ("COLLAB_ROOMS__TAIL_LEN", "5"),
        ("PATH", "/bin"),
    ]);
    assert_eq!(
        unknown_env(&environment),
        ["COLLAB_LISTN", "COLLAB_PORT", "COLLAB_SERVICE_HOST"]
    );
    let mut without_file = environment.clone();
    without_file.remove("COLLAB_CONFIG");
    let config = load(&Flags::default(), &without_file).expect("loads");
    assert_eq!(config.listen.to_string(), "127.0.0.1:9");
    assert_eq!(config.rooms.tail_len, 5);
}

#[test]
fn a_bad_value_that_a_higher_layer_replaces_is_not_an_error() {
    let f = file(r#"listen = "nowhere""#);
    let flags = Flags {
        config: Some(f.path().to_path_buf()),
        listen: Some("127.0.0.1:0".into()),
        ..Flags::default()
    };
    let config = load(&flags, &HashMap::new()).expect("flag replaces the bad value");
    assert_eq!(config.listen.to_string(), "127.0.0.1:0");
}

#[test]
fn a_missing_or_broken_file_is_reported() {
    let flags = Flags {
        config: Some(PathBuf::from("/definitely/not/here.toml")),
        ..Flags::default()
    };
    let err = load(&flags, &env(&[("COLLAB_LISTEN", "nope")])).expect_err("missing file");
    assert_eq!(err.issues.len(), 2, "{err}");
    assert!(err.issues[0].message.starts_with("cannot read it"), "{err}");

    let f = file("listen = ");
    let flags = Flags {
        config: Some(f.path().to_path_buf()),
        ..Flags::default()
    };
    let err = load(&flags, &HashMap::new()).expect_err("broken file");
    assert!(err.issues[0].message.starts_with("not valid TOML"), "{err}");
}

#[test]
fn well_typed_values_that_break_a_rule_are_reported() {
    let environment = env(&[
        ("COLLAB_ROOMS__MAX_BATCH", "0"),
        ("COLLAB_GATEWAY__RATE_LIMITS__OPS_PER_SEC", "-1"),
        ("COLLAB_JWT_SECRET", ""),
    ]);
    let err = load(&Flags::default(), &environment).expect_err("invalid");
    assert_eq!(
        issue_keys(&err),
        [
            "rooms.max_batch",
            "gateway.rate_limits.ops_per_sec",
            "jwt_secret"
        ],
        "{err}"
    );
    assert_eq!(
        err.issues[0].origin,
        Some(Origin::Env("COLLAB_ROOMS__MAX_BATCH".into()))
    );
}

#[test]
fn room_settings_default_to_the_room_actors_defaults() {
    let node = NodeId::parse("local").expect("valid node id");
    let ours = RoomSettings::default().room_node_config(node.clone(), Limits::default());
    let theirs = RoomNodeConfig::new(node);
    assert_eq!(ours.snapshot_every_ops, theirs.snapshot_every_ops);
    assert_eq!(ours.snapshot_every, theirs.snapshot_every);
    assert_eq!(ours.idle_after, theirs.idle_after);
    assert_eq!(ours.max_batch, theirs.max_batch);
    assert_eq!(ours.tail_len, theirs.tail_len);
    assert_eq!(ours.mailbox_high_water, theirs.mailbox_high_water);
    assert_eq!(ours.commit_timeout, theirs.commit_timeout);
    assert_eq!(ours.orphan_grace, theirs.orphan_grace);
    assert_eq!(ours.limits, theirs.limits);
}

/// `config/collab.toml` is the reference: it must load, set every setting
/// (but the secret) and set each to its default.
#[test]
fn the_reference_file_lists_every_setting_with_its_default() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/collab.toml");
    let flags = Flags {
        config: Some(path.clone()),
        ..Flags::default()
    };
    let config = load(&flags, &HashMap::new()).expect("the reference loads");
    assert_eq!(config, CollabConfig::default());

    let text = std::fs::read_to_string(&path).expect("reads");
    let table: toml::Table = text.parse().expect("parses");
    let mut given = Vec::new();
    flatten(&default_table(), &table, &mut Vec::new(), &mut given);
    let mut expected = Vec::new();
    flatten(
        &default_table(),
        &default_table(),
        &mut Vec::new(),
        &mut expected,
    );
    let given: Vec<_> = given.into_iter().map(|(k, _)| k.join(".")).collect();
    for (key, _) in expected {
        let key = key.join(".");
        assert!(
            given.contains(&key),
            "{key} missing from config/collab.toml"
        );
    }
    assert!(text.contains("# jwt_secret"), "the secret is documented");
    assert!(
        text.contains("# metrics_listen"),
        "the metrics address is documented"
    );
}

#[test]
fn metrics_listen_is_unset_unless_given_and_the_flag_wins() {
    let config = load(&Flags::default(), &HashMap::new()).expect("defaults load");
    assert_eq!(config.metrics_listen, None);
    let f = file(r#"metrics_listen = "0.0.0.0:9090""#);
    let flags = Flags {
        config: Some(f.path().to_path_buf()),
        ..Flags::default()
    };
    let config = load(&flags, &HashMap::new()).expect("loads");
    assert_eq!(
        config.metrics_listen,
        Some("0.0.0.0:9090".parse().expect("an address"))
    );
    let environment = env(&[("COLLAB_METRICS_LISTEN", "127.0.0.1:9091")]);
    let config = load(&flags, &environment).expect("loads");
    assert_eq!(
        config.metrics_listen,
        Some("127.0.0.1:9091".parse().expect("an address"))
    );
    let flags = Flags {
        metrics_listen: Some("127.0.0.1:9092".into()),
        ..flags
    };
    let config = load(&flags, &environment).expect("loads");
    assert_eq!(
        config.metrics_listen,
        Some("127.0.0.1:9092".parse().expect("an address"))
    );
    assert!(unknown_env(&environment).is_empty());
}

#[test]
fn a_bad_metrics_listen_is_reported() {
    let err = load(
        &Flags::default(),
        &env(&[("COLLAB_METRICS_LISTEN", "port 9090")]),
    )
    .expect_err("not an address");
    assert_eq!(issue_keys(&err), ["metrics_listen"], "{err}");
    // The same port as `listen` cannot be bound twice.
    for (listen, metrics) in [
        ("127.0.0.1:8080", "127.0.0.1:8080"),
        ("0.0.0.0:8080", "127.0.0.1:8080"),
    ] {
        let environment = env(&[
            ("COLLAB_LISTEN", listen),
            ("COLLAB_METRICS_LISTEN", metrics),
        ]);
        let err = load(&Flags::default(), &environment).expect_err("the same port");
        assert_eq!(issue_keys(&err), ["metrics_listen"], "{err}");
        assert_eq!(
            err.issues[0].origin,
            Some(Origin::Env("COLLAB_METRICS_LISTEN".into()))
        );
    }
    // Port 0 picks a free port for each.
    let environment = env(&[
        ("COLLAB_LISTEN", "127.0.0.1:0"),
        ("COLLAB_METRICS_LISTEN", "127.0.0.1:0"),
    ]);
    load(&Flags::default(), &environment).expect("two free ports");
}

#[test]
fn the_store_is_embedded_unless_a_cql_url_is_given() {
    let config = load(&Flags::default(), &HashMap::new()).expect("defaults load");
    assert_eq!(config.store_location(), Ok(StoreLocation::Embedded));
    let config = load(
        &Flags::default(),
        &env(&[(
            "COLLAB_STORE",
            "cql://10.0.0.1:9042/collab?consistency=local_quorum",
        )]),
    )
    .expect("loads");
    match config.store_location() {
        Ok(StoreLocation::Cql(options)) => {
            assert_eq!(options.nodes, vec!["10.0.0.1:9042"]);
            assert_eq!(options.keyspace, "collab");
        }
        other => panic!("expected a CQL store, got {other:?}"),
    }
    // The flag beats the environment.
    let flags = Flags {
        store: Some("embedded".into()),
        ..Flags::default()
    };
    let config = load(&flags, &env(&[("COLLAB_STORE", "cql://h/k")])).expect("loads");
    assert_eq!(config.store_location(), Ok(StoreLocation::Embedded));
    for bad in ["redb", "cql://h", "cql://h/k?consistency=lots"] {
        let err = load(&Flags::default(), &env(&[("COLLAB_STORE", bad)]))
            .expect_err("a bad store is refused");
        assert_eq!(issue_keys(&err), vec!["store"], "{bad}");
    }
}

#[test]
fn redis_is_off_unless_a_url_is_given_and_a_bad_one_is_reported() {
    let config = load(&Flags::default(), &HashMap::new()).expect("defaults load");
    assert_eq!(config.redis_url(), None);
    let f = file(r#"redis = "redis://10.0.0.5:6379/2""#);
    let flags = Flags {
        config: Some(f.path().to_path_buf()),
        ..Flags::default()
    };
    let config = load(&flags, &HashMap::new()).expect("loads");
    assert_eq!(config.redis_url(), Some("redis://10.0.0.5:6379/2"));
    let environment = env(&[("COLLAB_REDIS", "redis://127.0.0.1:7000")]);
    let config = load(&flags, &environment).expect("loads");
    assert_eq!(config.redis_url(), Some("redis://127.0.0.1:7000"));
    // The flag wins, and an empty one turns Redis off again.
    let flags = Flags {
        redis: Some(String::new()),
        ..flags
    };
    let config = load(&flags, &environment).expect("loads");
    assert_eq!(config.redis_url(), None);
    assert!(unknown_env(&environment).is_empty());

    for bad in ["localhost:6379", "http://127.0.0.1:6379", "redis://"] {
        let err = load(&Flags::default(), &env(&[("COLLAB_REDIS", bad)]))
            .expect_err("a bad Redis URL is refused");
        assert_eq!(issue_keys(&err), ["redis"], "{bad}: {err}");
        assert_eq!(
            err.issues[0].origin,
            Some(Origin::Env("COLLAB_REDIS".into()))
        );
    }
}

#[test]
fn token_lifetime_and_presence_ttl_are_at_least_a_second() {
    let environment = env(&[
        ("COLLAB_GATEWAY__MAX_TOKEN_LIFETIME_SECS", "0"),
        ("COLLAB_GATEWAY__PRESENCE_TTL_SECS", "0"),
    ]);
    let err = load(&Flags::default(), &environment).expect_err("zeros are refused");
    assert_eq!(
        issue_keys(&err),
        [
            "gateway.max_token_lifetime_secs",
            "gateway.presence_ttl_secs"
        ],
        "{err}"
    );
    let config = load(&Flags::default(), &HashMap::new()).expect("defaults load");
    let options = config.gateway.ephemeral_options();
    assert_eq!(
        options.max_token_lifetime,
        Duration::from_secs(7 * 24 * 3600)
    );
    assert_eq!(options.presence_ttl, Duration::from_secs(15));
}

#[test]
fn room_expiry_settings() {
    let config = load(
        &Flags::default(),
        &env(&[
            ("COLLAB_ROOMS__DEFAULT_TTL_SECS", "86400"),
            ("COLLAB_ROOMS__EXPIRY_SWEEP_SECS", "5"),
            ("COLLAB_METRICS_LISTEN", "127.0.0.1:9999"),
        ]),
    )
    .expect("loads");
    assert_eq!(config.rooms.default_ttl_secs, 86_400);
    assert_eq!(config.rooms.expiry_sweep(), Duration::from_secs(5));
    let gateway = config.gateway_config();
    assert_eq!(
        gateway.default_room_ttl_secs, 86_400,
        "the gateway applies it"
    );
    assert!(gateway.metrics_elsewhere);
    assert_eq!(
        CollabConfig::default().rooms.default_ttl_secs,
        0,
        "off by default"
    );

    let err = load(
        &Flags::default(),
        &env(&[
            ("COLLAB_ROOMS__DEFAULT_TTL_SECS", "999999999999"),
            ("COLLAB_ROOMS__EXPIRY_SWEEP_SECS", "0"),
        ]),
    )
    .expect_err("bad values");
    let mut keys = issue_keys(&err);
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["rooms.default_ttl_secs", "rooms.expiry_sweep_secs"],
        "{err}"
    );
}

#[test]
fn auth_settings_come_from_the_environment_and_are_checked() {
    let config = load(
        &Flags::default(),
        &env(&[
            ("COLLAB_AUTH__JWKS", "file:/etc/collab/jwks.json"),
            ("COLLAB_AUTH__JWKS_REFRESH_SECS", "60"),
            ("COLLAB_AUTH__ALGORITHMS", "RS256, EdDSA"),
        ]),
    )
    .expect("loads");
    assert_eq!(config.auth.jwks_refresh_secs, 60);
    assert!(matches!(config.auth.jwks_source(), Ok(Some(_))));
    // A JWKS without a secret is not dev mode: no HS256 at all.
    assert!(!config.dev_mode());
    assert!(CollabConfig::default().dev_mode());

    let err = load(
        &Flags::default(),
        &env(&[
            ("COLLAB_AUTH__JWKS", "/no/scheme.json"),
            ("COLLAB_AUTH__JWKS_REFRESH_SECS", "0"),
            ("COLLAB_AUTH__ALGORITHMS", "HS256,none"),
        ]),
    )
    .expect_err("refused");
    assert_eq!(
        issue_keys(&err),
        ["auth.jwks", "auth.jwks_refresh_secs", "auth.algorithms"]
    );
    // A JWKS that no accepted algorithm uses; dev mode without HS256.
    for pairs in [
        &[
            ("COLLAB_AUTH__JWKS", "file:jwks.json"),
            ("COLLAB_AUTH__ALGORITHMS", "HS256"),
        ][..],
        &[("COLLAB_AUTH__ALGORITHMS", "EdDSA")][..],
    ] {
        let err = load(&Flags::default(), &env(pairs)).expect_err("refused");
        assert_eq!(issue_keys(&err), ["auth.algorithms"], "{pairs:?}");
    }
    // A plain http URL only when explicitly allowed.
    let http = ("COLLAB_AUTH__JWKS", "http://keys.internal/jwks.json");
    let err = load(&Flags::default(), &env(&[http])).expect_err("refused");
    assert_eq!(issue_keys(&err), ["auth.jwks"]);
    assert!(err.to_string().contains("jwks_allow_http"), "{err}");
    let config = load(
        &Flags::default(),
        &env(&[
            http,
            ("COLLAB_AUTH__JWKS_ALLOW_HTTP", "true"),
            ("COLLAB_AUTH__JWKS_RELOAD_GAP_SECS", "0"),
        ]),
    )
    .expect("loads");
    assert!(config.auth.jwks_allow_http);
    assert_eq!(config.auth.jwks_reload_gap_secs, 0);
}

#[test]
fn abuse_limits_are_checked() {
    let environment = env(&[
        ("COLLAB_GATEWAY__HANDSHAKE_TIMEOUT_SECS", "0"),
        (
            "COLLAB_GATEWAY__ALLOWED_ORIGINS",
            "https://app.example.com, app.example.com,https://a.example/path",
        ),
    ]);
    let err = load(&Flags::default(), &environment).expect_err("refused");
    assert_eq!(
        issue_keys(&err),
        [
            "gateway.handshake_timeout_secs",
            "gateway.allowed_origins",
            "gateway.allowed_origins"
        ],
        "{err}"
    );
    let environment = env(&[
        ("COLLAB_GATEWAY__ALLOWED_ORIGINS", "*"),
        ("COLLAB_GATEWAY__MAX_SOCKETS_PER_USER", "0"),
    ]);
    let config = load(&Flags::default(), &environment).expect("loads");
    assert_eq!(config.gateway.allowed_origins, "*");
    assert_eq!(config.gateway.max_sockets_per_user, 0);
}

#[test]
fn webhooks_load_from_the_file_with_their_defaults() {
    let config = load_text(
        r#"
[[webhooks]]
id = "crm"
url = "https://api.example.com/hooks"
secret = "0123456789abcdef0123"
events = ["op.committed", "member.joined"]
op_kinds = ["message"]
"#,
    )
    .expect("loads");
    assert_eq!(config.webhooks.len(), 1);
    let hook = &config.webhooks[0];
    assert_eq!(hook.id, "crm");
    assert_eq!(hook.retry_horizon_secs, 86400);
    assert_eq!(
        hook.op_kinds.as_deref(),
        Some(&[collab_protocol::OpKind::Message][..])
    );
    assert!(!format!("{hook:?}").contains("0123456789abcdef0123"));
}

#[test]
fn bad_webhooks_are_reported_each() {
    let error = load_text(
        r#"
[[webhooks]]
id = "crm"
url = "mailto:someone"
secret = "short"
events = ["op.committed"]

[[webhooks]]
id = "crm"
url = "http://127.0.0.1:9000/hooks"
secret = "0123456789abcdef0123"
events = []
"#,
    )
    .expect_err("refused");
    let text = error.to_string();
    for expected in [
        "webhooks[0] (id \"crm\"): `url` \"mailto:someone\"",
        "webhooks[0] (id \"crm\"): `secret` must be at least 16 bytes",
        "webhooks[1] (id \"crm\"): `id` is used by another entry",
        "webhooks[1] (id \"crm\"): `events` must name at least one",
    ] {
        assert!(text.contains(expected), "{expected:?} not in:\n{text}");
    }

    let error = load_text(
        r#"
[[webhooks]]
id = "crm"
url = "http://127.0.0.1:9000/hooks"
secret = "0123456789abcdef0123"
events = ["op.commited"]
"#,
    )
    .expect_err("an unknown event kind is refused");
    assert!(error.to_string().contains("op.commited"), "{error}");
}
