//! `tcp`: a connect within the timeout is ok. The address is the probe's
//! `address` (with `{color}` substituted) or the host and port of the
//! color's `base_url`. A refused connection is an answer (`Failed`); a name
//! that does not resolve or a network that cannot be reached is none.

use std::time::Instant;

use tokio::net::TcpStream;

use super::Outcome;
use crate::config::{Config, TcpCheck, render};
use crate::model::Color;

pub async fn run(config: &Config, check: &TcpCheck, color: Option<Color>) -> Outcome {
    let address = match (&check.address, color) {
        (Some(a), Some(c)) => render(a, &[("color", c.as_str())]),
        (Some(a), None) => a.clone(),
        (None, Some(c)) => match config
            .colors
            .get(c)
            .base_url
            .as_ref()
            .and_then(|u| Some(format!("{}:{}", u.host_str()?, u.port_or_known_default()?)))
        {
            Some(a) => a,
            None => {
                return Outcome::unreachable(None, format!("{c} has no base_url to connect to"));
            }
        },
        (None, None) => return Outcome::unreachable(None, "no address"),
    };
    let started = Instant::now();
    match TcpStream::connect(&address).await {
        Ok(_) => Outcome::ok(started.elapsed(), format!("connected to {address}")),
        Err(e) => Outcome::failure(
            super::io_status(&e),
            Some(started.elapsed()),
            format!("connect {address}: {e}"),
        ),
    }
}
