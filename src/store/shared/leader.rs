//! One switcher per service: the daemons watching one service each try a
//! PostgreSQL session-level advisory lock keyed by the service, on a
//! connection of their own (never pooled: a pooled connection could go back
//! to the pool still holding it). The holder leads: only it runs
//! rollbacks. The others probe, decide and record, and try again every
//! second, so when the leader's session ends (its process killed, its
//! network gone: the server's keepalives notice within about 3 s) one of
//! them leads within a few seconds.
//!
//! Losing the database never stops protection: a leader that loses it goes
//! on leading from memory ([`Leadership::LeaderOffline`]) until it can ask
//! again; a follower that loses it never takes the lead.

use std::time::Duration;

use tokio::sync::watch;

use super::Shared;

/// How often the lock is tried (a follower) or its session checked (the
/// leader).
pub const POLL: Duration = Duration::from_secs(1);

/// Who may switch this service, as this daemon knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Leadership {
    /// No shared database: the only switcher.
    Alone,
    /// Holds the service's lock.
    Leader,
    /// Held the lock when the database went away: still the switcher until
    /// the database answers again and says otherwise.
    LeaderOffline,
    /// Another daemon holds the lock, or the database was never reached.
    Follower,
}

impl Leadership {
    pub fn may_switch(self) -> bool {
        matches!(
            self,
            Leadership::Alone | Leadership::Leader | Leadership::LeaderOffline
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Leadership::Alone => "alone",
            Leadership::Leader => "leader",
            Leadership::LeaderOffline => "leader (database lost)",
            Leadership::Follower => "follower",
        }
    }

    /// The next state after one attempt: `Some(held)` when the database
    /// answered whether this session holds the lock, `None` when it did
    /// not answer. Pure, so the rule is tested without a database.
    pub fn next(self, answer: Option<bool>) -> Leadership {
        match (self, answer) {
            (_, Some(true)) => Leadership::Leader,
            (_, Some(false)) => Leadership::Follower,
            (Leadership::Leader | Leadership::LeaderOffline, None) => Leadership::LeaderOffline,
            (Leadership::Alone | Leadership::Follower, None) => Leadership::Follower,
        }
    }
}

/// Try for the lock (or keep it) until the process ends, publishing each
/// change.
pub async fn run(shared: Shared, tx: watch::Sender<Leadership>) {
    let mut conn: Option<sqlx::PgConnection> = None;
    loop {
        let now = *tx.borrow();
        let answer = attempt(&shared, &mut conn, now).await;
        let next = now.next(answer);
        if next != now {
            match next {
                Leadership::Leader => tracing::info!(
                    rollbackd.leader = shared.host(),
                    "this daemon now leads service {}: it alone runs rollbacks",
                    shared.service()
                ),
                Leadership::LeaderOffline => tracing::warn!(
                    "the shared database is lost: still leading service {} from memory",
                    shared.service()
                ),
                Leadership::Follower => tracing::info!(
                    "another daemon leads service {}: this one probes, decides and records, and does not switch",
                    shared.service()
                ),
                Leadership::Alone => {}
            }
            tx.send_replace(next);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// One attempt: connect when needed, then ask for the lock (a session
/// holding it gets `true` again: the lock is reentrant, so it is counted
/// once more and released with the session). `None` when the database did
/// not answer; the connection is dropped then.
async fn attempt(
    shared: &Shared,
    conn: &mut Option<sqlx::PgConnection>,
    now: Leadership,
) -> Option<bool> {
    if conn.is_none() {
        *conn = shared.dedicated().await.ok();
    }
    let c = conn.as_mut()?;
    let (class, service) = shared.leader_lock_keys();
    // The holder only checks its session is alive (a session-level lock
    // ends only with its session): asking again would stack up reentrant
    // holds for nothing.
    let sql = if now == Leadership::Leader {
        "SELECT $1::int IS NOT NULL AND $2::text IS NOT NULL"
    } else {
        "SELECT pg_try_advisory_lock($1, hashtext($2))"
    };
    let answer = tokio::time::timeout(
        super::STATEMENT_TIMEOUT,
        sqlx::query_scalar::<_, bool>(sql)
            .bind(class)
            .bind(service)
            .fetch_one(&mut *c),
    )
    .await;
    match answer {
        Ok(Ok(held)) => Some(held),
        _ => {
            *conn = None;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leader_that_loses_the_database_keeps_switching_and_a_follower_never_takes_over() {
        use Leadership::*;
        assert_eq!(Leader.next(None), LeaderOffline);
        assert!(LeaderOffline.may_switch());
        assert_eq!(LeaderOffline.next(None), LeaderOffline);
        assert_eq!(
            LeaderOffline.next(Some(false)),
            Follower,
            "back, and another took it"
        );
        assert_eq!(LeaderOffline.next(Some(true)), Leader);
        assert_eq!(Follower.next(None), Follower);
        assert!(!Follower.may_switch());
        assert_eq!(Follower.next(Some(true)), Leader);
        assert!(Alone.may_switch());
    }
}
