//! A lane to the protocol writer for bulk lines (log notifications), bounded in bytes.
//!
//! The writer's main queue is bounded in messages, but one log notification can carry up to
//! 16 MiB of data, so a message count is no memory bound while a host reads slowly. Lines sent
//! here take permits from a byte budget that the writer returns once the line is written;
//! senders wait while the budget is spent, which slows the log readers down to the host's pace.

use std::sync::Arc;

use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

/// Sends complete protocol lines (newline included) to the writer. Cheap to clone.
#[derive(Clone)]
pub struct Outlet {
    tx: mpsc::UnboundedSender<BulkLine>,
    budget: Arc<Semaphore>,
    /// The budget in bytes; a longer line waits until the lane is empty, then goes alone.
    limit: u32,
}

/// The writer's end. Dropping it closes the lane: waiting senders fail instead of hanging.
pub struct OutletQueue {
    rx: mpsc::UnboundedReceiver<BulkLine>,
    budget: Arc<Semaphore>,
}

/// A line holding its share of the budget until it is dropped (after being written).
pub struct BulkLine {
    pub bytes: Vec<u8>,
    _permit: OwnedSemaphorePermit,
}

/// The writer is gone (the connection is ending).
#[derive(Debug, thiserror::Error)]
#[error("the protocol writer is gone")]
pub struct OutletClosed;

/// A lane with room for `budget_bytes` of lines written but not yet sent.
pub fn outlet(budget_bytes: usize) -> (Outlet, OutletQueue) {
    let limit = u32::try_from(budget_bytes.max(1)).unwrap_or(u32::MAX);
    let budget = Arc::new(Semaphore::new(limit as usize));
    let (tx, rx) = mpsc::unbounded_channel();
    (
        Outlet {
            tx,
            budget: budget.clone(),
            limit,
        },
        OutletQueue { rx, budget },
    )
}

impl Outlet {
    /// Queues `line` once it fits in the budget.
    pub async fn send(&self, line: Vec<u8>) -> Result<(), OutletClosed> {
        let want = u32::try_from(line.len())
            .unwrap_or(u32::MAX)
            .clamp(1, self.limit);
        let permit = self
            .budget
            .clone()
            .acquire_many_owned(want)
            .await
            .map_err(|_| OutletClosed)?;
        self.tx
            .send(BulkLine {
                bytes: line,
                _permit: permit,
            })
            .map_err(|_| OutletClosed)
    }

    /// Bytes of lines queued and not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.limit as usize - self.budget.available_permits()
    }
}

impl OutletQueue {
    pub async fn recv(&mut self) -> Option<BulkLine> {
        self.rx.recv().await
    }
}

impl Drop for OutletQueue {
    fn drop(&mut self) {
        self.budget.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn senders_wait_while_the_budget_is_spent() {
        let (outlet, mut queue) = outlet(100);
        outlet.send(vec![b'a'; 60]).await.unwrap();
        assert_eq!(outlet.queued_bytes(), 60);
        // 60 + 60 > 100: the second line waits until the first is written (dropped).
        let o = outlet.clone();
        let second = tokio::spawn(async move { o.send(vec![b'b'; 60]).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!second.is_finished());
        let first = queue.recv().await.unwrap();
        assert_eq!(first.bytes.len(), 60);
        drop(first);
        second.await.unwrap().unwrap();
        assert_eq!(queue.recv().await.unwrap().bytes[0], b'b');
        assert_eq!(outlet.queued_bytes(), 0);
    }

    #[tokio::test]
    async fn a_line_larger_than_the_budget_goes_alone() {
        let (outlet, mut queue) = outlet(10);
        outlet.send(vec![1; 1000]).await.unwrap();
        assert_eq!(outlet.queued_bytes(), 10);
        let o = outlet.clone();
        let next = tokio::spawn(async move { o.send(vec![2; 1]).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!next.is_finished());
        drop(queue.recv().await.unwrap());
        next.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn waiting_senders_fail_when_the_writer_is_gone() {
        let (outlet, queue) = outlet(10);
        outlet.send(vec![1; 10]).await.unwrap();
        let o = outlet.clone();
        let waiting = tokio::spawn(async move { o.send(vec![2; 10]).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(queue);
        assert!(waiting.await.unwrap().is_err());
        assert!(outlet.send(vec![3]).await.is_err());
    }
}
