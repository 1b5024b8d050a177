//! `collab`: the real-time room server.
//!
//! A thin shell: parse the command line, load the configuration, start
//! logging, and hand over to the library (`collab::serve`,
//! `collab::cluster`, `collab::token`).
//! Bad usage or configuration exits with 64.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use collab::config::{self, CollabConfig, Flags};
use collab::secret::SecretError;
use collab::serve::ServeError;
use collab::token::{KeyFile, RevokeError, RevokeTarget, RoomGrant, TokenRequest};
use collab::{EXIT_USAGE, cluster, secret, serve, signals, telemetry, token};
use collab_gateway::now_secs;

/// mimalloc instead of the system allocator: measured cheaper under load
/// (docs/adr/0004-mimalloc.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A self-hostable real-time room server for collaborative whiteboards and
/// chat.
///
/// Settings are layered: defaults < --config FILE (or COLLAB_CONFIG) <
/// COLLAB_* environment < flags. See config/collab.toml for every setting.
#[derive(Debug, Parser)]
#[command(name = "collab", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run everything in one process: gateway, room node, in-process bus
    /// and the store (embedded in the data dir, or a CQL cluster with
    /// --store). Without a secret it runs in dev mode (loopback only).
    Serve(ServeArgs),
    /// Run a gateway of a cluster: the WebSocket and HTTP API, forwarding
    /// to the room nodes over NATS. Needs a secret and a CQL store.
    Gateway(ClusterArgs),
    /// Run a room node of a cluster: hosts the rooms placement gives it,
    /// found over NATS; serves /healthz, /readyz and /metrics. Needs a CQL
    /// store.
    RoomNode(ClusterArgs),
    /// Mint a JWT signed with the configured secret (or a dev server's
    /// secret from --data-dir, or a private key with --key) and print it;
    /// `collab token jwks` prints the public keys for the servers' JWKS;
    /// `collab token revoke` revokes tokens on every gateway.
    Token(TokenCommand),
}

/// The settings every command reads.
#[derive(Debug, Args)]
struct ConfigArgs {
    /// A TOML config file [env: COLLAB_CONFIG]
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Directory of the embedded store and the dev secret [env:
    /// COLLAB_DATA_DIR] [default: ./data]
    #[arg(long, value_name = "DIR")]
    data_dir: Option<String>,
    /// Where rooms are stored: `embedded` (in the data dir) or
    /// cql://host:port[,host:port…]/keyspace[?options] for ScyllaDB or
    /// Cassandra [env: COLLAB_STORE] [default: embedded]
    #[arg(long, value_name = "URL")]
    store: Option<String>,
    /// HS256 signing secret; unset (and no JWKS) means dev mode. Prefer the
    /// environment variable: a flag shows in the process list [env:
    /// COLLAB_JWT_SECRET]
    #[arg(long, value_name = "SECRET")]
    jwt_secret: Option<String>,
}

#[derive(Debug, Args)]
struct ServeArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Address to listen on; port 0 picks a free one [env: COLLAB_LISTEN]
    /// [default: 127.0.0.1:8080]
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// A second address, serving /metrics (then only there), /healthz and
    /// /readyz [env: COLLAB_METRICS_LISTEN] [default: none, /metrics is on
    /// --listen]
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<String>,
    /// Log format, text or json [env: COLLAB_LOG_FORMAT] [default: text]
    #[arg(long, value_name = "FORMAT")]
    log_format: Option<String>,
    /// The Redis the gateways share rate limits, revoked tokens and
    /// presence through, redis://host:port[/db] [env: COLLAB_REDIS]
    /// [default: none, kept in this process]
    #[arg(long, value_name = "URL")]
    redis: Option<String>,
}

#[derive(Debug, Args)]
struct ClusterArgs {
    #[command(flatten)]
    server: ServeArgs,
    /// NATS server URLs, comma-separated [env: COLLAB_CLUSTER__NATS_URL]
    /// [default: nats://127.0.0.1:4222]
    #[arg(long, value_name = "URL")]
    nats: Option<String>,
    /// This process's id in the cluster, unique among live members [env:
    /// COLLAB_CLUSTER__NODE_ID] [default: made up from the role and the
    /// process]
    #[arg(long, value_name = "ID")]
    node_id: Option<String>,
}

/// `collab token [--user …]` mints; `collab token jwks …` prints a JWKS;
/// `collab token revoke …` revokes.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct TokenCommand {
    #[command(subcommand)]
    action: Option<TokenAction>,
    #[command(flatten)]
    mint: TokenArgs,
}

#[derive(Debug, Subcommand)]
enum TokenAction {
    /// Revoke one token (--jti) or every token of a user issued before a
    /// time (--user, --before): every gateway following the Redis refuses
    /// them and closes their sockets with 4001 within a second. Needs
    /// --redis (or COLLAB_REDIS); a `collab serve` without Redis takes
    /// revocations at POST /v1/admin/revocations instead.
    Revoke(RevokeArgs),
    /// Print the JWK Set (the public keys) of private key files, for the
    /// gateways' `auth.jwks`
    Jwks(JwksArgs),
}

#[derive(Debug, Args)]
struct JwksArgs {
    /// A private key (PEM: RSA for RS256, Ed25519 for EdDSA) and the key id
    /// tokens signed with it carry; repeatable, e.g. the current key and
    /// the next one during a rotation
    #[arg(long = "key", value_name = "KID=FILE", required = true)]
    keys: Vec<KeyFile>,
}

#[derive(Debug, Args)]
struct RevokeArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// The Redis the gateways share [env: COLLAB_REDIS]
    #[arg(long, value_name = "URL")]
    redis: Option<String>,
    /// The id (`jti` claim) of the one token to revoke
    #[arg(long, value_name = "ID", conflicts_with_all = ["user", "before"], required_unless_present = "user")]
    jti: Option<String>,
    /// Revoke every token of this user issued before --before
    #[arg(long, value_name = "USER")]
    user: Option<String>,
    /// With --user: the cut-off, seconds since the Unix epoch or RFC 3339
    /// (2025-01-31T12:00:00Z) [default: now]
    #[arg(long, value_name = "TIME", requires = "user")]
    before: Option<String>,
}

#[derive(Debug, Args)]
struct TokenArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// The user id (the `sub` claim)
    #[arg(long, required = true)]
    user: Option<String>,
    /// Display name
    #[arg(long)]
    name: Option<String>,
    /// Lifetime in seconds
    #[arg(long, value_name = "SECS", default_value_t = 24 * 60 * 60)]
    ttl_secs: u64,
    /// Access to one room (or `*` for all), repeatable; none means write
    /// access to every room
    #[arg(long, value_name = "ROOM=read|write")]
    room: Vec<RoomGrant>,
    /// Add the `admin` scope: the inspection endpoints under /v1/admin/
    #[arg(long)]
    admin: bool,
    /// Add the `service` scope: a backend publishing ops into rooms
    /// (POST /v1/rooms/{id}/ops) as this user
    #[arg(long)]
    service: bool,
    /// Sign with this private key (PEM: RSA for RS256, Ed25519 for EdDSA)
    /// instead of the secret; KID is its key id in the servers' JWKS
    #[arg(long, value_name = "KID=FILE")]
    key: Option<KeyFile>,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // --help and --version are not errors.
            return if e.use_stderr() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let flags = match &cli.command {
        Command::Serve(args) => server_flags(args),
        Command::Gateway(args) | Command::RoomNode(args) => Flags {
            nats_url: args.nats.clone(),
            node_id: args.node_id.clone(),
            ..server_flags(&args.server)
        },
        Command::Token(TokenCommand {
            action: Some(TokenAction::Revoke(args)),
            ..
        }) => Flags {
            redis: args.redis.clone(),
            ..flags(&args.config)
        },
        Command::Token(TokenCommand {
            action: Some(TokenAction::Jwks(_)),
            ..
        }) => Flags::default(),
        Command::Token(args) => flags(&args.mint.config),
    };
    let env = config::process_env();
    let config = match config::load(&flags, &env) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("collab: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let unknown_env = config::unknown_env(&env);
    match cli.command {
        Command::Serve(_) => run_server(Server::Serve, config, unknown_env),
        Command::Gateway(_) => run_server(Server::Gateway, config, unknown_env),
        Command::RoomNode(_) => run_server(Server::RoomNode, config, unknown_env),
        Command::Token(TokenCommand {
            action: Some(TokenAction::Revoke(args)),
            ..
        }) => run_revoke(&config, args),
        Command::Token(TokenCommand {
            action: Some(TokenAction::Jwks(args)),
            ..
        }) => run_jwks(&args),
        Command::Token(args) => run_token(&config, args.mint),
    }
}

fn server_flags(args: &ServeArgs) -> Flags {
    Flags {
        listen: args.listen.clone(),
        metrics_listen: args.metrics_listen.clone(),
        log_format: args.log_format.clone(),
        redis: args.redis.clone(),
        ..flags(&args.config)
    }
}

/// The long-running commands.
#[derive(Debug, Clone, Copy)]
enum Server {
    Serve,
    Gateway,
    RoomNode,
}

fn flags(args: &ConfigArgs) -> Flags {
    Flags {
        config: args.config.clone(),
        data_dir: args.data_dir.clone(),
        store: args.store.clone(),
        jwt_secret: args.jwt_secret.clone(),
        ..Flags::default()
    }
}

fn run_server(server: Server, config: CollabConfig, unknown_env: Vec<String>) -> ExitCode {
    if let Err(e) = telemetry::init(config.log_format) {
        eprintln!("collab: {e}");
        return ExitCode::from(EXIT_USAGE);
    }
    if !unknown_env.is_empty() {
        tracing::warn!(
            variables = ?unknown_env,
            "ignoring COLLAB_* environment variables that name no setting"
        );
    }
    match run_until_signalled(server, config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Through the log, so a JSON log pipeline sees it too.
            tracing::error!(error = format!("{e:#}"), command = ?server, "collab failed");
            let usage = e
                .downcast_ref::<ServeError>()
                .is_some_and(ServeError::is_usage);
            ExitCode::from(if usage { EXIT_USAGE } else { 1 })
        }
    }
}

fn run_until_signalled(server: Server, config: CollabConfig) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("collab")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let shutdown = signals::install().context("cannot install signal handlers")?;
        match server {
            Server::Serve => serve::run(config, shutdown).await?,
            Server::Gateway => cluster::run_gateway(config, shutdown).await?,
            Server::RoomNode => cluster::run_room_node(config, shutdown).await?,
        }
        Ok::<_, anyhow::Error>(())
    })?;
    // Tasks still running (a socket that ignored the close) must not hold
    // the exit up.
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

fn run_token(config: &CollabConfig, args: TokenArgs) -> ExitCode {
    let request = TokenRequest {
        // Required by the parser whenever no subcommand is given.
        user: args.user.unwrap_or_default(),
        name: args.name,
        ttl: Duration::from_secs(args.ttl_secs),
        max_ttl: Duration::from_secs(config.gateway.max_token_lifetime_secs),
        rooms: args.room,
        admin: args.admin,
        service: args.service,
    };
    let minted = match &args.key {
        Some(key) => token::mint_with_key(key, &request),
        None => {
            let signing = match secret::for_minting(config) {
                Ok(signing) => signing,
                Err(e) => {
                    eprintln!("collab: {e}");
                    let usage = matches!(e, SecretError::NoSecret(_));
                    return ExitCode::from(if usage { EXIT_USAGE } else { 1 });
                }
            };
            token::mint(&signing.bytes, &request)
        }
    };
    match minted {
        Ok(jwt) => {
            println!("{jwt}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("collab: {e}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

fn run_jwks(args: &JwksArgs) -> ExitCode {
    match token::jwks(&args.keys) {
        Ok(jwks) => {
            println!("{jwks}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("collab: {e}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

fn run_revoke(config: &CollabConfig, args: RevokeArgs) -> ExitCode {
    let fail = |e: RevokeError| {
        eprintln!("collab: {e}");
        ExitCode::from(if e.is_usage() { EXIT_USAGE } else { 1 })
    };
    let Some(redis) = config.redis_url() else {
        return fail(RevokeError::NoRedis);
    };
    let target =
        match RevokeTarget::from_flags(args.jti, args.user, args.before.as_deref(), now_secs()) {
            Ok(target) => target,
            Err(e) => return fail(e),
        };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("collab: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let lifetime = Duration::from_secs(config.gateway.max_token_lifetime_secs);
    match runtime.block_on(token::revoke(redis, lifetime, target)) {
        Ok(revoked) => {
            // What POST /v1/admin/revocations answers, for scripts.
            match serde_json::to_string(&revoked) {
                Ok(line) => println!("{line}"),
                Err(e) => eprintln!("collab: revoked, but cannot print it: {e}"),
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}
