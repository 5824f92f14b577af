//! Shared helpers for the end-to-end tests: start a real node (SQLite, or PostgreSQL when
//! `VEIL_TEST_POSTGRES_URL` is set), log in, create users with real passwords.

#![allow(dead_code)]

use std::sync::Arc;

use veil_client::Client;
use veil_core::{Clock, ManualClock, SystemClock};
use veil_server::ServerConfig;
use veil_server::testing::RunningNode;
use veil_store_postgres::testing::{ScratchDatabase, test_server_url};

pub const OWNER: &str = "owner@localhost";
pub const OWNER_PW: &str = "owner passphrase horse battery";
pub const USER_PW: &str = "a long passphrase for tests";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// SQLite always; PostgreSQL too when the test server is configured.
pub fn backends() -> Vec<Backend> {
    let mut b = vec![Backend::Sqlite];
    if test_server_url().is_some() {
        b.push(Backend::Postgres);
    }
    b
}

pub struct TestNode {
    pub node: Option<RunningNode>,
    pub dir: tempfile::TempDir,
    pub config: ServerConfig,
    pub pg: Option<ScratchDatabase>,
    pub client: Client,
    /// The node's clock: tests move time on with `advance` instead of sleeping.
    pub clock: Arc<ManualClock>,
}

impl TestNode {
    pub async fn start(backend: Backend) -> Self {
        Self::start_with(backend, |_| {}).await
    }

    pub async fn start_with(backend: Backend, tweak: impl FnOnce(&mut ServerConfig)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = ServerConfig::new(dir.path().join("data"));
        config.admin_password = Some(OWNER_PW.into());
        let clock = Arc::new(ManualClock::new(SystemClock.now_micros()));
        config.clock = clock.clone();
        let pg = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => {
                let url = test_server_url().expect("postgres configured");
                let db = ScratchDatabase::create(&url).await.expect("scratch db");
                config.database_url = Some(db.url().to_string());
                Some(db)
            }
        };
        tweak(&mut config);
        let node = RunningNode::start(config.clone())
            .await
            .expect("node starts");
        let client = Client::new(&node.url).expect("client");
        Self {
            node: Some(node),
            dir,
            config,
            pg,
            client,
            clock,
        }
    }

    pub fn url(&self) -> &str {
        &self.node.as_ref().expect("running").url
    }

    pub async fn stop(&mut self) {
        if let Some(n) = self.node.take() {
            n.stop().await.expect("clean stop");
        }
    }

    /// Starts the node again on the same data (new port).
    pub async fn restart(&mut self) {
        self.stop().await;
        let node = RunningNode::start(self.config.clone())
            .await
            .expect("node restarts");
        self.client = Client::new(&node.url).expect("client");
        self.node = Some(node);
    }

    pub async fn login(&self, email: &str, password: &str) -> Client {
        let out = self.client.login(email, password).await.expect("login");
        self.client.with_token(out.token)
    }

    pub async fn owner(&self) -> Client {
        self.login(OWNER, OWNER_PW).await
    }

    /// Creates `email` with `role` as the owner, replaces the one-time password with
    /// [`USER_PW`], and returns a client logged in as the new user.
    pub async fn user(&self, email: &str, role: &str) -> Client {
        let owner = self.owner().await;
        let created = owner.create_user(email, role).await.expect("create user");
        let first = self.login(email, &created.one_time_password).await;
        first
            .change_password(&created.one_time_password, USER_PW)
            .await
            .expect("change password");
        self.login(email, USER_PW).await
    }
}

/// Asserts that a client call failed with `code`, and returns the message.
#[track_caller]
pub fn expect_code<T: std::fmt::Debug>(
    r: Result<T, veil_client::ClientError>,
    code: &str,
) -> String {
    match r {
        Err(veil_client::ClientError::Api {
            code: got, message, ..
        }) => {
            assert_eq!(got, code, "wrong error code; message: {message}");
            message
        }
        other => panic!("expected error {code}, got {other:?}"),
    }
}
