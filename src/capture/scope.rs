//! The write a tool reports from inside an instrumented call.
//!
//! The rmcp wrapper runs each `tools/call` inside a task-local slot; the tool's own code calls
//! [`record_write`] with the before/after state it knows, and the wrapper puts it on the record.
//! Outside an instrumented call, `record_write` does nothing and says so. A confirmation the
//! tool obtained (the rmcp helper `confirm`) travels the same way, through
//! [`record_confirmation`].

use crate::record::{Confirmation, WriteOp};
use std::cell::RefCell;
use std::future::Future;

tokio::task_local! {
    static CURRENT_WRITE: RefCell<Option<WriteOp>>;
    static CURRENT_CONFIRMATION: RefCell<Option<Confirmation>>;
}

/// Records what the user answered before the current tool call went ahead. Returns false
/// outside an instrumented call.
pub fn record_confirmation(confirmation: Confirmation) -> bool {
    CURRENT_CONFIRMATION
        .try_with(|slot| *slot.borrow_mut() = Some(confirmation))
        .is_ok()
}

/// [`with_write_slot`] that also collects the confirmation the call recorded.
pub(crate) async fn with_report_slot<F: Future>(
    fut: F,
) -> (F::Output, Option<WriteOp>, Option<Confirmation>) {
    CURRENT_CONFIRMATION
        .scope(RefCell::new(None), async move {
            let (out, write) = with_write_slot(fut).await;
            let confirmation = CURRENT_CONFIRMATION.with(|slot| slot.borrow_mut().take());
            (out, write, confirmation)
        })
        .await
}

/// Records the write the current tool call does. Returns false when not inside an instrumented
/// call (nothing is recorded then).
pub fn record_write(write: WriteOp) -> bool {
    CURRENT_WRITE
        .try_with(|slot| *slot.borrow_mut() = Some(write))
        .is_ok()
}

/// Runs `fut` with an empty write slot; returns its output and the write it recorded.
pub(crate) async fn with_write_slot<F: Future>(fut: F) -> (F::Output, Option<WriteOp>) {
    CURRENT_WRITE
        .scope(RefCell::new(None), async move {
            let out = fut.await;
            let write = CURRENT_WRITE.with(|slot| slot.borrow_mut().take());
            (out, write)
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::OperationType;

    #[tokio::test]
    async fn a_write_recorded_inside_the_scope_comes_out() {
        assert!(
            !record_write(WriteOp::new(OperationType::Create)),
            "outside: nothing recorded"
        );
        let ((), w) = with_write_slot(async {
            tokio::task::yield_now().await;
            assert!(record_write(
                WriteOp::new(OperationType::Delete).resource_id("t1")
            ));
        })
        .await;
        assert_eq!(w.unwrap().resource_id.as_deref(), Some("t1"));
    }
}
