//! `loadtest`: the load generator's command line; the work is done by the
//! `loadtest` library, which `switchyard demo` runs in-process too.

use clap::Parser;
use loadtest::cli::LoadArgs;

/// Load generator for Switchyard and any ISO 8583 host.
#[derive(Parser)]
#[command(name = "loadtest", version)]
struct Cli {
    #[command(flatten)]
    args: LoadArgs,
}

fn main() -> std::process::ExitCode {
    loadtest::cli::run(Cli::parse().args)
}
