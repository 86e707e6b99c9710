//! One writer thread applies every transactional write. It takes all the
//! operations queued so far, applies them in one sled transaction (sled
//! serialises transactions on a process-wide lock, so one per batch instead of
//! one per message is what makes throughput), flushes once (group commit),
//! publishes the batch's events in commit order, and only then answers each
//! caller. Under load the batches grow on their own: whatever queues during a
//! flush is the next batch.
//!
//! Supervision: the thread reports as the component `writer` (see
//! `supervisor`). A panic inside an operation fails that batch alone: sled
//! applies a transaction only when its closure returns, and the in-memory
//! cursors stage their changes until commit, so nothing of the batch is kept
//! and the next batch starts clean; the panic is logged and counted as a
//! restart. A panic anywhere else (after the commit: flushing, publishing)
//! would leave the cursors out of step with what was committed, so the thread
//! is not restarted: it ends, is reported down (`/healthz` answers 503,
//! `parleyd_component_up{component="writer"}` is 0), and every write fails
//! with "the writer has stopped" until the daemon is restarted.

use std::cell::RefCell;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};

use sled::transaction::{TransactionError, UnabortableTransactionError};
use sled::{Transactional, Tree};
use tokio::sync::oneshot;

use super::hot::{HotConversations, HotWrites};
use super::writes::{Cursors, DomainSeq, Tx};
use super::{Delivery, StoreError};
use crate::config::Durability;
use crate::supervisor::{panic_message, Component};

/// What an operation gives back inside the transaction: the outer error is
/// sled's (conflict or storage: the whole batch is retried or fails), the inner
/// one is the operation's own (it changes nothing and fails alone).
pub type OpResult<T> = Result<Result<T, StoreError>, UnabortableTransactionError>;

/// Receives each committed, durable event, in commit order.
pub type Publish = Arc<dyn Fn(&Delivery) + Send + Sync>;

/// The most operations applied in one transaction.
const MAX_BATCH: usize = 1024;

trait Job: Send {
    /// Applies the operation; runs again if sled retries the transaction, so it
    /// only records its outcome.
    fn apply(
        &mut self,
        tx: &Tx<'_>,
        deliveries: &mut Vec<Delivery>,
    ) -> Result<(), UnabortableTransactionError>;
    /// Answers the caller once the batch is durable, or failed as a whole.
    fn finish(self: Box<Self>, batch_failure: Option<&StoreError>);
}

struct Pending<T, F> {
    op: F,
    outcome: Option<Result<T, StoreError>>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> Job for Pending<T, F>
where
    T: Send,
    F: Fn(&Tx<'_>, &mut Vec<Delivery>) -> OpResult<T> + Send,
{
    fn apply(
        &mut self,
        tx: &Tx<'_>,
        deliveries: &mut Vec<Delivery>,
    ) -> Result<(), UnabortableTransactionError> {
        let mark = deliveries.len();
        let outcome = (self.op)(tx, deliveries)?;
        if outcome.is_err() {
            deliveries.truncate(mark);
        }
        self.outcome = Some(outcome);
        Ok(())
    }

    fn finish(self: Box<Self>, batch_failure: Option<&StoreError>) {
        let result = match (batch_failure, self.outcome) {
            (Some(e), _) => Err(StoreError::Flush(e.to_string())),
            (None, Some(outcome)) => outcome,
            (None, None) => Err(StoreError::Flush("operation was not applied".into())),
        };
        let _ = self.reply.send(result);
    }
}

/// The trees a write transaction may touch.
#[derive(Clone)]
pub struct WriteTrees {
    pub conversations: Tree,
    pub conv_pairs: Tree,
    pub user_convs: Tree,
    pub messages: Tree,
    pub client_ids: Tree,
    pub events: Tree,
    pub bookings: Tree,
    pub flags: Tree,
    pub signals: Tree,
    pub domain: Tree,
    pub instances: Tree,
    pub timers: Tree,
    pub subjects: Tree,
    pub outbox: Tree,
}

#[derive(Clone)]
pub struct Writer {
    inner: Arc<Inner>,
}

struct Inner {
    queue: Option<mpsc::Sender<Box<dyn Job>>>,
    thread: Option<std::thread::JoinHandle<()>>,
    load: Arc<Load>,
    health: Arc<Component>,
}

/// How busy the writer is, for the health probe and the pipeline gauges.
#[derive(Default)]
struct Load {
    /// Operations queued and not yet taken into a batch.
    queued: AtomicUsize,
    /// Batches finished (committed or failed) since start.
    batches: AtomicU64,
}

impl Drop for Inner {
    /// Stops the thread and waits for it, so the database (and its file lock) is
    /// released when the last store handle goes.
    fn drop(&mut self) {
        self.queue.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Writer {
    pub fn start(
        db: sled::Db,
        trees: WriteTrees,
        cursors: Cursors,
        hot: Arc<HotConversations>,
        durability: Durability,
        publish: Publish,
        committed: Arc<tokio::sync::Notify>,
    ) -> Writer {
        let (queue, jobs) = mpsc::channel::<Box<dyn Job>>();
        let load = Arc::new(Load::default());
        let probe = {
            let load = Arc::clone(&load);
            // Stuck: operations wait and no batch finishes.
            move || {
                (load.queued.load(Ordering::Relaxed) > 0)
                    .then(|| format!("batch {}", load.batches.load(Ordering::Relaxed)))
            }
        };
        let health = Component::new("writer", Some(Box::new(probe)));
        health.started();
        let (thread_load, thread_health) = (Arc::clone(&load), Arc::clone(&health));
        let thread = std::thread::Builder::new()
            .name("parleyd-writer".into())
            .spawn(move || {
                let domain_seq = DomainSeq::load(&trees.domain);
                let state = LoopState {
                    cursors,
                    hot: HotWrites::new(hot),
                    domain_seq,
                    durability,
                    publish,
                    committed,
                    load: thread_load,
                    health: thread_health,
                };
                write_loop(&db, &trees, state, jobs)
            })
            .map_err(|e| {
                tracing::error!(error = %e, "cannot start the writer thread");
                health.died(&format!("cannot start the writer thread: {e}"));
            })
            .ok();
        Writer {
            inner: Arc::new(Inner {
                queue: Some(queue),
                thread,
                load,
                health,
            }),
        }
    }

    /// The writer thread's health, for the supervisor.
    pub fn health(&self) -> Arc<Component> {
        Arc::clone(&self.inner.health)
    }

    /// Operations queued and not yet taken into a batch.
    pub fn queue_depth(&self) -> usize {
        self.inner.load.queued.load(Ordering::Relaxed)
    }

    /// Runs `op` in the next batch; resolves once its effects are durable (under
    /// `group_commit`) and published.
    pub async fn run<T, F>(&self, op: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Fn(&Tx<'_>, &mut Vec<Delivery>) -> OpResult<T> + Send + 'static,
    {
        let stopped = || StoreError::Flush("the writer has stopped".into());
        let (reply, answer) = oneshot::channel();
        let job = Box::new(Pending {
            op,
            outcome: None,
            reply,
        });
        let queue = self.inner.queue.as_ref().ok_or_else(stopped)?;
        self.inner.load.queued.fetch_add(1, Ordering::Relaxed);
        if queue.send(job).is_err() {
            self.inner.load.queued.fetch_sub(1, Ordering::Relaxed);
            return Err(stopped());
        }
        answer.await.map_err(|_| stopped())?
    }
}

/// What the writer thread keeps between batches.
struct LoopState {
    cursors: Cursors,
    hot: HotWrites,
    domain_seq: DomainSeq,
    durability: Durability,
    publish: Publish,
    /// Woken after every committed batch (the automation engine waits on it).
    committed: Arc<tokio::sync::Notify>,
    load: Arc<Load>,
    health: Arc<Component>,
}

/// Marks the writer down if its thread dies of a panic (the unwinding drops
/// it). Declared after the batch (and again after the batch moves) so that it
/// drops first: a caller who got the batch's error already sees the writer
/// down.
struct Ended<'a>(&'a Component);

impl Drop for Ended<'_> {
    fn drop(&mut self) {
        // It ends cleanly only when the last handle is gone: nobody is left to
        // write, or to ask.
        if std::thread::panicking() {
            self.0.died("the writer thread panicked");
        }
    }
}

fn write_loop(
    db: &sled::Db,
    trees: &WriteTrees,
    mut state: LoopState,
    jobs: mpsc::Receiver<Box<dyn Job>>,
) {
    // Ends when the last `Writer` handle has been dropped.
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        batch.extend(jobs.try_iter().take(MAX_BATCH - 1));
        state.load.queued.fetch_sub(batch.len(), Ordering::Relaxed);
        let started = std::time::Instant::now();
        let batch = RefCell::new(batch);
        let _down_if_it_panics = Ended(&state.health);
        let deliveries = RefCell::new(Vec::new());
        let (cursors, hot, domain_seq) = (&state.cursors, &state.hot, &state.domain_seq);
        // sled implements transactions over tuples of up to 14 trees.
        let transaction = || {
            (
                &trees.conversations,
                &trees.conv_pairs,
                &trees.user_convs,
                &trees.messages,
                &trees.client_ids,
                &trees.events,
                &trees.bookings,
                &trees.flags,
                &trees.signals,
                &trees.domain,
                &trees.instances,
                &trees.timers,
                &trees.subjects,
                &trees.outbox,
            )
                .transaction(
                    |(
                        conversations,
                        conv_pairs,
                        user_convs,
                        messages,
                        client_ids,
                        events,
                        bookings,
                        flags,
                        signals,
                        domain,
                        instances,
                        timers,
                        subjects,
                        outbox,
                    )| {
                        let tx = Tx {
                            conversations,
                            conv_pairs,
                            user_convs,
                            messages,
                            client_ids,
                            events,
                            cursors,
                            hot,
                            bookings,
                            flags,
                            signals,
                            domain,
                            domain_seq,
                            instances,
                            timers,
                            subjects,
                            outbox,
                        };
                        cursors.begin();
                        hot.begin();
                        domain_seq.begin();
                        let mut deliveries = deliveries.borrow_mut();
                        deliveries.clear();
                        for job in batch.borrow_mut().iter_mut() {
                            job.apply(&tx, &mut deliveries)?;
                        }
                        Ok::<(), sled::transaction::ConflictableTransactionError<StoreError>>(())
                    },
                )
        };
        // A panicking operation aborts the transaction (nothing is applied) and
        // fails its batch; see the module doc.
        let committed =
            std::panic::catch_unwind(AssertUnwindSafe(transaction)).unwrap_or_else(|panic| {
                let cause = format!("a write operation panicked: {}", panic_message(&*panic));
                state.health.failed(&cause);
                state.health.started();
                Err(TransactionError::Abort(StoreError::Flush(cause)))
            });
        if committed.is_ok() {
            state.cursors.commit();
            state.hot.commit();
            state.domain_seq.commit();
        }
        let failure = match committed {
            Ok(()) if state.durability == Durability::GroupCommit => {
                db.flush().err().map(StoreError::from)
            }
            Ok(()) => None,
            Err(TransactionError::Storage(e)) => Some(StoreError::from(e)),
            Err(TransactionError::Abort(e)) => Some(e),
        };
        let batch = batch.into_inner();
        let _down_if_it_panics_now = Ended(&state.health);
        metrics::histogram!("parleyd_write_batch_size").record(batch.len() as f64);
        metrics::histogram!("parleyd_write_batch_seconds").record(started.elapsed().as_secs_f64());
        match &failure {
            Some(e) => tracing::error!(error = %e, "write batch failed"),
            None => {
                for delivery in deliveries.into_inner() {
                    (state.publish)(&delivery);
                }
                state.committed.notify_one();
            }
        }
        for job in batch {
            job.finish(failure.as_ref());
        }
        state.load.batches.fetch_add(1, Ordering::Relaxed);
    }
}
