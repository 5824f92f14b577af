//! The one SQL implementation of Veil's metadata store, shared by the SQLite and PostgreSQL
//! backends.
//!
//! Every statement is written once, in SQL both databases accept: `$N` placeholders,
//! `CAST($N AS …) IS NULL` for optional filters, `TRUE`/`FALSE`, `IS DISTINCT FROM`,
//! `ON CONFLICT … DO UPDATE` and `RETURNING`. The rules that sit around the statements (the
//! order in which budget caps are charged, how a refusal is composed, the compare-and-set on
//! requests, the audit chain's head) therefore exist once too. What differs between the
//! backends is a [`Dialect`]: which pool reads and which writes, how a write transaction
//! begins, and how rows read inside one are held until it ends.
//!
//! Concurrency: every mutation is one transaction whose last lock is the audit chain's head
//! row, read with the dialect's lock (only rows that cite the new entry's sequence number, a
//! debit's ledger row and request, are written after it). On PostgreSQL (READ
//! COMMITTED, many writers) that is `SELECT … FOR UPDATE`, and taking that lock last
//! everywhere keeps lock order consistent (no deadlocks); a debit is one conditional
//! `UPDATE … WHERE spent + cost <= cap`, which PostgreSQL re-checks after waiting for a
//! competing writer, so racing debits never overspend. On SQLite the single writer
//! connection and `BEGIN IMMEDIATE` serialise writers, so no row needs locking.

pub mod migrations;

use std::sync::Arc;

use async_trait::async_trait;
use sqlx::{
    AssertSqlSafe, Database, Decode, Encode, Executor, IntoArguments, Pool, Row as _, Type, query,
    query_as,
};
use veil_crypto::AuditKey;
use veil_store::rows::{self, sql_amount, sql_seq};
use veil_store::*;
use veil_types::UserId;

/// What one SQL backend contributes: its pools and the few phrases its SQL spells its own way.
pub trait Dialect: Send + Sync + 'static {
    type Db: Database;
    /// The backend's name, for logs and `/healthz`.
    const NAME: &'static str;
    /// The statement that begins a write transaction.
    const BEGIN_WRITE: &'static str;
    /// Appended to a `SELECT` inside a write transaction to hold its rows until the
    /// transaction ends (empty where writers are already serialised).
    const LOCK_ROWS: &'static str;
    /// The pool plain reads use.
    fn reads(&self) -> &Pool<Self::Db>;
    /// The pool write transactions use.
    fn writes(&self) -> &Pool<Self::Db>;
    /// How many rows a statement changed (each driver reports it its own way).
    fn rows_affected(done: &<Self::Db as Database>::QueryResult) -> u64;
}

/// A metadata store over one SQL backend.
pub struct SqlStore<D> {
    dialect: D,
    key: AuditKey,
    clock: Arc<dyn Clock>,
}

impl<D> std::fmt::Debug for SqlStore<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlStore").finish_non_exhaustive()
    }
}

fn backend(e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::PoolTimedOut => StoreError::Busy,
        other => StoreError::Backend(other.to_string()),
    }
}

fn is_unique(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

fn is_foreign_key(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_foreign_key_violation())
}

/// A write refused because a unique key of `entity` is taken: `Conflict(entity)`.
fn taken(entity: Entity) -> impl Fn(sqlx::Error) -> StoreError {
    move |e| {
        if is_unique(&e) {
            StoreError::Conflict(entity)
        } else {
            backend(e)
        }
    }
}

/// A write refused because the `entity` it refers to does not exist: `NotFound(entity)`.
fn missing(entity: Entity) -> impl Fn(sqlx::Error) -> StoreError {
    move |e| {
        if is_foreign_key(&e) {
            StoreError::NotFound(entity)
        } else {
            backend(e)
        }
    }
}

/// [`taken`] for the row's own key, [`missing`] for what it refers to.
fn taken_or_missing(own: Entity, referred: Entity) -> impl Fn(sqlx::Error) -> StoreError {
    move |e| {
        if is_unique(&e) {
            StoreError::Conflict(own)
        } else {
            missing(referred)(e)
        }
    }
}

impl<D: Dialect> SqlStore<D> {
    /// A store over `dialect`'s pools (migrated by the backend), sealing audit entries with
    /// `key` and stamping changes with `clock` (the node's).
    pub fn new(dialect: D, key: AuditKey, clock: Arc<dyn Clock>) -> Self {
        Self {
            dialect,
            key,
            clock,
        }
    }

    fn now(&self) -> Timestamp {
        self.clock.now_micros()
    }

    /// Closes the backend's pools.
    pub async fn close(&self) {
        self.dialect.reads().close().await;
        self.dialect.writes().close().await;
    }
}

/// A connection inside a write transaction.
type Conn<D> = <<D as Dialect>::Db as Database>::Connection;

impl<D: Dialect> SqlStore<D>
where
    // What the shared statements need of a backend's types (sqlx states them per database).
    for<'c> &'c mut Conn<D>: Executor<'c, Database = D::Db>,
    <D::Db as Database>::Arguments: IntoArguments<D::Db>,
    usize: sqlx::ColumnIndex<<D::Db as Database>::Row>,
    i64: Type<D::Db> + for<'q> Encode<'q, D::Db> + for<'r> Decode<'r, D::Db>,
    bool: Type<D::Db> + for<'q> Encode<'q, D::Db> + for<'r> Decode<'r, D::Db>,
    String: Type<D::Db> + for<'q> Encode<'q, D::Db> + for<'r> Decode<'r, D::Db>,
    Vec<u8>: Type<D::Db> + for<'q> Encode<'q, D::Db> + for<'r> Decode<'r, D::Db>,
    Option<i64>: Type<D::Db> + for<'q> Encode<'q, D::Db>,
    Option<bool>: Type<D::Db> + for<'q> Encode<'q, D::Db>,
    for<'a> &'a str: Type<D::Db> + Encode<'a, D::Db>,
    for<'a> Option<&'a str>: Type<D::Db> + Encode<'a, D::Db>,
    for<'a> &'a [u8]: Type<D::Db> + Encode<'a, D::Db>,
    for<'a> Option<&'a [u8]>: Type<D::Db> + Encode<'a, D::Db>,
{
    async fn insert_request(
        tx: &mut Conn<D>,
        r: &NewRequest,
        now: i64,
    ) -> Result<rows::RequestRow> {
        query_as::<_, rows::RequestRow>(concat!(
            "INSERT INTO requests (kind, requester_id, requester, target, dataset, parameters, epsilon, delta, status, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10) RETURNING ",
            veil_store::request_columns!()
        ))
        .bind(&r.kind)
        .bind(r.requester_id)
        .bind(&r.requester)
        .bind(&r.target)
        .bind(r.dataset.as_deref())
        .bind(&r.parameters)
        .bind(sql_amount(r.epsilon.units()))
        .bind(sql_amount(r.delta.units()))
        .bind(r.status.as_str())
        .bind(now)
        .fetch_one(&mut *tx)
        .await
        .map_err(backend)
    }

    async fn begin(&self) -> Result<sqlx::Transaction<'static, D::Db>> {
        self.dialect
            .writes()
            .begin_with(D::BEGIN_WRITE)
            .await
            .map_err(backend)
    }

    async fn append_in(&self, tx: &mut Conn<D>, new: &NewAuditEntry) -> Result<AuditEntry> {
        // Locked last in every transaction (see the module's docs). PostgreSQL's migration
        // seeds an empty head (sequence 0); SQLite's creates it with the first entry.
        let head = query_as::<_, rows::AuditHeadRow>(AssertSqlSafe(format!(
            "SELECT seq, hash, seal FROM audit_head WHERE id = 1{}",
            D::LOCK_ROWS
        )))
        .fetch_optional(&mut *tx)
        .await
        .map_err(backend)?
        .filter(|h| h.0 > 0)
        .map(rows::audit_head)
        .transpose()?;
        let (entry, head) = audit::seal_next(&self.key, head.as_ref(), new, self.now())?;
        query(
            "INSERT INTO audit_log (seq, at, actor, action, target, outcome, details, prev_hash, hash, seal)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(sql_seq(entry.seq))
        .bind(entry.at)
        .bind(&entry.actor)
        .bind(&entry.action)
        .bind(&entry.target)
        .bind(&entry.outcome)
        .bind(&entry.details)
        .bind(&entry.prev_hash)
        .bind(&entry.hash)
        .bind(&entry.seal)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        query(
            "INSERT INTO audit_head (id, seq, hash, seal) VALUES (1, $1, $2, $3)
             ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, seal = excluded.seal",
        )
        .bind(sql_seq(head.seq))
        .bind(&head.hash)
        .bind(&head.seal)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        Ok(entry)
    }

    /// Ends a mutation: appends its audit entry (the transaction's last lock) and commits.
    async fn commit_with(
        &self,
        mut tx: sqlx::Transaction<'static, D::Db>,
        audit: &NewAuditEntry,
    ) -> Result<AuditEntry> {
        let entry = self.append_in(&mut tx, audit).await?;
        tx.commit().await.map_err(backend)?;
        Ok(entry)
    }

    async fn user_in(tx: &mut Conn<D>, id: UserId) -> Result<Option<User>> {
        query_as::<_, rows::UserRow>(concat!(
            "SELECT ",
            veil_store::user_columns!(),
            " FROM users WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(backend)
        .map(|r| r.map(rows::user))
    }

    /// Charges one budget row if the cost fits; reports why not otherwise.
    async fn charge(
        tx: &mut Conn<D>,
        debit: &DebitRequest,
        dataset: Option<&str>,
        now: Timestamp,
    ) -> Result<Option<Budget>, ChargeRefused> {
        let charged = query_as::<_, rows::BudgetRow>(concat!(
            "UPDATE budgets SET epsilon_spent = epsilon_spent + $1, delta_spent = delta_spent + $2, updated_at = $3
             WHERE user_id = $4 AND scope = $5
               AND epsilon_spent + $1 <= epsilon_cap AND delta_spent + $2 <= delta_cap
             RETURNING ",
            veil_store::budget_columns!()
        ))
        .bind(sql_amount(debit.epsilon.units()))
        .bind(sql_amount(debit.delta.units()))
        .bind(now)
        .bind(debit.user_id)
        .bind(rows::scope(dataset))
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| ChargeRefused::Store(backend(e)))?;
        if let Some(row) = charged {
            return rows::budget(row).map(Some).map_err(ChargeRefused::Store);
        }
        let current = query_as::<_, rows::BudgetRow>(concat!(
            "SELECT ",
            veil_store::budget_columns!(),
            " FROM budgets WHERE user_id = $1 AND scope = $2"
        ))
        .bind(debit.user_id)
        .bind(rows::scope(dataset))
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| ChargeRefused::Store(backend(e)))?;
        match current {
            None => Ok(None),
            Some(row) => {
                let b = rows::budget(row).map_err(ChargeRefused::Store)?;
                Err(ChargeRefused::Exhausted(BudgetRefusal::by_budget(&b)))
            }
        }
    }

    /// Charges a dataset's global cap, if the dataset is recorded and has one.
    async fn charge_dataset(
        tx: &mut Conn<D>,
        debit: &DebitRequest,
        dataset: &str,
    ) -> Result<(), ChargeRefused> {
        let done = query(
            "UPDATE datasets SET epsilon_spent = epsilon_spent + $1, delta_spent = delta_spent + $2
             WHERE name = $3
               AND (epsilon_cap IS NULL OR epsilon_spent + $1 <= epsilon_cap)
               AND (delta_cap IS NULL OR delta_spent + $2 <= delta_cap)",
        )
        .bind(sql_amount(debit.epsilon.units()))
        .bind(sql_amount(debit.delta.units()))
        .bind(dataset)
        .execute(&mut *tx)
        .await
        .map_err(|e| ChargeRefused::Store(backend(e)))?;
        if D::rows_affected(&done) > 0 {
            return Ok(());
        }
        let current = query_as::<_, rows::DatasetRow>(concat!(
            "SELECT ",
            veil_store::dataset_columns!(),
            " FROM datasets WHERE name = $1"
        ))
        .bind(dataset)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| ChargeRefused::Store(backend(e)))?;
        match current {
            // Not a recorded dataset: there is no global cap to charge.
            None => Ok(()),
            Some(row) => {
                let d = rows::dataset(row).map_err(ChargeRefused::Store)?;
                Err(ChargeRefused::Exhausted(BudgetRefusal::by_dataset_cap(&d)))
            }
        }
    }
}

enum ChargeRefused {
    Exhausted(BudgetRefusal),
    Store(StoreError),
}

impl From<ChargeRefused> for StoreError {
    fn from(c: ChargeRefused) -> Self {
        match c {
            ChargeRefused::Exhausted(r) => StoreError::BudgetExhausted(r),
            ChargeRefused::Store(e) => e,
        }
    }
}

#[async_trait]
impl<D: Dialect> Store for SqlStore<D>
where
    // What the shared statements need of a backend's types (sqlx states them per database).
    for<'c> &'c mut Conn<D>: Executor<'c, Database = D::Db>,
    <D::Db as Database>::Arguments: IntoArguments<D::Db>,
    usize: sqlx::ColumnIndex<<D::Db as Database>::Row>,
    i64: Type<D::Db> + for<'q> Encode<'q, D::Db> + for<'r> Decode<'r, D::Db>,
    bool: Type<D::Db> + for<'q> Encode<'q, D::Db> + for<'r> Decode<'r, D::Db>,
    String: Type<D::Db> + for<'q> Encode<'q, D::Db> + for<'r> Decode<'r, D::Db>,
    Vec<u8>: Type<D::Db> + for<'q> Encode<'q, D::Db> + for<'r> Decode<'r, D::Db>,
    Option<i64>: Type<D::Db> + for<'q> Encode<'q, D::Db>,
    Option<bool>: Type<D::Db> + for<'q> Encode<'q, D::Db>,
    for<'a> &'a str: Type<D::Db> + Encode<'a, D::Db>,
    for<'a> Option<&'a str>: Type<D::Db> + Encode<'a, D::Db>,
    for<'a> &'a [u8]: Type<D::Db> + Encode<'a, D::Db>,
    for<'a> Option<&'a [u8]>: Type<D::Db> + Encode<'a, D::Db>,
{
    fn backend_name(&self) -> &'static str {
        D::NAME
    }

    async fn sync_preset_roles(&self, roles: &[NewRole]) -> Result<()> {
        let mut tx = self.begin().await?;
        let at = self.now();
        // One microsecond apart in the order given, so that listings (by creation time) show
        // the presets in their canonical order.
        for (r, created_at) in roles.iter().zip(at..) {
            query(
                "INSERT INTO roles (name, description, permissions, preset, created_at) VALUES ($1, $2, $3, TRUE, $4)
                 ON CONFLICT (name) DO UPDATE SET description = excluded.description,
                     permissions = excluded.permissions, preset = TRUE",
            )
            .bind(&r.name)
            .bind(&r.description)
            .bind(rows::permissions_text(&r.permissions))
            .bind(created_at)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)
    }

    async fn create_role(&self, role: &NewRole, audit: NewAuditEntry) -> Result<Role> {
        let mut tx = self.begin().await?;
        let row = query_as::<_, rows::RoleRow>(concat!(
            "INSERT INTO roles (name, description, permissions, preset, created_at) VALUES ($1, $2, $3, FALSE, $4) RETURNING ",
            veil_store::role_columns!()
        ))
        .bind(&role.name)
        .bind(&role.description)
        .bind(rows::permissions_text(&role.permissions))
        .bind(self.now())
        .fetch_one(&mut *tx)
        .await
        .map_err(taken(Entity::Role))?;
        self.commit_with(tx, &audit).await?;
        rows::role(row)
    }

    async fn get_role(&self, name: &str) -> Result<Option<Role>> {
        query_as::<_, rows::RoleRow>(concat!(
            "SELECT ",
            veil_store::role_columns!(),
            " FROM roles WHERE name = $1"
        ))
        .bind(name)
        .fetch_optional(self.dialect.reads())
        .await
        .map_err(backend)?
        .map(rows::role)
        .transpose()
    }

    async fn list_roles(&self) -> Result<Vec<Role>> {
        query_as::<_, rows::RoleRow>(concat!(
            "SELECT ",
            veil_store::role_columns!(),
            " FROM roles ORDER BY preset DESC, created_at, name"
        ))
        .fetch_all(self.dialect.reads())
        .await
        .map_err(backend)?
        .into_iter()
        .map(rows::role)
        .collect()
    }

    async fn delete_role(&self, name: &str, audit: NewAuditEntry) -> Result<()> {
        let mut tx = self.begin().await?;
        let holders: i64 = query("SELECT COUNT(*) FROM users WHERE role = $1")
            .bind(name)
            .fetch_one(&mut *tx)
            .await
            .map_err(backend)?
            .try_get(0)
            .map_err(backend)?;
        if holders > 0 {
            return Err(StoreError::InUse(Entity::Role));
        }
        let deleted = query("DELETE FROM roles WHERE name = $1 AND NOT preset")
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        if D::rows_affected(&deleted) == 0 {
            return Err(StoreError::NotFound(Entity::Role));
        }
        self.commit_with(tx, &audit).await?;
        Ok(())
    }

    async fn create_user(&self, user: &NewUser, audit: NewAuditEntry) -> Result<User> {
        let mut tx = self.begin().await?;
        let now = self.now();
        let row = query_as::<_, rows::UserRow>(concat!(
            "INSERT INTO users (email, role, password_hash, must_change_password, disabled, created_at, updated_at)
             VALUES ($1, $2, $3, $4, FALSE, $5, $6) RETURNING ",
            veil_store::user_columns!()
        ))
        .bind(&user.email)
        .bind(&user.role)
        .bind(&user.password_hash)
        .bind(user.must_change_password)
        .bind(now)
        .bind(now)
        .fetch_one(&mut *tx)
        .await
        .map_err(taken_or_missing(Entity::User, Entity::Role))?;
        self.commit_with(tx, &audit).await?;
        Ok(rows::user(row))
    }

    async fn get_user(&self, id: UserId) -> Result<Option<User>> {
        let mut conn = self.dialect.reads().acquire().await.map_err(backend)?;
        Self::user_in(&mut conn, id).await
    }

    async fn get_user_by_email(&self, email: &str) -> Result<Option<User>> {
        query_as::<_, rows::UserRow>(concat!(
            "SELECT ",
            veil_store::user_columns!(),
            " FROM users WHERE email = $1"
        ))
        .bind(email)
        .fetch_optional(self.dialect.reads())
        .await
        .map_err(backend)
        .map(|r| r.map(rows::user))
    }

    async fn list_users(&self) -> Result<Vec<User>> {
        Ok(query_as::<_, rows::UserRow>(concat!(
            "SELECT ",
            veil_store::user_columns!(),
            " FROM users ORDER BY email"
        ))
        .fetch_all(self.dialect.reads())
        .await
        .map_err(backend)?
        .into_iter()
        .map(rows::user)
        .collect())
    }

    async fn get_password_hash(&self, id: UserId) -> Result<Option<String>> {
        query_as::<_, (String,)>("SELECT password_hash FROM users WHERE id = $1")
            .bind(id)
            .fetch_optional(self.dialect.reads())
            .await
            .map_err(backend)
            .map(|r| r.map(|(h,)| h))
    }

    async fn update_user(
        &self,
        id: UserId,
        update: &UserUpdate,
        audit: NewAuditEntry,
    ) -> Result<User> {
        let mut tx = self.begin().await?;
        let now = self.now();
        let changed = query(
            "UPDATE users SET role = COALESCE($1, role), disabled = COALESCE($2, disabled), updated_at = $3
             WHERE id = $4",
        )
        .bind(update.role.as_deref())
        .bind(update.disabled)
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(missing(Entity::Role))?;
        if D::rows_affected(&changed) == 0 {
            return Err(StoreError::NotFound(Entity::User));
        }
        if update.disabled == Some(true) {
            query("UPDATE tokens SET revoked_at = $1 WHERE user_id = $2 AND revoked_at IS NULL")
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
        }
        let user = Self::user_in(&mut tx, id)
            .await?
            .ok_or(StoreError::NotFound(Entity::User))?;
        self.commit_with(tx, &audit).await?;
        Ok(user)
    }

    async fn set_password(
        &self,
        id: UserId,
        change: &PasswordChange,
        audit: NewAuditEntry,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        let now = self.now();
        let changed = query(
            "UPDATE users SET password_hash = $1, must_change_password = $2, updated_at = $3 WHERE id = $4",
        )
        .bind(&change.password_hash)
        .bind(change.must_change_password)
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        if D::rows_affected(&changed) == 0 {
            return Err(StoreError::NotFound(Entity::User));
        }
        match &change.revokes {
            Revokes::OtherSessions { keep } => query(
                "UPDATE tokens SET revoked_at = $1
                 WHERE user_id = $2 AND kind = 'session' AND revoked_at IS NULL AND id IS DISTINCT FROM $3",
            )
            .bind(now)
            .bind(id)
            .bind(keep.as_deref()),
            Revokes::Everything => query(
                "UPDATE tokens SET revoked_at = $1 WHERE user_id = $2 AND revoked_at IS NULL",
            )
            .bind(now)
            .bind(id),
        }
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        self.commit_with(tx, &audit).await?;
        Ok(())
    }

    async fn count_enabled_users_with_role(&self, role: &str) -> Result<u64> {
        let n: i64 = query("SELECT COUNT(*) FROM users WHERE role = $1 AND NOT disabled")
            .bind(role)
            .fetch_one(self.dialect.reads())
            .await
            .map_err(backend)?
            .try_get(0)
            .map_err(backend)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn create_token(&self, token: &NewToken, audit: NewAuditEntry) -> Result<TokenRecord> {
        let mut tx = self.begin().await?;
        let row = query_as::<_, rows::TokenRow>(concat!(
            "INSERT INTO tokens (id, user_id, kind, name, secret_hash, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING ",
            veil_store::token_columns!()
        ))
        .bind(&token.id)
        .bind(token.user_id)
        .bind(token.kind.as_str())
        .bind(token.name.as_deref())
        .bind(token.secret_hash.as_slice())
        .bind(self.now())
        .bind(token.expires_at)
        .fetch_one(&mut *tx)
        .await
        .map_err(taken_or_missing(Entity::Token, Entity::User))?;
        self.commit_with(tx, &audit).await?;
        rows::token(row)
    }

    async fn get_token_principal(&self, token_id: &str) -> Result<Option<TokenPrincipal>> {
        type Joined = (
            String,
            i64,
            String,
            Option<String>,
            Vec<u8>,
            i64,
            Option<i64>,
            Option<i64>,
            Option<i64>,
            String,
            String,
            bool,
            bool,
            i64,
            i64,
            String,
        );
        let row = query_as::<_, Joined>(
            "SELECT t.id, t.user_id, t.kind, t.name, t.secret_hash, t.created_at, t.expires_at,
                    t.revoked_at, t.last_used_at,
                    u.email, u.role, u.disabled, u.must_change_password, u.created_at, u.updated_at,
                    r.permissions
             FROM tokens t JOIN users u ON u.id = t.user_id JOIN roles r ON r.name = u.role
             WHERE t.id = $1",
        )
        .bind(token_id)
        .fetch_optional(self.dialect.reads())
        .await
        .map_err(backend)?;
        let Some(r) = row else { return Ok(None) };
        let token = rows::token((r.0, r.1, r.2, r.3, r.4, r.5, r.6, r.7, r.8))?;
        let user = rows::user((r.1, r.9, r.10, r.11, r.12, r.13, r.14));
        Ok(Some(TokenPrincipal {
            token,
            user,
            permissions: rows::permissions(&r.15)?,
        }))
    }

    async fn list_tokens(&self, user_id: UserId) -> Result<Vec<TokenRecord>> {
        query_as::<_, rows::TokenRow>(concat!(
            "SELECT ",
            veil_store::token_columns!(),
            " FROM tokens WHERE user_id = $1 ORDER BY created_at, id"
        ))
        .bind(user_id)
        .fetch_all(self.dialect.reads())
        .await
        .map_err(backend)?
        .into_iter()
        .map(rows::token)
        .collect()
    }

    async fn revoke_token(
        &self,
        user_id: UserId,
        token_id: &str,
        audit: NewAuditEntry,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        let done = query(
            "UPDATE tokens SET revoked_at = $1 WHERE id = $2 AND user_id = $3 AND revoked_at IS NULL",
        )
        .bind(self.now())
        .bind(token_id)
        .bind(user_id)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        if D::rows_affected(&done) == 0 {
            return Err(StoreError::NotFound(Entity::Token));
        }
        self.commit_with(tx, &audit).await?;
        Ok(())
    }

    async fn touch_token(&self, token_id: &str, at: Timestamp) -> Result<()> {
        query("UPDATE tokens SET last_used_at = $1 WHERE id = $2")
            .bind(at)
            .bind(token_id)
            .execute(self.dialect.writes())
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn set_budget(&self, cap: &BudgetCap, audit: NewAuditEntry) -> Result<Budget> {
        let mut tx = self.begin().await?;
        let row = query_as::<_, rows::BudgetRow>(concat!(
            "INSERT INTO budgets (user_id, scope, epsilon_cap, delta_cap, epsilon_spent, delta_spent, updated_at)
             VALUES ($1, $2, $3, $4, 0, 0, $5)
             ON CONFLICT (user_id, scope) DO UPDATE SET epsilon_cap = excluded.epsilon_cap,
                 delta_cap = excluded.delta_cap, updated_at = excluded.updated_at
             RETURNING ",
            veil_store::budget_columns!()
        ))
        .bind(cap.user_id)
        .bind(rows::scope(cap.dataset.as_deref()))
        .bind(sql_amount(cap.epsilon.units()))
        .bind(sql_amount(cap.delta.units()))
        .bind(self.now())
        .fetch_one(&mut *tx)
        .await
        .map_err(missing(Entity::User))?;
        self.commit_with(tx, &audit).await?;
        rows::budget(row)
    }

    async fn list_budgets(&self, user_id: UserId) -> Result<Vec<Budget>> {
        query_as::<_, rows::BudgetRow>(concat!(
            "SELECT ",
            veil_store::budget_columns!(),
            " FROM budgets WHERE user_id = $1 ORDER BY scope"
        ))
        .bind(user_id)
        .fetch_all(self.dialect.reads())
        .await
        .map_err(backend)?
        .into_iter()
        .map(rows::budget)
        .collect()
    }

    async fn debit_budget(
        &self,
        debit: &DebitRequest,
        audit: NewAuditEntry,
    ) -> Result<DebitReceipt> {
        let mut tx = self.begin().await?;
        let now = self.now();
        // Any early return drops `tx`, which rolls back whatever was charged so far.
        let overall = Self::charge(&mut tx, debit, None, now)
            .await?
            .ok_or(StoreError::NoBudget)?;
        let mut budgets = vec![overall];
        if let Some(ds) = debit.dataset.as_deref()
            && let Some(b) = Self::charge(&mut tx, debit, Some(ds), now).await?
        {
            budgets.push(b);
        }
        if let Some(ds) = debit.dataset.as_deref() {
            Self::charge_dataset(&mut tx, debit, ds).await?;
        }
        let entry = self.append_in(&mut tx, &audit).await?;
        let ledger_id: i64 = query(
            "INSERT INTO budget_ledger (user_id, dataset, epsilon, delta, purpose, reference, audit_seq, at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
        )
        .bind(debit.user_id)
        .bind(debit.dataset.as_deref())
        .bind(sql_amount(debit.epsilon.units()))
        .bind(sql_amount(debit.delta.units()))
        .bind(&debit.purpose)
        .bind(&debit.reference)
        .bind(sql_seq(entry.seq))
        .bind(now)
        .fetch_one(&mut *tx)
        .await
        .map_err(backend)?
        .try_get(0)
        .map_err(backend)?;
        let request_id = match &debit.opens {
            Some(r) => Some(Self::insert_request(&mut tx, r, now).await?.0),
            None => None,
        };
        tx.commit().await.map_err(backend)?;
        Ok(DebitReceipt {
            ledger_id,
            audit_seq: entry.seq,
            epsilon: debit.epsilon,
            delta: debit.delta,
            budgets,
            request_id,
        })
    }

    async fn list_ledger(&self, user_id: UserId, limit: u32) -> Result<Vec<LedgerEntry>> {
        query_as::<_, rows::LedgerRow>(concat!(
            "SELECT ",
            veil_store::ledger_columns!(),
            " FROM budget_ledger WHERE user_id = $1 ORDER BY id DESC LIMIT $2"
        ))
        .bind(user_id)
        .bind(i64::from(limit))
        .fetch_all(self.dialect.reads())
        .await
        .map_err(backend)?
        .into_iter()
        .map(rows::ledger)
        .collect()
    }

    async fn create_dataset(&self, d: &NewDataset, audit: NewAuditEntry) -> Result<DatasetRecord> {
        let mut tx = self.begin().await?;
        // A deleted dataset's row stays (without its key) so that its global cap and what was
        // spent under it carry over to a new upload under the same name.
        let row = query_as::<_, rows::DatasetRow>(concat!(
            "INSERT INTO datasets (name, description, manifest, file_id, wrapped_key, row_count, bytes_stored, created_by, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (name) DO UPDATE SET
                 description = excluded.description, manifest = excluded.manifest,
                 file_id = excluded.file_id, wrapped_key = excluded.wrapped_key,
                 row_count = excluded.row_count, bytes_stored = excluded.bytes_stored,
                 created_by = excluded.created_by, created_at = excluded.created_at,
                 deleted_at = NULL
             WHERE datasets.deleted_at IS NOT NULL
             RETURNING ",
            veil_store::dataset_columns!()
        ))
        .bind(&d.name)
        .bind(&d.description)
        .bind(&d.manifest)
        .bind(&d.file_id)
        .bind(&d.wrapped_key)
        .bind(sql_amount(d.rows))
        .bind(sql_amount(d.bytes_stored))
        .bind(&d.created_by)
        .bind(self.now())
        .fetch_optional(&mut *tx)
        .await
        .map_err(taken(Entity::Dataset))?
        .ok_or(StoreError::Conflict(Entity::Dataset))?;
        self.commit_with(tx, &audit).await?;
        rows::dataset(row)
    }

    async fn get_dataset(&self, name: &str) -> Result<Option<DatasetRecord>> {
        query_as::<_, rows::DatasetRow>(concat!(
            "SELECT ",
            veil_store::dataset_columns!(),
            " FROM datasets WHERE name = $1 AND deleted_at IS NULL"
        ))
        .bind(name)
        .fetch_optional(self.dialect.reads())
        .await
        .map_err(backend)?
        .map(rows::dataset)
        .transpose()
    }

    async fn list_datasets(&self) -> Result<Vec<DatasetRecord>> {
        query_as::<_, rows::DatasetRow>(concat!(
            "SELECT ",
            veil_store::dataset_columns!(),
            " FROM datasets WHERE deleted_at IS NULL ORDER BY name"
        ))
        .fetch_all(self.dialect.reads())
        .await
        .map_err(backend)?
        .into_iter()
        .map(rows::dataset)
        .collect()
    }

    async fn delete_dataset(&self, name: &str, audit: NewAuditEntry) -> Result<DatasetRecord> {
        let mut tx = self.begin().await?;
        let row = query_as::<_, rows::DatasetRow>(AssertSqlSafe(format!(
            "SELECT {} FROM datasets WHERE name = $1 AND deleted_at IS NULL{}",
            veil_store::dataset_columns!(),
            D::LOCK_ROWS
        )))
        .bind(name)
        .fetch_optional(&mut *tx)
        .await
        .map_err(backend)?
        .ok_or(StoreError::NotFound(Entity::Dataset))?;
        // The key goes (the file is unreadable from this commit on); the row stays as the
        // name's budget record (see `create_dataset`).
        query(
            "UPDATE datasets SET deleted_at = $2, wrapped_key = $3, file_id = 'deleted-' || file_id,
                 row_count = 0, bytes_stored = 0
             WHERE name = $1",
        )
        .bind(name)
        .bind(self.now())
        .bind(Vec::<u8>::new())
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        self.commit_with(tx, &audit).await?;
        rows::dataset(row)
    }

    async fn update_dataset(
        &self,
        name: &str,
        settings: &DatasetSettings,
        audit: NewAuditEntry,
    ) -> Result<DatasetRecord> {
        let mut tx = self.begin().await?;
        let row = query_as::<_, rows::DatasetRow>(concat!(
            "UPDATE datasets SET
                 epsilon_cap = CASE WHEN $1 THEN $2 ELSE epsilon_cap END,
                 delta_cap = CASE WHEN $3 THEN $4 ELSE delta_cap END,
                 policy = COALESCE($5, policy)
             WHERE name = $6 AND deleted_at IS NULL RETURNING ",
            veil_store::dataset_columns!()
        ))
        .bind(settings.epsilon_cap.is_some())
        .bind(
            settings
                .epsilon_cap
                .flatten()
                .map(|e| sql_amount(e.units())),
        )
        .bind(settings.delta_cap.is_some())
        .bind(settings.delta_cap.flatten().map(|d| sql_amount(d.units())))
        .bind(settings.policy.as_deref())
        .bind(name)
        .fetch_optional(&mut *tx)
        .await
        .map_err(backend)?
        .ok_or(StoreError::NotFound(Entity::Dataset))?;
        self.commit_with(tx, &audit).await?;
        rows::dataset(row)
    }

    async fn add_signing_key(
        &self,
        key: &NewSigningKey,
        audit: NewAuditEntry,
    ) -> Result<SigningKeyRecord> {
        let mut tx = self.begin().await?;
        let row = query_as::<_, rows::SigningKeyRow>(concat!(
            "INSERT INTO signing_keys (user_id, name, public_key, fingerprint, created_at)
             VALUES ($1, $2, $3, $4, $5) RETURNING ",
            veil_store::signing_key_columns!()
        ))
        .bind(key.user_id)
        .bind(&key.name)
        .bind(&key.public_key)
        .bind(&key.fingerprint)
        .bind(self.now())
        .fetch_one(&mut *tx)
        .await
        .map_err(taken(Entity::SigningKey))?;
        self.commit_with(tx, &audit).await?;
        Ok(rows::signing_key(row))
    }

    async fn list_signing_keys(&self, user_id: UserId) -> Result<Vec<SigningKeyRecord>> {
        Ok(query_as::<_, rows::SigningKeyRow>(concat!(
            "SELECT ",
            veil_store::signing_key_columns!(),
            " FROM signing_keys WHERE user_id = $1 ORDER BY id"
        ))
        .bind(user_id)
        .fetch_all(self.dialect.reads())
        .await
        .map_err(backend)?
        .into_iter()
        .map(rows::signing_key)
        .collect())
    }

    async fn revoke_signing_key(
        &self,
        user_id: UserId,
        id: i64,
        audit: NewAuditEntry,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        let done = query(
            "UPDATE signing_keys SET revoked_at = $1 WHERE id = $2 AND user_id = $3 AND revoked_at IS NULL",
        )
        .bind(self.now())
        .bind(id)
        .bind(user_id)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        if D::rows_affected(&done) == 0 {
            return Err(StoreError::NotFound(Entity::SigningKey));
        }
        self.commit_with(tx, &audit).await?;
        Ok(())
    }

    async fn create_model(&self, m: &NewModel, audit: NewAuditEntry) -> Result<ModelRecord> {
        let mut tx = self.begin().await?;
        let row = query_as::<_, rows::ModelRow>(concat!(
            "INSERT INTO models (name, version, owner_id, owner_email, file_id, wrapped_key, sha256, size_bytes, summary, signed_by, created_at, fhe_file_id, fhe_wrapped_key, fhe_summary, private)
             VALUES ($1, (SELECT COALESCE(MAX(version), 0) + 1 FROM models WHERE name = $1), $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
             RETURNING ",
            veil_store::model_columns!()
        ))
        .bind(&m.name)
        .bind(m.owner_id)
        .bind(&m.owner_email)
        .bind(&m.file_id)
        .bind(&m.wrapped_key)
        .bind(&m.sha256)
        .bind(sql_amount(m.size_bytes))
        .bind(&m.summary)
        .bind(m.signed_by.as_deref())
        .bind(self.now())
        .bind(m.fhe.as_ref().map(|f| f.file_id.as_str()))
        .bind(m.fhe.as_ref().map(|f| f.wrapped_key.as_slice()))
        .bind(m.fhe.as_ref().map(|f| f.summary.as_str()))
        .bind(m.private)
        .fetch_one(&mut *tx)
        .await
        .map_err(taken(Entity::Model))?;
        self.commit_with(tx, &audit).await?;
        rows::model(row)
    }

    async fn get_model(&self, name: &str, version: Option<u32>) -> Result<Option<ModelRecord>> {
        query_as::<_, rows::ModelRow>(concat!(
            "SELECT ",
            veil_store::model_columns!(),
            " FROM models WHERE name = $1 AND (CAST($2 AS BIGINT) IS NULL OR version = $2) ORDER BY version DESC LIMIT 1"
        ))
        .bind(name)
        .bind(version.map(i64::from))
        .fetch_optional(self.dialect.reads())
        .await
        .map_err(backend)?
        .map(rows::model)
        .transpose()
    }

    async fn list_models(&self) -> Result<Vec<ModelRecord>> {
        query_as::<_, rows::ModelRow>(concat!(
            "SELECT ",
            veil_store::model_columns!(),
            " FROM models ORDER BY name, version"
        ))
        .fetch_all(self.dialect.reads())
        .await
        .map_err(backend)?
        .into_iter()
        .map(rows::model)
        .collect()
    }

    async fn delete_model(
        &self,
        name: &str,
        version: Option<u32>,
        audit: NewAuditEntry,
    ) -> Result<Vec<ModelRecord>> {
        let mut tx = self.begin().await?;
        let deleted = query_as::<_, rows::ModelRow>(concat!(
            "DELETE FROM models WHERE name = $1 AND (CAST($2 AS BIGINT) IS NULL OR version = $2) RETURNING ",
            veil_store::model_columns!()
        ))
        .bind(name)
        .bind(version.map(i64::from))
        .fetch_all(&mut *tx)
        .await
        .map_err(backend)?;
        if deleted.is_empty() {
            return Err(StoreError::NotFound(Entity::Model));
        }
        self.commit_with(tx, &audit).await?;
        deleted.into_iter().map(rows::model).collect()
    }

    async fn add_evaluation_key(
        &self,
        key: &NewEvaluationKey,
        audit: NewAuditEntry,
    ) -> Result<EvaluationKeyRecord> {
        let mut tx = self.begin().await?;
        let now = self.now();
        // The user's row serialises their uploads (PostgreSQL); SQLite's writer already does.
        query(AssertSqlSafe(format!(
            "SELECT id FROM users WHERE id = $1{}",
            D::LOCK_ROWS
        )))
        .bind(key.user_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(backend)?
        .ok_or(StoreError::NotFound(Entity::User))?;
        let live: i64 =
            query("SELECT COUNT(*) FROM evaluation_keys WHERE user_id = $1 AND expires_at > $2")
                .bind(key.user_id)
                .bind(now)
                .fetch_one(&mut *tx)
                .await
                .map_err(backend)?
                .try_get(0)
                .map_err(backend)?;
        if live >= i64::from(key.max_live_per_user) {
            return Err(StoreError::LimitReached(Entity::EvaluationKey));
        }
        let row = query_as::<_, rows::EvaluationKeyRow>(concat!(
            "INSERT INTO evaluation_keys (id, user_id, sha256, size_bytes, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING ",
            veil_store::evaluation_key_columns!()
        ))
        .bind(&key.id)
        .bind(key.user_id)
        .bind(&key.sha256)
        .bind(sql_amount(key.size_bytes))
        .bind(now)
        .bind(key.expires_at)
        .fetch_one(&mut *tx)
        .await
        .map_err(taken(Entity::EvaluationKey))?;
        self.commit_with(tx, &audit).await?;
        rows::evaluation_key(row)
    }

    async fn get_evaluation_key(&self, id: &str) -> Result<Option<EvaluationKeyRecord>> {
        query_as::<_, rows::EvaluationKeyRow>(concat!(
            "SELECT ",
            veil_store::evaluation_key_columns!(),
            " FROM evaluation_keys WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(self.dialect.reads())
        .await
        .map_err(backend)?
        .map(rows::evaluation_key)
        .transpose()
    }

    async fn list_evaluation_keys(&self, user_id: UserId) -> Result<Vec<EvaluationKeyRecord>> {
        query_as::<_, rows::EvaluationKeyRow>(concat!(
            "SELECT ",
            veil_store::evaluation_key_columns!(),
            " FROM evaluation_keys WHERE user_id = $1 ORDER BY created_at, id"
        ))
        .bind(user_id)
        .fetch_all(self.dialect.reads())
        .await
        .map_err(backend)?
        .into_iter()
        .map(rows::evaluation_key)
        .collect()
    }

    async fn delete_evaluation_key(
        &self,
        user_id: UserId,
        id: &str,
        audit: NewAuditEntry,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        let done = query("DELETE FROM evaluation_keys WHERE id = $1 AND user_id = $2")
            .bind(id)
            .bind(user_id)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        if D::rows_affected(&done) == 0 {
            return Err(StoreError::NotFound(Entity::EvaluationKey));
        }
        self.commit_with(tx, &audit).await?;
        Ok(())
    }

    async fn create_request(&self, r: &NewRequest, audit: NewAuditEntry) -> Result<RequestRecord> {
        let mut tx = self.begin().await?;
        let row = Self::insert_request(&mut tx, r, self.now()).await?;
        self.commit_with(tx, &audit).await?;
        rows::request(row)
    }

    async fn get_request(&self, id: i64) -> Result<Option<RequestRecord>> {
        query_as::<_, rows::RequestRow>(concat!(
            "SELECT ",
            veil_store::request_columns!(),
            " FROM requests WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(self.dialect.reads())
        .await
        .map_err(backend)?
        .map(rows::request)
        .transpose()
    }

    async fn list_requests(
        &self,
        requester: Option<UserId>,
        status: Option<RequestStatus>,
        kind: Option<&str>,
        limit: u32,
    ) -> Result<Vec<RequestRecord>> {
        query_as::<_, rows::RequestRow>(concat!(
            "SELECT ",
            veil_store::request_columns!(),
            " FROM requests WHERE (CAST($1 AS BIGINT) IS NULL OR requester_id = $1) AND (CAST($2 AS TEXT) IS NULL OR status = $2)
             AND (CAST($3 AS TEXT) IS NULL OR kind = $3) ORDER BY id DESC LIMIT $4"
        ))
        .bind(requester)
        .bind(status.map(RequestStatus::as_str))
        .bind(kind)
        .bind(i64::from(limit))
        .fetch_all(self.dialect.reads())
        .await
        .map_err(backend)?
        .into_iter()
        .map(rows::request)
        .collect()
    }

    async fn transition_request(
        &self,
        id: i64,
        t: &RequestTransition,
        audit: NewAuditEntry,
    ) -> Result<RequestRecord> {
        let mut tx = self.begin().await?;
        // Compare-and-set: the update applies only while the status is one of `from` (given as
        // a comma-separated list; no status name contains a LIKE wildcard).
        let row = query_as::<_, rows::RequestRow>(concat!(
            "UPDATE requests SET status = $1, reason = COALESCE($2, reason), result = COALESCE($3, result),
                 reviewer = COALESCE($4, reviewer), updated_at = $5
             WHERE id = $6 AND (',' || $7 || ',') LIKE ('%,' || status || ',%') RETURNING ",
            veil_store::request_columns!()
        ))
        .bind(t.to.as_str())
        .bind(t.reason.as_deref())
        .bind(t.result.as_deref())
        .bind(t.reviewer.as_deref())
        .bind(self.now())
        .bind(id)
        .bind(rows::status_list(&t.from))
        .fetch_optional(&mut *tx)
        .await
        .map_err(backend)?;
        let Some(row) = row else {
            let exists = query("SELECT 1 FROM requests WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(backend)?
                .is_some();
            return Err(if exists {
                StoreError::StateChanged
            } else {
                StoreError::NotFound(Entity::Request)
            });
        };
        self.commit_with(tx, &audit).await?;
        rows::request(row)
    }

    async fn append_audit(&self, entry: NewAuditEntry) -> Result<AuditEntry> {
        let tx = self.begin().await?;
        self.commit_with(tx, &entry).await
    }

    async fn list_audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>> {
        query_as::<_, rows::AuditRow>(concat!(
            "SELECT ",
            veil_store::audit_columns!(),
            " FROM audit_log WHERE seq > $1 AND (CAST($2 AS TEXT) IS NULL OR actor = $2)
               AND (CAST($3 AS TEXT) IS NULL OR substr(action, 1, length($3)) = $3)
             ORDER BY seq LIMIT $4"
        ))
        .bind(sql_seq(filter.after_seq))
        .bind(filter.actor.as_deref())
        .bind(filter.action_prefix.as_deref())
        .bind(i64::from(filter.limit))
        .fetch_all(self.dialect.reads())
        .await
        .map_err(backend)?
        .into_iter()
        .map(rows::audit)
        .collect()
    }

    async fn audit_head(&self) -> Result<Option<AuditHead>> {
        query_as::<_, rows::AuditHeadRow>("SELECT seq, hash, seal FROM audit_head WHERE id = 1")
            .fetch_optional(self.dialect.reads())
            .await
            .map_err(backend)?
            .filter(|h| h.0 > 0)
            .map(rows::audit_head)
            .transpose()
    }
}
