//! The command line: `serve`, `check-config`, `gen-envoy` and the
//! administrative commands.
//!
//! Exit codes: 0 success; 64 (EX_USAGE) for a bad command line or config,
//! always before any port is bound; 1 when the node fails to start or run.

mod backup;
mod ca;
mod control;
mod plan;
mod status;

pub use plan::plan;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

use crate::{catalogue::Catalogue, config::Config, telemetry::LogFormat};

pub const EX_USAGE: u8 = 64;

#[derive(Debug, Parser)]
#[command(
    name = "flotilla",
    version,
    about = "One binary that runs a fleet of services"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the services the config selects on this node.
    Serve {
        /// The node's config file.
        #[arg(long, env = "FLOTILLA_CONFIG")]
        config: PathBuf,
        /// Log format, overriding the config's `log.format`: human or json.
        #[arg(long, env = "FLOTILLA_LOG_FORMAT", value_parser = parse_log_format)]
        log_format: Option<LogFormat>,
    },
    /// Validate a config and print the plan it resolves to, starting nothing.
    CheckConfig {
        #[arg(long, env = "FLOTILLA_CONFIG")]
        config: PathBuf,
    },
    /// Manage accounts directly in the node's database.
    Accounts {
        #[command(subcommand)]
        command: AccountsCommand,
    },
    /// Manage token signing keys.
    Auth {
        #[command(subcommand)]
        command: AuthCommand,
    },
    /// The cluster's certificate authority (TLS between nodes, under way).
    Ca {
        #[command(subcommand)]
        command: ca::CaCommand,
    },
    /// Inspect and change the Raft group, through the running members.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Copy the node's database to FILE, consistently, while it serves: in a
    /// cluster, with every write the group acknowledged before it started.
    /// Run it on the node's host with its config (a db member's).
    Backup {
        #[arg(long, env = "FLOTILLA_CONFIG")]
        config: PathBuf,
        /// The file to write; it must not exist.
        #[arg(long)]
        out: PathBuf,
    },
    /// Seed the node's data dir from a backup, before the node starts. In a
    /// cluster, restore every member from the same file: they start a new
    /// group on that data.
    Restore {
        #[arg(long, env = "FLOTILLA_CONFIG")]
        config: PathBuf,
        /// A file `flotilla backup` wrote.
        #[arg(long)]
        from: PathBuf,
        /// Replace a database (and Raft log) already in the data dir; the
        /// old files are kept beside, renamed.
        #[arg(long)]
        force: bool,
    },
    /// Make the node running on this host run the services of CONFIG from
    /// now on: it may only drop services, and drains each first (the other
    /// nodes and the Envoys fed by xDS stop sending it there, what still
    /// arrives is served), then forwards its requests to the nodes that run
    /// it. CONFIG is the node's config from then on.
    Reconfigure {
        #[arg(long, env = "FLOTILLA_CONFIG")]
        config: PathBuf,
    },
    /// The config file's format.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Print a completion script for SHELL (bash, zsh, fish, elvish,
    /// powershell), e.g. into /etc/bash_completion.d/flotilla, or
    /// `source <(flotilla completions zsh)`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write an Envoy bootstrap for a mode: fixed resources from a config
    /// (single) or a topology (ha, scaled), or an ADS bootstrap (k3d).
    GenEnvoy {
        #[command(flatten)]
        request: crate::envoy::Request,
        /// Write to FILE instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print the JSON Schema of a config file (draft 2020-12), for editors:
    /// the committed configs point yaml-language-server at
    /// `config/schema.json`, this output.
    Schema,
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Turn the single node running on this host into the first member of
    /// a new Raft group, while it serves: its database becomes the group's
    /// first snapshot. CONFIG is the node's config from now on (a member's:
    /// a `cluster` section, the db role, a peer listener; the same node id,
    /// data dir, services and listeners).
    Init {
        #[arg(long, env = "FLOTILLA_CONFIG")]
        config: PathBuf,
    },
    /// Every member's view: role, term, leader, log, commit and applied
    /// indexes, as a table; with `--json`, everything each member says
    /// (peers, certificate, snapshot) as JSON.
    Status {
        #[arg(long, env = "FLOTILLA_CONFIG")]
        config: PathBuf,
        /// Print each member's whole status as JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Add a node as a learner (it receives the log but does not vote);
    /// returns once it has caught up.
    AddLearner {
        #[arg(long, env = "FLOTILLA_CONFIG")]
        config: PathBuf,
        #[arg(long)]
        id: u64,
        /// The new node's peer address (IP:PORT); by default, the one the
        /// topology gives member ID.
        #[arg(long)]
        peer: Option<String>,
    },
    /// Make caught-up learners voters, in one membership change (from one
    /// voter to three: `--id 2 --id 3`).
    Promote {
        #[arg(long, env = "FLOTILLA_CONFIG")]
        config: PathBuf,
        #[arg(long = "id", required = true)]
        ids: Vec<u64>,
    },
    /// Remove voters (or learners), in one membership change (from three
    /// voters to one: `--id 2 --id 3`). Leaving two voters is refused.
    Remove {
        #[arg(long, env = "FLOTILLA_CONFIG")]
        config: PathBuf,
        #[arg(long = "id", required = true)]
        ids: Vec<u64>,
    },
    /// Turn the last member of a group, running on this host, back into a
    /// single node while it serves: it stops replicating and keeps its
    /// database; its Raft log is deleted. CONFIG is the node's single-mode
    /// config from now on (no `cluster` section; the same node id, data
    /// dir, services and listeners).
    Leave {
        #[arg(long, env = "FLOTILLA_CONFIG")]
        config: PathBuf,
        /// Required: the group ends, and its other members (if any were
        /// left) could not rejoin it.
        #[arg(long)]
        confirm: bool,
    },
    /// Print the `cluster.client_key` of a node without the db role: it is
    /// derived from the cluster secret and the node's name.
    ClientKey {
        /// A db member's config (it holds the cluster secret).
        #[arg(long, env = "FLOTILLA_CONFIG")]
        config: PathBuf,
        /// The node, as named under `nodes` in the topology.
        #[arg(long)]
        node: String,
    },
    /// Print a join token: it lets a node that is not in the topology (a pod
    /// of a Deployment) join as a store client running some of `--services`,
    /// under a name of its own choosing that no live node holds.
    JoinToken {
        /// A db member's config (it holds the cluster secret).
        #[arg(
            long,
            env = "FLOTILLA_CONFIG",
            conflicts_with = "secret_file",
            required_unless_present = "secret_file"
        )]
        config: Option<PathBuf>,
        /// Or the cluster secret's file itself (e.g. while creating the
        /// secrets of a deployment).
        #[arg(long)]
        secret_file: Option<PathBuf>,
        /// The services it allows, comma-separated: e.g. `echo` or `kv,echo`.
        #[arg(long, value_delimiter = ',', required = true)]
        services: Vec<String>,
    },
    /// Hand leadership to another voter (the most caught-up one by default).
    TransferLeader {
        #[arg(long, env = "FLOTILLA_CONFIG")]
        config: PathBuf,
        #[arg(long)]
        to: Option<u64>,
    },
}

#[derive(Debug, Subcommand)]
enum AccountsCommand {
    /// Create an admin account; the password is read from the first line of
    /// standard input. The way to the first admin.
    CreateAdmin {
        #[arg(long, env = "FLOTILLA_CONFIG")]
        config: PathBuf,
        #[arg(long)]
        username: String,
    },
}

#[derive(Debug, Subcommand)]
enum AuthCommand {
    /// Retire the current signing key and create a new one. Tokens signed
    /// with the retired key stay valid until they expire; running nodes pick
    /// the new key up within seconds.
    RotateKeys {
        #[arg(long, env = "FLOTILLA_CONFIG")]
        config: PathBuf,
    },
}

fn parse_log_format(s: &str) -> Result<LogFormat, String> {
    LogFormat::parse(s)
        .ok_or_else(|| format!("unknown log format `{s}`; valid formats: human, json"))
}

/// Runs the command line with `catalogue` as the set of compiled-in
/// services. The binary passes [`Catalogue::builtin`]; an embedding program
/// can pass its own.
pub fn main(catalogue: Catalogue) -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EX_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    // Checked once, with the routing table built then; a catalogue that
    // does not hold together is a usage error of the embedding program.
    let catalogue = match catalogue.check() {
        Ok(services) => services,
        Err(e) => {
            eprintln!("flotilla: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    match cli.command {
        Command::CheckConfig { config } => match Config::load(&config, &catalogue) {
            Ok(c) => {
                print!("{}", plan(&c, &catalogue));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprint!("{e}");
                ExitCode::from(EX_USAGE)
            }
        },
        Command::Accounts {
            command: AccountsCommand::CreateAdmin { config, username },
        } => {
            let mut password = String::new();
            if let Err(e) = std::io::stdin().read_line(&mut password) {
                eprintln!("cannot read the password from standard input: {e}");
                return ExitCode::from(EX_USAGE);
            }
            let password = password.trim_end_matches(['\n', '\r']).to_owned();
            if password.is_empty() {
                eprintln!(
                    "no password read from standard input: pipe it in, e.g. printf '%s\\n' \"$PASSWORD\" | flotilla accounts create-admin --config F --username NAME"
                );
                return ExitCode::from(EX_USAGE);
            }
            offline(&config, &catalogue, |auth| async move {
                let user = crate::services::accounts::create_admin(&auth, &username, password)
                    .await
                    .map_err(|e| e.message)?;
                Ok(format!(
                    "created admin `{}` (id {})",
                    user.username, user.id
                ))
            })
        }
        Command::Auth {
            command: AuthCommand::RotateKeys { config },
        } => offline(&config, &catalogue, |auth| async move {
            let kid = auth.rotate_keys().await.map_err(|e| e.to_string())?;
            Ok(format!("rotated: new signing key {kid}"))
        }),
        Command::Ca { command } => ca::run(command, &catalogue),
        Command::Backup { config, out } => backup::backup(&config, &catalogue, &out),
        Command::Restore {
            config,
            from,
            force,
        } => backup::restore(&config, &catalogue, &from, force),
        Command::Reconfigure { config } => control::reconfigure(&config, &catalogue),
        Command::GenEnvoy { request, out } => {
            let yaml = match crate::envoy::generate(&request, &catalogue) {
                Ok(y) => y,
                Err(e) => {
                    eprintln!("flotilla gen-envoy: {e}");
                    return ExitCode::from(EX_USAGE);
                }
            };
            match out {
                None => {
                    print!("{yaml}");
                    ExitCode::SUCCESS
                }
                Some(path) => match std::fs::write(&path, yaml) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("flotilla gen-envoy: cannot write {}: {e}", path.display());
                        ExitCode::FAILURE
                    }
                },
            }
        }
        Command::Cluster { command } => {
            use crate::cluster::AdminOp;
            let (config, op) = match command {
                ClusterCommand::ClientKey { config, node } => {
                    return client_key(&config, &catalogue, &node);
                }
                ClusterCommand::JoinToken {
                    config,
                    secret_file,
                    services,
                } => {
                    return join_token(
                        config.as_deref(),
                        secret_file.as_deref(),
                        &catalogue,
                        &services,
                    );
                }
                ClusterCommand::Status { config, json } => {
                    return cluster_status(&config, &catalogue, json);
                }
                ClusterCommand::Init { config } => {
                    return control::cluster_init(&config, &catalogue);
                }
                ClusterCommand::AddLearner { config, id, peer } => {
                    let peer = match peer {
                        Some(p) => p,
                        None => match topology_peer(&config, &catalogue, id) {
                            Ok(p) => p,
                            Err(code) => return code,
                        },
                    };
                    (config, AdminOp::AddLearner { id, peer })
                }
                ClusterCommand::Promote { config, ids } => (config, AdminOp::Promote { ids }),
                ClusterCommand::Remove { config, ids } => (config, AdminOp::Remove { ids }),
                ClusterCommand::Leave { config, confirm } => {
                    return control::cluster_leave(&config, &catalogue, confirm);
                }
                ClusterCommand::TransferLeader { config, to } => {
                    (config, AdminOp::TransferLeader { to })
                }
            };
            cluster_command(&config, &catalogue, op)
        }
        Command::Config {
            command: ConfigCommand::Schema,
        } => {
            print!("{}", crate::config::schema_json());
            ExitCode::SUCCESS
        }
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "flotilla",
                &mut std::io::stdout(),
            );
            ExitCode::SUCCESS
        }
        Command::Serve { config, log_format } => {
            let config = match Config::load(&config, &catalogue) {
                Ok(c) => c,
                Err(e) => {
                    eprint!("{e}");
                    return ExitCode::from(EX_USAGE);
                }
            };
            crate::telemetry::init(log_format.unwrap_or(config.log.format), &config.log.level);
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(crate::node::run(config, catalogue)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "node failed");
                    eprintln!("flotilla: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// How long a command run outside a node waits for a member's peer
/// listener to take a connection before it calls the cluster down.
const MEMBER_PROBE: std::time::Duration = std::time::Duration::from_secs(1);

/// Runs `work` against the node's store and auth without serving: the
/// administrative commands. Safe while the node runs (SQLite locks the file;
/// the node reloads keys and accounts from it).
fn offline<F, Fut>(config: &std::path::Path, catalogue: &Catalogue, work: F) -> ExitCode
where
    F: FnOnce(std::sync::Arc<crate::auth::Auth>) -> Fut,
    Fut: std::future::Future<Output = Result<String, String>>,
{
    let config = match Config::load(config, catalogue) {
        Ok(c) => c,
        Err(e) => {
            eprint!("{e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        // In a cluster the command goes through Raft like any write: the
        // local store only carries it to the members (it is a scratch copy
        // in a temporary directory). Alone, it works on the node's database.
        let scratch =
            tempfile::tempdir().map_err(|e| format!("cannot create a temporary directory: {e}"))?;
        let data_dir = match &config.cluster {
            Some(_) => scratch.path().to_owned(),
            None => config.data_dir.clone(),
        };
        std::fs::create_dir_all(&data_dir)
            .map_err(|e| format!("cannot create {}: {e}", data_dir.display()))?;
        let store = crate::store::Store::open(
            &crate::store::StoreConfig {
                data_dir,
                readers: 1,
                durability: crate::store::Durability::Full,
            },
            crate::telemetry::metrics::Metrics::new().store,
        )
        .map_err(|e| e.to_string())?;
        if let Some(settings) = &config.cluster {
            if !crate::cluster::any_member_listening(settings, MEMBER_PROBE).await {
                return Err(format!(
                    "the cluster is down: none of its members answers on its peer listener ({}). Start the members first (`flotilla serve --config <member's config>` on each; `examples/cluster.sh ha start` for config/ha/), then run this again.",
                    crate::cluster::members_named(settings)
                ));
            }
            store
                .set_replicator(crate::cluster::remote_replicator(settings))
                .map_err(|e| e.to_string())?;
        }
        let auth = crate::auth::Auth::open(&store, config.auth.clone())
            .await
            .map_err(|e| e.to_string())?;
        work(auth).await
    });
    match result {
        Ok(message) => {
            println!("{message}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("flotilla: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The cluster section of the config at `path`; a usage error (already
/// reported) if the config is invalid or has none.
fn cluster_settings(
    path: &std::path::Path,
    catalogue: &Catalogue,
) -> Result<crate::cluster::ClusterSettings, ExitCode> {
    let config = Config::load(path, catalogue).map_err(|e| {
        eprint!("{e}");
        ExitCode::from(EX_USAGE)
    })?;
    config.cluster.ok_or_else(|| {
        eprintln!("flotilla: this config has no `cluster` section: the node is not in a cluster");
        ExitCode::from(EX_USAGE)
    })
}

/// The peer address the topology of the config at `path` gives member `id`.
fn topology_peer(
    path: &std::path::Path,
    catalogue: &Catalogue,
    id: u64,
) -> Result<String, ExitCode> {
    let settings = cluster_settings(path, catalogue)?;
    settings
        .members
        .iter()
        .find(|m| m.id == id)
        .map(|m| m.peer.to_string())
        .ok_or_else(|| {
            eprintln!(
                "flotilla: member {id} is not in the topology of {}: add it under `members`, or give --peer",
                path.display()
            );
            ExitCode::from(EX_USAGE)
        })
}

fn client_key(config: &std::path::Path, catalogue: &Catalogue, node: &str) -> ExitCode {
    let settings = match cluster_settings(config, catalogue) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let crate::cluster::Role::Voter { secret, .. } = &settings.role else {
        eprintln!(
            "flotilla: this is a store client's config: run this with a db member's config, which holds the cluster secret"
        );
        return ExitCode::from(EX_USAGE);
    };
    if !settings.clients.iter().any(|n| n == node) {
        eprintln!(
            "flotilla: `{node}` is not listed under `nodes` in the topology: only nodes without the db role have client keys"
        );
        return ExitCode::from(EX_USAGE);
    }
    println!("{}", crate::cluster::network::client_key(secret, node));
    ExitCode::SUCCESS
}

fn join_token(
    config: Option<&std::path::Path>,
    secret_file: Option<&std::path::Path>,
    catalogue: &Catalogue,
    services: &[String],
) -> ExitCode {
    let unknown: Vec<&String> = services
        .iter()
        .filter(|s| !catalogue.names().any(|n| n == s.as_str()))
        .collect();
    if !unknown.is_empty() || services.is_empty() {
        eprintln!(
            "flotilla: a join token names services of this binary ({}); not {}",
            catalogue.names().collect::<Vec<_>>().join(", "),
            unknown
                .iter()
                .map(|s| format!("`{s}`"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        return ExitCode::from(EX_USAGE);
    }
    let secret = match (config, secret_file) {
        (Some(config), _) => {
            let settings = match cluster_settings(config, catalogue) {
                Ok(s) => s,
                Err(code) => return code,
            };
            let crate::cluster::Role::Voter { secret, .. } = settings.role else {
                eprintln!(
                    "flotilla: this is a store client's config: run this with a db member's config, which holds the cluster secret"
                );
                return ExitCode::from(EX_USAGE);
            };
            secret
        }
        (None, Some(file)) => match std::fs::read_to_string(file) {
            Ok(s) if s.trim_end().len() >= 32 => s.trim_end_matches(['\n', '\r']).to_owned(),
            Ok(_) => {
                eprintln!(
                    "flotilla: {} holds less than 32 characters: a cluster secret is longer (e.g. `openssl rand -base64 48`)",
                    file.display()
                );
                return ExitCode::from(EX_USAGE);
            }
            Err(e) => {
                eprintln!("flotilla: cannot read {}: {e}", file.display());
                return ExitCode::from(EX_USAGE);
            }
        },
        (None, None) => unreachable!("clap requires --config or --secret-file"),
    };
    // In catalogue order, each once: one set of services, one token.
    let scope: Vec<String> = catalogue
        .names()
        .filter(|n| services.iter().any(|s| s == n))
        .map(str::to_owned)
        .collect();
    println!("{}", crate::cluster::join_token(&secret, &scope));
    ExitCode::SUCCESS
}

fn cluster_command(
    config: &std::path::Path,
    catalogue: &Catalogue,
    op: crate::cluster::AdminOp,
) -> ExitCode {
    cluster_call(config, catalogue, op, |v| {
        serde_json::to_string_pretty(&v).unwrap_or_default()
    })
}

/// `cluster status`: the members' views as a table, or as JSON.
fn cluster_status(config: &std::path::Path, catalogue: &Catalogue, json: bool) -> ExitCode {
    cluster_call(config, catalogue, crate::cluster::AdminOp::Status, |v| {
        if json {
            serde_json::to_string_pretty(&v).unwrap_or_default()
        } else {
            status::table(&v)
        }
    })
}

/// Runs `op` through the running members and prints its answer as `show`
/// says.
fn cluster_call(
    config: &std::path::Path,
    catalogue: &Catalogue,
    op: crate::cluster::AdminOp,
    show: impl FnOnce(serde_json::Value) -> String,
) -> ExitCode {
    let settings = match cluster_settings(config, catalogue) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(crate::cluster::remote_admin(&settings, op)) {
        Ok(v) => {
            println!("{}", show(v).trim_end());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("flotilla: {e}");
            ExitCode::FAILURE
        }
    }
}
