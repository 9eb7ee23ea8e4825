//! `rollbackd`: parse arguments, set up logging, dispatch, and turn the
//! error chain into a one-line cause on stderr and an exit code.

use clap::Parser;
use rollbackd::cli::{self, Cli};

fn main() {
    let cli = Cli::parse();
    if matches!(cli.command, cli::Command::Demo) && std::env::var_os("RUST_LOG").is_none() {
        // The demo narrates; the daemon's own log shows warnings only.
        // SAFETY: no other thread exists yet (the runtime starts below).
        unsafe { std::env::set_var("RUST_LOG", "warn") };
    }
    rollbackd::logging::init(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rollbackd: cannot start the async runtime: {e}");
            std::process::exit(cli::EXIT_RUNTIME);
        }
    };
    if let Err(err) = runtime.block_on(cli::dispatch(cli)) {
        let chain: Vec<String> = err.chain().map(|e| e.to_string()).collect();
        eprintln!("rollbackd: {}", chain.join(": "));
        std::process::exit(cli::exit_code(&err));
    }
}
