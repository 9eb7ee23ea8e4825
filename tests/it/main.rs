//! The one integration-test binary: real HTTP servers on 127.0.0.1:0, real
//! SQLite files in temp dirs, the real `rollbackd` binary as a child process.

mod assets;
mod bake;
mod charts;
mod cli;
mod common;
mod contrib;
mod decisions;
mod demo;
mod drill;
mod faults;
mod fleet;
mod fleet_cli;
mod fleet_store;
mod gate;
mod host;
mod layout;
mod matrix;
mod metrics;
mod notify;
mod notify_api;
mod pg;
mod probes;
mod replay;
mod report;
mod rollback;
mod spine;
mod storage;
mod systemd;
mod timing;
mod traffic;
