//! Conversions from store records to wire types.

use chrono::{DateTime, Utc};
use veil_api_types::*;
use veil_core::Token;
use veil_core::records::{AuditEntry, Budget, LedgerEntry, Role, Timestamp, User};

pub(crate) fn time(micros: Timestamp) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(micros).unwrap_or_default()
}

pub(crate) fn user(u: User) -> UserView {
    UserView {
        id: u.id,
        email: u.email,
        role: u.role,
        disabled: u.disabled,
        must_change_password: u.must_change_password,
        created_at: time(u.created_at),
    }
}

pub(crate) fn role(r: Role) -> RoleView {
    RoleView {
        name: r.name,
        description: r.description,
        permissions: r.permissions.to_names(),
        preset: r.preset,
    }
}

pub(crate) fn token(t: Token, now: Timestamp) -> TokenView {
    TokenView {
        active: t.is_active(now),
        id: t.id,
        name: t.name,
        kind: t.kind.as_str().to_string(),
        created_at: time(t.created_at),
        expires_at: t.expires_at.map(time),
        revoked_at: t.revoked_at.map(time),
        last_used_at: t.last_used_at.map(time),
    }
}

pub(crate) fn budget(b: Budget) -> BudgetView {
    BudgetView {
        epsilon_remaining: b.epsilon_remaining().as_f64(),
        delta_remaining: b.delta_remaining().as_f64(),
        dataset: b.dataset,
        epsilon_cap: b.epsilon_cap.as_f64(),
        delta_cap: b.delta_cap.as_f64(),
        epsilon_spent: b.epsilon_spent.as_f64(),
        delta_spent: b.delta_spent.as_f64(),
    }
}

pub(crate) fn ledger(l: LedgerEntry) -> LedgerEntryView {
    LedgerEntryView {
        id: l.id,
        dataset: l.dataset,
        epsilon: l.epsilon.as_f64(),
        delta: l.delta.as_f64(),
        purpose: l.purpose,
        reference: l.reference,
        at: time(l.at),
    }
}

pub(crate) fn audit(e: AuditEntry) -> AuditEntryView {
    AuditEntryView {
        seq: e.seq,
        at: time(e.at),
        actor: e.actor,
        action: e.action,
        target: e.target,
        outcome: e.outcome,
        // Stored as the exact text that was hashed; parse it only for display.
        details: serde_json::from_str(&e.details).unwrap_or(serde_json::Value::String(e.details)),
        hash: hex(&e.hash),
        prev_hash: hex(&e.prev_hash),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
