//! The command line: run, validate settings, or start the demo.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::settings::Sources;

/// A reverse proxy and HTTP load balancer.
#[derive(Debug, Parser)]
#[command(name = "gatehouse", version, about)]
pub struct Cli {
    /// Settings file, or folder of *.toml files, applied over settings/*.toml
    #[arg(long, short = 'c', value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Validate the settings and exit: 0 valid, 1 invalid
    #[arg(long)]
    pub check: bool,
    /// With --check: print the effective settings and where each value came from
    #[arg(long, requires = "check")]
    pub print: bool,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start three demo origins on 127.0.0.1:9001-9003 and gatehouse in front of them on :8080
    Demo,
}

/// Parses the command line and runs; the whole of `main`.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::from_env(
        env_logger::Env::default()
            .default_filter_or("info,actix_server=warn,actix_http::h1::dispatcher=off"),
    )
    .target(env_logger::Target::Stderr)
    .init();
    if let Some(Command::Demo) = cli.command {
        return exit(crate::demo::run());
    }
    let sources = Sources {
        config: cli.config,
        ..Sources::default()
    };
    let loaded = match crate::supervisor::load(&sources) {
        Ok(loaded) => loaded,
        Err(err) => {
            eprintln!("gatehouse: invalid settings: {err}");
            return ExitCode::FAILURE;
        }
    };
    if cli.check {
        if cli.print {
            print!("{}", loaded.effective());
        }
        eprintln!("gatehouse: settings are valid");
        return ExitCode::SUCCESS;
    }
    exit(crate::run(loaded.settings, sources))
}

fn exit(result: std::io::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("gatehouse: {err}");
            ExitCode::FAILURE
        }
    }
}
