//! The one-shot tools: `gate` (judge a color before a cutover), `demo`
//! (a rollback rehearsed on one terminal) and `drill` (one rehearsed on a
//! real host against the running daemon). Each runs to an end and exits;
//! none is part of the daemon.

pub mod demo;
pub mod drill;
pub mod gate;
