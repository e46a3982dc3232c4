//! systemd's notification protocol (`sd_notify`), for units of
//! `Type=notify` (examples/systemd/): `READY=1` once the node serves (what
//! `/readyz` answers 200 for), `WATCHDOG=1` at half the unit's
//! `WatchdogSec` while the runtime runs, and `STOPPING=1` when the graceful
//! stop begins, each with a `STATUS=` line `systemctl status` shows.
//!
//! The messages are datagrams to the socket `NOTIFY_SOCKET` names (a path,
//! or `@name` in the abstract namespace). Without `NOTIFY_SOCKET` (not
//! started by systemd) nothing is sent. A message that cannot be sent is
//! logged once and dropped: systemd then times the unit out, which says
//! more than a node that refuses to run would.

use std::{
    os::unix::net::{SocketAddr, UnixDatagram},
    sync::{Arc, atomic::AtomicBool, atomic::Ordering},
    time::Duration,
};

use crate::edge::admin::Readiness;

/// Where to notify systemd, from the environment systemd gives the
/// service.
#[derive(Clone)]
pub struct Notifier {
    socket: Arc<UnixDatagram>,
    to: Arc<SocketAddr>,
    /// Half of `WATCHDOG_USEC`, if the unit has a watchdog.
    watchdog: Option<Duration>,
    /// Whether a failed send was logged already.
    complained: Arc<AtomicBool>,
}

/// The address `NOTIFY_SOCKET` names.
fn address(name: &str) -> std::io::Result<SocketAddr> {
    match name.strip_prefix('@') {
        Some(abstract_name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(abstract_name.as_bytes())
        }
        None => SocketAddr::from_pathname(name),
    }
}

/// The watchdog's ping interval for `WATCHDOG_USEC` (half of it, as systemd
/// advises), if it names one and `WATCHDOG_PID` (when set) is this process.
fn watchdog_interval(usec: Option<&str>, pid: Option<&str>) -> Option<Duration> {
    if pid.is_some_and(|p| p.parse::<u32>().ok() != Some(std::process::id())) {
        return None;
    }
    let usec: u64 = usec?.parse().ok().filter(|u| *u > 0)?;
    Some(Duration::from_micros(usec / 2))
}

impl Notifier {
    /// The notifier systemd asked for, if it did (`NOTIFY_SOCKET`).
    pub fn from_env() -> Option<Notifier> {
        let name = std::env::var("NOTIFY_SOCKET").ok()?;
        // Non-blocking: a full queue at systemd's end drops a message
        // (logged once) instead of stalling a runtime thread.
        let made = address(&name).and_then(|to| {
            let socket = UnixDatagram::unbound()?;
            socket.set_nonblocking(true)?;
            Ok((socket, to))
        });
        let (socket, to) = match made {
            Ok(made) => made,
            Err(e) => {
                tracing::warn!(socket = %name, error = %e, "NOTIFY_SOCKET is set but cannot be used: systemd will not hear that this node is ready");
                return None;
            }
        };
        let watchdog = watchdog_interval(
            std::env::var("WATCHDOG_USEC").ok().as_deref(),
            std::env::var("WATCHDOG_PID").ok().as_deref(),
        );
        Some(Notifier {
            socket: Arc::new(socket),
            to: Arc::new(to),
            watchdog,
            complained: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Sends one message (`KEY=value` lines).
    fn send(&self, message: &str) {
        if let Err(e) = self.socket.send_to_addr(message.as_bytes(), &self.to)
            && !self.complained.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(error = %e, "cannot notify systemd");
        }
    }

    /// Says READY=1 once `readiness` serves (at once if it does), then
    /// pings the watchdog, if the unit has one, until the task is
    /// dropped. Run it as a task of its own.
    pub async fn follow(self, readiness: Arc<Readiness>) {
        let mut changes = readiness.changes();
        while !readiness.serving() {
            if changes.changed().await.is_err() {
                return;
            }
        }
        self.send("READY=1\nSTATUS=serving");
        let Some(every) = self.watchdog else {
            return;
        };
        let mut ticks = tokio::time::interval(every);
        loop {
            ticks.tick().await;
            self.send("WATCHDOG=1");
        }
    }

    /// Says STOPPING=1: the graceful stop has begun.
    pub fn stopping(&self, signal: &str) {
        self.send(&format!(
            "STOPPING=1\nSTATUS=draining in-flight requests after {signal}"
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_pings_at_half_its_timeout_for_this_process_only() {
        let me = std::process::id().to_string();
        assert_eq!(
            watchdog_interval(Some("2000000"), None),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            watchdog_interval(Some("2000000"), Some(&me)),
            Some(Duration::from_secs(1))
        );
        assert_eq!(watchdog_interval(Some("2000000"), Some("1")), None);
        assert_eq!(watchdog_interval(Some("0"), None), None);
        assert_eq!(watchdog_interval(Some("soon"), None), None);
        assert_eq!(watchdog_interval(None, None), None);
    }

    // Two workers: the test blocks its own thread in `recv` while the
    // notifier's task runs.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ready_is_said_once_the_node_serves_then_the_watchdog_pings() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("notify");
        let systemd = UnixDatagram::bind(&path).expect("bind");
        systemd
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let notifier = Notifier {
            socket: Arc::new(UnixDatagram::unbound().expect("socket")),
            to: Arc::new(address(path.to_str().expect("utf-8")).expect("address")),
            watchdog: Some(Duration::from_millis(20)),
            complained: Arc::new(AtomicBool::new(false)),
        };
        let readiness = Arc::new(Readiness::new(&["kv"]));
        let task = tokio::spawn(notifier.clone().follow(readiness.clone()));
        // Nothing while the service has not started.
        systemd.set_nonblocking(true).expect("nonblocking");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut buf = [0u8; 256];
        assert!(systemd.recv(&mut buf).is_err(), "a message before ready");
        systemd.set_nonblocking(false).expect("blocking");
        readiness.set("kv", crate::edge::admin::ServiceState::Running);
        let n = systemd.recv(&mut buf).expect("READY");
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=serving");
        let n = systemd.recv(&mut buf).expect("WATCHDOG");
        assert_eq!(&buf[..n], b"WATCHDOG=1");
        task.abort();
        notifier.stopping("SIGTERM");
        let mut last = Vec::new();
        while let Ok(n) = systemd.recv(&mut buf) {
            last = buf[..n].to_vec();
            if last.starts_with(b"STOPPING") {
                break;
            }
        }
        assert_eq!(
            String::from_utf8(last).expect("utf-8"),
            "STOPPING=1\nSTATUS=draining in-flight requests after SIGTERM"
        );
    }

    #[test]
    fn abstract_and_path_sockets_are_both_named() {
        assert!(address("@/org/freedesktop/systemd1/notify").is_ok());
        assert!(address("/run/systemd/notify").is_ok());
    }
}
