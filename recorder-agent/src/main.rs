//! `recorder-agent`: parses the command line and hands over to the subcommand.

use std::process::ExitCode;

use clap::{CommandFactory as _, FromArgMatches as _, Parser as _};
use recorder_agent::{
    app::{bench, bench_publish, record, run},
    client,
    config::{Cli, Command},
    export::publish::Mode,
};
use tracing_subscriber::EnvFilter;

/// The command line, named `kubectl syscall-recorder` in help and errors when the binary runs
/// as a kubectl plugin (installed as `kubectl-syscall_recorder` on the PATH).
fn parse() -> Cli {
    let plugin = std::env::args_os()
        .next()
        .map(std::path::PathBuf::from)
        .and_then(|path| {
            path.file_name()
                .map(|name| name.to_string_lossy().into_owned())
        })
        .is_some_and(|name| name.starts_with("kubectl-"));
    if !plugin {
        return Cli::parse();
    }
    let matches = Cli::command()
        .bin_name("kubectl syscall-recorder")
        .get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|err| err.exit())
}

fn main() -> ExitCode {
    let cli = parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colours only for people: log collectors (kubelet, files) get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.command {
        Command::Run(args) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|runtime| runtime.block_on(run::run(args)))
            .map(|()| ExitCode::SUCCESS),
        Command::Record(args) => record::run(args),
        Command::Profiles(args) => client::profiles(args),
        Command::Export(args) => client::export(args),
        Command::Diff(args) => client::diff(args),
        Command::Freeze(args) => client::set_mode(args, Mode::Frozen),
        Command::Unfreeze(args) => client::set_mode(args, Mode::Learning),
        Command::Merge(args) => client::merge(args),
        Command::Unpin(args) => run::unpin(&args),
        Command::MountBpffs(args) => run::mount_bpffs(&args),
        Command::BenchProbe(args) => bench::probe(&args),
        Command::BenchCollect(args) => bench::collect(&args),
        Command::BenchPublish(args) => bench_publish::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("recorder-agent: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
