//! Use-case tests against a real SQLite store, with a manual clock.

use std::sync::Arc;
use std::time::Duration;

use veil_crypto::{AuditKey, MasterKey};
use veil_store::AuditFilter;
use veil_types::{Delta, Epsilon, Permission, PermissionSet};

use crate::error::{Conflict, NotFound};
use crate::*;

const START: i64 = 1_800_000_000_000_000;
const OWNER_PW: &str = "owner passphrase horse battery";

fn datasets(dir: &std::path::Path) -> Arc<veil_datasets::Storage> {
    Arc::new(
        veil_datasets::Storage::open(dir.join("datasets"), Arc::new(MasterKey::generate()))
            .expect("dataset storage"),
    )
}

struct Node {
    core: Core,
    clock: Arc<ManualClock>,
    _dir: tempfile::TempDir,
}

async fn node() -> Node {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = AuditKey::derive(&MasterKey::generate());
    let clock = Arc::new(ManualClock::new(START));
    let store = veil_store_sqlite::open(&dir.path().join("t.db"), key.clone(), clock.clone())
        .await
        .expect("store");
    let core = Core::new(
        Arc::new(store),
        datasets(dir.path()),
        key,
        clock.clone(),
        CoreSettings::default(),
    );
    core.init().await.expect("init");
    let otp = core
        .bootstrap_owner("owner@localhost", Some(OWNER_PW))
        .await
        .expect("bootstrap");
    assert!(otp.is_none(), "a given password is not one-time");
    Node {
        core,
        clock,
        _dir: dir,
    }
}

impl Node {
    async fn login(&self, email: &str, pw: &str) -> Principal {
        let out = self.core.login(email, pw, "10.0.0.1").await.expect("login");
        self.core
            .authenticate(out.token.expose())
            .await
            .expect("authenticate")
    }

    async fn owner(&self) -> Principal {
        self.login("owner@localhost", OWNER_PW).await
    }

    /// Creates a user with `role` and gives them a real password; returns their principal.
    async fn user(&self, email: &str, role: &str) -> Principal {
        let owner = self.owner().await;
        let (_, otp) = self
            .core
            .create_user(&owner, email, role)
            .await
            .expect("create user");
        let first = self.login(email, otp.expose()).await;
        self.core
            .change_password(&first, otp.expose(), "a long passphrase for tests")
            .await
            .expect("set own password");
        self.login(email, "a long passphrase for tests").await
    }

    async fn audit_entries(&self) -> Vec<veil_store::AuditEntry> {
        self.core
            .store()
            .list_audit(&AuditFilter {
                limit: 1000,
                ..AuditFilter::default()
            })
            .await
            .expect("audit")
    }

    async fn audit_actions(&self) -> Vec<(String, String)> {
        self.audit_entries()
            .await
            .into_iter()
            .map(|e| (e.action, e.outcome))
            .collect()
    }
}

#[tokio::test]
async fn bootstrap_creates_one_owner_once_and_checks_the_given_password() {
    let n = node().await;
    assert!(
        n.core
            .bootstrap_owner("other@localhost", None)
            .await
            .expect("no-op")
            .is_none()
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let key = AuditKey::derive(&MasterKey::generate());
    let store =
        veil_store_sqlite::open(&dir.path().join("t.db"), key.clone(), Arc::new(SystemClock))
            .await
            .expect("store");
    let core = Core::new(
        Arc::new(store),
        datasets(dir.path()),
        key,
        Arc::new(SystemClock),
        CoreSettings::default(),
    );
    core.init().await.expect("init");
    let weak = core.bootstrap_owner("owner@localhost", Some("owner")).await;
    assert!(matches!(weak, Err(CoreError::WeakPassword(_))), "{weak:?}");
    let otp = core
        .bootstrap_owner("owner@localhost", None)
        .await
        .expect("bootstrap")
        .expect("one-time password");
    let out = core
        .login("owner@localhost", otp.expose(), "ip")
        .await
        .expect("login with otp");
    assert!(out.user.must_change_password);
}

#[tokio::test]
async fn wrong_password_and_unknown_email_look_the_same_and_are_audited() {
    let n = node().await;
    let a = n
        .core
        .login("owner@localhost", "wrong password!!", "1.1.1.1")
        .await;
    let b = n
        .core
        .login("ghost@localhost", "wrong password!!", "1.1.1.2")
        .await;
    let c = n.core.login("not an email", "x", "1.1.1.3").await;
    for r in [&a, &b, &c] {
        assert!(matches!(r, Err(CoreError::InvalidCredentials)), "{r:?}");
    }
    let actions = n.audit_actions().await;
    let denied = actions
        .iter()
        .filter(|(a, o)| a == "auth.login" && o == "denied")
        .count();
    assert_eq!(denied, 3);
    n.owner().await;
    assert!(
        n.audit_actions()
            .await
            .contains(&("auth.login".into(), "ok".into()))
    );
}

#[tokio::test]
async fn failed_logins_slow_their_source_without_locking_the_owner_out() {
    let n = node().await;
    n.owner().await; // from 10.0.0.1, which becomes an address the owner is known at
    for _ in 0..5 {
        let r = n
            .core
            .login("owner@localhost", "wrong password!!", "1.2.3.4")
            .await;
        assert!(matches!(r, Err(CoreError::InvalidCredentials)));
    }
    // The guesser's address now waits, even with the right password (it is not checked).
    for _ in 0..50 {
        let slowed = n.core.login("owner@localhost", OWNER_PW, "1.2.3.4").await;
        assert!(
            matches!(
                slowed,
                Err(CoreError::RateLimited {
                    retry_after_secs: 1
                })
            ),
            "{slowed:?}"
        );
    }
    // The owner's usual address, and a colleague behind the guesser's address, do not.
    n.owner().await;
    let ana = n.user("ana@lab.org", "data-scientist").await;
    n.core
        .login("ana@lab.org", "a long passphrase for tests", "1.2.3.4")
        .await
        .expect("another account from the same address");
    drop(ana);
    // Once the delay has passed, the address may try again.
    n.clock.advance(Duration::from_secs(2));
    n.core
        .login("owner@localhost", OWNER_PW, "1.2.3.4")
        .await
        .expect("after the delay");
    // Fifty throttled attempts made one audit entry, not fifty.
    let throttled = n
        .audit_entries()
        .await
        .into_iter()
        .filter(|e| e.action == "auth.login" && e.details.contains("rate_limited"))
        .count();
    assert_eq!(throttled, 1);
}

#[tokio::test]
async fn tokens_expire_and_revoked_tokens_stop_working() {
    let n = node().await;
    let owner = n.owner().await;
    let (_, secret) = n
        .core
        .create_api_token(&owner, "ci", Some(Duration::from_secs(3600)))
        .await
        .expect("token");
    let p = n.core.authenticate(secret.expose()).await.expect("valid");
    assert_eq!(p.user.email, "owner@localhost");
    n.clock.advance(Duration::from_secs(3601));
    assert!(matches!(
        n.core.authenticate(secret.expose()).await,
        Err(CoreError::Unauthenticated)
    ));

    let owner = n.owner().await;
    let (rec, secret) = n
        .core
        .create_api_token(&owner, "forever", None)
        .await
        .expect("token");
    n.core.revoke_token(&owner, &rec.id).await.expect("revoke");
    assert!(matches!(
        n.core.authenticate(secret.expose()).await,
        Err(CoreError::Unauthenticated)
    ));
    let again = n.core.revoke_token(&owner, &rec.id).await;
    assert!(
        matches!(again, Err(CoreError::NotFound(NotFound::Token))),
        "{again:?}"
    );
    assert!(matches!(
        n.core.authenticate("veil_garbage").await,
        Err(CoreError::Unauthenticated)
    ));
}

#[tokio::test]
async fn a_password_reset_ends_api_tokens_for_good_and_tokens_expire_by_default() {
    let n = node().await;
    let ana = n.user("ana@lab.org", "data-scientist").await;
    let (token, secret) = n
        .core
        .create_api_token(&ana, "notebook", None)
        .await
        .expect("token");
    assert_eq!(
        token.expires_at,
        Some(START + 365 * 86_400 * 1_000_000),
        "a token asked for without a lifetime gets the node's longest"
    );
    n.core.authenticate(secret.expose()).await.expect("works");

    let owner = n.owner().await;
    let otp = n
        .core
        .reset_password(&owner, &UserRef::Email("ana@lab.org".into()))
        .await
        .expect("reset");
    let first = n.login("ana@lab.org", otp.expose()).await;
    n.core
        .change_password(&first, otp.expose(), "another long passphrase here")
        .await
        .expect("new password");
    assert!(
        matches!(
            n.core.authenticate(secret.expose()).await,
            Err(CoreError::Unauthenticated)
        ),
        "a token minted before the reset stays dead after the new password is set"
    );

    // The user's own change keeps the API tokens they made on purpose.
    let ana = n.login("ana@lab.org", "another long passphrase here").await;
    let (_, kept) = n
        .core
        .create_api_token(&ana, "kept", Some(Duration::from_secs(3600)))
        .await
        .expect("token");
    n.core
        .change_password(
            &ana,
            "another long passphrase here",
            "yet another passphrase, longer",
        )
        .await
        .expect("change");
    n.core
        .authenticate(kept.expose())
        .await
        .expect("still works");
}

#[tokio::test]
async fn a_one_time_password_must_be_changed_before_anything_else() {
    let n = node().await;
    let owner = n.owner().await;
    let (_, otp) = n
        .core
        .create_user(&owner, "ana@lab.org", "data-scientist")
        .await
        .expect("create");
    let ana = n.login("ana@lab.org", otp.expose()).await;
    assert!(matches!(
        n.core.list_tokens(&ana).await,
        Err(CoreError::PasswordChangeRequired)
    ));
    assert!(matches!(
        n.core.budget_report(&ana, None).await,
        Err(CoreError::PasswordChangeRequired)
    ));
    let weak = n.core.change_password(&ana, otp.expose(), "password").await;
    assert!(matches!(weak, Err(CoreError::WeakPassword(_))), "{weak:?}");
    n.core
        .change_password(&ana, otp.expose(), "a long passphrase for tests")
        .await
        .expect("change");
    // The session that changed the password keeps working, without the restriction.
    let ana = n
        .core
        .authenticate_by_id_for_tests(&ana.token_id)
        .await
        .expect("session kept");
    assert!(!ana.user.must_change_password);
    n.core.list_tokens(&ana).await.expect("now allowed");
}

#[tokio::test]
async fn nobody_sets_their_own_budget_nor_that_of_a_role_they_could_not_manage() {
    let n = node().await;
    let owner = n.owner().await;
    let ana = n.user("ana@lab.org", "data-scientist").await;
    n.core
        .create_role(
            &owner,
            "budgeteer",
            &PermissionSet::parse_list("budgets:manage,budgets:read,queries:run").expect("valid"),
            "",
        )
        .await
        .expect("role");
    let bob = n.user("bob@lab.org", "budgeteer").await;
    let own = |p: &Principal, email: &str| {
        let (p, email) = (p.clone(), email.to_string());
        let core = &n.core;
        async move {
            core.set_budget(&p, &UserRef::Email(email), None, 1_000_000.0, 0.0)
                .await
        }
    };
    let raised = own(&bob, "bob@lab.org").await;
    assert!(
        matches!(raised, Err(CoreError::Conflict(Conflict::SelfAction(_)))),
        "{raised:?}"
    );
    let owner_self = own(&owner, "owner@localhost").await;
    assert!(
        matches!(
            owner_self,
            Err(CoreError::Conflict(Conflict::SelfAction(_)))
        ),
        "{owner_self:?}"
    );
    // bob lacks most of a data scientist's permissions, so he cannot set ana's budget.
    let theirs = own(&bob, "ana@lab.org").await;
    assert!(
        matches!(theirs, Err(CoreError::PrivilegeEscalation { .. })),
        "{theirs:?}"
    );
    // An administrator cannot create a data scientist (no `queries:run`), so cannot fund
    // one either; the owner, who holds everything, can.
    let admin = n.user("admin@lab.org", "administrator").await;
    let by_admin = own(&admin, "ana@lab.org").await;
    assert!(
        matches!(&by_admin, Err(CoreError::PrivilegeEscalation { missing }) if missing.contains(&Permission::QueriesRun)),
        "{by_admin:?}"
    );
    own(&owner, "ana@lab.org").await.expect("the owner may");
    own(&owner, "bob@lab.org").await.expect("the owner may");
    drop(ana);
}

#[tokio::test]
async fn nobody_grants_what_they_do_not_hold() {
    let n = node().await;
    let admin = n.user("admin@lab.org", "administrator").await;

    let owner_user = n.core.create_user(&admin, "boss@lab.org", "owner").await;
    assert!(
        matches!(&owner_user, Err(CoreError::PrivilegeEscalation { missing }) if missing.contains(&Permission::NodeKeys)),
        "{owner_user:?}"
    );
    let ds_user = n
        .core
        .create_user(&admin, "ds@lab.org", "data-scientist")
        .await;
    assert!(
        matches!(&ds_user, Err(CoreError::PrivilegeEscalation { missing }) if missing.contains(&Permission::QueriesRun)),
        "{ds_user:?}"
    );
    let role = n
        .core
        .create_role(
            &admin,
            "keyholder",
            &PermissionSet::parse_list("node:keys").expect("valid"),
            "",
        )
        .await;
    assert!(
        matches!(role, Err(CoreError::PrivilegeEscalation { .. })),
        "{role:?}"
    );
    let role = n
        .core
        .create_role(
            &admin,
            "helpdesk",
            &PermissionSet::parse_list("users:read").expect("valid"),
            "reads users",
        )
        .await
        .expect("admin holds users:read");
    assert_eq!(role.name, "helpdesk");

    let owner = n
        .core
        .resolve_user(&UserRef::Email("owner@localhost".into()))
        .await;
    let owner = owner.expect("owner");
    let disable_owner = n
        .core
        .update_user(
            &admin,
            &UserRef::Id(owner.id),
            &UserUpdateRequest {
                role: None,
                disabled: Some(true),
            },
        )
        .await;
    assert!(
        matches!(disable_owner, Err(CoreError::PrivilegeEscalation { .. })),
        "{disable_owner:?}"
    );
    let self_promote = n
        .core
        .update_user(
            &admin,
            &UserRef::Email("admin@lab.org".into()),
            &UserUpdateRequest {
                role: Some("owner".into()),
                disabled: None,
            },
        )
        .await;
    assert!(
        matches!(
            self_promote,
            Err(CoreError::Conflict(Conflict::SelfAction(_)))
        ),
        "{self_promote:?}"
    );
    let guest = n.user("guest@lab.org", "guest").await;
    let r = n
        .core
        .create_role(&guest, "x", &PermissionSet::empty(), "")
        .await;
    assert!(
        matches!(r, Err(CoreError::Forbidden(Permission::RolesManage))),
        "{r:?}"
    );
}

#[tokio::test]
async fn the_last_owner_cannot_be_removed_and_presets_are_fixed() {
    let n = node().await;
    let owner = n.owner().await;
    let second = n.user("second@lab.org", "owner").await;
    let demote_first = n
        .core
        .update_user(
            &second,
            &UserRef::Email("owner@localhost".into()),
            &UserUpdateRequest {
                role: Some("administrator".into()),
                disabled: None,
            },
        )
        .await;
    demote_first.expect("two owners: one may go");
    // The stale principal still holds owner permissions: the last-owner rule stops it.
    let stale = n
        .core
        .update_user(
            &owner,
            &UserRef::Email("second@lab.org".into()),
            &UserUpdateRequest {
                role: None,
                disabled: Some(true),
            },
        )
        .await;
    assert!(
        matches!(stale, Err(CoreError::Conflict(Conflict::LastOwner))),
        "{stale:?}"
    );
    let owner = n.owner().await;
    let last = n
        .core
        .update_user(
            &owner,
            &UserRef::Email("second@lab.org".into()),
            &UserUpdateRequest {
                role: None,
                disabled: Some(true),
            },
        )
        .await;
    // The first owner is now an administrator and cannot touch an owner at all.
    assert!(
        matches!(last, Err(CoreError::PrivilegeEscalation { .. })),
        "{last:?}"
    );

    let del = n.core.delete_role(&second, "guest").await;
    assert!(
        matches!(del, Err(CoreError::Conflict(Conflict::PresetRole))),
        "{del:?}"
    );
    let shadow = n
        .core
        .create_role(&second, "owner", &PermissionSet::empty(), "")
        .await;
    assert!(
        matches!(shadow, Err(CoreError::Conflict(Conflict::PresetRole))),
        "{shadow:?}"
    );
}

#[tokio::test]
async fn disabled_users_lose_their_sessions_and_cannot_log_in() {
    let n = node().await;
    let ana = n.user("ana@lab.org", "guest").await;
    let owner = n.owner().await;
    n.core
        .update_user(
            &owner,
            &UserRef::Email("ana@lab.org".into()),
            &UserUpdateRequest {
                role: None,
                disabled: Some(true),
            },
        )
        .await
        .expect("disable");
    assert!(matches!(
        n.core.authenticate_by_id_for_tests(&ana.token_id).await,
        Err(CoreError::Unauthenticated)
    ));
    let login = n
        .core
        .login("ana@lab.org", "a long passphrase for tests", "ip")
        .await;
    assert!(
        matches!(login, Err(CoreError::InvalidCredentials)),
        "{login:?}"
    );
}

#[tokio::test]
async fn spending_is_charged_once_refused_when_exhausted_and_audited_either_way() {
    let n = node().await;
    let ana = n.user("ana@lab.org", "data-scientist").await;
    let owner = n.owner().await;
    let spend = Spend {
        dataset: None,
        epsilon: Epsilon::cost_from_f64(0.6).expect("valid"),
        delta: Delta::ZERO,
        purpose: "query".into(),
        reference: "sha256:1".into(),
        details: serde_json::json!({}),
        opens: None,
    };
    assert!(matches!(
        n.core.spend(&ana, &spend).await,
        Err(CoreError::NoBudget)
    ));
    n.core
        .set_budget(
            &owner,
            &UserRef::Email("ana@lab.org".into()),
            None,
            1.0,
            0.0,
        )
        .await
        .expect("set");
    let r = n.core.spend(&ana, &spend).await.expect("fits");
    assert_eq!(r.budgets[0].epsilon_remaining().to_string(), "0.4");
    let refused = n.core.spend(&ana, &spend).await;
    assert!(
        matches!(&refused, Err(CoreError::BudgetExhausted { epsilon_remaining, .. }) if epsilon_remaining.to_string() == "0.4"),
        "{refused:?}"
    );
    let debits: Vec<String> = n
        .audit_actions()
        .await
        .into_iter()
        .filter(|(a, _)| a == "budget.debit")
        .map(|(_, o)| o)
        .collect();
    assert_eq!(debits, ["refused", "ok", "refused"]);
    let report = n.core.budget_report(&ana, None).await.expect("report");
    assert_eq!(report.recent.len(), 1);

    // Someone else's budget needs budgets:read.
    let other = n
        .core
        .budget_report(&ana, Some(&UserRef::Email("owner@localhost".into())))
        .await;
    assert!(
        matches!(other, Err(CoreError::Forbidden(Permission::BudgetsRead))),
        "{other:?}"
    );
}

#[tokio::test]
async fn audit_verification_passes_on_an_untouched_log() {
    let n = node().await;
    let owner = n.owner().await;
    n.user("ana@lab.org", "guest").await;
    let report = n.core.verify_audit(&owner).await.expect("verify");
    assert!(report.ok(), "{report:?}");
    assert!(report.entries_checked >= 5);
    let page = n
        .core
        .list_audit(
            &owner,
            &AuditFilter {
                limit: 2,
                ..AuditFilter::default()
            },
        )
        .await
        .expect("list");
    assert_eq!(page.entries.len(), 2);
    assert_eq!(page.next_after, Some(2));
}

/// A node that stopped mid-run leaves no request waiting forever: at the next start a charged
/// one ends as the one charged failure, an uncharged one says nothing was charged.
#[tokio::test]
async fn requests_interrupted_by_a_stop_end_at_the_next_start() {
    let n = node().await;
    let ana = n.user("ana@lab.org", "data-scientist").await;
    let owner = n.owner().await;
    n.core
        .set_budget(
            &owner,
            &UserRef::Email("ana@lab.org".into()),
            None,
            1.0,
            0.0,
        )
        .await
        .expect("set");
    let store = n.core.store().clone();
    let open = |kind: &str, status: veil_store::RequestStatus| veil_store::NewRequest {
        kind: kind.into(),
        requester_id: ana.user.id,
        requester: "ana@lab.org".into(),
        target: "model:m@1".into(),
        dataset: None,
        parameters: "{}".into(),
        epsilon: Epsilon::cost_from_f64(0.1).expect("valid"),
        delta: Delta::ZERO,
        status,
    };
    let audit = || veil_store::NewAuditEntry::new("ana@lab.org", "request.create", "t");
    let mut ids = Vec::new();
    for (kind, status) in [
        ("validation", veil_store::RequestStatus::Approved),
        ("validation", veil_store::RequestStatus::Running),
        ("validation", veil_store::RequestStatus::Running),
        ("query", veil_store::RequestStatus::Running),
    ] {
        let r = store
            .create_request(&open(kind, status), audit())
            .await
            .expect("request");
        ids.push(r.id);
    }
    // The third had been charged.
    n.core
        .spend(
            &ana,
            &Spend {
                dataset: None,
                epsilon: Epsilon::cost_from_f64(0.1).expect("valid"),
                delta: Delta::ZERO,
                purpose: "validation".into(),
                reference: format!("request:{}", ids[2]),
                details: serde_json::json!({}),
                opens: None,
            },
        )
        .await
        .expect("charge");

    n.core.init().await.expect("restart");
    let mut reasons = Vec::new();
    for id in &ids {
        let r = store.get_request(*id).await.expect("get").expect("exists");
        assert_eq!(r.status, veil_store::RequestStatus::Failed);
        reasons.push(r.reason.unwrap_or_default());
    }
    let uncharged = "the node restarted before this request ran; nothing was charged";
    assert_eq!(
        reasons,
        [
            uncharged,
            uncharged,
            crate::charged::CHARGED_FAILURE,
            crate::charged::CHARGED_FAILURE
        ]
    );
    // Nothing is left to end.
    assert_eq!(n.core.end_interrupted_requests().await.expect("again"), 0);
}
