//! The PostgreSQL backend of the metadata store, for nodes that share state with other
//! processes or want the database on another host.
//!
//! One pool; transactions at READ COMMITTED, with the rows a transaction must hold locked
//! by `SELECT … FOR UPDATE`. The statements themselves are `veil-store-sql`'s, shared with
//! SQLite (its docs say why they are safe under concurrent writers).

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};
use veil_crypto::AuditKey;
use veil_store::{Clock, Result, StoreError};
use veil_store_sql::migrations::{MigrationFile, migrator};
use veil_store_sql::{Dialect, SqlStore};

/// Scratch databases for tests and benchmarks (the `testing` feature: not in the product).
#[cfg(feature = "testing")]
pub mod testing;

/// The schema's migrations, in order (the tests check them against `migrations/`).
const MIGRATIONS: &[MigrationFile] = veil_store_sql::embedded_migrations!();

/// The metadata store in a PostgreSQL database.
pub type PostgresStore = SqlStore<Postgres>;

/// PostgreSQL's pool and phrasing.
#[derive(Debug)]
pub struct Postgres {
    pool: PgPool,
}

impl Dialect for Postgres {
    type Db = sqlx::Postgres;
    const NAME: &'static str = "postgres";
    const BEGIN_WRITE: &'static str = "BEGIN";
    const LOCK_ROWS: &'static str = " FOR UPDATE";

    fn reads(&self) -> &PgPool {
        &self.pool
    }

    fn writes(&self) -> &PgPool {
        &self.pool
    }

    fn rows_affected(done: &sqlx::postgres::PgQueryResult) -> u64 {
        done.rows_affected()
    }
}

/// Connects to `url` (`postgres://…`) and applies migrations; changes are stamped with `clock`.
pub async fn open(url: &str, key: AuditKey, clock: Arc<dyn Clock>) -> Result<PostgresStore> {
    let pool = PgPoolOptions::new()
        .max_connections(32)
        .acquire_timeout(Duration::from_secs(15))
        .connect(url)
        .await
        .map_err(|e| StoreError::Backend(e.to_string()))?;
    migrator(MIGRATIONS)
        .run(&pool)
        .await
        .map_err(|e| StoreError::Backend(format!("migrations: {e}")))?;
    Ok(SqlStore::new(Postgres { pool }, key, clock))
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn the_embedded_migrations_are_the_folders() {
        let folder = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        veil_store_conformance::migrations_match_folder(super::MIGRATIONS, &folder)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
}
