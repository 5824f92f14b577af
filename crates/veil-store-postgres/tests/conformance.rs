//! The store conformance suite against a real PostgreSQL server.
//!
//! Each test gets its own scratch database, created on the server named by
//! `VEIL_TEST_POSTGRES_URL` and dropped when the test ends. Without that variable the tests
//! have nothing to run against: they pass with a notice locally, and fail under `CI=true`,
//! where skipping silently would hide a missing backend.

use std::sync::Arc;

use sqlx::Connection as _;
use veil_crypto::AuditKey;
use veil_store::Store;
use veil_store::conformance::{Fixture, test_master_key};
use veil_store_postgres::PostgresStore;

struct PgFixture {
    store: Option<Arc<PostgresStore>>,
    key: AuditKey,
    admin_url: String,
    db: String,
}

impl Fixture for PgFixture {
    fn store(&self) -> Arc<dyn Store> {
        self.store.clone().expect("store is open until drop")
    }

    fn audit_key(&self) -> &AuditKey {
        &self.key
    }
}

impl Drop for PgFixture {
    fn drop(&mut self) {
        let store = self.store.take();
        let admin_url = self.admin_url.clone();
        let db = self.db.clone();
        // Drop runs inside the test's runtime; do the async cleanup on a runtime of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                if let Some(s) = store {
                    s.close().await;
                }
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin_url).await {
                    let sql = format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)");
                    let _ = sqlx::query(sqlx::AssertSqlSafe(sql))
                        .execute(&mut conn)
                        .await;
                }
            });
        })
        .join();
    }
}

fn with_database(url: &str, db: &str) -> String {
    let mut parsed = url::Url::parse(url).expect("VEIL_TEST_POSTGRES_URL is a valid URL");
    parsed.set_path(db);
    parsed.to_string()
}

async fn fresh() -> Option<PgFixture> {
    let Ok(admin_url) = std::env::var("VEIL_TEST_POSTGRES_URL") else {
        assert!(
            std::env::var("CI").is_err(),
            "CI must set VEIL_TEST_POSTGRES_URL so the PostgreSQL backend is tested"
        );
        eprintln!("VEIL_TEST_POSTGRES_URL is not set: PostgreSQL conformance not run");
        return None;
    };
    let mut suffix = [0u8; 6];
    getrandom::fill(&mut suffix).expect("randomness");
    let db = format!("veil_test_{}", hex::encode(suffix));
    let mut admin = sqlx::PgConnection::connect(&admin_url)
        .await
        .expect("connect to VEIL_TEST_POSTGRES_URL");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{db}\"")))
        .execute(&mut admin)
        .await
        .expect("create scratch database");
    let key = AuditKey::derive(&test_master_key());
    let store = PostgresStore::open(&with_database(&admin_url, &db), key.clone())
        .await
        .expect("open postgres store");
    Some(PgFixture {
        store: Some(Arc::new(store)),
        key,
        admin_url,
        db,
    })
}

veil_store::conformance_tests!(fresh());
