//! Group commit: callers that need their writes on disk queue a waiter; one
//! flusher thread takes every waiter queued so far, flushes once, and wakes them
//! all. Concurrent sends therefore share one fsync instead of paying one each.

use std::sync::mpsc;

use tokio::sync::oneshot;

use super::StoreError;

type Waiter = oneshot::Sender<Result<(), String>>;

#[derive(Clone)]
pub struct GroupCommit {
    queue: mpsc::Sender<Waiter>,
}

impl GroupCommit {
    pub fn start(db: sled::Db) -> GroupCommit {
        let (queue, waiters) = mpsc::channel::<Waiter>();
        std::thread::Builder::new()
            .name("parleyd-flush".into())
            .spawn(move || flush_loop(db, waiters))
            .map(|_| ())
            .unwrap_or_else(|e| tracing::error!(error = %e, "cannot start the flush thread"));
        GroupCommit { queue }
    }

    /// Resolves once a flush that started after this call has completed.
    pub async fn wait(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.queue
            .send(tx)
            .map_err(|_| StoreError::Flush("the flush thread has stopped".into()))?;
        match rx.await {
            Ok(result) => result.map_err(StoreError::Flush),
            Err(_) => Err(StoreError::Flush("the flush thread has stopped".into())),
        }
    }
}

fn flush_loop(db: sled::Db, waiters: mpsc::Receiver<Waiter>) {
    // Ends when every `GroupCommit` handle has been dropped.
    while let Ok(first) = waiters.recv() {
        let mut batch = vec![first];
        batch.extend(waiters.try_iter());
        let started = std::time::Instant::now();
        let result = db.flush().map(|_| ()).map_err(|e| e.to_string());
        metrics::histogram!("parleyd_flush_seconds").record(started.elapsed().as_secs_f64());
        metrics::histogram!("parleyd_flush_batch_size").record(batch.len() as f64);
        if let Err(e) = &result {
            tracing::error!(error = %e, "flush failed");
        }
        for waiter in batch {
            let _ = waiter.send(result.clone());
        }
    }
}
