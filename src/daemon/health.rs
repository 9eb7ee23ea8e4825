//! The database's health as its writers see it: the sample writer and the
//! verdict writer report each write's success or failure here, and the
//! listener (`/healthz`, `/status`, `/metrics`) reads it. It lives apart
//! from both, so a writer does not depend on the listener. No IO.

use std::sync::Mutex;
use std::time::Instant;

/// The database's health as the writers see it. A std `Mutex`: it is held
/// for a few assignments, never across an await.
#[derive(Debug, Default)]
pub struct Health {
    db: Mutex<DbHealth>,
}

/// What [`Health`] last heard.
#[derive(Clone, Debug, Default)]
pub struct DbHealth {
    /// Since when writes fail (monotonic); `None` while they succeed.
    pub failing_since: Option<Instant>,
    /// The latest failure.
    pub error: Option<String>,
}

impl Health {
    pub fn new() -> Health {
        Health::default()
    }

    /// A write succeeded: the database is writable.
    pub fn write_ok(&self) {
        if let Ok(mut db) = self.db.lock() {
            *db = DbHealth::default();
        }
    }

    /// A write failed (locked past the busy timeout, disk full, read-only).
    pub fn write_failed(&self, error: String) {
        if let Ok(mut db) = self.db.lock() {
            db.failing_since.get_or_insert_with(Instant::now);
            db.error = Some(error);
        }
    }

    /// What was last heard.
    pub fn db(&self) -> DbHealth {
        self.db.lock().map(|d| d.clone()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_is_remembered_from_its_first_time_until_a_write_succeeds() {
        let h = Health::new();
        assert!(h.db().failing_since.is_none());
        h.write_failed("locked".into());
        let first = h.db().failing_since.expect("failing");
        h.write_failed("disk full".into());
        let db = h.db();
        assert_eq!(db.failing_since, Some(first), "since the first failure");
        assert_eq!(db.error.as_deref(), Some("disk full"), "the latest error");
        h.write_ok();
        assert!(h.db().failing_since.is_none() && h.db().error.is_none());
    }
}
