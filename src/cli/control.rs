//! Commands that act on the running node of this host through its admin
//! listener's control operations, with the token in its data dir
//! (`flotilla cluster init`).

use std::{path::Path, process::ExitCode, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

use super::EX_USAGE;
use crate::{
    catalogue::Services,
    config::Config,
    edge::admin::{CONTROL_HEADER, ControlOp},
};

/// How long a control operation may take (forming a group on a large
/// database snapshots all of it).
const PATIENCE: Duration = Duration::from_secs(900);

/// Loads the config at `path` (a usage error if it does not load), sends
/// the operation `op` makes of its absolute path to the node the config
/// names, and prints what `summary` makes of the answer, then its `next`.
fn control_command(
    path: &Path,
    catalogue: &Services,
    op: impl FnOnce(std::path::PathBuf) -> ControlOp,
    summary: impl FnOnce(&serde_json::Value) -> String,
) -> ExitCode {
    let config = match Config::load(path, catalogue) {
        Ok(c) => c,
        Err(e) => {
            eprint!("{e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    let absolute = match std::path::absolute(path) {
        Ok(p) => p,
        Err(e) => return fail(format!("cannot resolve {}: {e}", path.display())),
    };
    match run(&config, &op(absolute)) {
        Ok(answer) => {
            println!("{}", summary(&answer));
            if let Some(next) = answer["next"].as_str() {
                println!("{next}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

/// `flotilla cluster init --config F`: the single node running on this host
/// with F's data dir forms a one-member Raft group, and runs with F from
/// then on.
pub(super) fn cluster_init(path: &Path, catalogue: &Services) -> ExitCode {
    control_command(
        path,
        catalogue,
        |config| ControlOp::ClusterInit { config },
        |answer| {
            format!(
                "formed Raft group {} with this node as member {}",
                answer["group"].as_str().unwrap_or_default(),
                answer["member"]
            )
        },
    )
}

/// `flotilla cluster leave --config F --confirm`: the last member of a
/// group, running on this host, becomes a single node with config F.
pub(super) fn cluster_leave(path: &Path, catalogue: &Services, confirm: bool) -> ExitCode {
    if !confirm {
        eprintln!(
            "flotilla: this ends the Raft group on its last member, which keeps the data as a single node: pass --confirm"
        );
        return ExitCode::from(EX_USAGE);
    }
    control_command(
        path,
        catalogue,
        |config| ControlOp::ClusterLeave { config },
        |answer| {
            format!(
                "left Raft group {}",
                answer["left"].as_str().unwrap_or_default()
            )
        },
    )
}

/// `flotilla reconfigure --config F`: the node running on this host with
/// F's data dir runs F's services from then on, draining each it drops.
pub(super) fn reconfigure(path: &Path, catalogue: &Services) -> ExitCode {
    control_command(
        path,
        catalogue,
        |config| ControlOp::Reconfigure { config },
        |answer| {
            format!(
                "services: {}; started: {}; stopped after draining: {}",
                answer["services"], answer["started"], answer["stopped"]
            )
        },
    )
}

fn fail(message: String) -> ExitCode {
    eprintln!("flotilla: {message}");
    ExitCode::FAILURE
}

/// Sends `op` to the node whose data dir and admin listener `config` names.
fn run(config: &Config, op: &ControlOp) -> Result<serde_json::Value, String> {
    let token_file = config.data_dir.join(crate::node::CONTROL_TOKEN_FILE);
    let token = std::fs::read_to_string(&token_file).map_err(|e| {
        format!(
            "cannot read the node's control token {}: {e}. Is the node running on this host with data_dir {}?",
            token_file.display(),
            config.data_dir.display()
        )
    })?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let admin = config.listeners.admin;
    let body = serde_json::to_vec(op).expect("a control operation encodes");
    runtime.block_on(async move {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<Full<Bytes>>();
        let request = http::Request::post(format!("http://{admin}/control"))
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(CONTROL_HEADER, token.trim())
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let response = tokio::time::timeout(PATIENCE, client.request(request))
            .await
            .map_err(|_| {
                format!(
                    "the node at {admin} did not answer within {} s",
                    PATIENCE.as_secs()
                )
            })?
            .map_err(|e| {
                format!("cannot reach the node's admin listener {admin}: {e}. Is it running?")
            })?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("the node's answer was cut off: {e}"))?
            .to_bytes();
        let answer: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
            format!("the node answered {status} with something that is not JSON: {e}")
        })?;
        if status.is_success() {
            Ok(answer)
        } else {
            Err(answer["message"]
                .as_str()
                .map_or_else(|| answer.to_string(), str::to_owned))
        }
    })
}
