//! Scratch PostgreSQL databases for tests: created fresh on the server named by
//! `VEIL_TEST_POSTGRES_URL`, dropped (with `FORCE`) when the guard is dropped.

use sqlx::Connection as _;

/// The environment variable naming the test server (a URL whose database we may create
/// other databases from).
pub const TEST_URL_VAR: &str = "VEIL_TEST_POSTGRES_URL";

/// The admin URL for tests, or `None` when PostgreSQL tests should not run here.
///
/// # Panics
/// Under `CI=true` without the variable: CI must test this backend, never skip it silently.
pub fn test_server_url() -> Option<String> {
    match std::env::var(TEST_URL_VAR) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var("CI").is_err(),
                "CI must set {TEST_URL_VAR} so the PostgreSQL backend is tested"
            );
            eprintln!("{TEST_URL_VAR} is not set: PostgreSQL tests not run here");
            None
        }
    }
}

/// A database that exists until this guard is dropped.
#[derive(Debug)]
pub struct ScratchDatabase {
    admin_url: String,
    name: String,
    url: String,
}

impl ScratchDatabase {
    pub async fn create(admin_url: &str) -> Result<Self, sqlx::Error> {
        let mut suffix = [0u8; 8];
        getrandom::fill(&mut suffix).map_err(|e| sqlx::Error::Protocol(e.to_string()))?;
        let name = format!(
            "veil_test_{}",
            suffix
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        let mut admin = sqlx::PgConnection::connect(admin_url).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut admin)
            .await?;
        let mut url =
            url::Url::parse(admin_url).map_err(|e| sqlx::Error::Configuration(e.into()))?;
        url.set_path(&name);
        Ok(Self {
            admin_url: admin_url.to_string(),
            url: url.to_string(),
            name,
        })
    }

    /// The URL of the scratch database.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        // Drop may run inside an async runtime; clean up on a runtime of our own.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin_url).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(sql))
                        .execute(&mut conn)
                        .await;
                }
            });
        })
        .join();
    }
}
