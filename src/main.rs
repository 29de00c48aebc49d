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
            let message = e.to_string();
            eprintln!("error: {message}");
            // Errors that already quote their cause do not repeat it.
            for cause in e.chain().skip(1) {
                let cause = cause.to_string();
                if !message.contains(&cause) {
                    eprintln!("  caused by: {cause}");
                }
            }
            ExitCode::from(1)
        }
    }
}
