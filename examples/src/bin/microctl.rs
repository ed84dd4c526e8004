//! `microctl`: the example CLI (SPEC §16.2). It talks to a member's daemon over its control
//! socket, or to another member over mTLS for `cluster list <address>`.

use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use futures::StreamExt;
use hyper::Method;
use microcluster::membership::local::LocalMember;
use microcluster::{App, Args, Client, Error};
use microcluster_examples::extended::{EXTENDED_PATH, WEBSOCKET_PATH};
use microcluster_examples::output::{self, ClusterMember, Format, SqlBatch, TokenRecord};
use microcluster_examples::{
    cluster_remove_path, exit_code, init_logging, parse_args, parse_config, parse_expire_after,
    percent_encode,
};
use serde::Deserialize;
use serde_json::{Value, json};

/// The deadline of `init` (SPEC §16.2).
const INIT_TIMEOUT: Duration = Duration::from_secs(30);

/// Example CLI of a microcluster member.
#[derive(Parser)]
#[command(name = "microctl", disable_version_flag = true)]
struct Cli {
    /// State directory of the member (default: $STATE_DIR).
    #[arg(long, global = true)]
    state_dir: Option<PathBuf>,
    /// Log informational messages.
    #[arg(short, long, global = true)]
    verbose: bool,
    /// Log debug messages.
    #[arg(short, long, global = true)]
    debug: bool,
    /// Print the version and exit.
    #[arg(long)]
    version: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Bootstrap a new cluster or join one with a token.
    Init {
        /// The name of this member.
        name: String,
        /// The address of this member, IP:port.
        address: String,
        /// Bootstrap a new cluster.
        #[arg(long)]
        bootstrap: bool,
        /// Join the cluster that issued this token.
        #[arg(long)]
        token: Option<String>,
        /// Extra configuration for the hooks, key=value[,key=value…]; repeatable.
        #[arg(long)]
        config: Vec<String>,
    },
    /// Manage join tokens.
    Tokens {
        #[command(subcommand)]
        command: TokensCommand,
    },
    /// Manage cluster members.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Run SQL on the database: `.dump`, `.schema`, `-` (read stdin) or statements.
    Sql {
        /// The query.
        query: String,
    },
    /// Print what the daemon says about itself (GET /core/1.0).
    Status,
    /// Wait until the daemon is ready.
    Waitready {
        /// Seconds to wait; 0 waits forever.
        #[arg(short, long, default_value_t = 0)]
        timeout: u64,
    },
    /// Shut the daemon down.
    Shutdown,
    /// Call the example's extension endpoint (POST /1.0/extended).
    Extended {
        /// `simple` (the default): print the greeting replies of the other members.
        #[arg(value_enum, default_value_t = ExtendedKind::Simple)]
        kind: ExtendedKind,
        /// Ask the member at this address (over mTLS) instead of the local daemon.
        address: Option<String>,
        /// Run the request on the member with this name (`?target=`).
        #[arg(long)]
        target: Option<String>,
    },
}

/// The kinds of `microctl extended` request.
#[derive(Clone, Copy, clap::ValueEnum)]
enum ExtendedKind {
    /// `POST /1.0/extended`.
    Simple,
    /// `GET /1.0/extended/websocket`: prints each message on its own line.
    Websocket,
}

#[derive(Subcommand)]
enum TokensCommand {
    /// Issue a join token for a new member and print it.
    Add {
        /// The name the new member will join with.
        name: String,
        /// How long the token is valid, like 3h or 30m; 0 means forever.
        #[arg(short, long, default_value = "3h", allow_hyphen_values = true)]
        expire_after: String,
    },
    /// List the join tokens that have not expired.
    List {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Revoke a join token.
    Revoke {
        /// The name of the token.
        name: String,
    },
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// List the cluster members and their status.
    List {
        /// Ask the member at this address (over mTLS) instead of the local daemon.
        address: Option<String>,
        /// Show the Raft view stored in this member's state directory (works with the daemon
        /// stopped): ID, NAME, ADDRESS, ROLE.
        #[arg(short, long, conflicts_with = "address")]
        local: bool,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Remove a member from the cluster.
    Remove {
        /// The name of the member.
        name: String,
        /// Carry on when the member cannot be reached or its clean-up fails.
        #[arg(short, long)]
        force: bool,
        /// The member's address, IP:port (with --force, removes orphans at that address).
        #[arg(long)]
        address: Option<String>,
    },
    /// Recover from the loss of a quorum: edit the members' roles and addresses with every
    /// daemon stopped (YAML from stdin, or in $EDITOR on a terminal).
    Edit,
}

/// The warning `cluster edit` asks to confirm on a terminal (SPEC §16.2).
const EDIT_PROMPT: &str = "You should only run this command if:
 - A quorum of cluster members is permanently lost
 - You are *absolutely* sure all microd instances are stopped
 - This instance has the most up to date database

Do you want to proceed? (yes/no): ";

/// The comment block above the YAML `cluster edit` opens in the editor.
const EDIT_HEADER: &str = "\
# Edit the roles and addresses of the cluster members, then save and quit.
# Members cannot be added or removed, and their ids and names cannot change.
#
# Roles:
#  voter     Raft voter: counts for elections and for the commit quorum. At least one is
#            required; give this role only to members that will be started again.
#  stand-by  Non-voting replica, promoted first when a voter is missing.
#  spare     Non-voting replica, promoted only when no stand-by is available. Give this
#            role to the members that are permanently lost.
#
";

/// The answer of `GET /core/internal/sql`.
#[derive(Deserialize)]
struct SqlDump {
    /// The SQL text.
    text: String,
}

fn main() -> ExitCode {
    let cli: Cli = parse_args();
    if cli.version {
        println!("{}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    let Some(command) = cli.command else {
        let _ = <Cli as clap::CommandFactory>::command().print_help();
        return ExitCode::FAILURE;
    };
    init_logging(cli.verbose, cli.debug);
    exit_code(microcluster::runtime::block_on(run(cli.state_dir, command)))
}

async fn run(state_dir: Option<PathBuf>, command: Command) -> microcluster::Result<()> {
    let app = App::new(Args {
        state_dir,
        ..Default::default()
    })?;
    let client = app.local_client();
    match command {
        Command::Init {
            name,
            address,
            bootstrap,
            token,
            config,
        } => {
            let token = token.filter(|token| !token.is_empty());
            if bootstrap && token.is_some() {
                return Err(Error::invalid(
                    "--bootstrap and --token are mutually exclusive",
                ));
            }
            if !bootstrap && token.is_none() {
                return Err(Error::invalid("Option must be one of bootstrap or token"));
            }
            let body = json!({
                "bootstrap": bootstrap,
                "config": parse_config(&config)?,
                "join_token": token.unwrap_or_default(),
                "address": address,
                "name": name,
            });
            client
                .with_timeout(INIT_TIMEOUT)
                .query::<Value>(Method::POST, "/core/control", Some(&body))
                .await?;
        }
        Command::Tokens { command } => tokens(&client, command).await?,
        Command::Cluster { command } => cluster(&app, &client, command).await?,
        Command::Sql { query } => sql(&client, query).await?,
        Command::Status => {
            let status = app.status().await?;
            let text = serde_yaml_ng::to_string(&status).map_err(|err| {
                microcluster::Error::internal(format!("Failed to format the status: {err}"))
            })?;
            print!("{text}");
        }
        Command::Waitready { timeout } => {
            let timeout = (timeout > 0).then(|| Duration::from_secs(timeout));
            app.ready(timeout).await?;
        }
        Command::Shutdown => app.stop().await?,
        Command::Extended {
            kind,
            address,
            target,
        } => {
            let client = match address {
                Some(address) => app.remote_client(&address, None)?,
                None => client,
            };
            let path = match kind {
                ExtendedKind::Simple => EXTENDED_PATH,
                ExtendedKind::Websocket => WEBSOCKET_PATH,
            };
            let path = match target {
                Some(target) => format!("{path}?target={}", percent_encode(&target)),
                None => path.to_string(),
            };
            match kind {
                ExtendedKind::Simple => {
                    let text: String = client.query(Method::POST, &path, None).await?;
                    print!("{text}");
                }
                ExtendedKind::Websocket => print_websocket(&client, &path).await?,
            }
        }
    }
    Ok(())
}

/// Prints each text message of the WebSocket at `path` on its own line, until a normal close.
async fn print_websocket(client: &Client, path: &str) -> microcluster::Result<()> {
    use microcluster::extensions::tungstenite::Message;
    use microcluster::extensions::tungstenite::protocol::frame::coding::CloseCode;
    let mut socket = client.websocket(path).await?;
    while let Some(message) = socket.next().await {
        match message {
            Ok(Message::Text(text)) => println!("{text}"),
            Ok(Message::Close(frame)) => {
                return match frame {
                    Some(frame) if frame.code != CloseCode::Normal => {
                        Err(Error::internal(format!(
                            "The WebSocket was closed with {}: {}",
                            frame.code, frame.reason
                        )))
                    }
                    _ => Ok(()),
                };
            }
            Ok(_) => {}
            Err(err) => return Err(Error::internal(format!("WebSocket error: {err}"))),
        }
    }
    Err(Error::internal("The WebSocket ended without a close"))
}

async fn tokens(client: &Client, command: TokensCommand) -> microcluster::Result<()> {
    match command {
        TokensCommand::Add { name, expire_after } => {
            let expire_after = parse_expire_after(&expire_after)
                .map_err(|err| Error::invalid(format!("Invalid value for expire-after: {err}")))?;
            let body = json!({"name": name, "expire_after": expire_after});
            let token: String = client
                .query(Method::POST, "/core/control/tokens", Some(&body))
                .await?;
            println!("{token}");
        }
        TokensCommand::List { format } => {
            let records: Vec<TokenRecord> = client
                .query(Method::GET, "/core/control/tokens", None)
                .await?;
            print!("{}", output::tokens(format, &records)?);
        }
        TokensCommand::Revoke { name } => {
            let path = format!("/core/1.0/tokens/{}", percent_encode(&name));
            client.query::<Value>(Method::DELETE, &path, None).await?;
        }
    }
    Ok(())
}

async fn cluster(app: &App, client: &Client, command: ClusterCommand) -> microcluster::Result<()> {
    match command {
        ClusterCommand::List {
            local: true,
            format,
            ..
        } => {
            print!("{}", output::local_members(format, &app.local_members()?)?);
        }
        ClusterCommand::List {
            address, format, ..
        } => {
            let client = match address {
                Some(address) => app.remote_client(&address, None)?,
                None => client.clone(),
            };
            let members: Vec<ClusterMember> =
                client.query(Method::GET, "/core/1.0/cluster", None).await?;
            print!("{}", output::members(format, &members)?);
        }
        ClusterCommand::Remove {
            name,
            force,
            address,
        } => {
            let path = cluster_remove_path(&name, force, address.as_deref());
            client.query::<Value>(Method::DELETE, &path, None).await?;
        }
        ClusterCommand::Edit => cluster_edit(app).await?,
    }
    Ok(())
}

/// `cluster edit` (SPEC §16.2): the new member list from stdin, or after a confirmation from
/// the editor on a terminal; then quorum-loss recovery.
async fn cluster_edit(app: &App) -> microcluster::Result<()> {
    let stdin = std::io::stdin();
    let yaml = if stdin.is_terminal() {
        print!("{EDIT_PROMPT}");
        std::io::stdout()
            .flush()
            .map_err(|err| Error::internal(format!("Failed to write the prompt: {err}")))?;
        let mut answer = String::new();
        stdin
            .lock()
            .read_line(&mut answer)
            .map_err(|err| Error::invalid(format!("Failed to read the answer: {err}")))?;
        if answer.trim() != "yes" {
            println!("Cluster edit aborted; no changes made");
            return Ok(());
        }
        let current = serde_yaml_ng::to_string(&app.local_members()?)
            .map_err(|err| Error::internal(format!("Failed to format the members: {err}")))?;
        edit_in_editor(&format!("{EDIT_HEADER}{current}"))?
    } else {
        let mut text = String::new();
        stdin.lock().read_to_string(&mut text).map_err(|err| {
            Error::invalid(format!("Failed to read the members from stdin: {err}"))
        })?;
        text
    };
    let members: Vec<LocalMember> = serde_yaml_ng::from_str(&yaml)
        .map_err(|err| Error::invalid(format!("Invalid member list: {err}")))?;
    let path = app.recover_from_quorum_loss(members).await?;
    let path = path.display();
    println!("Cluster changes applied; new database state saved to {path}");
    println!();
    println!(
        "*Before* starting any cluster member, copy {path} to {path} on all remaining cluster members."
    );
    println!();
    println!("microd will load this file during startup.");
    Ok(())
}

/// Opens `text` in `$EDITOR` (default `vi`) and returns what the user saved.
fn edit_in_editor(text: &str) -> microcluster::Result<String> {
    let failed =
        |err: &dyn std::fmt::Display| Error::internal(format!("Failed to edit the members: {err}"));
    let mut file = tempfile::Builder::new()
        .prefix("microctl-cluster-edit-")
        .suffix(".yaml")
        .tempfile()
        .map_err(|err| failed(&err))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.flush())
        .map_err(|err| failed(&err))?;
    let editor = std::env::var("EDITOR")
        .ok()
        .filter(|editor| !editor.trim().is_empty())
        .unwrap_or_else(|| "vi".to_string());
    run_editor(&editor, file.path())?;
    std::fs::read_to_string(file.path()).map_err(|err| failed(&err))
}

/// Runs the editor command line `editor` (a program and its arguments) on `path`.
fn run_editor(editor: &str, path: &Path) -> microcluster::Result<()> {
    let mut words = editor.split_whitespace();
    let program = words.next().unwrap_or("vi");
    let status = std::process::Command::new(program)
        .args(words)
        .arg(path)
        .status()
        .map_err(|err| Error::internal(format!("Failed to run the editor {editor:?}: {err}")))?;
    if !status.success() {
        return Err(Error::internal(format!(
            "The editor {editor:?} failed ({status}); no changes made"
        )));
    }
    Ok(())
}

async fn sql(client: &Client, query: String) -> microcluster::Result<()> {
    let query = if query == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|err| Error::invalid(format!("Failed to read the query from stdin: {err}")))?;
        text
    } else {
        query
    };
    let dump_path = match query.trim() {
        ".dump" => Some("/core/internal/sql"),
        ".schema" => Some("/core/internal/sql?schema=1"),
        _ => None,
    };
    if let Some(path) = dump_path {
        let dump: SqlDump = client.query(Method::GET, path, None).await?;
        print!("{}", dump.text);
        return Ok(());
    }
    let batch: SqlBatch = client
        .query(
            Method::POST,
            "/core/internal/sql",
            Some(&json!({"query": query})),
        )
        .await?;
    print!("{}", output::sql_results(&batch.results));
    Ok(())
}
