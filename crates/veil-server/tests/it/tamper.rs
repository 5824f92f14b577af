//! Tamper evidence: the audit log is edited, cut and rewritten directly in the SQLite file,
//! and the master key is swapped or lost; the node must notice and say exactly what.

use crate::common::*;
use sqlx::Connection as _;
use veil_server::{MasterKeyError, StartError, prepare};

fn db_path(node: &TestNode) -> std::path::PathBuf {
    node.config.data_dir.join("veil.db")
}

/// Opens the node's database the way an attacker with file access would.
async fn raw_db(node: &TestNode) -> sqlx::SqliteConnection {
    let url = format!("sqlite://{}", db_path(node).display());
    sqlx::SqliteConnection::connect(&url)
        .await
        .expect("open db file")
}

/// Moves everything out of the WAL into the main file, so byte edits hit the real rows.
async fn checkpoint(node: &TestNode) {
    let mut db = raw_db(node).await;
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(&mut db)
        .await
        .expect("checkpoint");
    db.close().await.expect("close");
}

/// Runs statements on the node's database file, as someone with access to the file would.
async fn attack(node: &TestNode, statements: &[String]) {
    let mut db = raw_db(node).await;
    for sql in statements {
        sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .execute(&mut db)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    db.close().await.expect("close");
}

async fn seq_of(node: &TestNode, target: &str) -> u64 {
    let mut db = raw_db(node).await;
    let seq: i64 =
        sqlx::query_scalar("SELECT seq FROM audit_log WHERE target = ? ORDER BY seq LIMIT 1")
            .bind(target)
            .fetch_one(&mut db)
            .await
            .expect("entry exists");
    db.close().await.expect("close");
    u64::try_from(seq).expect("positive")
}

async fn populated() -> TestNode {
    let node = TestNode::start(Backend::Sqlite).await;
    let owner = node.owner().await;
    for email in [
        "ana@lab.org",
        "tamper-me@lab.org",
        "bo@lab.org",
        "cy@lab.org",
    ] {
        owner.create_user(email, "guest").await.expect("create");
    }
    assert!(owner.verify_audit().await.expect("verify").ok);
    node
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_a_byte_of_the_database_file_is_found() {
    let mut node = populated().await;
    node.stop().await;
    checkpoint(&node).await;
    let target = "user:tamper-me@lab.org";
    let seq = seq_of(&node, target).await;

    let path = db_path(&node);
    let mut bytes = std::fs::read(&path).expect("read db");
    let at = bytes
        .windows(target.len())
        .position(|w| w == target.as_bytes())
        .expect("the audit target is stored in the file");
    bytes[at + 5] = b'T'; // "user:tamper-me" -> "user:Tamper-me"
    std::fs::write(&path, bytes).expect("write db");

    node.restart().await;
    let report = node.owner().await.verify_audit().await.expect("verify");
    assert!(!report.ok);
    let bad = report.first_bad.expect("names the entry");
    assert_eq!(bad.seq, seq);
    assert!(bad.reason.contains("modified"), "{}", bad.reason);
    assert_eq!(report.entries_checked, seq - 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_or_cutting_off_entries_is_found() {
    let mut node = populated().await;
    node.stop().await;
    attack(
        &node,
        &[
            "DROP TRIGGER audit_log_no_delete".into(),
            "DELETE FROM audit_log WHERE seq = 4".into(),
        ],
    )
    .await;
    node.restart().await;
    let bad = node
        .owner()
        .await
        .verify_audit()
        .await
        .expect("verify")
        .first_bad
        .expect("found");
    assert_eq!(bad.seq, 4);
    assert!(bad.reason.contains("missing"), "{}", bad.reason);

    // A fresh node whose newest entries are cut off. The sealed head still points past them,
    // so the next entry (the login below) continues the sequence after the head and the
    // removed entries show up as a gap. (With no later entries the head check itself reports
    // the truncation; the store's unit tests cover that case.)
    let mut node = populated().await;
    node.stop().await;
    let mut db = raw_db(&node).await;
    let last: i64 = sqlx::query_scalar("SELECT MAX(seq) FROM audit_log")
        .fetch_one(&mut db)
        .await
        .expect("max");
    db.close().await.expect("close");
    attack(
        &node,
        &[
            "DROP TRIGGER audit_log_no_delete".into(),
            format!("DELETE FROM audit_log WHERE seq >= {}", last - 1),
        ],
    )
    .await;
    node.restart().await;
    let bad = node
        .owner()
        .await
        .verify_audit()
        .await
        .expect("verify")
        .first_bad
        .expect("found");
    assert_eq!(bad.seq, u64::try_from(last - 1).expect("positive"));
    assert!(bad.reason.contains("missing"), "{}", bad.reason);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewritten_chain_without_the_key_is_found() {
    let mut node = populated().await;
    node.stop().await;
    let seq = seq_of(&node, "user:tamper-me@lab.org").await;
    let mut db = raw_db(&node).await;
    sqlx::query("DROP TRIGGER audit_log_no_update")
        .execute(&mut db)
        .await
        .expect("drop guard");
    // Edit the entry, then recompute its hash and every later one, as someone who read the
    // encoding in the source code would. Only the seals (which need the key) stay stale.
    let rows: Vec<(i64, i64, String, String, String, String, String)> = sqlx::query_as(
        "SELECT seq, at, actor, action, target, outcome, details FROM audit_log WHERE seq >= ? ORDER BY seq",
    )
    .bind(i64::try_from(seq).expect("fits"))
    .fetch_all(&mut db)
    .await
    .expect("rows");
    let mut prev: Vec<u8> = sqlx::query_scalar("SELECT hash FROM audit_log WHERE seq = ?")
        .bind(i64::try_from(seq - 1).expect("fits"))
        .fetch_one(&mut db)
        .await
        .expect("prev");
    for (s, at, actor, action, target, outcome, details) in rows {
        let target = if s == i64::try_from(seq).expect("fits") {
            "user:someone-else@lab.org".to_string()
        } else {
            target
        };
        let prev_arr: [u8; 32] = prev.as_slice().try_into().expect("32 bytes");
        let hash = veil_crypto::ChainInput {
            seq: u64::try_from(s).expect("positive"),
            at_micros: at,
            actor: &actor,
            action: &action,
            target: &target,
            outcome: &outcome,
            details: &details,
        }
        .hash(&prev_arr);
        sqlx::query("UPDATE audit_log SET target = ?, prev_hash = ?, hash = ? WHERE seq = ?")
            .bind(&target)
            .bind(&prev)
            .bind(hash.as_slice())
            .bind(s)
            .execute(&mut db)
            .await
            .expect("rewrite");
        prev = hash.to_vec();
    }
    db.close().await.expect("close");
    node.restart().await;
    let bad = node
        .owner()
        .await
        .verify_audit()
        .await
        .expect("verify")
        .first_bad
        .expect("found");
    assert_eq!(bad.seq, seq);
    assert!(bad.reason.contains("invalid seal"), "{}", bad.reason);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_or_missing_master_key_stops_the_node_from_starting() {
    let mut node = populated().await;
    node.stop().await;
    let key_path = node.config.master_key_path();
    let original = std::fs::read(&key_path).expect("key file");

    std::fs::write(
        &key_path,
        format!("{}\n", veil_crypto::MasterKey::generate().to_hex()),
    )
    .expect("swap key");
    let err = prepare(node.config.clone()).await.expect_err("must refuse");
    assert!(matches!(err, StartError::KeyMismatch), "{err}");

    std::fs::remove_file(&key_path).expect("lose key");
    let err = prepare(node.config.clone()).await.expect_err("must refuse");
    assert!(
        matches!(err, StartError::MasterKey(MasterKeyError::Missing { .. })),
        "{err}"
    );
    assert!(
        !key_path.exists(),
        "a refused start must not leave a new key behind"
    );

    std::fs::write(&key_path, &original).expect("restore");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = prepare(node.config.clone()).await.expect_err("must refuse");
        assert!(
            matches!(err, StartError::MasterKey(MasterKeyError::TooOpen { .. })),
            "{err}"
        );
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    node.restart().await;
    assert!(node.owner().await.verify_audit().await.expect("verify").ok);
}
