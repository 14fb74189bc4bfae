//! The queue between the relays and the observer thread, the thread itself, and the relays'
//! handle on it.

use super::correlate::{Observer, ObserverConfig};
use super::event::Event;
use super::stats::ProxyStats;
use crate::emit::Emitter;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long the observer lets events gather while traffic flows. Timestamps are taken by the
/// relay, so the delay changes when a call is recorded, not what is recorded. Each wake-up costs
/// the observer a timer, a futex and a context switch (several µs on a virtual machine): a
/// longer interval shares one among more calls, and a queue filling up wakes it early
/// ([`EARLY_WAKE_FRACTION`]).
pub(crate) const OBSERVE_INTERVAL: Duration = Duration::from_millis(20);

/// A push that finds the queue this full (1/N of its slots) wakes the observer before its
/// interval is over, once per drain: a burst is drained long before the queue overflows.
const EARLY_WAKE_FRACTION: usize = 4;

/// How long the observer stays quiet before it hands freed memory back to the system. A gap in
/// traffic shorter than this (a busy machine that held the client back for a few milliseconds)
/// keeps the memory: trimmed at every gap, the export's buffers were faulted in again at every
/// export.
pub(crate) const TRIM_AFTER: Duration = Duration::from_millis(250);

/// The JSON lines of one burst of calls gather in this much memory before they are written.
const LOG_BUFFER: usize = 64 * 1024;

/// Slots kept free for what follows a `tools/call` that `--strict` let through.
pub(crate) const STRICT_MARGIN: usize = 64;

/// How long a `--strict` relay waits for room in the queue before it drops an event.
pub(crate) const STRICT_WAIT: Duration = Duration::from_secs(2);

/// The queue between the relays and the observer thread.
///
/// Pushing is lock-free and makes no system call while the observer is awake: it wakes by
/// itself every [`OBSERVE_INTERVAL`] while events arrive (sooner when the queue fills), and only
/// after a quiet interval does it sleep until the next push unparks it. So a relay pays a queue
/// push per message, and at most one wake-up per burst, rather than a context switch per
/// message.
struct Queue {
    /// Boxed, so the ring's slots (all touched when it is built) stay small.
    events: crossbeam_queue::ArrayQueue<Box<Event>>,
    /// The observer is parked without a timeout: the next push must unpark it.
    sleeping: AtomicBool,
    /// A push already woke the observer early in this drain.
    nudged: AtomicBool,
    /// Queue length from which a push wakes the observer early.
    early_wake: usize,
    /// Every handle is gone: drain and stop.
    closed: AtomicBool,
    observer: std::sync::OnceLock<std::thread::Thread>,
}

impl Queue {
    fn wake(&self) {
        if let Some(t) = self.observer.get() {
            t.unpark();
        }
    }
}

/// Dropped with the last handle: tells the observer to finish.
struct Closer(Arc<Queue>);

impl Drop for Closer {
    fn drop(&mut self) {
        self.0.closed.store(true, Ordering::SeqCst);
        self.0.wake();
    }
}

/// The relays' end of the observer: cheap to clone, never blocks.
#[derive(Clone)]
pub struct ObserverHandle {
    queue: Arc<Queue>,
    stats: Arc<ProxyStats>,
    strict: bool,
    _closer: Arc<Closer>,
}

impl std::fmt::Debug for ObserverHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObserverHandle")
            .field("queued", &self.queue.events.len())
            .finish()
    }
}

impl ObserverHandle {
    /// Starts the observer thread.
    pub fn spawn(config: ObserverConfig, emitter: Emitter) -> std::io::Result<Self> {
        let capacity = config.queue_capacity.max(16);
        let queue = Arc::new(Queue {
            events: crossbeam_queue::ArrayQueue::new(capacity),
            sleeping: AtomicBool::new(false),
            nudged: AtomicBool::new(false),
            early_wake: capacity / EARLY_WAKE_FRACTION,
            closed: AtomicBool::new(false),
            observer: std::sync::OnceLock::new(),
        });
        let stats = Arc::new(ProxyStats::default());
        // Observations dropped (full queue, unreadable oversize messages) are calls that never
        // reach the emitter: its exports report them to the collector with its own drops.
        let lost = stats.clone();
        emitter.add_loss_source(Arc::new(move || lost.dropped()));
        let strict = config.strict;
        // One write of JSON lines per burst of calls, not one per call: the observer flushes
        // them after each drain of the queue (and before it answers a barrier).
        emitter.buffer_log_lines(LOG_BUFFER);
        let observer = Observer::new(config, emitter, stats.clone());
        let q = queue.clone();
        let thread = std::thread::Builder::new()
            .name("mcp-otel-observe".into())
            .spawn(move || {
                crate::capture::proxy::sys::background_priority();
                run(observer, &q)
            })?;
        let _ = queue.observer.set(thread.thread().clone());
        Ok(ObserverHandle {
            _closer: Arc::new(Closer(queue.clone())),
            queue,
            stats,
            strict,
        })
    }

    pub(crate) fn stats(&self) -> &Arc<ProxyStats> {
        &self.stats
    }

    /// `--strict`: observations are never dropped; calls that cannot be recorded are refused.
    pub(crate) fn strict(&self) -> bool {
        self.strict
    }

    /// Whether a call can be queued now. In `--strict` mode a relay asks before it forwards a
    /// `tools/call`, and refuses the call when the answer is no: the margin keeps room for the
    /// call's own events and the other relay's, which wait for room rather than drop.
    pub(crate) fn has_room(&self) -> bool {
        let capacity = self.queue.events.capacity();
        self.queue.events.len() + STRICT_MARGIN.min(capacity / 4) < capacity
    }

    /// Queues an event. When the queue is full an observation of messages is dropped and
    /// counted; in `--strict` mode the relay waits for room instead (the observer drains in
    /// microseconds), up to [`STRICT_WAIT`], and only then drops and counts it. Events that end
    /// calls (an exchange, the session, the server, the proxy) and ready records always wait
    /// like that: they are rare, and dropping one would leave every call open at the time
    /// unrecorded.
    pub(crate) fn send(&self, event: Event) {
        let mut event = Box::new(event);
        let observation = matches!(
            *event,
            Event::Messages { .. } | Event::Oversize { .. } | Event::Unobserved { .. }
        );
        let deadline = (self.strict || !observation).then(|| Instant::now() + STRICT_WAIT);
        loop {
            match self.queue.events.push(event) {
                Ok(()) => break,
                Err(back) if deadline.is_some_and(|d| Instant::now() < d) => {
                    event = back;
                    self.queue.sleeping.store(false, Ordering::SeqCst);
                    self.queue.wake();
                    std::thread::yield_now();
                }
                Err(_) => {
                    ProxyStats::add(&self.stats.observe_dropped, 1);
                    return;
                }
            }
        }
        if self.queue.sleeping.swap(false, Ordering::SeqCst)
            || (self.queue.events.len() >= self.queue.early_wake
                && !self.queue.nudged.swap(true, Ordering::AcqRel))
        {
            self.queue.wake();
        }
    }

    /// Waits (up to `timeout`) until everything sent so far is processed. Blocking: for
    /// shutdown and tests, never on a relay path.
    pub(crate) fn sync(&self, timeout: Duration) -> bool {
        let (tx, rx) = std::sync::mpsc::channel();
        let deadline = Instant::now() + timeout;
        let mut event = Box::new(Event::Barrier(tx));
        loop {
            match self.queue.events.push(event) {
                Ok(()) => break,
                Err(e) if Instant::now() < deadline => {
                    event = e;
                    self.queue.wake();
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(_) => return false,
            }
        }
        self.queue.sleeping.store(false, Ordering::SeqCst);
        self.queue.wake();
        rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .is_ok()
    }
}

/// The observer thread: drains the queue, expires deadlines, and sleeps between bursts.
fn run(mut observer: Observer, queue: &Queue) {
    // When the current quiet spell began, and whether memory was released in it.
    let mut quiet_since: Option<Instant> = None;
    let mut trimmed = true;
    loop {
        let mut handled = 0usize;
        queue.nudged.store(false, Ordering::Release);
        while let Some(e) = queue.events.pop() {
            observer.handle(*e);
            handled += 1;
        }
        let now = Instant::now();
        if observer.next_deadline().is_some_and(|d| d <= now) {
            observer.expire(now);
        }
        // What this round recorded is in the log before the observer sleeps.
        observer.flush_log();
        if queue.closed.load(Ordering::SeqCst) && queue.events.is_empty() {
            break;
        }
        let until_deadline = observer
            .next_deadline()
            .map(|d| d.saturating_duration_since(Instant::now()));
        if handled > 0 {
            // Traffic: let the next events gather.
            quiet_since = None;
            trimmed = false;
            std::thread::park_timeout(
                until_deadline.map_or(OBSERVE_INTERVAL, |d| d.min(OBSERVE_INTERVAL)),
            );
            continue;
        }
        // Quiet: once it has lasted TRIM_AFTER, hand memory freed by the burst back to the
        // system; sleep until a push (or a deadline, or the trim) wakes us.
        let quiet = *quiet_since.get_or_insert_with(Instant::now);
        let until_trim = match trimmed {
            true => None,
            false => Some(TRIM_AFTER.saturating_sub(quiet.elapsed())),
        };
        if until_trim == Some(Duration::ZERO) {
            crate::memory::release_free_memory();
            trimmed = true;
            continue;
        }
        queue.sleeping.store(true, Ordering::SeqCst);
        if !queue.events.is_empty() || queue.closed.load(Ordering::SeqCst) {
            queue.sleeping.store(false, Ordering::SeqCst);
            continue;
        }
        match [until_deadline, until_trim].into_iter().flatten().min() {
            Some(d) => std::thread::park_timeout(d),
            None => std::thread::park(),
        }
        queue.sleeping.store(false, Ordering::SeqCst);
    }
}
