//! `swarm`: Docker's swarm, node and service verbs against the local swarm-agent socket.
//!
//! Exit codes follow the Docker CLI: 0 on success, 1 for errors (daemon errors, wrong
//! number of arguments, invalid values checked after parsing), 125 when the flags
//! themselves cannot be parsed (unknown flag, a value of the wrong type).

mod arity;
mod client;
mod cluster_cmd;
mod completion_cmd;
mod error;
mod format;
mod format_rows;
mod json;
mod list_filter;
mod login_cmd;
mod logs_cmd;
mod network_cmd;
mod node_cmd;
mod opts;
mod output_format;
mod progress;
mod ps;
mod registry_auth;
mod resolve;
mod secret_cmd;
mod service_cmd;
mod service_filter;
mod service_spec;
mod stack_cmd;
mod swarm_cmd;
mod table;
mod template;
mod unlock_cmd;

use clap::{CommandFactory, Parser, Subcommand};

use crate::arity::{check_args, Arity};
use crate::client::{Client, DEFAULT_HOST};
use crate::error::{CliError, Result};
use crate::network_cmd::NetworkCmd;
use crate::node_cmd::NodeCmd;
use crate::secret_cmd::{DataCmd, Which};
use crate::service_cmd::ServiceCmd;

/// Exit status of a flag parse error (Docker's `FlagErrorFunc`).
const FLAG_ERROR_EXIT: i32 = 125;

#[derive(Debug, Parser)]
#[command(
    name = "swarm",
    version,
    about = "Manage a swarm: Docker's swarm, node and service commands, served by swarm-agent"
)]
struct Cli {
    /// Agent socket to connect to
    #[arg(
        short = 'H',
        long = "host",
        env = "SWARM_HOST",
        default_value = DEFAULT_HOST,
        global = true
    )]
    host: String,
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process
enum Command {
    /// Initialize a swarm
    Init(swarm_cmd::InitArgs),
    /// Join a swarm as a node and/or manager
    Join(swarm_cmd::JoinArgs),
    /// Manage join tokens
    JoinToken(swarm_cmd::JoinTokenArgs),
    /// Leave the swarm
    Leave(swarm_cmd::LeaveArgs),
    /// Show the swarm state of this node
    Info(swarm_cmd::InfoArgs),
    /// Display and rotate the root CA
    Ca(cluster_cmd::CaArgs),
    /// Update the swarm
    Update(cluster_cmd::UpdateArgs),
    /// Unlock swarm
    Unlock(unlock_cmd::UnlockArgs),
    /// Manage the unlock key
    UnlockKey(unlock_cmd::UnlockKeyArgs),
    /// Manage swarm nodes
    #[command(subcommand)]
    Node(NodeCmd),
    /// Manage swarm services
    #[command(subcommand)]
    Service(ServiceCommand),
    /// Manage swarm networks
    #[command(subcommand)]
    Network(NetworkCmd),
    /// Manage swarm secrets
    #[command(subcommand)]
    Secret(DataCmd),
    /// Manage swarm configs
    #[command(subcommand)]
    Config(DataCmd),
    /// Manage swarm stacks
    #[command(subcommand)]
    Stack(stack_cmd::StackCmd),
    /// Log in to a registry (kept in Docker's config.json)
    Login(login_cmd::LoginArgs),
    /// Log out from a registry
    Logout(login_cmd::LogoutArgs),
    /// Generate the autocompletion script for the specified shell
    Completion(completion_cmd::CompletionArgs),
    /// Write a man page for every command to OUTDIR
    #[command(hide = true)]
    ManPages(completion_cmd::ManArgs),
}

/// `swarm service ...`: the verbs of [`ServiceCmd`] and `logs`.
#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process
enum ServiceCommand {
    #[command(flatten)]
    Cmd(ServiceCmd),
    /// Fetch the logs of a service or task
    #[command(override_usage = "swarm service logs [OPTIONS] SERVICE|TASK")]
    Logs(logs_cmd::LogsArgs),
}

async fn run(cli: Cli) -> Result<()> {
    use Arity::*;
    // Argument checks come before connecting, as in Docker.
    match &cli.cmd {
        Command::Join(a) => check_args(
            "swarm join",
            "swarm join [OPTIONS] HOST:PORT",
            Exactly(1),
            a.remote.len(),
        )?,
        Command::JoinToken(a) => check_args(
            "swarm join-token",
            "swarm join-token [OPTIONS] (worker|manager)",
            Exactly(1),
            a.role.len(),
        )?,
        Command::Node(n) => match n {
            NodeCmd::Inspect(a) => check_args(
                "swarm node inspect",
                "swarm node inspect [OPTIONS] self|NODE [NODE...]",
                AtLeast(1),
                a.nodes.len(),
            )?,
            NodeCmd::Update(a) => check_args(
                "swarm node update",
                "swarm node update [OPTIONS] NODE",
                Exactly(1),
                a.node.len(),
            )?,
            NodeCmd::Promote(a) => check_args(
                "swarm node promote",
                "swarm node promote NODE [NODE...]",
                AtLeast(1),
                a.nodes.len(),
            )?,
            NodeCmd::Demote(a) => check_args(
                "swarm node demote",
                "swarm node demote NODE [NODE...]",
                AtLeast(1),
                a.nodes.len(),
            )?,
            NodeCmd::Rm(a) => check_args(
                "swarm node rm",
                "swarm node rm [OPTIONS] NODE [NODE...]",
                AtLeast(1),
                a.nodes.len(),
            )?,
            NodeCmd::Ls(_) | NodeCmd::Ps(_) => {}
        },
        Command::Service(ServiceCommand::Logs(a)) => check_args(
            "swarm service logs",
            "swarm service logs [OPTIONS] SERVICE|TASK",
            Exactly(1),
            a.target.len(),
        )?,
        Command::Service(ServiceCommand::Cmd(s)) => match s {
            ServiceCmd::Create(a) => check_args(
                "swarm service create",
                "swarm service create [OPTIONS] IMAGE [COMMAND] [ARG...]",
                AtLeast(1),
                a.image_and_args.len(),
            )?,
            ServiceCmd::Inspect(a) => check_args(
                "swarm service inspect",
                "swarm service inspect [OPTIONS] SERVICE [SERVICE...]",
                AtLeast(1),
                a.services.len(),
            )?,
            ServiceCmd::Ps(a) => check_args(
                "swarm service ps",
                "swarm service ps [OPTIONS] SERVICE [SERVICE...]",
                AtLeast(1),
                a.services.len(),
            )?,
            ServiceCmd::Rm(a) => check_args(
                "swarm service rm",
                "swarm service rm SERVICE [SERVICE...]",
                AtLeast(1),
                a.services.len(),
            )?,
            ServiceCmd::Scale(a) => {
                let usage = "swarm service scale SERVICE=REPLICAS [SERVICE=REPLICAS...]";
                check_args("swarm service scale", usage, AtLeast(1), a.specs.len())?;
                if let Err(bad) = service_cmd::parse_scale_args(&a.specs) {
                    return Err(CliError::raw(format!(
                        "invalid scale specifier '{bad}'.\nSee 'swarm service scale --help'.\n\nUsage:  {usage}\n\nScale one or multiple replicated services"
                    )));
                }
            }
            ServiceCmd::Update(a) => check_args(
                "swarm service update",
                "swarm service update [OPTIONS] SERVICE",
                Exactly(1),
                a.service.len(),
            )?,
            ServiceCmd::Rollback(a) => check_args(
                "swarm service rollback",
                "swarm service rollback [OPTIONS] SERVICE",
                Exactly(1),
                a.service.len(),
            )?,
            ServiceCmd::Ls(_) => {}
        },
        Command::Network(n) => match n {
            NetworkCmd::Create(a) => check_args(
                "swarm network create",
                "swarm network create [OPTIONS] NETWORK",
                Exactly(1),
                a.name.len(),
            )?,
            NetworkCmd::Inspect(a) => check_args(
                "swarm network inspect",
                "swarm network inspect [OPTIONS] NETWORK [NETWORK...]",
                AtLeast(1),
                a.networks.len(),
            )?,
            NetworkCmd::Rm(a) => check_args(
                "swarm network rm",
                "swarm network rm NETWORK [NETWORK...]",
                AtLeast(1),
                a.networks.len(),
            )?,
            NetworkCmd::Ls(_) => {}
        },
        Command::Secret(s) => secret_cmd::check_arity(Which::Secret, s)?,
        Command::Config(s) => secret_cmd::check_arity(Which::Config, s)?,
        Command::Stack(_)
        | Command::Login(_)
        | Command::Logout(_)
        | Command::Completion(_)
        | Command::ManPages(_) => {}
        Command::Init(_)
        | Command::Leave(_)
        | Command::Info(_)
        | Command::Ca(_)
        | Command::Update(_)
        | Command::Unlock(_)
        | Command::UnlockKey(_) => {}
    }

    // `stack config` reads files only; logins need no agent.
    let cmd = match cli.cmd {
        Command::Stack(stack_cmd::StackCmd::Config(a)) => return stack_cmd::config(a),
        Command::Login(a) => return login_cmd::login(a).await,
        Command::Logout(a) => return login_cmd::logout(a),
        // Completions and man pages come from the clap definition alone.
        Command::Completion(a) => {
            use std::io::Write;
            let script = completion_cmd::completion(Cli::command(), a.shell);
            return std::io::stdout()
                .write_all(&script)
                .map_err(|e| CliError::msg(format!("cannot write the completion script: {e}")));
        }
        Command::ManPages(a) => return completion_cmd::man_pages(Cli::command(), &a.out_dir),
        cmd => cmd,
    };
    let c = Client::connect(&cli.host).await?;
    match cmd {
        Command::Stack(s) => stack_cmd::run(&c, s).await,
        Command::Login(_) | Command::Logout(_) | Command::Completion(_) | Command::ManPages(_) => {
            Ok(())
        }
        Command::Secret(s) => secret_cmd::run(&c, Which::Secret, s).await,
        Command::Config(s) => secret_cmd::run(&c, Which::Config, s).await,
        Command::Init(a) => swarm_cmd::init(&c, a).await,
        Command::Join(mut a) => {
            let remote = a.remote.remove(0);
            swarm_cmd::join(&c, a, remote).await
        }
        Command::JoinToken(mut a) => {
            let role = a.role.remove(0);
            swarm_cmd::join_token(&c, a, role).await
        }
        Command::Leave(a) => swarm_cmd::leave(&c, a).await,
        Command::Info(a) => swarm_cmd::info(&c, a).await,
        Command::Ca(a) => cluster_cmd::ca(&c, a).await,
        Command::Update(a) => cluster_cmd::update(&c, a).await,
        Command::Unlock(a) => unlock_cmd::unlock(&c, a).await,
        Command::UnlockKey(a) => unlock_cmd::unlock_key(&c, a).await,
        Command::Node(n) => match n {
            NodeCmd::Ls(a) => node_cmd::ls(&c, a).await,
            NodeCmd::Inspect(a) => node_cmd::inspect(&c, a).await,
            NodeCmd::Update(mut a) => {
                let node = a.node.remove(0);
                node_cmd::update(&c, a, node).await
            }
            NodeCmd::Promote(a) => node_cmd::set_role(&c, a.nodes, proto::NodeRole::Manager).await,
            NodeCmd::Demote(a) => node_cmd::set_role(&c, a.nodes, proto::NodeRole::Worker).await,
            NodeCmd::Rm(a) => node_cmd::rm(&c, a).await,
            NodeCmd::Ps(a) => node_cmd::node_ps(&c, a).await,
        },
        Command::Network(n) => match n {
            NetworkCmd::Create(a) => network_cmd::create(&c, a).await,
            NetworkCmd::Ls(a) => network_cmd::ls(&c, a).await,
            NetworkCmd::Inspect(a) => network_cmd::inspect(&c, a).await,
            NetworkCmd::Rm(a) => network_cmd::rm(&c, a).await,
        },
        Command::Service(ServiceCommand::Logs(mut a)) => {
            let target = a.target.remove(0);
            logs_cmd::logs(&c, a, target).await
        }
        Command::Service(ServiceCommand::Cmd(s)) => match s {
            ServiceCmd::Create(a) => service_cmd::create(&c, a).await,
            ServiceCmd::Inspect(a) => service_cmd::inspect(&c, a).await,
            ServiceCmd::Ls(a) => service_cmd::ls(&c, a).await,
            ServiceCmd::Ps(a) => service_cmd::service_ps(&c, a).await,
            ServiceCmd::Rm(a) => service_cmd::rm(&c, a).await,
            ServiceCmd::Scale(a) => {
                let specs = service_cmd::parse_scale_args(&a.specs)
                    .map_err(|b| CliError::msg(format!("invalid scale specifier '{b}'")))?;
                service_cmd::scale(&c, a, specs).await
            }
            ServiceCmd::Update(mut a) => {
                let name = a.service.remove(0);
                // The spec stores network ids: names are resolved first.
                a.network_add = network_cmd::ids_for_add(&c, &a.network_add).await?;
                a.network_rm = network_cmd::ids_for_rm(&c, &a.network_rm).await?;
                service_cmd::update(&c, *a, name).await
            }
            ServiceCmd::Rollback(mut a) => {
                let name = a.service.remove(0);
                service_cmd::rollback(&c, a, name).await
            }
        },
    }
}

fn main() {
    // Like other Unix tools, die quietly when the reader of our output goes away
    // (`swarm service ps web | head`) instead of panicking on a write error.
    // SAFETY: setting a signal disposition before any thread is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            let code = match e.kind() {
                ErrorKind::DisplayHelp
                | ErrorKind::DisplayVersion
                | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                    // `swarm` or `swarm node` alone print the help, as `docker` does.
                    let _ = e.print();
                    0
                }
                _ => {
                    let _ = e.print();
                    FLAG_ERROR_EXIT
                }
            };
            std::process::exit(code);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(run(cli)) {
        eprintln!("{e}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn host_flag_and_subcommands_parse() {
        let cli = Cli::try_parse_from(["swarm", "-H", "unix:///tmp/a.sock", "service", "ls", "-q"]);
        let cli = cli.ok();
        assert_eq!(
            cli.as_ref().map(|c| c.host.as_str()),
            Some("unix:///tmp/a.sock")
        );
        assert!(Cli::try_parse_from(["swarm", "node", "ls", "-H", "unix:///x"]).is_ok());
        assert!(
            Cli::try_parse_from(["swarm", "service", "create", "--replicas", "-1", "nginx"])
                .is_err()
        );
        assert!(Cli::try_parse_from(["swarm", "join-token", "-q", "worker"]).is_ok());
        assert!(Cli::try_parse_from(["swarm", "node", "list"]).is_ok());
        assert!(Cli::try_parse_from(["swarm", "service", "remove", "x"]).is_ok());
        let logs = Cli::try_parse_from([
            "swarm",
            "service",
            "logs",
            "-f",
            "-t",
            "--tail",
            "5",
            "--no-task-ids",
            "web",
        ]);
        match logs.map(|c| c.cmd) {
            Ok(Command::Service(ServiceCommand::Logs(a))) => {
                assert!(a.follow && a.timestamps && a.no_task_ids);
                assert_eq!(
                    (a.tail.as_str(), a.target.as_slice()),
                    ("5", &["web".to_string()][..])
                );
            }
            other => panic!("service logs did not parse: {other:?}"),
        }
        assert!(Cli::try_parse_from(["swarm", "service", "logs", "-n", "all", "web"]).is_ok());
        assert!(Cli::try_parse_from([
            "swarm",
            "network",
            "create",
            "-d",
            "overlay",
            "--subnet",
            "10.1.0.0/24",
            "net"
        ])
        .is_ok());
        assert!(Cli::try_parse_from(["swarm", "network", "ls", "-q"]).is_ok());
        assert!(Cli::try_parse_from(["swarm", "network", "rm", "a", "b"]).is_ok());
        assert!(Cli::try_parse_from([
            "swarm",
            "init",
            "--default-addr-pool",
            "10.20.0.0/16",
            "--default-addr-pool",
            "10.30.0.0/16",
            "--default-addr-pool-mask-length",
            "26",
            "--data-path-port",
            "7777"
        ])
        .is_ok());
        assert!(Cli::try_parse_from(["swarm", "init", "--data-path-port", "80"]).is_err());
    }

    #[test]
    fn completion_scripts_cover_the_commands_and_flags() {
        let bash = String::from_utf8(completion_cmd::completion(
            Cli::command(),
            clap_complete::Shell::Bash,
        ))
        .unwrap();
        for want in ["_swarm()", "service", "--filter", "--format", "stack"] {
            assert!(bash.contains(want), "bash completion lacks {want}");
        }
        let zsh = String::from_utf8(completion_cmd::completion(
            Cli::command(),
            clap_complete::Shell::Zsh,
        ))
        .unwrap();
        assert!(zsh.starts_with("#compdef swarm"), "{}", &zsh[..40]);
        let fish = String::from_utf8(completion_cmd::completion(
            Cli::command(),
            clap_complete::Shell::Fish,
        ))
        .unwrap();
        assert!(fish.contains("complete -c swarm"));
        let cli = Cli::try_parse_from(["swarm", "completion", "fish"]).unwrap();
        assert!(matches!(cli.cmd, Command::Completion(_)));
        assert!(Cli::try_parse_from(["swarm", "completion", "tcsh"]).is_err());
    }

    #[test]
    fn man_pages_are_written_for_every_visible_command() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("man1");
        completion_cmd::man_pages(Cli::command(), &out).unwrap();
        let page = std::fs::read_to_string(out.join("swarm-service-ls.1")).unwrap();
        assert!(page.starts_with(".ie"), "not roff: {}", &page[..20]);
        assert!(page.contains("filter"), "{page}");
        assert!(out.join("swarm.1").exists() && out.join("swarm-node-ps.1").exists());
        assert!(!out.join("swarm-man-pages.1").exists());
    }
}
