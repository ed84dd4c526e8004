//! `microctl`: the example CLI (SPEC §16.2). It talks to a member's daemon over its control
//! socket.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use microcluster::{App, Args};
use microcluster_examples::{exit_code, init_logging, parse_args};

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
    match command {
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
    }
    Ok(())
}
