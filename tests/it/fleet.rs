//! A fleet sharing one PostgreSQL (SPEC section 7, issue 14): real daemons
//! against a throwaway cluster (`pg.rs`).

use crate::pg::Cluster;

/// The migrations run on open, and rerunning them (a second host starting)
/// changes nothing.
#[tokio::test]
async fn the_shared_schema_is_made_once_whoever_starts_first() {
    let Some(pg) = Cluster::start() else { return };
    let url = pg.url();
    let secret = rollbackd::config::secret::Secret::resolve(&url).unwrap();
    let (a, b) = tokio::join!(
        rollbackd::store::shared::Shared::connect(&secret, "a", "svc"),
        rollbackd::store::shared::Shared::connect(&secret, "b", "svc"),
    );
    a.unwrap();
    b.unwrap();
    assert_eq!(
        pg.psql("SELECT count(*) FROM _sqlx_migrations WHERE success"),
        "1"
    );
}
