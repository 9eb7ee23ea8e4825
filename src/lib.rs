//! # rollbackd
//!
//! A watchdog for a service deployed blue/green on one host: it probes both
//! colors, stores every sample, evaluates the rollback decision matrix over
//! sliding windows and, when a Critical or High rule fires on the active
//! color, switches traffic back after proving the other color healthy.
//!
//! # Layout
//!
//! The places, each a folder, with the arrows going one way (down):
//!
//! - [`cli`] holds the subcommands; `main.rs` only parses and exits.
//! - [`tools`] are the one-shot commands that run to an end: `gate` judges
//!   one color before a cutover with the daemon's own probes and matrix,
//!   `demo` rehearses a rollback on one terminal, `drill` one on a real
//!   host against the running daemon.
//! - [`daemon`] wires it together (schedule -> probe -> store -> decide ->
//!   act) and connects it to the host: its clock, the state watcher,
//!   reload, signals, systemd, the read-only listener and `/metrics`, the
//!   sample writer, retention.
//! - [`rollback`] is the guarded switch, a state machine persisted at every
//!   step, with what it consults: which color is active, which one the
//!   users' entry serves, the pause and cooldown guards.
//! - [`report`] summarises a deployment's lifetime, draws the Mermaid
//!   charts, and sends the bake report.
//! - [`notifier`] sends webhooks without ever making them wait (the
//!   templates are checked and rendered in `config::template`).
//! - [`probe`] runs one check against one color and always returns an
//!   outcome.
//! - [`matrix`] turns samples into verdicts and decisions. It does no IO and
//!   reads no clock.
//! - [`store`] is the only module that speaks SQL.
//! - [`config`] turns the TOML into a validated [`config::Config`]; strings
//!   and seconds stop there; `env:`/`file:` secrets stay out of every
//!   output.
//! - Leaves: [`model`] (the shared vocabulary), [`hostfile`] (opening files
//!   the host may have made hostile), [`process`] (argv commands with a
//!   process-group timeout), [`logging`].

pub mod cli;
pub mod config;
pub mod daemon;
pub mod hostfile;
pub mod logging;
pub mod matrix;
pub mod model;
pub mod notifier;
pub mod probe;
pub mod process;
pub mod report;
pub mod rollback;
pub mod store;
pub mod tools;
