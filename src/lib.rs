//! # rollbackd
//!
//! A watchdog for a service deployed blue/green on one host: it probes both
//! colors, stores every sample, evaluates the rollback decision matrix over
//! sliding windows and, when a Critical or High rule fires on the active
//! color, switches traffic back after proving the other color healthy.
//!
//! # Layout
//!
//! - [`config`] turns the TOML into a validated [`config::Config`]; strings
//!   and seconds stop there. [`secret`] keeps `env:`/`file:` values out of
//!   every output.
//! - [`model`] is the shared vocabulary: colors, severities, conditions,
//!   samples.
//! - [`probe`] runs one check against one color and always returns an
//!   outcome; [`process`] runs argv commands with a process-group timeout.
//! - [`store`] is the only module that speaks SQL.
//! - [`matrix`] turns samples into verdicts and decisions. It does no IO and
//!   reads no clock.
//! - [`rollback`] is the guarded switch, a state machine persisted at every
//!   step; [`active`] says which color is active, [`entry`] which one the
//!   users' entry really serves; [`notifier`] sends webhooks without ever
//!   making them wait (`config::template` checks and renders the templated
//!   ones).
//! - [`daemon`] wires it together: schedule -> probe -> store -> decide ->
//!   act. [`reload`] says what a reload changes and watches the file;
//!   [`signals`] and [`systemd`] connect it to the host; [`logging`] picks
//!   journald, JSON or text; [`http`] serves `/healthz`, `/metrics`
//!   ([`metrics`]) and `/status`, read-only.
//! - [`bake`] sends a deployment's report once it has baked healthy.
//! - [`report`] summarises a deployment's lifetime (post-deploy report).
//! - [`chart`] draws error rate and latency per color as Mermaid charts
//!   for the Markdown reports.
//! - [`gate`] judges one color before a cutover with the daemon's own
//!   scheduler and matrix.
//! - [`demo`] rehearses a rollback end to end on one terminal; [`drill`]
//!   rehearses one on a real host against the running daemon.
//! - [`cli`] holds the subcommands; `main.rs` only parses and exits.

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
