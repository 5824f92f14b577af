//! The model worker pool: threads that run untrusted models (and model-related CPU work) off
//! the async runtime, with one slot per thread.
//!
//! Every job holds a slot until it has finished (not until its caller stops waiting), so jobs
//! never wait for a thread once they have a slot. A charged validation reserves its workers'
//! slots for the whole padded run and gives them back only at its padded end, or when its
//! last job finishes if that is later: how long its threads were busy, which other users can
//! feel as waiting time, is then the padded duration, not the time its rows really took.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::{CoreError, Result};

#[derive(Debug)]
pub(crate) struct ModelPool {
    threads: Arc<rayon::ThreadPool>,
    slots: Arc<Semaphore>,
    size: usize,
}

/// Slots reserved for one run; spawning through it takes no further slot. The slots go back
/// when the reservation and every job spawned through it are gone.
#[derive(Debug)]
pub(crate) struct Reservation {
    threads: Arc<rayon::ThreadPool>,
    workers: usize,
    slots: Arc<OwnedSemaphorePermit>,
}

impl ModelPool {
    pub(crate) fn new(size: usize) -> Self {
        let size = size.max(1);
        Self {
            threads: Arc::new(crate::worker_pool(size, "model")),
            slots: Arc::new(Semaphore::new(size)),
            size,
        }
    }

    pub(crate) fn size(&self) -> usize {
        self.size
    }

    /// Runs `f` on a pool thread, holding one slot.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T> {
        let slot = self.reserve(1).await?.spawner();
        let (tx, rx) = tokio::sync::oneshot::channel();
        slot.spawn(move || {
            let _ = tx.send(f());
        });
        rx.await
            .map_err(|_| CoreError::Internal("a model worker job was interrupted".into()))
    }

    /// Waits for `workers` slots (at most the pool's size) and holds them until the
    /// reservation is dropped. Waiting is first come, first served.
    pub(crate) async fn reserve(&self, workers: usize) -> Result<Reservation> {
        let workers = workers.clamp(1, self.size);
        let slots = Arc::clone(&self.slots)
            .acquire_many_owned(u32::try_from(workers).unwrap_or(1))
            .await
            .map_err(|_| CoreError::Internal("the model worker pool closed".into()))?;
        Ok(Reservation {
            threads: Arc::clone(&self.threads),
            workers,
            slots: Arc::new(slots),
        })
    }
}

impl Reservation {
    /// A handle for spawning from another task; the slots stay reserved while it or any job
    /// it started lives.
    pub(crate) fn spawner(&self) -> Spawner {
        Spawner {
            threads: Arc::clone(&self.threads),
            workers: self.workers,
            slots: Arc::clone(&self.slots),
        }
    }
}

/// Spawns under a [`Reservation`]'s slots.
#[derive(Debug, Clone)]
pub(crate) struct Spawner {
    threads: Arc<rayon::ThreadPool>,
    workers: usize,
    slots: Arc<OwnedSemaphorePermit>,
}

impl Spawner {
    /// How many jobs of this run may be running at once; the caller keeps to it.
    pub(crate) fn workers(&self) -> usize {
        self.workers
    }

    /// Starts `job` on the pool; it holds the reservation's slots until it has finished.
    pub(crate) fn spawn(&self, job: impl FnOnce() + Send + 'static) {
        let slots = Arc::clone(&self.slots);
        self.threads.spawn(move || {
            job();
            drop(slots);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_reservation_keeps_its_slots_until_dropped() {
        let pool = Arc::new(ModelPool::new(2));
        let held = pool.reserve(2).await.expect("reserve");
        assert_eq!(held.spawner().workers(), 2);
        let waiting = tokio::spawn({
            let pool = Arc::clone(&pool);
            async move { pool.run(|| 7).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "a job ran on a reserved slot");
        drop(held);
        assert_eq!(waiting.await.expect("join").expect("run"), 7);

        // A job whose caller stopped waiting keeps its slot until it has finished.
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let caller = tokio::spawn({
            let pool = Arc::clone(&pool);
            async move { pool.run(move || go_rx.recv().is_ok()).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        caller.abort();
        let _ = caller.await;
        let second = tokio::spawn({
            let pool = Arc::clone(&pool);
            async move { pool.reserve(2).await.map(|_| ()) }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!second.is_finished(), "a running job's slot was given back");
        let _ = go_tx.send(());
        second.await.expect("join").expect("reserve");
        // Asking for more than the pool has takes the whole pool.
        assert_eq!(
            pool.reserve(9).await.expect("reserve").spawner().workers(),
            2
        );
    }
}
