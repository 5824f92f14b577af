//! The store conformance suite against a real SQLite file in WAL mode.

use std::sync::Arc;

use veil_crypto::AuditKey;
use veil_store::Store;
use veil_store_conformance::{Fixture, TickingClock, test_master_key};
use veil_store_sqlite::SqliteStore;

struct SqliteFixture {
    store: Arc<SqliteStore>,
    key: AuditKey,
    _dir: tempfile::TempDir,
}

impl Fixture for SqliteFixture {
    fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    fn audit_key(&self) -> &AuditKey {
        &self.key
    }
}

async fn fresh() -> SqliteFixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let key = AuditKey::derive(&test_master_key());
    let store = veil_store_sqlite::open(
        &dir.path().join("veil.db"),
        key.clone(),
        std::sync::Arc::new(TickingClock::default()),
    )
    .await
    .expect("open sqlite store");
    SqliteFixture {
        store: Arc::new(store),
        key,
        _dir: dir,
    }
}

veil_store_conformance::conformance_tests!(async { Some(fresh().await) });
