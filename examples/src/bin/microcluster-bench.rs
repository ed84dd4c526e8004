//! `microcluster-bench`: write throughput and latency of a 3-member cluster on 127.0.0.1,
//! compared in the same run with the peers of `shared/peers/` (dqlite, etcd).
//!
//! The bench process is itself the first member: it embeds the library, bootstraps, starts
//! `microd` processes (found next to this executable) that join, and then drives the load
//! through the public transaction API on the leader. Each of W writers loops on
//! `INSERT OR REPLACE INTO kv(k, v)` with a random 32-byte key and a 1 KiB value; a write
//! counts once its transaction returns, which is after it is fsynced on a quorum. It prints one
//! line in the format of the peer scripts, the idle RSS of each member, and the ratios.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use microcluster::{App, Args, DaemonArgs, Error, Result};
use microcluster_examples::{API_EXTENSIONS, SCHEMA_UPDATES, exit_code, init_logging, parse_args};

/// Write benchmark of a microcluster cluster against dqlite and etcd.
#[derive(Parser)]
#[command(name = "microcluster-bench")]
struct Cli {
    /// Cluster size (the bench process plus members-1 microd processes).
    #[arg(long, default_value_t = 3)]
    members: usize,
    /// Concurrent writers.
    #[arg(long, default_value_t = 1)]
    writers: usize,
    /// Seconds of load.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Directory of the peer scripts (dqlite_bench.sh, etcd_bench.sh).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/peers"))]
    peers: PathBuf,
    /// Skip the peer benchmarks.
    #[arg(long)]
    no_peers: bool,
    /// Log informational messages.
    #[arg(short, long)]
    verbose: bool,
}

/// The figures of one benchmark run.
struct Figures {
    ops: usize,
    errs: usize,
    ops_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn main() -> ExitCode {
    let cli: Cli = parse_args();
    init_logging(cli.verbose, false);
    exit_code(run(cli))
}

fn run(cli: Cli) -> Result<()> {
    if cli.members == 0 || cli.writers == 0 || cli.seconds == 0 {
        return Err(Error::invalid(
            "--members, --writers and --seconds must be at least 1",
        ));
    }
    let microd = sibling("microd")?;
    let dir = tempfile::tempdir().map_err(Error::from)?;
    let (ours, rss) = {
        let cluster = BenchCluster::start(dir.path(), &microd, cli.members)?;
        let rss = cluster.idle_rss();
        let figures = cluster.load(cli.writers, Duration::from_secs(cli.seconds))?;
        cluster.stop();
        (figures, rss)
    };
    println!(
        "microcluster members={} writers={} ops={} errs={} ops_per_s={:.0} p50_ms={:.3} p99_ms={:.3}",
        cli.members, cli.writers, ours.ops, ours.errs, ours.ops_per_s, ours.p50_ms, ours.p99_ms
    );
    for (name, kib) in rss {
        println!("idle_rss member={name} rss_mb={:.1}", kib as f64 / 1024.0);
    }
    if cli.no_peers {
        return Ok(());
    }
    let nodes = cli.members.to_string();
    let writers = cli.writers.to_string();
    let seconds = cli.seconds.to_string();
    for (peer, script, args) in [
        (
            "dqlite",
            "dqlite_bench.sh",
            vec![
                writers.as_str(),
                seconds.as_str(),
                "kvwrite",
                nodes.as_str(),
            ],
        ),
        (
            "etcd",
            "etcd_bench.sh",
            vec![writers.as_str(), seconds.as_str(), nodes.as_str()],
        ),
    ] {
        match run_peer(&cli.peers.join(script), &args) {
            Ok((line, figures)) => {
                println!("{line}");
                println!(
                    "ratio microcluster/{peer} writers={} ops_per_s={:.2}",
                    cli.writers,
                    ours.ops_per_s / figures.ops_per_s.max(f64::MIN_POSITIVE)
                );
            }
            Err(err) => println!("{peer}: not measured: {}", err.message()),
        }
    }
    Ok(())
}

/// A binary built next to this one.
fn sibling(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().map_err(Error::from)?;
    let path = exe.with_file_name(name);
    match path.exists() {
        true => Ok(path),
        false => Err(Error::invalid(format!(
            "{path:?} is missing: build it first (cargo build --release --bin {name})"
        ))),
    }
}

/// The bench member (in this process) and the `microd` members.
struct BenchCluster {
    app: Arc<App>,
    daemon: std::thread::JoinHandle<Result<()>>,
    children: Vec<(String, Child)>,
}

impl BenchCluster {
    fn start(dir: &Path, microd: &Path, members: usize) -> Result<BenchCluster> {
        let app = Arc::new(App::new(Args {
            state_dir: Some(dir.join("c1")),
            ..Args::default()
        })?);
        let running = app.clone();
        let daemon = std::thread::spawn(move || {
            microcluster::runtime::block_on(async move {
                running
                    .start(DaemonArgs {
                        version: env!("CARGO_PKG_VERSION").to_string(),
                        api_extensions: API_EXTENSIONS.map(String::from).to_vec(),
                        schema_updates: SCHEMA_UPDATES.map(String::from).to_vec(),
                        ..DaemonArgs::default()
                    })
                    .await
            })
        });
        let mut children = Vec::new();
        for i in 2..=members {
            let name = format!("c{i}");
            let log =
                std::fs::File::create(dir.join(format!("{name}.log"))).map_err(Error::from)?;
            let child = Command::new(microd)
                .arg("--state-dir")
                .arg(dir.join(&name))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .map_err(|err| Error::from(err).context("Failed to start microd: "))?;
            children.push((name, child));
        }
        let cluster = BenchCluster {
            app,
            daemon,
            children,
        };
        let app = cluster.app.clone();
        let dir = dir.to_path_buf();
        let names: Vec<String> = cluster
            .children
            .iter()
            .map(|(name, _)| name.clone())
            .collect();
        microcluster::runtime::block_on(async move {
            app.ready(Some(Duration::from_secs(60))).await?;
            app.new_cluster("c1", &free_address()?, BTreeMap::new())
                .await?;
            for name in names {
                let member = App::new(Args {
                    state_dir: Some(dir.join(&name)),
                    ..Args::default()
                })?;
                member.ready(Some(Duration::from_secs(60))).await?;
                let token = app.new_join_token(&name, Duration::from_secs(600)).await?;
                member
                    .join_cluster(&name, &free_address()?, &token, BTreeMap::new())
                    .await?;
            }
            app.sql("CREATE TABLE kv (k BLOB PRIMARY KEY NOT NULL, v BLOB NOT NULL)")
                .await?;
            Ok(())
        })?;
        Ok(cluster)
    }

    /// The resident set size of each member, in KiB, while the cluster is idle.
    fn idle_rss(&self) -> Vec<(String, u64)> {
        std::thread::sleep(Duration::from_secs(1));
        let mut rss = vec![(
            "c1 (bench process)".to_string(),
            rss_kib(std::process::id()),
        )];
        for (name, child) in &self.children {
            rss.push((name.clone(), rss_kib(child.id())));
        }
        rss
    }

    /// Runs `writers` closed-loop writers for `duration`.
    fn load(&self, writers: usize, duration: Duration) -> Result<Figures> {
        let app = self.app.clone();
        microcluster::runtime::block_on(async move {
            let deadline = Instant::now() + duration;
            let tasks: Vec<_> = (0..writers)
                .map(|writer| {
                    let app = app.clone();
                    microcluster::runtime::handle().spawn(async move {
                        let mut random = Random::new(writer as u64);
                        let mut latencies = Vec::new();
                        let mut errs = 0usize;
                        while Instant::now() < deadline {
                            let key = random.bytes(32);
                            let value = random.bytes(1024);
                            let started = Instant::now();
                            let written = app
                                .transaction(move |tx| {
                                    tx.execute(
                                        "INSERT OR REPLACE INTO kv (k, v) VALUES (?1, ?2)",
                                        (&key, &value),
                                    )
                                })
                                .await;
                            match written {
                                Ok(_) => latencies.push(started.elapsed()),
                                Err(err) => {
                                    errs += 1;
                                    if errs <= 3 {
                                        eprintln!("write failed: {err}");
                                    }
                                }
                            }
                        }
                        (latencies, errs)
                    })
                })
                .collect();
            let mut latencies = Vec::new();
            let mut errs = 0;
            for task in tasks {
                let (mut own, own_errs) = task
                    .await
                    .map_err(|err| Error::internal(format!("A writer failed: {err}")))?;
                latencies.append(&mut own);
                errs += own_errs;
            }
            latencies.sort();
            let percentile = |p: f64| {
                latencies
                    .get(
                        ((latencies.len() as f64 * p) as usize)
                            .min(latencies.len().saturating_sub(1)),
                    )
                    .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
            };
            Ok(Figures {
                ops: latencies.len(),
                errs,
                ops_per_s: latencies.len() as f64 / duration.as_secs_f64(),
                p50_ms: percentile(0.5),
                p99_ms: percentile(0.99),
            })
        })
    }

    fn stop(self) {
        let app = self.app.clone();
        let _ = microcluster::runtime::block_on(async move { app.stop().await });
        let _ = self.daemon.join();
        for (_, mut child) in self.children {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = child.wait();
        }
    }
}

/// A free TCP address on 127.0.0.1.
fn free_address() -> Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(Error::from)?;
    Ok(format!(
        "127.0.0.1:{}",
        listener.local_addr().map_err(Error::from)?.port()
    ))
}

/// The resident set size of process `pid` in KiB (0 if unknown).
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|value| value.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// Runs a peer script and parses its line.
fn run_peer(script: &Path, args: &[&str]) -> Result<(String, Figures)> {
    if !script.exists() {
        return Err(Error::not_found(format!("{script:?} does not exist")));
    }
    let output = Command::new("bash")
        .arg(script)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(Error::from)?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find(|line| line.contains("ops_per_s="))
        .ok_or_else(|| {
            Error::internal(format!(
                "{} printed no result: {}",
                script.display(),
                String::from_utf8_lossy(&output.stderr).trim()
            ))
        })?
        .to_string();
    let field = |name: &str| -> f64 {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let figures = Figures {
        ops: field("ops") as usize,
        errs: field("errs") as usize,
        ops_per_s: field("ops_per_s"),
        p50_ms: field("p50_ms"),
        p99_ms: field("p99_ms"),
    };
    Ok((line, figures))
}

/// A small xorshift generator for keys and values: fast, and random enough for a benchmark.
struct Random(u64);

impl Random {
    fn new(stream: u64) -> Random {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Random((seed ^ (stream + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next().to_le_bytes());
        }
        out.truncate(len);
        out
    }
}
