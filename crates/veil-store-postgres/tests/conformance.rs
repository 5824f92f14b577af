//! The store conformance suite against a real PostgreSQL server.
//!
//! Each test gets its own scratch database on the server named by `VEIL_TEST_POSTGRES_URL`,
//! dropped when the test ends. Without that variable the tests pass with a notice locally and
//! fail under `CI=true` (see `testing::test_server_url`).

use std::sync::Arc;

use veil_crypto::AuditKey;
use veil_store::Store;
use veil_store_conformance::{Fixture, TickingClock, test_master_key};
use veil_store_postgres::PostgresStore;
use veil_store_postgres::testing::{ScratchDatabase, test_server_url};

struct PgFixture {
    // Field order matters: the store's pool closes before the database is dropped.
    store: Arc<PostgresStore>,
    key: AuditKey,
    _db: ScratchDatabase,
}

impl Fixture for PgFixture {
    fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    fn audit_key(&self) -> &AuditKey {
        &self.key
    }
}

async fn fresh() -> Option<PgFixture> {
    let admin_url = test_server_url()?;
    let db = ScratchDatabase::create(&admin_url)
        .await
        .expect("create scratch database");
    let key = AuditKey::derive(&test_master_key());
    let store = veil_store_postgres::open(
        db.url(),
        key.clone(),
        std::sync::Arc::new(TickingClock::default()),
    )
    .await
    .expect("open postgres store");
    Some(PgFixture {
        store: Arc::new(store),
        key,
        _db: db,
    })
}

veil_store_conformance::conformance_tests!(fresh());
