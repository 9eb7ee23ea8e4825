//! The one integration-test binary: real HTTP servers on 127.0.0.1:0, real
//! SQLite files in temp dirs, the real `rollbackd` binary as a child process.

mod common;
mod spine;
mod systemd;
