//! The conformance suite: behaviour every [`Store`] backend must show.
//!
//! Each backend crate instantiates the whole suite with [`conformance_tests!`], giving it a
//! function that returns a fresh, empty, migrated store wrapped in a [`Fixture`] (which owns
//! whatever must be cleaned up: a temp dir, a scratch database).
//!
//! A dev-only crate: nothing in a product build links it.
//!
//! [`conformance_tests!`]: crate::conformance_tests
//! [`Store`]: veil_store::Store

use std::path::Path;
use std::sync::Arc;

use serde_json::json;
use sqlx::migrate::{Migration, Migrator};
use veil_crypto::{AuditKey, MasterKey};
use veil_types::{Delta, Epsilon, Permission, PermissionSet, PresetRole, UserId};

use veil_store::audit::ChainVerifier;
use veil_store::*;
use veil_store_sql::migrations::MigrationFile;

/// A fresh store plus whatever keeps it alive and cleans it up when dropped.
pub trait Fixture: Send + Sync {
    fn store(&self) -> Arc<dyn Store>;
    /// The key the store seals audit entries with.
    fn audit_key(&self) -> &AuditKey;
}

/// A master key for test fixtures (a fresh random one each time).
pub fn test_master_key() -> MasterKey {
    MasterKey::generate()
}

/// Expands to one `#[tokio::test]` per conformance check, each on a fresh fixture built by
/// `$make`: an async expression returning `Option<impl Fixture>`, `None` when the backend is
/// not available here (the backend's harness decides whether that is allowed).
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::conformance_tests!(@each $make;
            preset_roles_sync_idempotently,
            custom_roles_round_trip,
            users_round_trip,
            duplicate_email_is_a_conflict_and_writes_no_audit,
            unknown_role_is_not_found,
            disabling_a_user_revokes_their_tokens,
            tokens_authenticate_list_and_revoke,
            password_change_keeps_only_the_current_session,
            budgets_set_and_update_caps,
            debit_refuses_without_budget,
            debit_charges_and_refuses_past_the_cap,
            dataset_budget_is_an_extra_cap,
            concurrent_debits_never_overspend,
            every_mutation_extends_a_valid_chain,
            concurrent_appends_keep_one_linear_chain,
            audit_filters,
            datasets_round_trip,
            dataset_global_cap_binds_all_users,
            dataset_global_cap_survives_delete_and_reupload,
            debits_can_open_the_record_of_what_they_pay_for,
            signing_keys_round_trip,
            models_are_versioned,
            fhe_artifacts_and_evaluation_keys_round_trip,
            request_transitions_are_compare_and_set,
        );
    };
    (@each $make:expr; $($name:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let Some(fixture) = $make.await else { return };
                $crate::$name(&fixture).await;
            }
        )+
    };
}

/// A clock for fixtures: a millisecond later at every reading, like a wall clock that never
/// stands still (the store reads no wall clock of its own).
#[derive(Debug)]
pub struct TickingClock(std::sync::atomic::AtomicI64);

impl Default for TickingClock {
    fn default() -> Self {
        Self(std::sync::atomic::AtomicI64::new(1_700_000_000_000_000))
    }
}

impl Clock for TickingClock {
    fn now_micros(&self) -> Timestamp {
        self.0.fetch_add(1_000, std::sync::atomic::Ordering::SeqCst)
    }
}

fn audit(action: &str) -> NewAuditEntry {
    NewAuditEntry::new("tester@veil.test", action, "test")
}

fn presets() -> Vec<NewRole> {
    PresetRole::ALL
        .iter()
        .map(|r| NewRole {
            name: r.name().to_string(),
            description: r.description().to_string(),
            permissions: r.permissions(),
        })
        .collect()
}

async fn seeded(f: &dyn Fixture) -> Arc<dyn Store> {
    let store = f.store();
    store.sync_preset_roles(&presets()).await.expect("presets");
    store
}

async fn user(store: &dyn Store, email: &str, role: &str) -> User {
    store
        .create_user(
            &NewUser {
                email: email.into(),
                role: role.into(),
                password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo".into(),
                must_change_password: true,
            },
            audit("user.create"),
        )
        .await
        .expect("create user")
}

fn token(id: &str, user_id: UserId, kind: TokenKind, expires_at: Option<Timestamp>) -> NewToken {
    NewToken {
        id: id.into(),
        user_id,
        kind,
        name: (kind == TokenKind::Api).then(|| format!("name-{id}")),
        secret_hash: [7u8; 32],
        expires_at,
    }
}

fn eps(x: f64) -> Epsilon {
    Epsilon::cost_from_f64(x).expect("valid ε")
}

fn delta(x: f64) -> Delta {
    Delta::cost_from_f64(x).expect("valid δ")
}

async fn all_audit(store: &dyn Store) -> Vec<AuditEntry> {
    let mut out = Vec::new();
    loop {
        let page = store
            .list_audit(&AuditFilter {
                after_seq: out.last().map_or(0, |e: &AuditEntry| e.seq),
                limit: 50,
                ..AuditFilter::default()
            })
            .await
            .expect("list audit");
        if page.is_empty() {
            return out;
        }
        out.extend(page);
    }
}

async fn assert_chain_valid(f: &dyn Fixture) -> u64 {
    let store = f.store();
    let entries = all_audit(store.as_ref()).await;
    let mut v = ChainVerifier::new(f.audit_key());
    for e in &entries {
        v.push(e).expect("chain link valid");
    }
    let head = store.audit_head().await.expect("head");
    v.finish(head.as_ref()).expect("head valid")
}

pub async fn preset_roles_sync_idempotently(f: &dyn Fixture) {
    let store = seeded(f).await;
    store
        .sync_preset_roles(&presets())
        .await
        .expect("second sync");
    let roles = store.list_roles().await.expect("list");
    assert_eq!(roles.len(), PresetRole::ALL.len());
    assert!(roles.iter().all(|r| r.preset));
    let owner = store.get_role("owner").await.expect("get").expect("exists");
    assert_eq!(owner.permissions, PermissionSet::all());

    // A changed preset definition (as after an upgrade) replaces the stored one.
    let mut changed = presets();
    changed[6].permissions = [Permission::DatasetsReadMetadata, Permission::ModelsRead]
        .into_iter()
        .collect();
    store
        .sync_preset_roles(&changed)
        .await
        .expect("sync changed");
    let guest = store.get_role("guest").await.expect("get").expect("exists");
    assert!(guest.permissions.contains(Permission::ModelsRead));
}

pub async fn custom_roles_round_trip(f: &dyn Fixture) {
    let store = seeded(f).await;
    let perms = PermissionSet::parse_list("audit:read,datasets:read-metadata").expect("valid");
    let role = store
        .create_role(
            &NewRole {
                name: "auditor".into(),
                description: "reads the log".into(),
                permissions: perms.clone(),
            },
            audit("role.create"),
        )
        .await
        .expect("create");
    assert_eq!(role.permissions, perms);
    assert!(!role.preset);
    let again = store
        .create_role(
            &NewRole {
                name: "auditor".into(),
                description: String::new(),
                permissions: PermissionSet::empty(),
            },
            audit("role.create"),
        )
        .await;
    assert!(matches!(again, Err(StoreError::Conflict(_))), "{again:?}");
    assert_eq!(store.get_role("auditor").await.expect("get"), Some(role));

    let holder = user(store.as_ref(), "aud@lab.org", "auditor").await;
    let in_use = store.delete_role("auditor", audit("role.delete")).await;
    assert!(matches!(in_use, Err(StoreError::InUse(_))), "{in_use:?}");
    store
        .update_user(
            holder.id,
            &UserUpdate {
                role: Some("guest".into()),
                disabled: None,
            },
            audit("user.update"),
        )
        .await
        .expect("move user");
    store
        .delete_role("auditor", audit("role.delete"))
        .await
        .expect("delete once unused");
    assert_eq!(store.get_role("auditor").await.expect("get"), None);
    let missing = store.delete_role("auditor", audit("role.delete")).await;
    assert!(
        matches!(missing, Err(StoreError::NotFound(_))),
        "{missing:?}"
    );
}

pub async fn users_round_trip(f: &dyn Fixture) {
    let store = seeded(f).await;
    let ana = user(store.as_ref(), "ana@lab.org", "data-scientist").await;
    assert!(ana.id > 0);
    assert!(ana.must_change_password);
    assert!(!ana.disabled);
    assert_eq!(
        store.get_user(ana.id).await.expect("get"),
        Some(ana.clone())
    );
    assert_eq!(
        store.get_user_by_email("ana@lab.org").await.expect("get"),
        Some(ana.clone())
    );
    assert_eq!(
        store
            .get_user_by_email("nobody@lab.org")
            .await
            .expect("get"),
        None
    );
    assert!(
        store
            .get_password_hash(ana.id)
            .await
            .expect("hash")
            .is_some()
    );

    let bo = user(store.as_ref(), "bo@lab.org", "guest").await;
    let emails: Vec<String> = store
        .list_users()
        .await
        .expect("list")
        .into_iter()
        .map(|u| u.email)
        .collect();
    assert_eq!(emails, ["ana@lab.org", "bo@lab.org"]);

    let updated = store
        .update_user(
            bo.id,
            &UserUpdate {
                role: Some("administrator".into()),
                disabled: None,
            },
            audit("user.update"),
        )
        .await
        .expect("update");
    assert_eq!(updated.role, "administrator");
    assert_eq!(
        store
            .count_enabled_users_with_role("administrator")
            .await
            .expect("count"),
        1
    );
    let missing = store
        .update_user(9_999, &UserUpdate::default(), audit("user.update"))
        .await;
    assert!(
        matches!(missing, Err(StoreError::NotFound(_))),
        "{missing:?}"
    );
}

pub async fn duplicate_email_is_a_conflict_and_writes_no_audit(f: &dyn Fixture) {
    let store = seeded(f).await;
    user(store.as_ref(), "ana@lab.org", "guest").await;
    let before = all_audit(store.as_ref()).await.len();
    let dup = store
        .create_user(
            &NewUser {
                email: "ana@lab.org".into(),
                role: "guest".into(),
                password_hash: "x".into(),
                must_change_password: false,
            },
            audit("user.create"),
        )
        .await;
    assert!(matches!(dup, Err(StoreError::Conflict(_))), "{dup:?}");
    assert_eq!(
        all_audit(store.as_ref()).await.len(),
        before,
        "no audit for a failed change"
    );
}

pub async fn unknown_role_is_not_found(f: &dyn Fixture) {
    let store = seeded(f).await;
    let res = store
        .create_user(
            &NewUser {
                email: "ana@lab.org".into(),
                role: "wizard".into(),
                password_hash: "x".into(),
                must_change_password: false,
            },
            audit("user.create"),
        )
        .await;
    assert!(
        matches!(res, Err(StoreError::NotFound(Entity::Role))),
        "{res:?}"
    );
}

pub async fn disabling_a_user_revokes_their_tokens(f: &dyn Fixture) {
    let store = seeded(f).await;
    let ana = user(store.as_ref(), "ana@lab.org", "guest").await;
    for id in ["aaaaaaaaaaa1", "aaaaaaaaaaa2"] {
        store
            .create_token(
                &token(id, ana.id, TokenKind::Api, None),
                audit("token.create"),
            )
            .await
            .expect("token");
    }
    let disabled = store
        .update_user(
            ana.id,
            &UserUpdate {
                role: None,
                disabled: Some(true),
            },
            audit("user.disable"),
        )
        .await
        .expect("disable");
    assert!(disabled.disabled);
    let tokens = store.list_tokens(ana.id).await.expect("list");
    assert_eq!(tokens.len(), 2);
    assert!(tokens.iter().all(|t| t.revoked_at.is_some()), "{tokens:?}");
}

pub async fn tokens_authenticate_list_and_revoke(f: &dyn Fixture) {
    let store = seeded(f).await;
    let ana = user(store.as_ref(), "ana@lab.org", "data-scientist").await;
    let bo = user(store.as_ref(), "bo@lab.org", "guest").await;
    let created = store
        .create_token(
            &token("0123456789ab", ana.id, TokenKind::Api, Some(i64::MAX)),
            audit("token.create"),
        )
        .await
        .expect("create");
    assert_eq!(created.secret_hash, vec![7u8; 32]);
    let dup = store
        .create_token(
            &token("0123456789ab", bo.id, TokenKind::Session, None),
            audit("x"),
        )
        .await;
    assert!(matches!(dup, Err(StoreError::Conflict(_))), "{dup:?}");

    let p = store
        .get_token_principal("0123456789ab")
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(p.user, ana);
    assert_eq!(p.permissions, PresetRole::DataScientist.permissions());
    assert_eq!(p.token, created);
    assert_eq!(
        store
            .get_token_principal("ffffffffffff")
            .await
            .expect("get"),
        None
    );

    store.touch_token("0123456789ab", 42).await.expect("touch");
    let listed = store.list_tokens(ana.id).await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].last_used_at, Some(42));

    // Someone else's token cannot be revoked through your account.
    let not_theirs = store
        .revoke_token(bo.id, "0123456789ab", audit("token.revoke"))
        .await;
    assert!(
        matches!(not_theirs, Err(StoreError::NotFound(_))),
        "{not_theirs:?}"
    );
    store
        .revoke_token(ana.id, "0123456789ab", audit("token.revoke"))
        .await
        .expect("revoke");
    let p = store
        .get_token_principal("0123456789ab")
        .await
        .expect("get")
        .expect("still stored");
    assert!(p.token.revoked_at.is_some());
    let twice = store
        .revoke_token(ana.id, "0123456789ab", audit("token.revoke"))
        .await;
    assert!(matches!(twice, Err(StoreError::NotFound(_))), "{twice:?}");
}

pub async fn password_change_keeps_only_the_current_session(f: &dyn Fixture) {
    let store = seeded(f).await;
    let ana = user(store.as_ref(), "ana@lab.org", "guest").await;
    for id in ["aaaaaaaaaaa1", "aaaaaaaaaaa2", "aaaaaaaaaaa3"] {
        store
            .create_token(
                &token(id, ana.id, TokenKind::Session, None),
                audit("auth.login"),
            )
            .await
            .expect("session");
    }
    store
        .create_token(
            &token("aaaaaaaaaaa4", ana.id, TokenKind::Api, None),
            audit("token.create"),
        )
        .await
        .expect("api token");
    store
        .set_password(
            ana.id,
            &PasswordChange {
                password_hash: "$argon2id$new".into(),
                must_change_password: false,
                revokes: Revokes::OtherSessions {
                    keep: Some("aaaaaaaaaaa2".into()),
                },
            },
            audit("user.password"),
        )
        .await
        .expect("set password");
    assert_eq!(
        store
            .get_password_hash(ana.id)
            .await
            .expect("get")
            .as_deref(),
        Some("$argon2id$new")
    );
    let ana_now = store.get_user(ana.id).await.expect("get").expect("exists");
    assert!(!ana_now.must_change_password);
    let active: Vec<String> = store
        .list_tokens(ana.id)
        .await
        .expect("list")
        .into_iter()
        .filter(|t| t.revoked_at.is_none())
        .map(|t| t.id)
        .collect();
    assert_eq!(
        active,
        ["aaaaaaaaaaa2", "aaaaaaaaaaa4"],
        "the session making the change and the API token stay"
    );

    // An administrator's reset ends everything, API tokens included.
    store
        .set_password(
            ana.id,
            &PasswordChange {
                password_hash: "$argon2id$reset".into(),
                must_change_password: true,
                revokes: Revokes::Everything,
            },
            audit("user.password_reset"),
        )
        .await
        .expect("reset");
    let active = store
        .list_tokens(ana.id)
        .await
        .expect("list")
        .into_iter()
        .filter(|t| t.revoked_at.is_none())
        .count();
    assert_eq!(active, 0);
}

pub async fn budgets_set_and_update_caps(f: &dyn Fixture) {
    let store = seeded(f).await;
    let ana = user(store.as_ref(), "ana@lab.org", "data-scientist").await;
    let b = store
        .set_budget(
            &BudgetCap {
                user_id: ana.id,
                dataset: None,
                epsilon: eps(3.0),
                delta: delta(1e-6),
            },
            audit("budget.set"),
        )
        .await
        .expect("set");
    assert_eq!(b.epsilon_cap, eps(3.0));
    assert_eq!(b.epsilon_spent, Epsilon::ZERO);
    store
        .debit_budget(
            &DebitRequest {
                user_id: ana.id,
                dataset: None,
                epsilon: eps(1.0),
                delta: Delta::ZERO,
                purpose: "test".into(),
                reference: "r1".into(),
                opens: None,
            },
            audit("budget.debit"),
        )
        .await
        .expect("debit");
    // Raising the cap keeps what was spent: caps change, history does not.
    let b = store
        .set_budget(
            &BudgetCap {
                user_id: ana.id,
                dataset: None,
                epsilon: eps(4.0),
                delta: delta(1e-6),
            },
            audit("budget.set"),
        )
        .await
        .expect("raise");
    assert_eq!(b.epsilon_spent, eps(1.0));
    assert_eq!(b.epsilon_remaining(), eps(3.0));
    store
        .set_budget(
            &BudgetCap {
                user_id: ana.id,
                dataset: Some("patients".into()),
                epsilon: eps(1.0),
                delta: Delta::ZERO,
            },
            audit("budget.set"),
        )
        .await
        .expect("dataset budget");
    let all = store.list_budgets(ana.id).await.expect("list");
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].dataset, None, "overall budget first");
    assert_eq!(all[1].dataset.as_deref(), Some("patients"));
}

fn debit(user_id: UserId, e: f64, d: f64, dataset: Option<&str>) -> DebitRequest {
    DebitRequest {
        user_id,
        dataset: dataset.map(String::from),
        epsilon: eps(e),
        delta: delta(d),
        purpose: "query".into(),
        reference: "sha256:abc".into(),
        opens: None,
    }
}

async fn set(store: &dyn Store, user_id: UserId, dataset: Option<&str>, e: f64, d: f64) {
    store
        .set_budget(
            &BudgetCap {
                user_id,
                dataset: dataset.map(String::from),
                epsilon: Epsilon::cap_from_f64(e).expect("valid"),
                delta: Delta::cap_from_f64(d).expect("valid"),
            },
            audit("budget.set"),
        )
        .await
        .expect("set budget");
}

pub async fn debit_refuses_without_budget(f: &dyn Fixture) {
    let store = seeded(f).await;
    let ana = user(store.as_ref(), "ana@lab.org", "data-scientist").await;
    let res = store
        .debit_budget(&debit(ana.id, 0.1, 0.0, None), audit("budget.debit"))
        .await;
    assert!(matches!(res, Err(StoreError::NoBudget)), "{res:?}");
    assert!(
        store
            .list_ledger(ana.id, 10)
            .await
            .expect("ledger")
            .is_empty()
    );
}

pub async fn debit_charges_and_refuses_past_the_cap(f: &dyn Fixture) {
    let store = seeded(f).await;
    let ana = user(store.as_ref(), "ana@lab.org", "data-scientist").await;
    set(store.as_ref(), ana.id, None, 1.0, 1e-6).await;
    let audit_before = all_audit(store.as_ref()).await.len();

    let r = store
        .debit_budget(&debit(ana.id, 0.6, 5e-7, None), audit("budget.debit"))
        .await
        .expect("first debit fits");
    assert_eq!(r.epsilon, eps(0.6));
    assert_eq!(r.budgets.len(), 1);
    assert_eq!(r.budgets[0].epsilon_remaining(), eps(0.4));
    assert_eq!(r.budgets[0].delta_remaining(), delta(5e-7));

    let refused = store
        .debit_budget(&debit(ana.id, 0.5, 0.0, None), audit("budget.debit"))
        .await;
    match refused {
        Err(StoreError::BudgetExhausted(r)) => {
            assert_eq!(r.dataset, None);
            assert!(!r.global);
            assert_eq!(r.epsilon_remaining, eps(0.4));
        }
        other => panic!("expected BudgetExhausted, got {other:?}"),
    }
    // δ alone can exhaust a budget too.
    let refused = store
        .debit_budget(&debit(ana.id, 0.1, 6e-7, None), audit("budget.debit"))
        .await;
    assert!(
        matches!(refused, Err(StoreError::BudgetExhausted(_))),
        "{refused:?}"
    );

    // Exactly the remainder fits.
    store
        .debit_budget(&debit(ana.id, 0.4, 5e-7, None), audit("budget.debit"))
        .await
        .expect("the exact remainder fits");

    let ledger = store.list_ledger(ana.id, 10).await.expect("ledger");
    assert_eq!(ledger.len(), 2, "refusals leave no ledger rows");
    assert_eq!(ledger[0].epsilon, eps(0.4), "newest first");
    assert_eq!(ledger[0].purpose, "query");
    let audit_after = all_audit(store.as_ref()).await;
    assert_eq!(
        audit_after.len(),
        audit_before + 2,
        "one audit entry per successful debit"
    );
    assert_eq!(
        ledger[0].audit_seq,
        audit_after.last().map(|e| e.seq).unwrap_or(0)
    );
}

pub async fn dataset_budget_is_an_extra_cap(f: &dyn Fixture) {
    let store = seeded(f).await;
    let ana = user(store.as_ref(), "ana@lab.org", "data-scientist").await;
    set(store.as_ref(), ana.id, None, 5.0, 0.0).await;
    set(store.as_ref(), ana.id, Some("patients"), 1.0, 0.0).await;

    let r = store
        .debit_budget(
            &debit(ana.id, 0.8, 0.0, Some("patients")),
            audit("budget.debit"),
        )
        .await
        .expect("fits both");
    assert_eq!(r.budgets.len(), 2);
    let refused = store
        .debit_budget(
            &debit(ana.id, 0.5, 0.0, Some("patients")),
            audit("budget.debit"),
        )
        .await;
    match refused {
        Err(StoreError::BudgetExhausted(r)) => {
            assert_eq!(r.dataset.as_deref(), Some("patients"));
            assert_eq!(r.epsilon_remaining, eps(0.2));
        }
        other => panic!("expected BudgetExhausted, got {other:?}"),
    }
    // The refused debit did not touch the overall budget either.
    let overall = &store.list_budgets(ana.id).await.expect("list")[0];
    assert_eq!(overall.epsilon_spent, eps(0.8));
    // Another dataset without its own cap draws on the overall budget only.
    store
        .debit_budget(
            &debit(ana.id, 3.0, 0.0, Some("visits")),
            audit("budget.debit"),
        )
        .await
        .expect("overall budget has room");
}

pub async fn concurrent_debits_never_overspend(f: &dyn Fixture) {
    let store = seeded(f).await;
    let ana = user(store.as_ref(), "ana@lab.org", "data-scientist").await;
    set(store.as_ref(), ana.id, None, 5.0, 1e-6).await;

    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut req = debit(ana.id, 0.1, 0.0, None);
                req.reference = format!("q{i}");
                store.debit_budget(&req, audit("budget.debit")).await
            })
        })
        .collect();
    let mut ok = 0;
    let mut refused = 0;
    for t in futures::future::join_all(tasks).await {
        match t.expect("task did not panic") {
            Ok(_) => ok += 1,
            Err(StoreError::BudgetExhausted(_)) => refused += 1,
            Err(other) => panic!("unexpected error under concurrency: {other:?}"),
        }
    }
    assert_eq!((ok, refused), (50, 150));
    let b = &store.list_budgets(ana.id).await.expect("list")[0];
    assert_eq!(b.epsilon_spent, eps(5.0));
    assert_eq!(
        store.list_ledger(ana.id, 1000).await.expect("ledger").len(),
        50
    );
    assert_chain_valid(f).await;
}

pub async fn every_mutation_extends_a_valid_chain(f: &dyn Fixture) {
    let store = seeded(f).await;
    assert_eq!(store.audit_head().await.expect("head"), None);
    let ana = user(store.as_ref(), "ana@lab.org", "guest").await;
    store
        .create_role(
            &NewRole {
                name: "auditor".into(),
                description: String::new(),
                permissions: PermissionSet::empty(),
            },
            audit("role.create"),
        )
        .await
        .expect("role");
    store
        .create_token(
            &token("aaaaaaaaaaa1", ana.id, TokenKind::Api, None),
            audit("token.create"),
        )
        .await
        .expect("token");
    store
        .revoke_token(ana.id, "aaaaaaaaaaa1", audit("token.revoke"))
        .await
        .expect("revoke");
    set(store.as_ref(), ana.id, None, 1.0, 0.0).await;
    store
        .set_password(
            ana.id,
            &PasswordChange {
                password_hash: "h".into(),
                must_change_password: false,
                revokes: Revokes::OtherSessions { keep: None },
            },
            audit("user.password"),
        )
        .await
        .expect("password");
    store
        .update_user(ana.id, &UserUpdate::default(), audit("user.update"))
        .await
        .expect("update");
    store
        .delete_role("auditor", audit("role.delete"))
        .await
        .expect("delete");
    store
        .append_audit(
            NewAuditEntry::new("anonymous", "auth.login", "user:x@y.z")
                .outcome(AuditOutcome::Denied)
                .details(json!({"reason": "bad password", "ip": "127.0.0.1"})),
        )
        .await
        .expect("append");

    let entries = all_audit(store.as_ref()).await;
    let actions: Vec<&str> = entries.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "user.create",
            "role.create",
            "token.create",
            "token.revoke",
            "budget.set",
            "user.password",
            "user.update",
            "role.delete",
            "auth.login"
        ]
    );
    let last = entries.last().expect("non-empty");
    assert_eq!(last.outcome, "denied");
    assert_eq!(
        last.details,
        r#"{"ip":"127.0.0.1","reason":"bad password"}"#
    );
    assert_eq!(assert_chain_valid(f).await, 9);
}

pub async fn concurrent_appends_keep_one_linear_chain(f: &dyn Fixture) {
    let store = seeded(f).await;
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .append_audit(NewAuditEntry::new(
                        "system",
                        "test.concurrent",
                        format!("n{i}"),
                    ))
                    .await
            })
        })
        .collect();
    for t in futures::future::join_all(tasks).await {
        t.expect("no panic").expect("append");
    }
    assert_eq!(assert_chain_valid(f).await, 100);
}

pub async fn audit_filters(f: &dyn Fixture) {
    let store = seeded(f).await;
    for (actor, action) in [
        ("a@x.org", "auth.login"),
        ("b@x.org", "auth.login"),
        ("a@x.org", "user.create"),
        ("a@x.org", "auth.logout"),
    ] {
        store
            .append_audit(NewAuditEntry::new(actor, action, "t"))
            .await
            .expect("append");
    }
    let by_actor = store
        .list_audit(&AuditFilter {
            actor: Some("a@x.org".into()),
            ..AuditFilter::default()
        })
        .await
        .expect("list");
    assert_eq!(
        by_actor.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [1, 3, 4]
    );
    let by_prefix = store
        .list_audit(&AuditFilter {
            action_prefix: Some("auth.".into()),
            ..AuditFilter::default()
        })
        .await
        .expect("list");
    assert_eq!(
        by_prefix.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [1, 2, 4]
    );
    let page = store
        .list_audit(&AuditFilter {
            after_seq: 1,
            limit: 2,
            ..AuditFilter::default()
        })
        .await
        .expect("list");
    assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 3]);
    // A prefix is literal: SQL wildcards in it match nothing special.
    let wild = store
        .list_audit(&AuditFilter {
            action_prefix: Some("%".into()),
            ..AuditFilter::default()
        })
        .await
        .expect("list");
    assert!(wild.is_empty());
}

fn new_dataset(name: &str) -> NewDataset {
    NewDataset {
        name: name.into(),
        description: "synthetic".into(),
        manifest: "[privacy]\nunit = \"row\"".into(),
        file_id: format!("{name:0>32}"),
        wrapped_key: vec![1, 2, 3],
        rows: 1234,
        bytes_stored: 5678,
        created_by: "owner@localhost".into(),
    }
}

pub async fn datasets_round_trip(f: &dyn Fixture) {
    let store = seeded(f).await;
    let d = store
        .create_dataset(&new_dataset("patients"), audit("dataset.upload"))
        .await
        .expect("create");
    assert_eq!(
        (d.rows, d.bytes_stored, d.policy.as_str()),
        (1234, 5678, "auto")
    );
    assert_eq!(d.epsilon_cap, None);
    let dup = store
        .create_dataset(&new_dataset("patients"), audit("dataset.upload"))
        .await;
    assert!(
        matches!(dup, Err(StoreError::Conflict(Entity::Dataset))),
        "{dup:?}"
    );
    store
        .create_dataset(&new_dataset("visits"), audit("dataset.upload"))
        .await
        .expect("second");
    let names: Vec<String> = store
        .list_datasets()
        .await
        .expect("list")
        .into_iter()
        .map(|d| d.name)
        .collect();
    assert_eq!(names, ["patients", "visits"]);

    let updated = store
        .update_dataset(
            "patients",
            &DatasetSettings {
                epsilon_cap: Some(Some(eps(10.0))),
                delta_cap: None,
                policy: Some("review".into()),
            },
            audit("dataset.update"),
        )
        .await
        .expect("update");
    assert_eq!(updated.epsilon_cap, Some(eps(10.0)));
    assert_eq!(updated.policy, "review");
    let cleared = store
        .update_dataset(
            "patients",
            &DatasetSettings {
                epsilon_cap: Some(None),
                ..DatasetSettings::default()
            },
            audit("dataset.update"),
        )
        .await
        .expect("clear cap");
    assert_eq!(
        (cleared.epsilon_cap, cleared.policy.as_str()),
        (None, "review")
    );

    let deleted = store
        .delete_dataset("patients", audit("dataset.delete"))
        .await
        .expect("delete");
    assert_eq!(deleted.wrapped_key, vec![1, 2, 3]);
    assert_eq!(store.get_dataset("patients").await.expect("get"), None);
    let again = store
        .delete_dataset("patients", audit("dataset.delete"))
        .await;
    assert!(
        matches!(again, Err(StoreError::NotFound(Entity::Dataset))),
        "{again:?}"
    );
    assert_chain_valid(f).await;
}

pub async fn dataset_global_cap_binds_all_users(f: &dyn Fixture) {
    let store = seeded(f).await;
    store
        .create_dataset(&new_dataset("patients"), audit("dataset.upload"))
        .await
        .expect("create");
    store
        .update_dataset(
            "patients",
            &DatasetSettings {
                epsilon_cap: Some(Some(eps(1.0))),
                ..DatasetSettings::default()
            },
            audit("dataset.update"),
        )
        .await
        .expect("cap");
    let ana = user(store.as_ref(), "ana@lab.org", "data-scientist").await;
    let bo = user(store.as_ref(), "bo@lab.org", "data-scientist").await;
    for u in [&ana, &bo] {
        set(store.as_ref(), u.id, None, 5.0, 0.0).await;
    }
    store
        .debit_budget(
            &debit(ana.id, 0.7, 0.0, Some("patients")),
            audit("budget.debit"),
        )
        .await
        .expect("ana fits");
    let refused = store
        .debit_budget(
            &debit(bo.id, 0.5, 0.0, Some("patients")),
            audit("budget.debit"),
        )
        .await;
    match refused {
        Err(StoreError::BudgetExhausted(r)) => {
            assert!(r.global);
            assert_eq!(r.dataset.as_deref(), Some("patients"));
            assert_eq!(r.epsilon_remaining, eps(0.3));
        }
        other => panic!("expected the dataset's global cap to refuse, got {other:?}"),
    }
    // Bo's own budget was not charged by the refused debit.
    assert_eq!(
        store.list_budgets(bo.id).await.expect("list")[0].epsilon_spent,
        Epsilon::ZERO
    );
    let d = store
        .get_dataset("patients")
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(d.epsilon_spent, eps(0.7));
}

/// The cap protects the people in the data, not the file: deleting a dataset and uploading it
/// again under its name keeps the cap and what was spent.
pub async fn dataset_global_cap_survives_delete_and_reupload(f: &dyn Fixture) {
    let store = seeded(f).await;
    store
        .create_dataset(&new_dataset("patients"), audit("dataset.upload"))
        .await
        .expect("create");
    store
        .update_dataset(
            "patients",
            &DatasetSettings {
                epsilon_cap: Some(Some(eps(1.0))),
                policy: Some("review".into()),
                ..DatasetSettings::default()
            },
            audit("dataset.update"),
        )
        .await
        .expect("cap");
    let ana = user(store.as_ref(), "ana@lab.org", "data-scientist").await;
    set(store.as_ref(), ana.id, None, 5.0, 0.0).await;
    store
        .debit_budget(
            &debit(ana.id, 0.7, 0.0, Some("patients")),
            audit("budget.debit"),
        )
        .await
        .expect("fits");
    let deleted = store
        .delete_dataset("patients", audit("dataset.delete"))
        .await
        .expect("delete");
    assert_eq!(
        deleted.file_id,
        format!("{:0>32}", "patients"),
        "the file to remove"
    );
    assert!(store.get_dataset("patients").await.expect("get").is_none());
    assert!(store.list_datasets().await.expect("list").is_empty());
    let again = store
        .delete_dataset("patients", audit("dataset.delete"))
        .await;
    assert!(matches!(again, Err(StoreError::NotFound(_))), "{again:?}");
    let update = store
        .update_dataset(
            "patients",
            &DatasetSettings::default(),
            audit("dataset.update"),
        )
        .await;
    assert!(matches!(update, Err(StoreError::NotFound(_))), "{update:?}");

    let reuploaded = store
        .create_dataset(
            &NewDataset {
                file_id: "f".repeat(32),
                wrapped_key: vec![9],
                ..new_dataset("patients")
            },
            audit("dataset.upload"),
        )
        .await
        .expect("re-upload");
    assert_eq!(reuploaded.epsilon_cap, Some(eps(1.0)));
    assert_eq!(reuploaded.epsilon_spent, eps(0.7));
    assert_eq!(reuploaded.policy, "review");
    assert_eq!(reuploaded.wrapped_key, vec![9]);
    let dup = store
        .create_dataset(&new_dataset("patients"), audit("dataset.upload"))
        .await;
    assert!(matches!(dup, Err(StoreError::Conflict(_))), "{dup:?}");
    let refused = store
        .debit_budget(
            &debit(ana.id, 0.5, 0.0, Some("patients")),
            audit("budget.debit"),
        )
        .await;
    assert!(
        matches!(&refused, Err(StoreError::BudgetExhausted(r)) if r.global && r.epsilon_remaining == eps(0.3)),
        "{refused:?}"
    );
    store
        .debit_budget(
            &debit(ana.id, 0.3, 0.0, Some("patients")),
            audit("budget.debit"),
        )
        .await
        .expect("what is left fits");
}

/// A debit may open the request record its charged work reports into, in its transaction;
/// a refused debit opens nothing.
pub async fn debits_can_open_the_record_of_what_they_pay_for(f: &dyn Fixture) {
    let store = seeded(f).await;
    let ana = user(store.as_ref(), "ana@lab.org", "data-scientist").await;
    set(store.as_ref(), ana.id, None, 1.0, 0.0).await;
    let opening = |e: f64| DebitRequest {
        opens: Some(NewRequest {
            kind: "query".into(),
            requester_id: ana.id,
            requester: ana.email.clone(),
            target: "dataset:patients".into(),
            dataset: None,
            parameters: "{}".into(),
            epsilon: eps(e),
            delta: Delta::ZERO,
            status: RequestStatus::Running,
        }),
        ..debit(ana.id, e, 0.0, None)
    };
    let receipt = store
        .debit_budget(&opening(0.4), audit("budget.debit"))
        .await
        .expect("debit");
    let id = receipt.request_id.expect("a request was opened");
    let r = store.get_request(id).await.expect("get").expect("exists");
    assert_eq!(
        (r.kind.as_str(), r.status),
        ("query", RequestStatus::Running)
    );
    let refused = store
        .debit_budget(&opening(0.7), audit("budget.debit"))
        .await;
    assert!(
        matches!(refused, Err(StoreError::BudgetExhausted(_))),
        "{refused:?}"
    );
    assert_eq!(
        store
            .list_requests(Some(ana.id), None, None, 10)
            .await
            .expect("list")
            .len(),
        1,
        "the refused debit opened no request"
    );
}

pub async fn signing_keys_round_trip(f: &dyn Fixture) {
    let store = seeded(f).await;
    let ana = user(store.as_ref(), "ana@lab.org", "model-creator").await;
    let key = NewSigningKey {
        user_id: ana.id,
        name: "laptop".into(),
        public_key: vec![9; 32],
        fingerprint: "SHA256:abc".into(),
    };
    let k = store
        .add_signing_key(&key, audit("key.add"))
        .await
        .expect("add");
    assert_eq!(k.revoked_at, None);
    let dup = store.add_signing_key(&key, audit("key.add")).await;
    assert!(matches!(dup, Err(StoreError::Conflict(_))), "{dup:?}");
    let bo = user(store.as_ref(), "bo@lab.org", "guest").await;
    let not_theirs = store
        .revoke_signing_key(bo.id, k.id, audit("key.revoke"))
        .await;
    assert!(
        matches!(not_theirs, Err(StoreError::NotFound(_))),
        "{not_theirs:?}"
    );
    store
        .revoke_signing_key(ana.id, k.id, audit("key.revoke"))
        .await
        .expect("revoke");
    let keys = store.list_signing_keys(ana.id).await.expect("list");
    assert!(keys[0].revoked_at.is_some());
}

fn new_model(name: &str, owner: &User, file: &str) -> NewModel {
    NewModel {
        name: name.into(),
        owner_id: owner.id,
        owner_email: owner.email.clone(),
        file_id: file.into(),
        wrapped_key: vec![1],
        sha256: "00".into(),
        size_bytes: 10,
        summary: "{}".into(),
        signed_by: None,
        fhe: None,
        private: false,
    }
}

pub async fn fhe_artifacts_and_evaluation_keys_round_trip(f: &dyn Fixture) {
    let store = seeded(f).await;
    let mo = user(store.as_ref(), "mo@lab.org", "model-creator").await;
    let fhe = FheArtifact {
        file_id: "c1".into(),
        wrapped_key: vec![7, 8],
        summary: "{\"kind\":\"linear\"}".into(),
    };
    let m = NewModel {
        fhe: Some(fhe.clone()),
        ..new_model("tumour-mlp", &mo, "f9")
    };
    let own = store
        .create_model(
            &NewModel {
                private: true,
                ..new_model("own-lr", &mo, "f8")
            },
            audit("model.upload"),
        )
        .await
        .expect("create private");
    assert!(own.private);
    let listed = store.list_models().await.expect("list");
    assert!(listed.iter().any(|r| r.name == "own-lr" && r.private));
    let stored = store
        .create_model(&m, audit("model.upload"))
        .await
        .expect("create");
    assert_eq!(stored.fhe.as_ref(), Some(&fhe));
    let got = store
        .get_model("tumour-mlp", None)
        .await
        .expect("get")
        .expect("some");
    assert_eq!(got.fhe, Some(fhe));

    let du = user(store.as_ref(), "du@lab.org", "data-user").await;
    let other = user(store.as_ref(), "ot@lab.org", "data-user").await;
    let key = NewEvaluationKey {
        id: "ek_1".into(),
        user_id: du.id,
        sha256: "ab".into(),
        size_bytes: 30_000_000,
        expires_at: 1_000,
        max_live_per_user: 3,
    };
    let rec = store
        .add_evaluation_key(&key, audit("fhe.key.add"))
        .await
        .expect("add");
    assert_eq!((rec.size_bytes, rec.expires_at), (30_000_000, 1_000));
    let dup = store.add_evaluation_key(&key, audit("fhe.key.add")).await;
    assert!(matches!(dup, Err(StoreError::Conflict(_))), "{dup:?}");
    assert_eq!(
        store.get_evaluation_key("ek_1").await.expect("get"),
        Some(rec.clone())
    );
    assert_eq!(
        store.list_evaluation_keys(du.id).await.expect("list"),
        vec![rec]
    );
    assert!(
        store
            .list_evaluation_keys(other.id)
            .await
            .expect("list")
            .is_empty()
    );
    let not_theirs = store
        .delete_evaluation_key(other.id, "ek_1", audit("fhe.key.delete"))
        .await;
    assert!(
        matches!(not_theirs, Err(StoreError::NotFound(_))),
        "{not_theirs:?}"
    );
    store
        .delete_evaluation_key(du.id, "ek_1", audit("fhe.key.delete"))
        .await
        .expect("delete");
    assert_eq!(store.get_evaluation_key("ek_1").await.expect("get"), None);

    // Racing uploads cannot pass the per-user count together; expired keys do not count.
    let far = i64::MAX / 2;
    let uploads = (0..8).map(|i| {
        let store = store.clone();
        let key = NewEvaluationKey {
            id: format!("ek_race{i}"),
            user_id: other.id,
            sha256: "cd".into(),
            size_bytes: 1,
            expires_at: far,
            max_live_per_user: 2,
        };
        async move { store.add_evaluation_key(&key, audit("fhe.key.add")).await }
    });
    let outcomes = futures::future::join_all(uploads).await;
    let stored = outcomes.iter().filter(|o| o.is_ok()).count();
    assert_eq!(stored, 2, "{outcomes:?}");
    assert!(
        outcomes
            .iter()
            .filter_map(|o| o.as_ref().err())
            .all(|e| matches!(e, StoreError::LimitReached(_))),
        "{outcomes:?}"
    );
    let expired = NewEvaluationKey {
        id: "ek_old".into(),
        user_id: du.id,
        sha256: "ef".into(),
        size_bytes: 1,
        expires_at: 1,
        max_live_per_user: 1,
    };
    store
        .add_evaluation_key(&expired, audit("fhe.key.add"))
        .await
        .expect("first");
    let again = NewEvaluationKey {
        id: "ek_new".into(),
        expires_at: far,
        ..expired
    };
    store
        .add_evaluation_key(&again, audit("fhe.key.add"))
        .await
        .expect("the expired key does not count");
}

pub async fn models_are_versioned(f: &dyn Fixture) {
    let store = seeded(f).await;
    let mo = user(store.as_ref(), "mo@lab.org", "model-creator").await;
    let v1 = store
        .create_model(&new_model("tumour-lr", &mo, "f1"), audit("model.upload"))
        .await
        .expect("v1");
    let v2 = store
        .create_model(&new_model("tumour-lr", &mo, "f2"), audit("model.upload"))
        .await
        .expect("v2");
    store
        .create_model(&new_model("other", &mo, "f3"), audit("model.upload"))
        .await
        .expect("other");
    assert_eq!((v1.version, v2.version), (1, 2));
    assert_eq!(
        store
            .get_model("tumour-lr", None)
            .await
            .expect("get")
            .map(|m| m.version),
        Some(2)
    );
    assert_eq!(
        store
            .get_model("tumour-lr", Some(1))
            .await
            .expect("get")
            .map(|m| m.file_id),
        Some("f1".into())
    );
    assert_eq!(
        store.get_model("tumour-lr", Some(9)).await.expect("get"),
        None
    );
    assert_eq!(store.list_models().await.expect("list").len(), 3);
    let gone = store
        .delete_model("tumour-lr", Some(2), audit("model.delete"))
        .await
        .expect("delete v2");
    assert_eq!(gone.len(), 1);
    assert_eq!(
        store
            .get_model("tumour-lr", None)
            .await
            .expect("get")
            .map(|m| m.version),
        Some(1)
    );
    let all = store
        .delete_model("tumour-lr", None, audit("model.delete"))
        .await
        .expect("delete all");
    assert_eq!(all.len(), 1);
    let missing = store
        .delete_model("tumour-lr", None, audit("model.delete"))
        .await;
    assert!(
        matches!(missing, Err(StoreError::NotFound(_))),
        "{missing:?}"
    );
}

pub async fn request_transitions_are_compare_and_set(f: &dyn Fixture) {
    let store = seeded(f).await;
    let ana = user(store.as_ref(), "ana@lab.org", "data-scientist").await;
    let r = store
        .create_request(
            &NewRequest {
                kind: "validation".into(),
                requester_id: ana.id,
                requester: ana.email.clone(),
                target: "model:m@1".into(),
                dataset: Some("patients".into()),
                parameters: "{}".into(),
                epsilon: eps(1.0),
                delta: Delta::ZERO,
                status: RequestStatus::Pending,
            },
            audit("request.create"),
        )
        .await
        .expect("create");
    assert_eq!(r.status, RequestStatus::Pending);
    // Twenty reviewers race to approve: exactly one wins.
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .transition_request(
                        r.id,
                        &RequestTransition {
                            from: vec![RequestStatus::Pending],
                            to: RequestStatus::Approved,
                            reason: None,
                            result: None,
                            reviewer: Some(format!("reviewer{i}@lab.org")),
                        },
                        audit("request.approve"),
                    )
                    .await
            })
        })
        .collect();
    let mut won = 0;
    for t in futures::future::join_all(tasks).await {
        match t.expect("task") {
            Ok(_) => won += 1,
            Err(StoreError::StateChanged) => {}
            Err(other) => panic!("{other:?}"),
        }
    }
    assert_eq!(won, 1);
    let done = store
        .transition_request(
            r.id,
            &RequestTransition {
                from: vec![RequestStatus::Approved],
                to: RequestStatus::Done,
                reason: None,
                result: Some("{\"accuracy\":0.9}".into()),
                reviewer: None,
            },
            audit("request.done"),
        )
        .await
        .expect("done");
    assert_eq!(done.result.as_deref(), Some("{\"accuracy\":0.9}"));
    assert!(
        done.reviewer
            .as_deref()
            .is_some_and(|r| r.starts_with("reviewer"))
    );
    let deny_done = store
        .transition_request(
            r.id,
            &RequestTransition {
                from: vec![RequestStatus::Pending],
                to: RequestStatus::Denied,
                reason: Some("too late".into()),
                result: None,
                reviewer: None,
            },
            audit("request.deny"),
        )
        .await;
    assert!(
        matches!(deny_done, Err(StoreError::StateChanged)),
        "{deny_done:?}"
    );
    let missing = store
        .transition_request(
            9_999,
            &RequestTransition {
                from: vec![RequestStatus::Pending],
                to: RequestStatus::Denied,
                reason: None,
                result: None,
                reviewer: None,
            },
            audit("request.deny"),
        )
        .await;
    assert!(
        matches!(missing, Err(StoreError::NotFound(_))),
        "{missing:?}"
    );
    assert_eq!(
        store
            .list_requests(Some(ana.id), None, None, 10)
            .await
            .expect("list")
            .len(),
        1
    );
    assert_eq!(
        store
            .list_requests(None, Some(RequestStatus::Pending), None, 10)
            .await
            .expect("list")
            .len(),
        0
    );
    assert_chain_valid(f).await;
}

/// Whether `files` are exactly the migrations in `folder`, as sqlx resolves them there (every
/// file listed, none extra, same descriptions, checksums and transaction mode), so databases
/// migrated by builds that used `sqlx::migrate!` stay valid.
pub async fn migrations_match_folder(files: &[MigrationFile], folder: &Path) -> Result<(), String> {
    let embedded = veil_store_sql::migrations::migrator(files);
    let resolved = Migrator::new(folder)
        .await
        .map_err(|e| format!("resolving {}: {e}", folder.display()))?;
    let key = |m: &Migration| {
        (
            m.version,
            m.description.to_string(),
            m.migration_type,
            m.checksum.to_vec(),
            m.no_tx,
        )
    };
    let ours: Vec<_> = embedded.iter().map(key).collect();
    let theirs: Vec<_> = resolved.iter().map(key).collect();
    if ours == theirs {
        Ok(())
    } else {
        Err(format!(
            "embedded migrations {:?} differ from the folder's {:?}",
            ours.iter().map(|k| (k.0, &k.1)).collect::<Vec<_>>(),
            theirs.iter().map(|k| (k.0, &k.1)).collect::<Vec<_>>()
        ))
    }
}
