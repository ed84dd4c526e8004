//! [`Spawned`]: a daemon started in the background with [`App::spawn`], for embedders that
//! cannot block a thread on [`App::start`] (the C, Python and Node bindings): its end and
//! result, stopping it even while it is still starting, and readiness that fails at once
//! when it has ended.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::app::{App, DaemonArgs};
use crate::sync;
use crate::{Error, Result, runtime};

/// How long [`Spawned::stop`] keeps asking a daemon that is still starting to stop.
const STOP_RETRY_FOR: Duration = Duration::from_secs(30);

/// The pause between those attempts (cut short when the daemon ends).
const STOP_RETRY_EVERY: Duration = Duration::from_millis(50);

/// The daemon a binding's app handle started last, with what the binding keeps beside it (its
/// hook gate, say). Each C, Python or Node app holds one, so that a second start while the
/// daemon runs is refused the same way everywhere.
pub struct DaemonSlot<T>(std::sync::Mutex<Option<(Spawned, T)>>);

impl<T: Clone> Default for DaemonSlot<T> {
    fn default() -> Self {
        DaemonSlot(std::sync::Mutex::new(None))
    }
}

impl<T: Clone> DaemonSlot<T> {
    /// Spawns the daemon of `app` with `args` and keeps `companion` beside it, unless the
    /// daemon started last still runs (`Conflict`).
    pub fn start(&self, app: &Arc<App>, args: DaemonArgs, companion: T) -> Result<()> {
        let mut slot = sync::lock(&self.0);
        if slot
            .as_ref()
            .is_some_and(|(spawned, _)| !spawned.has_ended())
        {
            return Err(Error::new(
                crate::ErrorKind::Conflict,
                "The daemon of this app is already running",
            ));
        }
        *slot = Some((app.spawn(args), companion));
        Ok(())
    }

    /// The daemon started last and its companion, if any.
    pub fn current(&self) -> Option<(Spawned, T)> {
        sync::lock(&self.0).clone()
    }
}

/// The result of a daemon run, once it has ended.
type Outcome = Option<Result<()>>;

/// A daemon running on the library's runtime. Cheap to clone.
#[derive(Clone)]
pub struct Spawned {
    app: Arc<App>,
    outcome: watch::Receiver<Outcome>,
}

impl App {
    /// Starts the daemon on the library's runtime and returns at once (see [`App::start`]).
    pub fn spawn(self: &Arc<Self>, args: DaemonArgs) -> Spawned {
        let (report, outcome) = watch::channel(None);
        let app = self.clone();
        runtime::handle().spawn(async move {
            let _ = report.send(Some(app.start(args).await));
        });
        Spawned {
            app: self.clone(),
            outcome,
        }
    }
}

impl Spawned {
    /// Whether the daemon has ended.
    pub fn has_ended(&self) -> bool {
        self.outcome.borrow().is_some() || self.outcome.has_changed().is_err()
    }

    /// Waits until the daemon has ended and returns how it ended: `Ok` after a clean stop,
    /// else the error it failed with.
    pub async fn finished(&self) -> Result<()> {
        let mut outcome = self.outcome.clone();
        match outcome.wait_for(Option::is_some).await {
            Ok(result) => result.clone().unwrap_or(Ok(())),
            Err(_) => Err(Error::internal("The daemon task ended without a result")),
        }
    }

    /// Stops the daemon and waits until it has ended. A daemon still starting is asked again
    /// until it can stop (for up to 30 s). How the daemon ended is [`Spawned::finished`]'s
    /// to report, not this call's.
    pub async fn stop(&self) -> Result<()> {
        let deadline = Instant::now() + STOP_RETRY_FOR;
        let mut outcome = self.outcome.clone();
        loop {
            match self.app.stop().await {
                Ok(()) => break,
                Err(_) if self.has_ended() => break,
                Err(err) if Instant::now() >= deadline => return Err(err),
                Err(_) => {
                    tokio::select! {
                        _ = outcome.changed() => {}
                        _ = tokio::time::sleep(STOP_RETRY_EVERY) => {}
                    }
                }
            }
        }
        let _ = self.finished().await;
        Ok(())
    }

    /// [`App::ready`], failing with `Unavailable` as soon as the daemon has ended.
    pub async fn ready(&self, timeout: Option<Duration>) -> Result<()> {
        tokio::select! {
            ready = self.app.ready(timeout) => ready,
            ended = self.finished() => Err(Error::unavailable(match ended {
                Ok(()) => "The daemon has stopped".to_string(),
                Err(err) => format!("The daemon has stopped: {}", err.message()),
            })),
        }
    }
}
