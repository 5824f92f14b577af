//! The one door between work that has been charged to a privacy budget and what its requester
//! sees.
//!
//! The rule (ARCHITECTURE.md, "After the charge"): once a request is charged, everything its
//! requester, or anyone without the exact-data permission, can observe depends only on public
//! inputs (the SQL, the manifest, the model, the parameters) and on the DP release. So every
//! step that can fail on public inputs (planning, costing, loading the model, checking that
//! the dataset's file is here) runs *before* the charge, and everything after it goes through
//! [`after_charge`]:
//!
//! - the work runs on its own task, detached from the caller, so a client that disconnects
//!   cannot cut a charged run short (its outcome is still recorded and retrievable);
//! - its outcome is either the release (a type only the DP engine constructs) or
//!   [`Charged::Failed`], which carries nothing: the reason shown for it is the fixed
//!   [`CHARGED_FAILURE`], and the detail goes to the operator's log only.
//!
//! A failure after the charge is a bug (it should be impossible by the checks before the
//! charge), but if one happens the requester learns only that it happened, and the way it
//! happened cannot depend on the private rows.

use std::future::Future;

/// What a charged run ends in.
#[derive(Debug)]
pub(crate) enum Charged<T> {
    /// The DP release.
    Released(T),
    /// The one data-independent failure.
    Failed,
}

/// The only failure text a requester ever sees for charged work.
pub(crate) const CHARGED_FAILURE: &str = "the run failed on the node after its privacy cost was charged; the node's operators have the details";

/// Runs `work` (everything after a charge) to completion on its own task, even if the caller
/// stops waiting, and turns any error or panic into [`Charged::Failed`] after logging it with
/// `what` and `reference` (never private data: a request id, a ledger id).
pub(crate) async fn after_charge<T, F>(what: &'static str, reference: String, work: F) -> Charged<T>
where
    T: Send + 'static,
    F: Future<Output = Result<T, String>> + Send + 'static,
{
    match tokio::spawn(work).await {
        Ok(Ok(released)) => Charged::Released(released),
        Ok(Err(detail)) => {
            tracing::error!(what, reference, error = %detail, "charged work failed");
            Charged::Failed
        }
        Err(e) => {
            tracing::error!(what, reference, error = %e, "charged work panicked or was cancelled");
            Charged::Failed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn errors_and_panics_become_the_one_failure() {
        let ok = after_charge("t", "r".into(), async { Ok::<_, String>(7) }).await;
        assert!(matches!(ok, Charged::Released(7)));
        let err = after_charge("t", "r".into(), async {
            Err::<u8, _>("row 17 is odd".into())
        })
        .await;
        assert!(matches!(err, Charged::Failed));
        let panicked = after_charge("t", "r".into(), async {
            if std::hint::black_box(true) {
                panic!("a bug");
            }
            Ok::<u8, String>(0)
        })
        .await;
        assert!(matches!(panicked, Charged::Failed));
    }

    #[tokio::test]
    async fn the_work_finishes_when_the_caller_goes_away() {
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let caller = tokio::spawn(after_charge("t", "r".into(), async move {
            let _ = started_tx.send(());
            let _ = go_rx.await;
            let _ = done_tx.send(());
            Ok::<_, String>(())
        }));
        started_rx.await.expect("the work started");
        caller.abort();
        let _ = caller.await;
        let _ = go_tx.send(());
        done_rx
            .await
            .expect("the charged work ran to its end although its caller was dropped");
    }
}
