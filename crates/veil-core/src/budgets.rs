//! Privacy budgets: setting caps, showing them, and spending them.
//!
//! Spending goes through exactly one store method, which checks the caps, debits, and
//! records the ledger row and the audit entry in one transaction. Nothing is ever refunded.

use serde_json::json;
use veil_store::{AuditOutcome, Budget, BudgetCap, DebitReceipt, DebitRequest, LedgerEntry};
use veil_store::{NewAuditEntry, User};
use veil_types::{DatasetName, Delta, Epsilon, Permission};

use crate::error::Conflict;
use crate::users::UserRef;
use crate::{Core, CoreError, Principal, Result};

/// How many recent ledger entries a budget report includes.
const REPORT_LEDGER_ROWS: u32 = 20;

#[derive(Debug, Clone)]
pub struct BudgetReport {
    pub user: User,
    pub budgets: Vec<Budget>,
    pub recent: Vec<LedgerEntry>,
}

/// A cost to charge to the caller's budget before releasing something.
#[derive(Debug, Clone)]
pub struct Spend {
    pub dataset: Option<DatasetName>,
    pub epsilon: Epsilon,
    pub delta: Delta,
    /// What the budget pays for: `query`, `validation`, …
    pub purpose: String,
    /// A handle to the release (e.g. a hash of the query text); never private data.
    pub reference: String,
    /// Extra audit context; never private data.
    pub details: serde_json::Value,
    /// A request record opened in the debit's transaction for the charged work's outcome.
    pub opens: Option<veil_store::NewRequest>,
}

pub type DebitOutcome = DebitReceipt;

impl Core {
    /// Sets a user's overall cap, or their cap for one dataset. What was already spent stays
    /// spent: lowering a cap below it leaves nothing to spend.
    ///
    /// Separation of duties: nobody sets their own budget (a role with `budgets:manage`
    /// could otherwise grant itself any ε), and budgets follow the rule for managing users:
    /// only someone holding every permission of the target's role may set theirs.
    pub async fn set_budget(
        &self,
        p: &Principal,
        user: &UserRef,
        dataset: Option<&str>,
        epsilon: f64,
        delta: f64,
    ) -> Result<Budget> {
        p.require(Permission::BudgetsManage)?;
        let invalid = |e: veil_types::PrivacyAmountError| CoreError::InvalidInput(e.to_string());
        let epsilon = Epsilon::cap_from_f64(epsilon).map_err(invalid)?;
        let delta = Delta::cap_from_f64(delta).map_err(invalid)?;
        let dataset = dataset
            .map(DatasetName::parse)
            .transpose()
            .map_err(|e| CoreError::InvalidInput(e.to_string()))?;
        let target = self.resolve_user(user).await?;
        if target.id == p.user.id {
            return Err(CoreError::Conflict(Conflict::SelfAction(
                "set the budget of",
            )));
        }
        p.ensure_can_grant(&self.role_permissions(&target.role).await?)?;
        let previous = self
            .store
            .list_budgets(target.id)
            .await?
            .into_iter()
            .find(|b| b.dataset.as_deref() == dataset.as_ref().map(DatasetName::as_str));
        Ok(self
            .store
            .set_budget(
                &BudgetCap {
                    user_id: target.id,
                    dataset: dataset.as_ref().map(|d| d.to_string()),
                    epsilon,
                    delta,
                },
                NewAuditEntry::new(p.email(), "budget.set", format!("user:{}", target.email))
                    .details(json!({
                        "dataset": dataset.as_ref().map(DatasetName::as_str),
                        "epsilon": epsilon.to_string(),
                        "delta": delta.to_string(),
                        "previous": previous.map(|b| json!({
                            "epsilon": b.epsilon_cap.to_string(),
                            "delta": b.delta_cap.to_string(),
                        })),
                    })),
            )
            .await?)
    }

    /// A user's budgets and recent spending. Everyone may see their own; others' need
    /// `budgets:read`.
    pub async fn budget_report(
        &self,
        p: &Principal,
        user: Option<&UserRef>,
    ) -> Result<BudgetReport> {
        p.ensure_active()?;
        let target = match user {
            None => p.user.clone(),
            Some(r) => {
                let u = self.resolve_user(r).await?;
                if u.id != p.user.id {
                    p.require(Permission::BudgetsRead)?;
                }
                u
            }
        };
        Ok(BudgetReport {
            budgets: self.store.list_budgets(target.id).await?,
            recent: self
                .store
                .list_ledger(target.id, REPORT_LEDGER_ROWS)
                .await?,
            user: target,
        })
    }

    /// Charges `spend` to the caller's budget, or refuses with nothing charged. Callers must
    /// charge *before* computing anything from private data. Refusals are audited too.
    pub async fn spend(&self, p: &Principal, spend: &Spend) -> Result<DebitOutcome> {
        p.ensure_active()?;
        self.spend_for(p.email(), p.user.id, spend).await
    }

    /// Charges `spend` to user `user_id`'s budget, recorded as done by `actor` (a reviewer
    /// approving someone's request charges the requester).
    pub(crate) async fn spend_for(
        &self,
        actor: &str,
        user_id: i64,
        spend: &Spend,
    ) -> Result<DebitOutcome> {
        let target = format!(
            "dataset:{}",
            spend.dataset.as_ref().map_or("*", DatasetName::as_str)
        );
        let mut details = json!({
            "epsilon": spend.epsilon.to_string(),
            "delta": spend.delta.to_string(),
            "purpose": spend.purpose,
            "reference": spend.reference,
        });
        if let serde_json::Value::Object(extra) = &spend.details {
            for (k, v) in extra {
                details[k] = v.clone();
            }
        }
        let result = self
            .store
            .debit_budget(
                &DebitRequest {
                    user_id,
                    dataset: spend.dataset.as_ref().map(|d| d.to_string()),
                    epsilon: spend.epsilon,
                    delta: spend.delta,
                    purpose: spend.purpose.clone(),
                    reference: spend.reference.clone(),
                    opens: spend.opens.clone(),
                },
                NewAuditEntry::new(actor, "budget.debit", &target).details(details.clone()),
            )
            .await;
        match result {
            Ok(receipt) => Ok(receipt),
            Err(e) => {
                let err = CoreError::from(e);
                if matches!(err, CoreError::NoBudget | CoreError::BudgetExhausted { .. }) {
                    details["reason"] = json!(err.to_string());
                    let why = if matches!(err, CoreError::NoBudget) {
                        "no budget"
                    } else {
                        "exhausted"
                    };
                    self.record_denial(
                        &format!(
                            "budget.debit refused {user_id} {target} {} {why}",
                            spend.purpose
                        ),
                        NewAuditEntry::new(actor, "budget.debit", &target)
                            .outcome(AuditOutcome::Refused)
                            .details(details),
                    )
                    .await?;
                }
                Err(err)
            }
        }
    }
}
