//! What the node tells operators: logs (human-readable lines by default,
//! JSON on request; `RUST_LOG` overrides the configured level) and
//! Prometheus metrics (`metrics`).

pub mod metrics;

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

impl LogFormat {
    pub fn parse(s: &str) -> Option<LogFormat> {
        match s {
            "human" => Some(LogFormat::Human),
            "json" => Some(LogFormat::Json),
            _ => None,
        }
    }
}

pub fn init(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal, never into files.
        .with_ansi(std::io::stderr().is_terminal());
    // A second init keeps the first subscriber.
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Logs at most once per `every`, so that a refusal repeated by every
/// heartbeat, or by every connection of a flood of bad clients, is said
/// without flooding the log.
pub struct Throttle {
    last: std::sync::Mutex<Option<std::time::Instant>>,
    every: std::time::Duration,
}

impl Throttle {
    pub const fn new(every: std::time::Duration) -> Throttle {
        Throttle {
            last: std::sync::Mutex::new(None),
            every,
        }
    }

    /// Whether to say it now.
    pub fn ready(&self) -> bool {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|t| t.elapsed() < self.every) {
            return false;
        }
        *last = Some(std::time::Instant::now());
        true
    }
}
