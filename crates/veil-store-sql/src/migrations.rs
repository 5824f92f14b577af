//! The backends' migrations, embedded in the binary and turned into a `sqlx` migrator at run
//! time.
//!
//! `sqlx::migrate!` would do the same at compile time, but the macro builds a second copy of
//! sqlx, its drivers and SQLite's C sources for the compiler; this builds the migrator
//! `migrate!` would (same versions, descriptions, checksums and transaction mode, so databases
//! migrated by earlier builds stay valid), checked against the folder by each backend's tests
//! (`veil_store_conformance::migrations_match_folder`).

use std::borrow::Cow;

use sqlx::SqlSafeStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};

/// One embedded migration: its file name (`0001_init.sql`) and its SQL.
pub type MigrationFile = (&'static str, &'static str);

/// The schema's migrations, embedded from the calling backend's `migrations/` folder. Both
/// backends hold one schema in two dialects, so the files' names (and versions) are listed
/// here once; each backend's tests check the list against its folder.
#[macro_export]
macro_rules! embedded_migrations {
    () => {
        $crate::embedded_migrations![
            "0001_init.sql",
            "0002_datasets.sql",
            "0003_models_requests.sql",
            "0004_fhe.sql",
            "0005_guarantees.sql",
        ]
    };
    ($($file:literal),+ $(,)?) => {
        &[$((
            $file,
            include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/", $file)),
        )),+]
    };
}

/// The migrator for `files`, as `sqlx::migrate!` builds it from a folder holding them.
///
/// # Panics
/// On a file name without a numeric version prefix: the list is a constant of the backend,
/// and its tests run this.
pub fn migrator(files: &[MigrationFile]) -> Migrator {
    Migrator::with_migrations(
        files
            .iter()
            .map(|&(name, sql)| migration(name, sql))
            .collect(),
    )
}

fn migration(name: &'static str, sql: &'static str) -> Migration {
    let (version, rest) = name
        .split_once('_')
        .unwrap_or_else(|| panic!("migration {name} lacks a version prefix"));
    let version: i64 = version
        .parse()
        .unwrap_or_else(|_| panic!("migration {name}'s version is not an integer"));
    let description = rest.trim_end_matches(".sql").replace('_', " ");
    Migration::new(
        version,
        Cow::Owned(description),
        MigrationType::Simple,
        sql.into_sql_str(),
        sql.starts_with("-- no-transaction"),
    )
}
