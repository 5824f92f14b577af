//! The `veil` binary, run as a user would: against a real node, with its real output.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use veil_server::ServerConfig;
use veil_server::testing::RunningNode;

const OWNER_PW: &str = "owner passphrase horse battery";
const ANA_PW: &str = "ana has a long passphrase";

struct Cli {
    server: String,
    config_dir: tempfile::TempDir,
}

impl Cli {
    fn new(server: &str) -> Self {
        Self {
            server: server.to_string(),
            config_dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_veil"));
        c.args(args)
            .env("VEIL_SERVER", &self.server)
            .env("VEIL_CONFIG_DIR", self.config_dir.path())
            .env_remove("VEIL_TOKEN");
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("veil runs")
    }

    fn run_stdin(&self, args: &[&str], input: &str) -> Output {
        let mut child = self
            .cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("veil runs");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
        child.wait_with_output().expect("veil finishes")
    }

    /// Runs and expects success; returns stdout.
    #[track_caller]
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "veil {args:?} failed ({:?}):\n{}{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Replaces timestamps, ids and secrets so snapshots are stable.
fn redact(s: &str) -> String {
    let time = regex::Regex::new(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d").expect("regex");
    let id = regex::Regex::new(r"(?m)^(\s*)\d+(\s{2,})").expect("regex");
    let s = time.replace_all(s, "[time]");
    id.replace_all(&s, "${1}[id]${2}").into_owned()
}

async fn node(dir: &Path) -> RunningNode {
    let mut config = ServerConfig::new(dir.join("data"));
    config.admin_password = Some(OWNER_PW.into());
    RunningNode::start(config).await.expect("node")
}

fn one_time_password(create_output: &str) -> String {
    create_output
        .lines()
        .find_map(|l| l.strip_prefix("one-time password: "))
        .expect("printed")
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_issue_walkthrough_works_from_the_command_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = node(dir.path()).await;
    let cli = Cli::new(&node.url);

    let out = cli.run_stdin(
        &["login", "--email", "owner@localhost", "--password-stdin"],
        &format!("{OWNER_PW}\n"),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("logged in to"), "{}", stdout(&out));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta =
            std::fs::metadata(cli.config_dir.path().join("credentials.json")).expect("saved");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    }

    let created = cli.ok(&[
        "users",
        "create",
        "--email",
        "ana@lab.org",
        "--role",
        "data-scientist",
    ]);
    assert!(
        created.contains("created ana@lab.org (data-scientist)"),
        "{created}"
    );
    let otp = one_time_password(&created);
    cli.ok(&[
        "budget",
        "set",
        "--user",
        "ana@lab.org",
        "--epsilon",
        "3",
        "--delta",
        "1e-6",
    ]);
    let role = cli.ok(&[
        "roles",
        "create",
        "auditor",
        "--permissions",
        "audit:read,datasets:read-metadata",
    ]);
    assert!(
        role.contains("audit:read, datasets:read-metadata"),
        "{role}"
    );

    let me: serde_json::Value = serde_json::from_str(&cli.ok(&["whoami", "--json"])).expect("json");
    assert_eq!(me["user"]["email"], "owner@localhost");
    assert_eq!(me["user"]["role"], "owner");

    let audit = cli.ok(&["audit", "list"]);
    for action in ["auth.login", "user.create", "budget.set", "role.create"] {
        assert!(audit.contains(action), "{action} missing:\n{audit}");
    }
    let verify = cli.ok(&["audit", "verify"]);
    assert!(
        regex::Regex::new(r"^ok: \d+ entries, chain intact\n$")
            .expect("regex")
            .is_match(&verify),
        "{verify}"
    );

    insta::assert_snapshot!("users_list", redact(&cli.ok(&["users", "list"])));
    insta::assert_snapshot!("roles_list", cli.ok(&["roles", "list"]));
    insta::assert_snapshot!(
        "budget_show",
        redact(&cli.ok(&["budget", "show", "--user", "ana@lab.org"]))
    );

    // Ana logs in with her one-time password and sets her own in the same step.
    let ana = Cli::new(&node.url);
    let out = ana.run_stdin(
        &["login", "--email", "ana@lab.org", "--password-stdin"],
        &format!("{otp}\n{ANA_PW}\n"),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let mine = ana.ok(&["budget", "show"]);
    assert!(mine.contains("all datasets"), "{mine}");
    let token = ana.ok(&["tokens", "create", "notebook", "--expires-in", "30d"]);
    assert!(token.contains("token notebook"), "{token}");
    let listed = ana.ok(&["tokens", "list"]);
    assert!(
        listed.contains("notebook") && listed.contains("active"),
        "{listed}"
    );
    let out = ana.run(&["audit", "list"]);
    assert_eq!(out.status.code(), Some(4), "forbidden exits 4");
    assert!(stderr(&out).contains("audit:read"), "{}", stderr(&out));
    ana.ok(&["logout"]);
    let out = ana.run(&["whoami"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not logged in"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_print_clear_messages_and_exit_codes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = node(dir.path()).await;
    let cli = Cli::new(&node.url);
    let out = cli.run_stdin(
        &["login", "--email", "owner@localhost", "--password-stdin"],
        "wrong password!!\n",
    );
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr(&out).contains("invalid email or password"),
        "{}",
        stderr(&out)
    );
    cli.run_stdin(
        &["login", "--email", "owner@localhost", "--password-stdin"],
        &format!("{OWNER_PW}\n"),
    );

    let out = cli.run(&[
        "users",
        "create",
        "--email",
        "bo@lab.org",
        "--role",
        "wizard",
    ]);
    assert_eq!(out.status.code(), Some(5));
    assert!(
        stderr(&out).contains("error: no such role"),
        "{}",
        stderr(&out)
    );

    let out = cli.run(&[
        "users",
        "create",
        "--email",
        "bo@lab.org",
        "--role",
        "wizard",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(5));
    let err: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("json error");
    assert_eq!(err["error"]["code"], "role_not_found");

    cli.ok(&[
        "users",
        "create",
        "--email",
        "bo@lab.org",
        "--role",
        "guest",
    ]);
    let out = cli.run(&[
        "users",
        "create",
        "--email",
        "bo@lab.org",
        "--role",
        "guest",
    ]);
    assert_eq!(out.status.code(), Some(6));

    let out = cli.run(&["budget", "set", "--user", "bo@lab.org", "--epsilon", "-1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("must not be negative"),
        "{}",
        stderr(&out)
    );

    let out = cli.run(&["tokens", "create", "x", "--expires-in", "3 weeks"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("invalid lifetime"),
        "{}",
        stderr(&out)
    );

    let out = cli
        .cmd(&["whoami"])
        .env("VEIL_TOKEN", "veil_bogus")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr(&out).contains("hint: log in again"),
        "{}",
        stderr(&out)
    );

    let out = Cli::new("http://127.0.0.1:9").run(&["whoami", "--token", "veil_x"]);
    assert_eq!(out.status.code(), Some(10), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cannot reach the node"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_names_a_tampered_entry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = node(dir.path()).await;
    let url = node.url.clone();
    let cli = Cli::new(&url);
    cli.run_stdin(
        &["login", "--email", "owner@localhost", "--password-stdin"],
        &format!("{OWNER_PW}\n"),
    );
    cli.ok(&[
        "users",
        "create",
        "--email",
        "victim@lab.org",
        "--role",
        "guest",
    ]);
    node.stop().await.expect("stop");

    // Edit the stored audit entry directly in the database file.
    let db = dir.path().join("data").join("veil.db");
    {
        use sqlx::Connection as _;
        let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
            .await
            .expect("open");
        sqlx::query("DROP TRIGGER audit_log_no_update")
            .execute(&mut conn)
            .await
            .expect("drop");
        sqlx::query("UPDATE audit_log SET target = 'user:someone@lab.org' WHERE target = 'user:victim@lab.org'")
            .execute(&mut conn)
            .await
            .expect("tamper");
        conn.close().await.expect("close");
    }
    let node = node_again(dir.path()).await;
    let cli = Cli::new(&node.url);
    cli.run_stdin(
        &["login", "--email", "owner@localhost", "--password-stdin"],
        &format!("{OWNER_PW}\n"),
    );
    let out = cli.run(&["audit", "verify"]);
    assert_eq!(out.status.code(), Some(9));
    assert!(
        regex::Regex::new(r"^TAMPERED: entry \d+ was modified")
            .expect("regex")
            .is_match(&stdout(&out)),
        "{}",
        stdout(&out)
    );
}

async fn node_again(dir: &Path) -> RunningNode {
    node(dir).await
}

/// Reads `veil serve` output lines until the listening line; returns (url, lines seen).
fn wait_listening(reader: &mut impl BufRead) -> (String, Vec<String>) {
    let mut seen = Vec::new();
    loop {
        let mut line = String::new();
        let n = reader.read_line(&mut line).expect("read");
        assert!(n > 0, "veil serve exited early: {seen:?}");
        if let Some(rest) = line.strip_prefix("Veil node listening on ") {
            let url = rest.split_whitespace().next().expect("url").to_string();
            seen.push(line);
            return (url, seen);
        }
        seen.push(line);
    }
}

#[cfg(unix)]
#[test]
fn veil_serve_prints_the_owner_password_once_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data: PathBuf = dir.path().join("data");
    let start = || {
        Command::new(env!("CARGO_BIN_EXE_veil"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data)
            .env_remove("VEIL_ADMIN_PASSWORD")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn")
    };

    let mut child = start();
    let mut reader = BufReader::new(child.stdout.take().expect("stdout"));
    let (url, _) = wait_listening(&mut reader);
    let mut rest = String::new();
    reader.read_line(&mut rest).expect("read");
    assert!(
        rest.contains("created the owner account owner@localhost"),
        "{rest}"
    );
    let mut otp_line = String::new();
    reader.read_line(&mut otp_line).expect("read");
    let otp = otp_line
        .trim()
        .strip_prefix("one-time password: ")
        .expect("otp line")
        .to_string();

    // The printed password logs in (and must be changed).
    let cli = Cli::new(&url);
    let out = cli.run_stdin(
        &["login", "--email", "owner@localhost", "--password-stdin"],
        &format!("{otp}\n{OWNER_PW}\n"),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    cli.ok(&["whoami"]);

    // SIGTERM: graceful shutdown, exit 0.
    // SAFETY-free: `kill` via the libc crate is a plain FFI call on a pid we own.
    let pid = i32::try_from(child.id()).expect("pid");
    assert_eq!(unsafe_kill(pid), 0);
    let status = child.wait().expect("wait");
    assert!(status.success(), "{status:?}");
    assert!(
        !data.join("veil.db-wal").exists()
            || std::fs::metadata(data.join("veil.db-wal"))
                .map(|m| m.len())
                .unwrap_or(0)
                == 0
    );

    // Second start: no password printed again; the changed password still works.
    let mut child = start();
    let mut reader = BufReader::new(child.stdout.take().expect("stdout"));
    let (url, _) = wait_listening(&mut reader);
    let cli = Cli::new(&url);
    let out = cli.run_stdin(
        &["login", "--email", "owner@localhost", "--password-stdin"],
        &format!("{OWNER_PW}\n"),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let _ = unsafe_kill(i32::try_from(child.id()).expect("pid"));
    let status = child.wait().expect("wait");
    assert!(status.success());
    let mut remaining = String::new();
    let _ = std::io::Read::read_to_string(&mut reader, &mut remaining);
    assert!(!remaining.contains("one-time password"), "{remaining}");
}

#[cfg(unix)]
fn unsafe_kill(pid: i32) -> i32 {
    // `kill -TERM` through the system tool keeps this crate free of `unsafe`.
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill runs");
    if status.success() { 0 } else { 1 }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datasets_and_queries_from_the_command_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = node(dir.path()).await;
    let cli = Cli::new(&node.url);
    cli.run_stdin(
        &["login", "--email", "owner@localhost", "--password-stdin"],
        &format!("{OWNER_PW}\n"),
    );
    let schema = dir.path().join("patients.toml");
    std::fs::write(
        &schema,
        "[privacy]\nunit = \"row\"\n[columns.age]\ntype = \"int\"\nbounds = [0, 120]\n[columns.sex]\ntype = \"category\"\ncategories = [\"F\", \"M\"]\n[columns.income]\ntype = \"float\"\nbounds = [0.0, 500000.0]\n",
    )
    .expect("schema");
    let data = dir.path().join("patients.csv");
    let mut csv = String::from("age,sex,income\n");
    for i in 0..500 {
        csv.push_str(&format!(
            "{},{},{}\n",
            i % 90,
            if i % 2 == 0 { "F" } else { "M" },
            i * 100
        ));
    }
    std::fs::write(&data, csv).expect("csv");

    let out = cli.ok(&[
        "datasets",
        "upload",
        "patients",
        "--file",
        data.to_str().expect("utf-8"),
        "--schema",
        schema.to_str().expect("utf-8"),
    ]);
    assert!(out.contains("uploaded patients: 500 rows"), "{out}");
    assert!(cli.ok(&["datasets", "list"]).contains("patients"));
    let show = cli.ok(&["datasets", "show", "patients"]);
    assert!(
        show.contains("one row") && show.contains("[0, 120]"),
        "{show}"
    );
    let mock = cli.ok(&["datasets", "mock", "patients", "--rows", "3"]);
    assert!(mock.starts_with("SYNTHETIC"), "{mock}");

    // Nobody funds themselves: the owner funds an analyst, who asks.
    let created = cli.ok(&[
        "users",
        "create",
        "--email",
        "ana@lab.org",
        "--role",
        "data-scientist",
    ]);
    let otp = one_time_password(&created);
    cli.ok(&["budget", "set", "--user", "ana@lab.org", "--epsilon", "2"]);
    let owner = cli;
    let cli = Cli::new(&node.url);
    let out = cli.run_stdin(
        &["login", "--email", "ana@lab.org", "--password-stdin"],
        &format!("{otp}\n{ANA_PW}\n"),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = cli.ok(&[
        "query",
        "patients",
        "--epsilon",
        "0.5",
        "SELECT sex, COUNT(*), AVG(age) FROM patients WHERE income > 20000 GROUP BY sex",
    ]);
    assert!(
        out.contains("95% interval") && out.contains("discrete_laplace"),
        "{out}"
    );
    assert!(out.contains("spent: ε 0.5"), "{out}");
    assert!(out.contains("budget left (all datasets): ε 1.5"), "{out}");

    let refused = cli.run(&[
        "query",
        "patients",
        "--epsilon",
        "0.2",
        "SELECT * FROM patients",
    ]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        stderr(&refused).contains("would return rows"),
        "{}",
        stderr(&refused)
    );

    let exhausted = cli.run(&[
        "query",
        "patients",
        "--epsilon",
        "5",
        "SELECT COUNT(*) FROM patients",
    ]);
    assert_eq!(exhausted.status.code(), Some(7));

    let cli = owner;
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "age,sex,income\n300,F,1\n").expect("bad");
    let out = cli.run(&[
        "datasets",
        "upload",
        "other",
        "--file",
        bad.to_str().expect("utf-8"),
        "--schema",
        schema.to_str().expect("utf-8"),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("outside the bounds"),
        "{}",
        stderr(&out)
    );

    cli.ok(&["datasets", "delete", "patients"]);
    let out = cli.run(&["datasets", "show", "patients"]);
    assert_eq!(out.status.code(), Some(5));
}

/// The breast-cancer fixture rows `rows` (features, then the label as the model's class id).
fn breast_cancer_csv(path: &str, rows: std::ops::Range<usize>, with_label: bool) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/data")
        .join(path);
    let text = std::fs::read_to_string(p).expect("fixture");
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().expect("header").split(',').collect();
    let n = header.len() - 1;
    let mut out = header[..n].join(",");
    if with_label {
        out.push_str(",label");
    }
    out.push('\n');
    for line in lines.skip(rows.start).take(rows.len()) {
        let cells: Vec<&str> = line.split(',').collect();
        out.push_str(&cells[..n].join(","));
        if with_label {
            out.push_str(if cells[n] == "benign" { ",1" } else { ",0" });
        }
        out.push('\n');
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_inference_from_the_command_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = node(dir.path()).await;
    let cli = Cli::new(&node.url);
    let out = cli.run_stdin(
        &["login", "--email", "owner@localhost", "--password-stdin"],
        &format!("{OWNER_PW}\n"),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures");
    let calibration = dir.path().join("calibration.csv");
    std::fs::write(
        &calibration,
        breast_cancer_csv("breast_cancer_train.csv", 0..400, false),
    )
    .expect("write");
    let model = fixtures.join("models/breast_cancer_mlp8.onnx");
    let upload = |yes: bool| {
        let mut args = vec![
            "models",
            "upload",
            "tumour-mlp",
            "--onnx",
            model.to_str().expect("path"),
            "--fhe",
            "--calibration",
            calibration.to_str().expect("path"),
        ];
        if yes {
            args.push("--yes");
        }
        cli.run(&args)
    };
    // Publishing shows what the public spec reveals and, without a terminal to confirm on,
    // needs --yes: nothing is stored until then.
    let refused = upload(false);
    assert!(!refused.status.success());
    let shown = stderr(&refused);
    assert!(
        shown.contains("range [") && shown.contains("--yes"),
        "{shown}"
    );
    let up = upload(true);
    assert!(up.status.success(), "{}", stderr(&up));
    let up = String::from_utf8_lossy(&up.stdout).to_string();
    assert!(up.contains("PBS per sample"), "{up}");

    let keys = dir.path().join("fhe");
    let kd = keys.to_str().expect("path");
    let made = cli.ok(&["fhe", "keygen", "--out", kd]);
    assert!(made.contains("never leaves this machine"), "{made}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(keys.join("client.key")).expect("key");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    }
    let again = cli.run(&["fhe", "keygen", "--out", kd]);
    assert!(!again.status.success() && stderr(&again).contains("refusing"));

    let input = dir.path().join("patients.csv");
    std::fs::write(
        &input,
        breast_cancer_csv("breast_cancer_test.csv", 0..6, true),
    )
    .expect("write");
    let inp = input.to_str().expect("path");
    let json = cli.ok(&[
        "fhe",
        "infer",
        "tumour-mlp",
        "--input",
        inp,
        "--label",
        "label",
        "--keys",
        kd,
        "--batch",
        "3",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(v["predictions"].as_array().expect("array").len(), 6);
    assert!(
        v["accuracy"].as_f64().expect("accuracy") >= 4.0 / 6.0,
        "{v}"
    );
    // The key was uploaded once and is reused.
    let listed = cli.ok(&["fhe", "keys", "list", "--json"]);
    let listed: serde_json::Value = serde_json::from_str(&listed).expect("json");
    assert_eq!(listed.as_array().expect("array").len(), 1);

    // Split inference is gone: decrypted values never go back to a node.
    let split = cli.run(&[
        "fhe",
        "infer",
        "tumour-mlp",
        "--input",
        inp,
        "--keys",
        kd,
        "--split-at",
        "1",
    ]);
    assert!(!split.status.success());

    // Offline primitives: encrypt to a request body, send it, decrypt the reply.
    let plain = dir.path().join("plain.csv");
    std::fs::write(
        &plain,
        breast_cancer_csv("breast_cancer_test.csv", 0..2, false),
    )
    .expect("write");
    let request = dir.path().join("request.json");
    cli.ok(&[
        "fhe",
        "encrypt",
        "tumour-mlp",
        "--input",
        plain.to_str().expect("path"),
        "--out",
        request.to_str().expect("path"),
        "--keys",
        kd,
    ]);
    let body: veil_api_types::FheInferBody =
        serde_json::from_str(&std::fs::read_to_string(&request).expect("read")).expect("body");
    assert_eq!(body.samples.len(), 2);
    assert!(body.key_id.starts_with("ek_"), "{}", body.key_id);
    let creds: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(cli.config_dir.path().join("credentials.json")).expect("creds"),
    )
    .expect("json");
    let client = veil_client::Client::new(&node.url)
        .expect("client")
        .with_token(creds["token"].as_str().expect("token").to_string());
    let reply = client.fhe_infer("tumour-mlp", &body).await.expect("infer");
    let reply_path = dir.path().join("reply.json");
    std::fs::write(&reply_path, serde_json::to_string(&reply).expect("json")).expect("write");
    let decrypted = cli.ok(&[
        "fhe",
        "decrypt",
        "tumour-mlp",
        "--input",
        reply_path.to_str().expect("path"),
        "--keys",
        kd,
        "--json",
    ]);
    let d: serde_json::Value = serde_json::from_str(&decrypted).expect("json");
    for i in 0..2 {
        assert_eq!(d[i]["label"], v["predictions"][i]["label"], "{d} {v}");
    }
}
