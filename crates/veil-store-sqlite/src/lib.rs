//! The embedded SQLite backend of the metadata store (the default: no server to run).
//!
//! One file in WAL mode, with two pools: a read pool (several read-only connections, which
//! WAL lets run alongside the writer) and a write pool of exactly one connection. Every
//! mutation runs in a `BEGIN IMMEDIATE` transaction on that connection, so writers are
//! serialised inside the process and never meet `SQLITE_BUSY`; the busy timeout covers other
//! processes (an operator's `sqlite3` shell, a backup). `synchronous = FULL`: a budget debit
//! that was acknowledged must survive a power cut, or spent privacy would be refunded.
//!
//! The statements themselves are `veil-store-sql`'s, shared with PostgreSQL.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use veil_crypto::AuditKey;
use veil_store::{Clock, Result, StoreError};
use veil_store_sql::migrations::{MigrationFile, migrator};
use veil_store_sql::{Dialect, SqlStore};

/// The schema's migrations, in order (the tests check them against `migrations/`).
const MIGRATIONS: &[MigrationFile] = veil_store_sql::embedded_migrations!();

/// The metadata store in one SQLite file.
pub type SqliteStore = SqlStore<Sqlite>;

/// SQLite's pools and phrasing.
#[derive(Debug)]
pub struct Sqlite {
    read: SqlitePool,
    write: SqlitePool,
}

impl Dialect for Sqlite {
    type Db = sqlx::Sqlite;
    const NAME: &'static str = "sqlite";
    // Takes the write lock at once, so a transaction never fails to upgrade a read lock.
    const BEGIN_WRITE: &'static str = "BEGIN IMMEDIATE";
    // The one writer connection already excludes every other writer.
    const LOCK_ROWS: &'static str = "";

    fn reads(&self) -> &SqlitePool {
        &self.read
    }

    fn writes(&self) -> &SqlitePool {
        &self.write
    }

    fn rows_affected(done: &sqlx::sqlite::SqliteQueryResult) -> u64 {
        done.rows_affected()
    }
}

fn backend(e: sqlx::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// Opens (creating if needed) the database file at `path` and applies migrations; changes are
/// stamped with `clock`.
pub async fn open(path: &Path, key: AuditKey, clock: Arc<dyn Clock>) -> Result<SqliteStore> {
    let base = SqliteConnectOptions::new()
        .filename(path)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(10));
    let write = SqlitePoolOptions::new()
        .max_connections(1)
        // Writes are short transactions; a caller waiting longer than this is told the node
        // is busy (503 with Retry-After) rather than held for a minute and failed.
        .acquire_timeout(Duration::from_secs(15))
        .connect_with(base.clone().create_if_missing(true))
        .await
        .map_err(backend)?;
    migrator(MIGRATIONS)
        .run(&write)
        .await
        .map_err(|e| StoreError::Backend(format!("migrations: {e}")))?;
    let read = SqlitePoolOptions::new()
        .max_connections(8)
        .connect_with(base.read_only(true))
        .await
        .map_err(backend)?;
    Ok(SqlStore::new(Sqlite { read, write }, key, clock))
}

/// Opens from a `sqlite://path` URL (as given to `--database-url`).
pub async fn open_url(url: &str, key: AuditKey, clock: Arc<dyn Clock>) -> Result<SqliteStore> {
    let opts = SqliteConnectOptions::from_str(url)
        .map_err(|e| StoreError::Backend(format!("invalid SQLite URL: {e}")))?;
    open(opts.get_filename(), key, clock).await
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
