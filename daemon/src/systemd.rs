//! Talking to systemd through its notify socket (sd_notify(3)).
//!
//! The unit is `Type=notify`: systemd counts the daemon as started only when it says `READY=1`,
//! shows our `STATUS=` line in `systemctl status`, and, with `WatchdogSec=`, restarts the daemon
//! when the `WATCHDOG=1` pings stop. The pings are the point of this module: they are sent only
//! while the scheduler loop keeps going round (it publishes a [`SchedulerVitals`] on every tick),
//! so a scheduler stuck on a lock or a hung disk stops the pings and systemd restarts us, even
//! though the process is alive and its other tasks still run.
//!
//! Outside systemd (tests, the demo, a shell) there is no `NOTIFY_SOCKET` and every call here is a
//! no-op.

use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sd_notify::NotifyState;
use tokio::sync::watch;
use tracing::{debug, warn};

/// The daemon's link to the service manager, read from the environment once at start-up.
#[derive(Debug, Default)]
pub struct ServiceManager {
    socket: Option<UnixDatagram>,
    watchdog: Option<Duration>,
}

impl ServiceManager {
    /// A manager that sends nothing (the demo, an in-process daemon).
    pub fn absent() -> ServiceManager {
        ServiceManager::default()
    }

    /// Reads `NOTIFY_SOCKET` and `WATCHDOG_USEC`/`WATCHDOG_PID`, then removes them from the
    /// environment so that worker processes and sendmail never speak to systemd in the daemon's
    /// name (or take its watchdog for their own).
    ///
    /// Call it before any other thread starts: changing the environment while another thread
    /// reads it is a data race in libc.
    pub fn from_environment() -> ServiceManager {
        let mut watchdog_usec = 0;
        let watchdog = sd_notify::watchdog_enabled(true, &mut watchdog_usec)
            .then(|| Duration::from_micros(watchdog_usec))
            .filter(|interval| !interval.is_zero());
        let socket = std::env::var_os("NOTIFY_SOCKET").and_then(|path| {
            std::env::remove_var("NOTIFY_SOCKET");
            match connect(&path) {
                Ok(socket) => Some(socket),
                Err(err) => {
                    // Logging is not up yet; stderr ends up in the journal under systemd.
                    eprintln!(
                        "reelspool: cannot connect to NOTIFY_SOCKET {}: {err}; systemd will not hear from the daemon",
                        path.to_string_lossy()
                    );
                    None
                }
            }
        });
        ServiceManager { socket, watchdog }
    }

    /// How often systemd expects a `WATCHDOG=1`, if it does.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Sends one datagram with these states. Failures are logged, never fatal: a daemon that
    /// cannot tell systemd how it is doing should still render.
    ///
    /// The socket is non-blocking: a datagram socket whose reader falls behind blocks its
    /// writers, and a blocked notifier would stall a runtime thread (and, through it, the
    /// scheduler). A message that does not fit is dropped; the next STATUS or ping replaces it.
    pub fn notify(&self, states: &[NotifyState]) {
        let Some(socket) = &self.socket else {
            return;
        };
        let message: String = states.iter().map(|state| format!("{state}\n")).collect();
        match socket.send(message.as_bytes()) {
            Ok(_) => {}
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                debug!(message = %message.trim_end(), "notify socket full; message dropped");
            }
            Err(err) => warn!(error = %err, message = %message.trim_end(), "cannot notify systemd"),
        }
    }

    /// `RELOADING=1` with the timestamp that systemd 253 and newer require beside it.
    pub fn reloading(&self) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.notify(&[NotifyState::Reloading, now]),
            Err(_) => self.notify(&[NotifyState::Reloading]),
        }
    }
}

/// Connects to a notify socket path; a leading `@` names a socket in the abstract namespace.
fn connect(path: &std::ffi::OsStr) -> std::io::Result<UnixDatagram> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::ffi::OsStrExt;
    let socket = UnixDatagram::unbound()?;
    match path.as_bytes().strip_prefix(b"@") {
        Some(name) => {
            let address = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            socket.connect_addr(&address)?;
        }
        None => socket.connect(path)?,
    }
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// What the scheduler publishes on every tick of its loop.
#[derive(Debug, Clone, PartialEq)]
pub struct SchedulerVitals {
    pub queued: usize,
    pub running: usize,
    /// Labels of the cards that run a job now, sorted, each once.
    pub gpus_in_use: Vec<String>,
    /// When the scheduler loop last went round.
    pub ticked_at: Instant,
}

impl SchedulerVitals {
    /// The vitals of a scheduler that has not ticked yet.
    pub fn starting() -> SchedulerVitals {
        SchedulerVitals {
            queued: 0,
            running: 0,
            gpus_in_use: Vec::new(),
            ticked_at: Instant::now(),
        }
    }

    /// The `STATUS=` line: what `systemctl status reelspool` shows.
    pub fn status_line(&self) -> String {
        let gpus = if self.gpus_in_use.is_empty() {
            "none".to_string()
        } else {
            self.gpus_in_use.join(", ")
        };
        format!(
            "{} queued, {} running; GPUs in use: {gpus}",
            self.queued, self.running
        )
    }

    /// Whether the scheduler went round recently enough to vouch for the daemon.
    pub fn is_healthy(&self, now: Instant, max_age: Duration) -> bool {
        now.saturating_duration_since(self.ticked_at) <= max_age
    }
}

/// How the watchdog is fed for a given `WatchdogSec=`: a ping every quarter of it, and only while
/// the scheduler's last tick is younger than half of it. A scheduler that stops ticking is thus
/// reported within three quarters of the interval, before systemd's own deadline. The scheduler
/// ticks every 250 ms, so `WatchdogSec=` must be 1 s or more (the unit uses 60 s).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WatchdogPlan {
    pub ping_every: Duration,
    pub max_tick_age: Duration,
}

impl WatchdogPlan {
    pub fn for_interval(interval: Duration) -> WatchdogPlan {
        WatchdogPlan {
            ping_every: (interval / 4).max(Duration::from_millis(10)),
            max_tick_age: interval / 2,
        }
    }
}

/// Sends `STATUS=` whenever the scheduler's counts change and `WATCHDOG=1` while it is healthy,
/// until `stop` turns true or the scheduler goes away.
pub async fn run_notifier(
    manager: Arc<ServiceManager>,
    mut vitals: watch::Receiver<SchedulerVitals>,
    mut stop: watch::Receiver<bool>,
) {
    let plan = manager.watchdog_interval().map(WatchdogPlan::for_interval);
    let mut ping = tokio::time::interval(plan.map_or(Duration::from_secs(3600), |p| p.ping_every));
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_status = String::new();
    let mut was_healthy = true;
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            changed = vitals.changed() => {
                if changed.is_err() {
                    break;
                }
                let status = vitals.borrow_and_update().status_line();
                if status != last_status {
                    manager.notify(&[NotifyState::Status(&status)]);
                    last_status = status;
                }
            }
            _ = ping.tick(), if plan.is_some() => {
                let Some(plan) = plan else { continue };
                let healthy = vitals.borrow().is_healthy(Instant::now(), plan.max_tick_age);
                if healthy {
                    manager.notify(&[NotifyState::Watchdog]);
                } else if was_healthy {
                    warn!(
                        max_tick_age = ?plan.max_tick_age,
                        "the scheduler loop has not ticked in time; withholding the watchdog ping"
                    );
                }
                if healthy && !was_healthy {
                    debug!("the scheduler loop ticks again; watchdog pings resume");
                }
                was_healthy = healthy;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vitals(queued: usize, gpus: &[&str]) -> SchedulerVitals {
        SchedulerVitals {
            queued,
            running: gpus.len(),
            gpus_in_use: gpus.iter().map(|gpu| gpu.to_string()).collect(),
            ticked_at: Instant::now(),
        }
    }

    #[test]
    fn status_line_counts_jobs_and_names_cards() {
        let line = vitals(3, &["gpu0 RTX 4090", "gpu1 RTX 4090"]).status_line();
        assert_eq!(
            line,
            "3 queued, 2 running; GPUs in use: gpu0 RTX 4090, gpu1 RTX 4090"
        );
    }

    #[test]
    fn status_line_says_none_when_no_card_is_busy() {
        assert!(vitals(0, &[]).status_line().ends_with("GPUs in use: none"));
    }

    #[test]
    fn stale_tick_is_not_healthy() {
        let tick = vitals(0, &[]);
        let max_age = Duration::from_secs(30);
        assert!(tick.is_healthy(tick.ticked_at + Duration::from_secs(29), max_age));
        assert!(!tick.is_healthy(tick.ticked_at + Duration::from_secs(31), max_age));
    }

    #[test]
    fn watchdog_plan_reports_a_hang_before_systemd_gives_up() {
        let interval = Duration::from_secs(60);
        let plan = WatchdogPlan::for_interval(interval);
        assert!(plan.max_tick_age + plan.ping_every < interval);
        assert!(plan.ping_every < plan.max_tick_age);
    }

    #[test]
    fn notify_writes_one_datagram_with_a_line_per_state() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("notify.sock");
        let receiver = UnixDatagram::bind(&path).expect("bind notify socket");
        let manager = ServiceManager {
            socket: Some(connect(path.as_os_str()).expect("connect")),
            watchdog: None,
        };
        manager.notify(&[NotifyState::Ready, NotifyState::Status("idle")]);
        let mut buffer = [0u8; 256];
        let len = receiver.recv(&mut buffer).expect("datagram");
        assert_eq!(&buffer[..len], b"READY=1\nSTATUS=idle\n");
    }

    #[test]
    fn abstract_socket_name_is_reached_through_at_sign() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("reelspool-test-{}", std::process::id());
        let address = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .expect("abstract address");
        let receiver = UnixDatagram::bind_addr(&address).expect("bind abstract socket");
        let socket = connect(std::ffi::OsStr::new(&format!("@{name}"))).expect("connect");
        socket.send(b"WATCHDOG=1\n").expect("send");
        let mut buffer = [0u8; 64];
        let len = receiver.recv(&mut buffer).expect("datagram");
        assert_eq!(&buffer[..len], b"WATCHDOG=1\n");
    }
}
