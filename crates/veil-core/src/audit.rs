//! Reading and verifying the audit log.

use serde_json::json;
use veil_store::audit::ChainVerifier;
use veil_store::{AuditEntry, AuditFilter, NewAuditEntry};
use veil_types::Permission;

use crate::{Core, Principal, Result};

/// Entries fetched per round trip while verifying.
const VERIFY_PAGE: u32 = 1_000;
/// Most entries one listing returns.
pub const MAX_PAGE: u32 = 1_000;

#[derive(Debug, Clone)]
pub struct AuditPage {
    pub entries: Vec<AuditEntry>,
    /// Pass as `after_seq` to get the next page; `None` at the end.
    pub next_after: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Entries that verified before the first problem (all of them if `first_bad` is None).
    pub entries_checked: u64,
    /// The first bad entry's sequence number and what is wrong with it.
    pub first_bad: Option<(u64, String)>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.first_bad.is_none()
    }
}

impl Core {
    pub async fn list_audit(&self, p: &Principal, filter: &AuditFilter) -> Result<AuditPage> {
        p.require(Permission::AuditRead)?;
        let mut filter = filter.clone();
        filter.limit = filter.limit.clamp(1, MAX_PAGE);
        let entries = self.store.list_audit(&filter).await?;
        let next_after = (entries.len() == filter.limit as usize)
            .then(|| entries.last().map(|e| e.seq))
            .flatten();
        Ok(AuditPage {
            entries,
            next_after,
        })
    }

    /// Recomputes the whole chain and checks every seal and the head. The check itself is
    /// then recorded (after it ran, so it does not verify its own entry).
    pub async fn verify_audit(&self, p: &Principal) -> Result<VerifyReport> {
        p.require(Permission::AuditRead)?;
        // Read the head first: entries appended while we walk are beyond it and ignored.
        let head = self.store.audit_head().await?;
        let last = head.as_ref().map_or(0, |h| h.seq);
        let mut verifier = ChainVerifier::new(&self.audit_key);
        let mut after = 0;
        let mut first_bad = None;
        'walk: while after < last {
            let page = self
                .store
                .list_audit(&AuditFilter {
                    after_seq: after,
                    limit: VERIFY_PAGE,
                    ..AuditFilter::default()
                })
                .await?;
            if page.is_empty() {
                break;
            }
            for e in page.iter().take_while(|e| e.seq <= last) {
                if let Err(b) = verifier.push(e) {
                    first_bad = Some((b.seq(), b.describe()));
                    break 'walk;
                }
            }
            after = page.last().map_or(last, |e| e.seq);
        }
        let entries_checked = verifier.checked();
        if first_bad.is_none()
            && let Err(b) = verifier.finish(head.as_ref())
        {
            first_bad = Some((b.seq(), b.describe()));
        }
        let report = VerifyReport {
            entries_checked,
            first_bad,
        };
        self.store
            .append_audit(
                NewAuditEntry::new(p.email(), "audit.verify", "audit").details(json!({
                    "entries_checked": report.entries_checked,
                    "ok": report.ok(),
                    "first_bad": report.first_bad.as_ref().map(|(s, _)| s),
                })),
            )
            .await?;
        Ok(report)
    }
}

impl Core {
    /// Records that `p` called an endpoint their role does not allow.
    pub async fn audit_access_denied(
        &self,
        p: &Principal,
        method: &str,
        route: &str,
        needed: Permission,
    ) -> Result<()> {
        let target = format!("route:{method} {route}");
        self.record_denial(
            &format!("access.denied {} {target}", p.user.id),
            NewAuditEntry::new(p.email(), "access.denied", target)
                .outcome(veil_store::AuditOutcome::Denied)
                .details(json!({"permission": needed.as_str(), "role": p.user.role})),
        )
        .await
    }
}
