//! `rollbackd`: parse arguments, set up logging, dispatch, and turn the
//! error chain into a one-line cause on stderr and an exit code.

use clap::Parser;
use rollbackd::cli::{self, Cli};

fn main() {
    let cli = Cli::parse();
    if !matches!(cli.command, cli::Command::Run) {
        // A command piped into `head` should end quietly when the pipe
        // closes, as other Unix tools do, not panic on a failed print. The
        // daemon keeps Rust's default (SIGPIPE ignored, EPIPE as an error).
        // Safe: no other thread exists yet, and SIG_DFL installs no handler.
        let _ = unsafe {
            nix::sys::signal::signal(
                nix::sys::signal::Signal::SIGPIPE,
                nix::sys::signal::SigHandler::SigDfl,
            )
        };
    }
    if !matches!(cli.command, cli::Command::Demo) {
        // The demo narrates on stdout and logs to a file of its own.
        rollbackd::logging::init(cli.log_format);
    }
    // The daemon runs on one thread: its work is waiting (probes, timers,
    // the database's own threads), and hand-offs between worker threads
    // were most of its idle cost (docs/benchmarks.md). Its HTTP listener
    // has a thread of its own. Commands keep the multi-thread runtime.
    let mut builder = if matches!(cli.command, cli::Command::Run) {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rollbackd: cannot start the async runtime: {e}");
            std::process::exit(cli::EXIT_RUNTIME);
        }
    };
    let result = runtime.block_on(async {
        let result = cli::dispatch(cli).await;
        // What a command wrote reaches a fleet's shared database (bounded).
        rollbackd::store::shared::ship::drain_commands(std::time::Duration::from_secs(5)).await;
        result
    });
    if let Err(err) = result {
        eprintln!("rollbackd: {}", one_line(&err));
        std::process::exit(cli::exit_code(&err));
    }
}

/// The error chain on one line, each cause once: many errors already print
/// their source in their own message, so a cause the line already holds is
/// not repeated.
fn one_line(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain().map(|e| e.to_string()) {
        if line.contains(&cause) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&cause);
    }
    line
}
