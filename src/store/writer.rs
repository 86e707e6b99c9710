//! One writer thread applies every transactional write. It takes all the
//! operations queued so far, applies them in one sled transaction (sled
//! serialises transactions on a process-wide lock, so one per batch instead of
//! one per message is what makes throughput), flushes once (group commit),
//! publishes the batch's events in commit order, and only then answers each
//! caller. Under load the batches grow on their own: whatever queues during a
//! flush is the next batch.
//!
//! Back-pressure: a [`Writer::refusing`] handle (the one requests write
//! through) is refused with [`StoreError::Overloaded`] while
//! `storage.writer_queue` operations wait, so a load the disk cannot keep up
//! with gets fast refusals instead of a queue, and memory, that grow without
//! bound. The background components (automation engine, scheduler, outbox)
//! write through the plain handle and are never refused: each of their tasks
//! waits for its own write, so together they add at most one operation per
//! task beyond the bound (the engine, the scheduler, `notify.concurrency` per
//! outbox lane), and their work (a domain event, a due step, a
//! notification) must not be dropped or counted as a failure of the rules.
//!
//! Supervision: the thread reports as the component `writer` (see
//! `supervisor`). A panic inside an operation fails that operation alone: sled
//! applies a transaction only when its closure returns, and the in-memory
//! cursors stage their changes until commit, so nothing of the panicking
//! transaction is kept; its batch is then applied again one operation per
//! transaction, so only the operation that panics fails (its caller gets
//! [`StoreError::Panicked`]) and the others commit. Each such panic is logged
//! and counted as a restart. A panic anywhere else (after the commit:
//! flushing, publishing) would leave the cursors out of step with what was
//! committed, so the thread is not restarted: it ends, is reported down
//! (`/healthz` answers 503, `parleyd_component_up{component="writer"}` is 0),
//! and every write fails with "the writer has stopped" until the daemon is
//! restarted.
//!
//! Development only: while a fault is injected into the component `writer`
//! (`PUT /v1/admin/pipeline/components/writer/fault`), the thread takes no
//! batch, as if the disk had stalled; writes queue up and past the bound are
//! refused, as under overload.

use std::cell::RefCell;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

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

/// How long a refused caller is told to wait: a full queue at the default
/// bound is about half a second of the writer's work at its peak rate
/// (BENCHMARKS.md, "Overload").
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

trait Job: Send {
    /// Applies the operation; runs again if sled retries the transaction, or
    /// alone in a transaction of its own after another operation of its batch
    /// panicked, so it only records its outcome.
    fn apply(
        &mut self,
        tx: &Tx<'_>,
        deliveries: &mut Vec<Delivery>,
    ) -> Result<(), UnabortableTransactionError>;
    /// Answers the caller once its transaction is durable, or failed as a whole.
    fn finish(self: Box<Self>, failure: Option<&StoreError>);
    /// What the operation is, for logs and fault points (see [`Writer::run`]).
    fn what(&self) -> &'static str;
}

struct Pending<T, F> {
    what: &'static str,
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

    fn finish(self: Box<Self>, failure: Option<&StoreError>) {
        let result = match (failure, self.outcome) {
            (Some(StoreError::Panicked(cause)), _) => Err(StoreError::Panicked(cause.clone())),
            (Some(e), _) => Err(StoreError::Flush(e.to_string())),
            (None, Some(outcome)) => outcome,
            (None, None) => Err(StoreError::Flush("operation was not applied".into())),
        };
        let _ = self.reply.send(result);
    }

    fn what(&self) -> &'static str {
        self.what
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
    /// Read only in transactions (written outside the writer): what the
    /// analytics fold needs to know of a provider and a listing.
    pub users: Tree,
    pub listings: Tree,
    pub analytics: super::analytics::AnalyticsTrees,
    /// Experiment assignments and tallies (`experiments.rs`): not an
    /// analytics tree, as a rebuild must keep who got which variant.
    pub experiments: Tree,
}

impl WriteTrees {
    /// Every tree, in the order [`Tx::over`] takes their views.
    pub fn all(&self) -> Vec<&Tree> {
        let mut all = vec![
            &self.conversations,
            &self.conv_pairs,
            &self.user_convs,
            &self.messages,
            &self.client_ids,
            &self.events,
            &self.bookings,
            &self.flags,
            &self.signals,
            &self.domain,
            &self.instances,
            &self.timers,
            &self.subjects,
            &self.outbox,
            &self.users,
            &self.listings,
            &self.experiments,
        ];
        all.extend(self.analytics.all());
        all
    }
}

#[derive(Clone)]
pub struct Writer {
    inner: Arc<Inner>,
    /// Whether this handle's writes are refused past the bound (see the
    /// module doc).
    refuses: bool,
}

struct Inner {
    queue: Option<mpsc::Sender<Box<dyn Job>>>,
    thread: Option<std::thread::JoinHandle<()>>,
    load: Arc<Load>,
    health: Arc<Component>,
    /// Operations waiting past which a refusing handle's writes are refused
    /// (`storage.writer_queue`).
    bound: usize,
}

/// How busy the writer is, for the health probe and the pipeline gauges.
#[derive(Default)]
struct Load {
    /// Operations queued and not yet taken into a batch.
    queued: AtomicUsize,
    /// Batches finished (committed or failed) since start.
    batches: AtomicU64,
    /// Raised before a batch is applied and again once it is finished: odd
    /// while one is under way (a sequence lock, see [`Writer::generation`]).
    generation: AtomicU64,
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

/// How the writer thread is set up.
pub struct WriterConfig {
    pub durability: Durability,
    /// `storage.writer_queue`: see [`Writer::refusing`].
    pub bound: usize,
}

impl Writer {
    pub fn start(
        db: sled::Db,
        trees: WriteTrees,
        cursors: Cursors,
        hot: Arc<HotConversations>,
        config: WriterConfig,
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
        let durability = config.durability;
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
                bound: config.bound,
            }),
            refuses: false,
        }
    }

    /// A handle to the same writer whose writes are refused with
    /// [`StoreError::Overloaded`] (and counted in
    /// `parleyd_limit_refusals_total{limit="writer_queue"}`) while
    /// `storage.writer_queue` operations wait: for requests, whose callers can
    /// try again.
    pub fn refusing(&self) -> Writer {
        Writer {
            inner: Arc::clone(&self.inner),
            refuses: true,
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

    /// The writer's generation: raised before each batch is applied and
    /// again once it is finished, so it is odd while a batch is under way. A
    /// reader that sees the same even generation before and after a series
    /// of reads saw no batch land among them: the reads are one consistent
    /// view (a sequence lock).
    pub fn generation(&self) -> u64 {
        self.inner.load.generation.load(Ordering::SeqCst)
    }

    /// Takes a place in the queue, unless this handle refuses and the queue
    /// is full.
    fn admit(&self) -> Result<(), StoreError> {
        let queued = &self.inner.load.queued;
        if !self.refuses {
            queued.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        let bound = self.inner.bound;
        queued
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < bound).then_some(n + 1)
            })
            .map(drop)
            .map_err(|_| {
                crate::telemetry::count_refusal("writer_queue");
                StoreError::Overloaded {
                    waiting: bound,
                    retry_after: RETRY_AFTER,
                }
            })
    }

    /// Runs `op`, an operation of kind `what` (such as `send` or `step`:
    /// named in the log of a failed batch, and the names the fault point
    /// `writer::before_flush` is armed with), in the next batch; resolves once
    /// its effects are durable (under `group_commit`) and published. Fails at
    /// once with [`StoreError::Overloaded`] on a [`Writer::refusing`] handle
    /// while the queue is full.
    pub async fn run<T, F>(&self, what: &'static str, op: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Fn(&Tx<'_>, &mut Vec<Delivery>) -> OpResult<T> + Send + 'static,
    {
        let stopped = || StoreError::Flush("the writer has stopped".into());
        let (reply, answer) = oneshot::channel();
        let job = Box::new(Pending {
            what,
            op,
            outcome: None,
            reply,
        });
        let queue = self.inner.queue.as_ref().ok_or_else(stopped)?;
        self.admit()?;
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

/// Why a transaction did not commit.
enum Failed {
    /// sled's error, or an abort: every operation of the transaction fails.
    Store(StoreError),
    /// An operation panicked, with this message.
    Panicked(String),
}

/// Operations applied in one transaction, and what came of it: the events to
/// publish once durable, or the error every one of them gets.
struct Applied {
    jobs: Vec<Box<dyn Job>>,
    outcome: Result<Vec<Delivery>, StoreError>,
}

impl LoopState {
    /// Applies `jobs` in one transaction; on commit the in-memory cursors
    /// move on and the events to publish come back.
    fn transact(
        &mut self,
        trees: &WriteTrees,
        jobs: &mut [Box<dyn Job>],
    ) -> Result<Vec<Delivery>, Failed> {
        let jobs = RefCell::new(jobs);
        let deliveries = RefCell::new(Vec::new());
        let (cursors, hot, domain_seq) = (&self.cursors, &self.hot, &self.domain_seq);
        // A slice, not a tuple: sled implements tuples of at most 14 trees.
        let all = trees.all();
        let transaction = || {
            all.as_slice().transaction(|views| {
                let tx = Tx::over(views, cursors, hot, domain_seq);
                cursors.begin();
                hot.begin();
                domain_seq.begin();
                let mut deliveries = deliveries.borrow_mut();
                deliveries.clear();
                for job in jobs.borrow_mut().iter_mut() {
                    job.apply(&tx, &mut deliveries)?;
                }
                Ok::<(), sled::transaction::ConflictableTransactionError<StoreError>>(())
            })
        };
        // A panicking operation aborts the transaction: nothing is applied.
        match std::panic::catch_unwind(AssertUnwindSafe(transaction)) {
            Ok(Ok(())) => {
                self.cursors.commit();
                self.hot.commit();
                self.domain_seq.commit();
                Ok(deliveries.into_inner())
            }
            Ok(Err(TransactionError::Storage(e))) => Err(Failed::Store(StoreError::from(e))),
            Ok(Err(TransactionError::Abort(e))) => Err(Failed::Store(e)),
            Err(panic) => Err(Failed::Panicked(panic_message(&*panic).to_owned())),
        }
    }

    /// Applies a batch in one transaction; if an operation panics, applies the
    /// batch again one operation per transaction, so that only the panicking
    /// one fails.
    fn apply(&mut self, trees: &WriteTrees, mut batch: Vec<Box<dyn Job>>) -> Vec<Applied> {
        match self.transact(trees, &mut batch) {
            Err(Failed::Panicked(cause)) if batch.len() > 1 => {
                tracing::warn!(
                    %cause,
                    operations = batch.len(),
                    "a write operation panicked; applying its batch one operation at a time"
                );
                batch
                    .into_iter()
                    .map(|job| {
                        let mut jobs = vec![job];
                        let outcome = self.transact(trees, &mut jobs).map_err(|f| self.failure(f));
                        Applied { jobs, outcome }
                    })
                    .collect()
            }
            outcome => vec![Applied {
                outcome: outcome.map_err(|f| self.failure(f)),
                jobs: batch,
            }],
        }
    }

    /// The error a failed transaction's callers get; a panic is counted as a
    /// restart of the writer (which goes on).
    fn failure(&self, failed: Failed) -> StoreError {
        match failed {
            Failed::Store(e) => e,
            Failed::Panicked(message) => {
                let cause = format!("a write operation panicked: {message}");
                self.health.failed(&cause);
                self.health.started();
                StoreError::Panicked(message)
            }
        }
    }

    /// Development only: waits while a fault is injected into `writer`. A
    /// plain sleep, as the thread has nothing else to do and the fault is
    /// lifted by a person.
    fn stall_while_faulted(&self) {
        while self.health.fault_injected() {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn write_loop(
    db: &sled::Db,
    trees: &WriteTrees,
    mut state: LoopState,
    jobs: mpsc::Receiver<Box<dyn Job>>,
) {
    let health = Arc::clone(&state.health);
    // Ends when the last `Writer` handle has been dropped.
    while let Ok(first) = jobs.recv() {
        state.stall_while_faulted();
        let mut batch = vec![first];
        batch.extend(jobs.try_iter().take(MAX_BATCH - 1));
        state.load.queued.fetch_sub(batch.len(), Ordering::Relaxed);
        let size = batch.len();
        let started = std::time::Instant::now();
        let _down_if_it_panics = Ended(&health);
        state.load.generation.fetch_add(1, Ordering::SeqCst);
        let applied = state.apply(trees, batch);
        let _down_if_it_panics_now = Ended(&health);
        let any_committed = applied.iter().any(|a| a.outcome.is_ok());
        if any_committed {
            // Applied by sled, in its log but not flushed: nobody has been
            // answered yet.
            let committed = applied.iter().filter(|a| a.outcome.is_ok());
            crate::faults::crash_point(
                "writer::before_flush",
                committed.flat_map(|a| a.jobs.iter().map(|job| job.what())),
            );
        }
        let flush_failure = match state.durability {
            Durability::GroupCommit if any_committed => db.flush().err().map(StoreError::from),
            _ => None,
        };
        metrics::histogram!("parleyd_write_batch_size").record(size as f64);
        metrics::histogram!("parleyd_write_batch_seconds").record(started.elapsed().as_secs_f64());
        for Applied { jobs, outcome } in applied {
            let failure = match &outcome {
                Err(e) => Some(e),
                Ok(_) => flush_failure.as_ref(),
            };
            match (failure, &outcome) {
                (Some(e), _) => {
                    let operations: Vec<&str> = jobs.iter().map(|job| job.what()).collect();
                    tracing::error!(error = %e, ?operations, "write batch failed")
                }
                (None, deliveries) => {
                    for delivery in deliveries.iter().flatten() {
                        (state.publish)(delivery);
                    }
                }
            }
            for job in jobs {
                job.finish(failure);
            }
        }
        if any_committed && flush_failure.is_none() {
            state.committed.notify_one();
        }
        state.load.batches.fetch_add(1, Ordering::Relaxed);
        state.load.generation.fetch_add(1, Ordering::SeqCst);
    }
}
