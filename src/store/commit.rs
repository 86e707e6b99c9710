//! Group commit: callers that need their writes on disk queue a waiter; one
//! flusher thread takes every waiter queued so far, flushes once, and wakes them
//! all. Concurrent sends therefore share one fsync instead of paying one each.

use std::sync::{mpsc, Arc};

use tokio::sync::oneshot;

use super::StoreError;

type Waiter = oneshot::Sender<Result<(), String>>;

#[derive(Clone)]
pub struct GroupCommit {
    inner: Arc<Inner>,
}

struct Inner {
    queue: Option<mpsc::Sender<Waiter>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Inner {
    /// Stops the flusher and waits for it, so the database (and its file lock) is
    /// released when the last store handle goes.
    fn drop(&mut self) {
        self.queue.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl GroupCommit {
    pub fn start(db: sled::Db) -> GroupCommit {
        let (queue, waiters) = mpsc::channel::<Waiter>();
        let thread = std::thread::Builder::new()
            .name("parleyd-flush".into())
            .spawn(move || flush_loop(db, waiters))
            .map_err(|e| tracing::error!(error = %e, "cannot start the flush thread"))
            .ok();
        GroupCommit {
            inner: Arc::new(Inner {
                queue: Some(queue),
                thread,
            }),
        }
    }

    /// Resolves once a flush that started after this call has completed.
    pub async fn wait(&self) -> Result<(), StoreError> {
        let stopped = || StoreError::Flush("the flush thread has stopped".into());
        let (tx, rx) = oneshot::channel();
        let queue = self.inner.queue.as_ref().ok_or_else(stopped)?;
        queue.send(tx).map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?.map_err(StoreError::Flush)
    }
}

fn flush_loop(db: sled::Db, waiters: mpsc::Receiver<Waiter>) {
    // Ends when the last `GroupCommit` handle has been dropped.
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
