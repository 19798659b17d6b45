//! `loadtest`: the load generator's command line; the work is done by
//! `switchyard::loadgen`, which `switchyard demo` runs in-process too.

use clap::Parser;
use switchyard::loadgen::cli::LoadArgs;

/// Load generator for Switchyard and any ISO 8583 host.
#[derive(Parser)]
#[command(name = "loadtest", version)]
struct Cli {
    #[command(flatten)]
    args: LoadArgs,
}

fn main() -> std::process::ExitCode {
    switchyard::loadgen::cli::run(Cli::parse().args)
}
