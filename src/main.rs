//! The `shrinkray` binary: parses the command line and maps results to exit codes.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    if let Err(e) = shrinkray::interrupt::install() {
        eprintln!("warning: cannot install the SIGINT/SIGTERM handlers: {e}");
    }
    match cli::run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            if let Some(stop) = shrinkray::interrupt::requested() {
                eprintln!("error: {stop}");
                return ExitCode::from(stop.exit_code());
            }
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::from(1)
        }
    }
}
