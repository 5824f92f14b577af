//! What every hostile test needs: real nodes, users, the breast-cancer fixture with and
//! without one person, and an ONNX writer for hostile models.

#![allow(dead_code)]

pub mod onnx;

use std::path::{Path, PathBuf};

use veil_client::Client;
use veil_server::ServerConfig;
use veil_server::testing::RunningNode;

pub const OWNER: &str = "owner@localhost";
pub const OWNER_PW: &str = "owner passphrase horse battery";
pub const USER_PW: &str = "a long passphrase for tests";

/// A node on SQLite in a temporary directory.
pub struct Node {
    pub node: RunningNode,
    pub client: Client,
    pub dir: tempfile::TempDir,
}

impl Node {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut ServerConfig)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = ServerConfig::new(dir.path().join("data"));
        config.admin_password = Some(OWNER_PW.into());
        tweak(&mut config);
        let node = RunningNode::start(config).await.expect("node starts");
        let client = Client::new(&node.url).expect("client");
        Self { node, client, dir }
    }

    pub async fn login(&self, email: &str, password: &str) -> Client {
        let out = self.client.login(email, password).await.expect("login");
        self.client.with_token(out.token)
    }

    pub async fn owner(&self) -> Client {
        self.login(OWNER, OWNER_PW).await
    }

    /// A user with `role` (and, if given, an overall ε budget), logged in.
    pub async fn user(&self, email: &str, role: &str, epsilon: Option<f64>) -> Client {
        let owner = self.owner().await;
        let created = owner.create_user(email, role).await.expect("create user");
        let first = self.login(email, &created.one_time_password).await;
        first
            .change_password(&created.one_time_password, USER_PW)
            .await
            .expect("change password");
        if let Some(e) = epsilon {
            owner
                .set_budget(
                    email,
                    &veil_api_types::SetBudgetRequest {
                        dataset: None,
                        epsilon: e,
                        delta: 1e-6,
                    },
                )
                .await
                .expect("budget");
        }
        self.login(email, USER_PW).await
    }
}

pub async fn upload(owner: &Client, name: &str, manifest: &str, csv: String) {
    let len = csv.len() as u64;
    owner
        .upload_dataset(
            name,
            manifest,
            "csv",
            futures::stream::iter(vec![Ok::<_, std::io::Error>(bytes::Bytes::from(csv))]),
            len,
        )
        .await
        .unwrap_or_else(|e| panic!("upload {name}: {e}"));
}

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

/// The breast-cancer data: header, rows (as text lines) and its manifest.
pub struct BreastCancer {
    pub header: String,
    pub rows: Vec<String>,
    pub manifest: String,
}

impl BreastCancer {
    pub fn load() -> Self {
        let text = std::fs::read_to_string(fixtures().join("data/breast_cancer.csv")).expect("csv");
        let mut lines = text.lines();
        let header = lines.next().expect("header").to_string();
        Self {
            header,
            rows: lines.map(str::to_string).collect(),
            manifest: std::fs::read_to_string(fixtures().join("data/breast_cancer.toml"))
                .expect("manifest"),
        }
    }

    pub fn columns(&self) -> Vec<String> {
        self.header.split(',').map(str::to_string).collect()
    }

    /// The 30 feature columns (everything but the label, which comes last).
    pub fn features(&self) -> Vec<String> {
        let mut c = self.columns();
        c.pop();
        c
    }

    pub fn value(&self, row: usize, column: usize) -> f64 {
        self.rows[row]
            .split(',')
            .nth(column)
            .expect("cell")
            .parse()
            .expect("number")
    }

    /// The row with the largest value in `column` (a single, identifiable person), and the
    /// midpoint between it and the next largest value.
    pub fn extreme(&self, column: usize) -> (usize, f64) {
        let mut order: Vec<usize> = (0..self.rows.len()).collect();
        order.sort_by(|a, b| self.value(*b, column).total_cmp(&self.value(*a, column)));
        let (top, next) = (order[0], order[1]);
        (
            top,
            (self.value(top, column) + self.value(next, column)) / 2.0,
        )
    }

    /// The dataset as CSV, without row `without` if given: a pair of neighbouring datasets.
    pub fn csv(&self, without: Option<usize>) -> String {
        let mut s = self.header.clone();
        s.push('\n');
        for (i, r) in self.rows.iter().enumerate() {
            if Some(i) != without {
                s.push_str(r);
                s.push('\n');
            }
        }
        s
    }
}

/// The code of a failed client call.
#[track_caller]
pub fn code_of<T: std::fmt::Debug>(r: Result<T, veil_client::ClientError>) -> String {
    match r {
        Err(veil_client::ClientError::Api { code, .. }) => code,
        other => panic!("expected an API error, got {other:?}"),
    }
}
