//! `microd`: the example daemon (SPEC §16.1). It runs one cluster member until a signal or
//! `microctl shutdown` stops it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use std::collections::BTreeMap;

use microcluster::db::RaftSettings;
use microcluster::member_config::MemberConfig;
use microcluster::types::ClusterMemberLocal;
use microcluster::{
    App, Args, DaemonArgs, Error, HookFuture, HookSet, Hooks, InitConfig, RoleChange, State,
};
use microcluster_examples::{exit_code, init_logging, parse_args, parse_duration};
use tokio::signal::unix::{SignalKind, signal};

/// Example daemon of a microcluster member.
#[derive(Parser)]
#[command(name = "microd", disable_version_flag = true)]
struct Cli {
    /// State directory of the member (default: $STATE_DIR).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Interval between heartbeat rounds, like 10s or 1m.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    heartbeat: Duration,
    /// Group that owns the control socket (default: $SOCKET_GROUP, else the process group).
    #[arg(long)]
    socket_group: Option<String>,
    /// Log informational messages.
    #[arg(short, long)]
    verbose: bool,
    /// Log debug messages.
    #[arg(short, long)]
    debug: bool,
    /// Print the version and exit.
    #[arg(long)]
    version: bool,
    /// Build a Raft snapshot (and purge the log behind it) every N entries.
    #[arg(long, default_value_t = RaftSettings::default().snapshot_every)]
    snapshot_every: u64,
    /// Register one more external schema update (SQL), after the example's two; repeat for
    /// several. For trying rolling upgrades: members started with it are one schema version
    /// ahead of members started without it.
    #[arg(long, value_name = "SQL")]
    extra_schema_update: Vec<String>,
}

fn main() -> ExitCode {
    let cli: Cli = parse_args();
    if cli.version {
        println!("{}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    init_logging(cli.verbose, cli.debug);
    exit_code(run(cli))
}

fn run(cli: Cli) -> microcluster::Result<()> {
    let app = Arc::new(App::new(Args {
        state_dir: cli.state_dir,
        socket_group: cli.socket_group,
    })?);
    let args = DaemonArgs {
        version: env!("CARGO_PKG_VERSION").to_string(),
        heartbeat_interval: cli.heartbeat,
        api_extensions: microcluster_examples::API_EXTENSIONS
            .map(String::from)
            .to_vec(),
        schema_updates: microcluster_examples::SCHEMA_UPDATES
            .map(String::from)
            .into_iter()
            .chain(cli.extra_schema_update)
            .collect(),
        raft: RaftSettings {
            snapshot_every: cli.snapshot_every,
            keep_after_snapshot: cli
                .snapshot_every
                .min(RaftSettings::default().keep_after_snapshot),
            ..RaftSettings::default()
        },
        hooks: HookSet::from(LoggingHooks {
            fail_pre_join: std::env::var_os("FAIL_PREJOIN").is_some_and(|v| v == "1"),
        }),
        extension_servers: vec![microcluster_examples::extended::server()],
    };
    microcluster::runtime::block_on(async move {
        spawn_signal_handler(app.clone())?;
        app.start(args).await
    })
}

/// SIGTERM, SIGINT, SIGQUIT and SIGPWR shut the daemon down; SIGHUP is ignored.
fn spawn_signal_handler(app: Arc<App>) -> microcluster::Result<()> {
    let listen = |kind: SignalKind| {
        signal(kind).map_err(|err| {
            microcluster::Error::internal(format!("Failed to install a signal handler: {err}"))
        })
    };
    let mut terminate = listen(SignalKind::terminate())?;
    let mut interrupt = listen(SignalKind::interrupt())?;
    let mut quit = listen(SignalKind::quit())?;
    let mut power = listen(SignalKind::from_raw(nix::libc::SIGPWR))?;
    let mut hangup = listen(SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = interrupt.recv() => {}
                _ = quit.recv() => {}
                _ = power.recv() => {}
                _ = hangup.recv() => continue,
            }
            tracing::info!("Received a stop signal");
            if let Err(err) = app.stop().await {
                tracing::warn!("Failed to stop: {err}");
            }
            return;
        }
    });
    Ok(())
}

/// The example's hooks (SPEC §16.1): each logs one info line; `FAIL_PREJOIN=1` makes PreJoin
/// fail.
struct LoggingHooks {
    fail_pre_join: bool,
}

fn logged(line: String) -> HookFuture {
    tracing::info!("{line}");
    Box::pin(async { Ok(()) })
}

impl Hooks for LoggingHooks {
    fn on_reset(
        &self,
        _state: State,
        reason: String,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        tracing::warn!("Member was reset (reason: {reason})");
        Box::pin(async {})
    }

    fn pre_init(&self, state: State, bootstrap: bool, config: InitConfig) -> HookFuture {
        logged(format!(
            "PreInit hook: {} bootstrap={bootstrap} config={config:?}",
            state.name()
        ))
    }

    fn post_bootstrap(&self, state: State, config: InitConfig) -> HookFuture {
        logged(format!(
            "PostBootstrap hook: {} config={config:?}",
            state.name()
        ))
    }

    fn pre_join(&self, state: State, config: InitConfig) -> HookFuture {
        if self.fail_pre_join {
            return Box::pin(async {
                Err(Error::internal(
                    "PreJoin failure requested via FAIL_PREJOIN",
                ))
            });
        }
        logged(format!("PreJoin hook: {} config={config:?}", state.name()))
    }

    fn post_join(&self, state: State, config: InitConfig) -> HookFuture {
        logged(format!("PostJoin hook: {} config={config:?}", state.name()))
    }

    fn on_new_member(&self, state: State, new_member: ClusterMemberLocal) -> HookFuture {
        logged(format!(
            "OnNewMember hook: {} sees {}",
            state.name(),
            new_member.name
        ))
    }

    fn on_start(&self, state: State) -> HookFuture {
        logged(format!("OnStart hook: {}", state.name()))
    }

    fn pre_remove(&self, state: State, force: bool) -> HookFuture {
        logged(format!("PreRemove hook: {} force={force}", state.name()))
    }

    fn post_remove(&self, state: State, force: bool) -> HookFuture {
        logged(format!("PostRemove hook: {} force={force}", state.name()))
    }

    fn on_heartbeat(&self, state: State, roles: BTreeMap<String, RoleChange>) -> HookFuture {
        logged(format!(
            "OnHeartbeat hook: {} roles={roles:?}",
            state.name()
        ))
    }

    fn on_daemon_config_update(&self, state: State, config: MemberConfig) -> HookFuture {
        logged(format!(
            "OnDaemonConfigUpdate hook: {} config={config:?}",
            state.name()
        ))
    }
}
