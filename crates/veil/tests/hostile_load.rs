//! The hostile-load suite: a stranger, a greedy client and a careless operator against a real
//! `veil serve` process (the release binary's code, built for tests), one item of issue 18 per
//! test. Each asserts the fixed behaviour and that the node is still up afterwards.
//!
//! Beside the hostile privacy suite (`crates/veil-hostile`), which runs nodes in-process; this
//! one needs the `veil` binary, which only this package's tests are given.

#![cfg(target_os = "linux")]

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use veil_api_types::AuditQuery;
use veil_client::{Client, ClientError};

const OWNER: &str = "owner@localhost";
const OWNER_PW: &str = "owner passphrase horse battery";
const USER_PW: &str = "a long passphrase for tests";

/// A `veil serve` child process, killed when dropped.
struct NodeProcess {
    child: Child,
    url: String,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl NodeProcess {
    fn start(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(dir, extra)
    }

    fn start_in(dir: tempfile::TempDir, extra: &[&str]) -> Self {
        let mut child = serve_command(&dir.path().join("data"), extra)
            .env("VEIL_ADMIN_PASSWORD", OWNER_PW)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn veil serve");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let url = loop {
            let mut line = String::new();
            let n = out.read_line(&mut line).expect("read");
            assert!(n > 0, "veil serve exited before listening");
            if let Some(rest) = line.strip_prefix("Veil node listening on ") {
                break rest.split_whitespace().next().expect("url").to_string();
            }
        };
        // Keep draining stdout so the node never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sink = String::new();
            while out.read_line(&mut sink).is_ok_and(|n| n > 0) {
                sink.clear();
            }
        });
        let addr = url
            .trim_start_matches("http://")
            .parse()
            .expect("socket address");
        Self {
            child,
            url,
            addr,
            _dir: dir,
        }
    }

    fn client(&self) -> Client {
        Client::new(&self.url).expect("client")
    }

    async fn login(&self, email: &str, password: &str) -> Client {
        let c = self.client();
        let out = c.login(email, password).await.expect("login");
        c.with_token(out.token)
    }

    async fn owner(&self) -> Client {
        self.login(OWNER, OWNER_PW).await
    }

    /// A user with `role` and a real password, logged in.
    async fn user(&self, email: &str, role: &str) -> Client {
        let owner = self.owner().await;
        let created = owner.create_user(email, role).await.expect("create user");
        let first = self.login(email, &created.one_time_password).await;
        first
            .change_password(&created.one_time_password, USER_PW)
            .await
            .expect("change password");
        self.login(email, USER_PW).await
    }

    /// The process is still running and answers.
    async fn assert_up(&mut self) {
        assert!(
            self.child.try_wait().expect("wait").is_none(),
            "the node process died"
        );
        self.client().health().await.expect("the node answers");
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve_command(data: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_veil"));
    c.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .args(extra)
        .env_remove("VEIL_ADMIN_PASSWORD")
        .env("VEIL_LOG", "warn");
    c
}

fn api_code<T: std::fmt::Debug>(r: Result<T, ClientError>) -> (String, u16) {
    match r {
        Err(ClientError::Api { code, status, .. }) => (code, status),
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// One HTTP/1.1 request from a chosen local address (the loopback network is all ours), as
/// a different client machine would send it: `(status, body)`.
async fn request_from(
    local: IpAddr,
    to: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, String) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::new(local, 0)).expect("bind");
    let mut stream = socket.connect(to).await.expect("connect");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {to}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn login_body(email: &str, password: &str) -> String {
    serde_json::json!({"email": email, "password": password}).to_string()
}

/// Whether the server closed `stream` (a read gives end of file or a reset) within `within`.
async fn closed_within(stream: &mut tokio::net::TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 64];
    match tokio::time::timeout(within, stream.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) => false,
        Err(_) => false,
    }
}

// ---------------------------------------------------------------------------------------
// 1. A Parquet schema nested thousands of levels deep.

/// A Parquet file with no rows whose schema nests `levels` groups (Thrift compact protocol,
/// written by hand: Parquet writers build schemas by recursion and would overflow first).
fn deeply_nested_parquet(levels: usize) -> Vec<u8> {
    fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    fn name(out: &mut Vec<u8>, name: &str) {
        varint(out, name.len() as u64);
        out.extend_from_slice(name.as_bytes());
    }
    let mut footer = vec![0x15, 0x02]; // FileMetaData.version (1): i32 1
    footer.extend_from_slice(&[0x19, 0xfc]); // .schema (2): list<struct>, count follows
    varint(&mut footer, (levels + 2) as u64);
    // The root: name (4), num_children (5) = 1.
    footer.push(0x48);
    name(&mut footer, "schema");
    footer.extend_from_slice(&[0x15, 0x02, 0x00]);
    for _ in 0..levels {
        // A group: repetition (3) = OPTIONAL, name (4), num_children (5) = 1.
        footer.extend_from_slice(&[0x35, 0x02, 0x18]);
        name(&mut footer, "g");
        footer.extend_from_slice(&[0x15, 0x02, 0x00]);
    }
    // The leaf: type (1) = INT32, repetition (3) = REQUIRED, name (4).
    footer.extend_from_slice(&[0x15, 0x02, 0x25, 0x00, 0x18]);
    name(&mut footer, "leaf");
    footer.push(0x00);
    footer.extend_from_slice(&[0x16, 0x00]); // .num_rows (3): 0
    footer.extend_from_slice(&[0x19, 0x0c]); // .row_groups (4): empty list<struct>
    footer.push(0x00);
    let mut file = b"PAR1".to_vec();
    file.extend_from_slice(&footer);
    file.extend_from_slice(&u32::try_from(footer.len()).expect("small").to_le_bytes());
    file.extend_from_slice(b"PAR1");
    file
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parquet_schema_nested_thousands_deep_is_refused_and_the_node_stays_up() {
    let mut node = NodeProcess::start(&[]);
    let owner = node.owner().await;
    let manifest = "[privacy]\nunit = \"row\"\n[columns.leaf]\ntype = \"int\"\nbounds = [0, 10]";
    for levels in [3_000, 100_000] {
        let file = deeply_nested_parquet(levels);
        let len = file.len() as u64;
        let body = futures::stream::iter(vec![Ok::<_, std::io::Error>(bytes_of(file))]);
        let refused = owner
            .upload_dataset("deep", manifest, "parquet", body, len)
            .await;
        let (code, status) = api_code(refused);
        assert_eq!(
            (code.as_str(), status),
            ("upload_malformed", 422),
            "{levels} levels"
        );
        node.assert_up().await;
    }
}

fn bytes_of(v: Vec<u8>) -> bytes::Bytes {
    bytes::Bytes::from(v)
}

// ---------------------------------------------------------------------------------------
// 2. Idle and slow connections.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_connections_are_closed_and_one_address_cannot_take_them_all() {
    let mut node = NodeProcess::start(&[
        "--header-read-timeout",
        "2s",
        "--idle-timeout",
        "3s",
        "--max-connections-per-address",
        "8",
    ]);
    let from = |a: [u8; 4]| IpAddr::from(a);
    // The open-files limit was raised towards the hard limit at start.
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", node.pid())).expect("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("open files line");
    let fields: Vec<&str> = line.split_whitespace().collect();
    let (soft, hard) = (fields[3], fields[4]);
    let hard_n: u64 = hard.parse().unwrap_or(u64::MAX);
    let soft_n: u64 = soft.parse().unwrap_or(u64::MAX);
    assert!(soft_n >= hard_n.min(16_640), "{line}");

    // Eight idle connections from one address fill its share; the ninth is closed at once.
    let mut idle = Vec::new();
    for _ in 0..8 {
        idle.push(
            tokio::net::TcpStream::connect(node.addr)
                .await
                .expect("connect"),
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut ninth = tokio::net::TcpStream::connect(node.addr)
        .await
        .expect("connect");
    assert!(
        closed_within(&mut ninth, Duration::from_secs(1)).await,
        "over the per-address cap"
    );
    // Another address is served meanwhile.
    let (status, _) = request_from(from([127, 0, 0, 2]), node.addr, "GET", "/healthz", "").await;
    assert_eq!(status, 200);

    // Headers sent a byte at a time are cut at the header timeout.
    let slow = tokio::net::TcpSocket::new_v4().expect("socket");
    slow.bind(SocketAddr::new(from([127, 0, 0, 3]), 0))
        .expect("bind");
    let mut slow = slow.connect(node.addr).await.expect("connect");
    let started = Instant::now();
    let mut cut = false;
    for b in b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
        .iter()
        .cycle()
        .take(40)
    {
        if slow.write_all(&[*b]).await.is_err() {
            cut = true;
            break;
        }
        if closed_within(&mut slow, Duration::from_millis(250)).await {
            cut = true;
            break;
        }
    }
    assert!(cut, "a trickling client was not cut off");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );

    // The idle ones are closed once the timeouts pass, and the address is served again.
    for s in &mut idle {
        assert!(
            closed_within(s, Duration::from_secs(5)).await,
            "idle connection kept"
        );
    }
    let (status, _) = request_from(from([127, 0, 0, 1]), node.addr, "GET", "/healthz", "").await;
    assert_eq!(status, 200);
    node.assert_up().await;
}

// ---------------------------------------------------------------------------------------
// 4. Login floods: slowed, aggregated in the audit log, and the owner keeps a way in.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_flood_slows_its_source_writes_few_audit_rows_and_leaves_the_owner_a_way_in() {
    let mut node = NodeProcess::start(&[]);
    let from = |last: u8| IpAddr::from([127, 0, 0, last]);
    // The owner's usual address.
    let (status, _) = request_from(
        from(10),
        node.addr,
        "POST",
        "/api/v1/auth/login",
        &login_body(OWNER, OWNER_PW),
    )
    .await;
    assert_eq!(status, 200);

    // 32 clients at one address hammer the owner's account for a few seconds.
    let deadline = Instant::now() + Duration::from_secs(4);
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let addr = node.addr;
        tasks.push(tokio::spawn(async move {
            let (mut slowed, mut wrong) = (0u32, 0u32);
            while Instant::now() < deadline {
                let (status, _) = request_from(
                    from(66),
                    addr,
                    "POST",
                    "/api/v1/auth/login",
                    &login_body(OWNER, "guess guess guess"),
                )
                .await;
                match status {
                    429 => slowed += 1,
                    401 => wrong += 1,
                    other => panic!("unexpected status {other}"),
                }
            }
            (slowed, wrong)
        }));
    }
    let (mut slowed, mut wrong) = (0, 0);
    for t in tasks {
        let (s, w) = t.await.expect("task");
        slowed += s;
        wrong += w;
    }
    assert!(
        slowed > 100,
        "the flood was slowed: {slowed} slowed, {wrong} checked"
    );
    assert!(wrong < 20, "few guesses were checked: {wrong}");

    // The owner logs in from the usual address at once, with the right password.
    let (status, _) = request_from(
        from(10),
        node.addr,
        "POST",
        "/api/v1/auth/login",
        &login_body(OWNER, OWNER_PW),
    )
    .await;
    assert_eq!(status, 200, "the owner is not locked out");

    // Thousands of throttled attempts left a handful of audit rows.
    let owner = node.owner().await;
    let page = owner
        .audit(&AuditQuery {
            action: Some("auth.login".into()),
            limit: Some(1000),
            ..AuditQuery::default()
        })
        .await
        .expect("audit");
    let denied = page
        .entries
        .iter()
        .filter(|e| e.outcome == "denied")
        .count();
    assert!(
        denied <= 25,
        "{denied} denied-login rows for {slowed} throttled attempts"
    );
    node.assert_up().await;
}

// ---------------------------------------------------------------------------------------
// 5. Tokens after a password reset; 9. budgets; 403 floods.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_kills_old_tokens_nobody_funds_themselves_and_403_floods_are_aggregated() {
    let mut node = NodeProcess::start(&[]);
    let owner = node.owner().await;
    let ana = node.user("ana@lab.org", "data-scientist").await;
    let token = ana.create_token("notebook", None).await.expect("token");
    assert!(token.info.expires_at.is_some(), "tokens expire by default");
    let reset = owner.reset_password("ana@lab.org").await.expect("reset");
    let first = node.login("ana@lab.org", &reset.one_time_password).await;
    first
        .change_password(&reset.one_time_password, "a brand new passphrase, long")
        .await
        .expect("new password");
    let old = node.client().with_token(token.token.clone());
    assert_eq!(
        api_code(old.me().await).1,
        401,
        "the pre-reset token stays dead"
    );

    let own = owner
        .set_budget(
            OWNER,
            &veil_api_types::SetBudgetRequest {
                dataset: None,
                epsilon: 1e6,
                delta: 0.0,
            },
        )
        .await;
    assert_eq!(api_code(own).0, "cannot_modify_self");

    let guest = node.user("guest@lab.org", "guest").await;
    for _ in 0..200 {
        assert_eq!(api_code(guest.list_users().await).1, 403);
    }
    let page = owner
        .audit(&AuditQuery {
            action: Some("access.denied".into()),
            limit: Some(1000),
            ..AuditQuery::default()
        })
        .await
        .expect("audit");
    assert_eq!(page.entries.len(), 1, "200 identical 403s, one row");
    node.assert_up().await;
}

// ---------------------------------------------------------------------------------------
// 7. A data directory open to others; 11. the admin password in the environment.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_data_directory_is_refused_and_the_admin_password_leaves_the_environment() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let data: PathBuf = dir.path().join("data");
    std::fs::create_dir(&data).expect("mkdir");
    std::fs::write(data.join("notes.txt"), b"left here").expect("write");
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let out = serve_command(&data, &[])
        .env("VEIL_ADMIN_PASSWORD", OWNER_PW)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("chmod 700"), "{err}");

    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let mut node = NodeProcess::start_in(dir, &[]);
    let environ = std::fs::read(format!("/proc/{}/environ", node.pid())).expect("environ");
    assert!(
        !environ
            .windows(OWNER_PW.len())
            .any(|w| w == OWNER_PW.as_bytes()),
        "the password is still in the node's environment"
    );
    assert!(
        !String::from_utf8_lossy(&environ).contains("VEIL_ADMIN_PASSWORD"),
        "the variable is still set"
    );
    node.owner().await;
    node.assert_up().await;
}

// ---------------------------------------------------------------------------------------
// 8. Evaluation keys are held in memory while checked: bounded per user and per node.

/// Starts an evaluation-key upload that promises `len` bytes and sends only a few.
async fn start_key_upload(to: SocketAddr, token: &str, len: usize) -> tokio::net::TcpStream {
    let mut stream = tokio::net::TcpStream::connect(to).await.expect("connect");
    let head = format!(
        "POST /api/v1/fhe/keys HTTP/1.1\r\nHost: {to}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    stream.write_all(&[0u8; 1024]).await.expect("write");
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_uploads_are_one_per_user_and_few_per_node() {
    let mut node = NodeProcess::start(&[]);
    let mut tokens = Vec::new();
    for who in ["a", "b", "c"] {
        let c = node.user(&format!("{who}@lab.org"), "data-user").await;
        tokens.push(c.create_token("k", None).await.expect("token").token);
    }
    let _a = start_key_upload(node.addr, &tokens[0], 50 << 20).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let a_again = node.client().with_token(tokens[0].clone());
    assert_eq!(
        api_code(a_again.upload_evaluation_key(vec![0u8; 16]).await).0,
        "too_many_in_progress",
        "one key at a time per user"
    );
    let _b = start_key_upload(node.addr, &tokens[1], 50 << 20).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let c = node.client().with_token(tokens[2].clone());
    let (code, status) = api_code(c.upload_evaluation_key(vec![0u8; 16]).await);
    assert_eq!(
        (code.as_str(), status),
        ("busy", 503),
        "two keys at once per node"
    );
    // When a sender gives up, its place is free again.
    drop(_a);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (code, _) = api_code(c.upload_evaluation_key(vec![0u8; 16]).await);
    assert_eq!(
        code, "malformed_ciphertext",
        "checked, and refused as not a key"
    );
    node.assert_up().await;
}
