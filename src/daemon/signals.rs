//! Signals, registered once and turned into [`Control`] messages: SIGHUP is
//! a reload, SIGTERM and SIGINT a shutdown. A plain thread blocks on
//! signal-hook's iterator and forwards into the daemon's control channel.

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tokio::sync::mpsc;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    Reload,
    Shutdown,
}

/// Start forwarding signals. Fails only if the handlers cannot be installed.
pub fn forward(tx: mpsc::Sender<Control>) -> std::io::Result<()> {
    let mut signals = Signals::new([SIGHUP, SIGINT, SIGTERM])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                let control = if signal == SIGHUP {
                    Control::Reload
                } else {
                    Control::Shutdown
                };
                // A burst of SIGHUPs while a reload is pending collapses into
                // one: a full channel already holds a reload.
                match tx.try_send(control) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) if control == Control::Reload => {}
                    Err(mpsc::error::TrySendError::Full(c)) => {
                        let _ = tx.blocking_send(c);
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => break,
                }
            }
        })?;
    Ok(())
}
