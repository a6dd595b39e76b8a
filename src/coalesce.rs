//! Single-flight: one computation per key; every concurrent waiter gets the same outcome.
//!
//! State machine of one flight (pingora's cache lock is the model):
//! ```text
//! join(key) ── no open flight ──► Leader(Permit, Waiter)   (the caller spawns the work)
//!           └─ open flight ─────► Follower(Waiter)
//! Permit::finish(v)  → every Waiter gets Outcome::Done(v); the flight leaves the table
//! Permit dropped     → every Waiter gets Outcome::Dangling (the work died: panic, abort)
//! last Waiter dropped before the outcome → the flight's CancellationToken fires, so work that
//!                      nobody waits for any more stops; a later join starts a fresh flight
//! FlightHandle::detach → leaving waiters no longer cancel: the work runs to its outcome
//! FlightHandle::publish_interim(v) → waiters (present and later) may take `v` before the
//!                      outcome (`Waiter::wait_or_interim`); it dies with the flight
//! ```
//! Joining (count up) and leaving (count down, and cancel when it reaches zero) both happen under
//! the flight's shard lock, so a join never lands on a flight that is about to be cancelled: it
//! either counts as a waiter before the last one leaves (no cancel), or finds the flight
//! cancelled and starts a fresh one.
//! The leader publishes to the caches *before* `finish` (rule: publish, then release), so a
//! request arriving after the flight left the table finds the result in the memory tier.
//! The table is sharded by the key's first byte and keyed by the 32-byte hash, never a string.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const SHARDS: usize = 16;

/// How a flight ended, as seen by a waiter.
#[derive(Clone, Debug)]
pub enum Outcome<V> {
    Done(V),
    /// The leader's permit was dropped without an outcome.
    Dangling,
}

pub enum Join<V: Clone> {
    Leader(Permit<V>, Waiter<V>),
    Follower(Waiter<V>),
}

struct Flight<V> {
    tx: watch::Sender<Option<Outcome<V>>>,
    waiters: AtomicUsize,
    cancel: CancellationToken,
    /// A value waiters may take before the outcome (a preview).
    interim: watch::Sender<Option<V>>,
    /// Set by `FlightHandle::detach`: the work no longer needs a waiter.
    detached: AtomicBool,
}

type Table<V> = Arc<Vec<Mutex<HashMap<[u8; 32], Arc<Flight<V>>>>>>;

pub struct Coalescer<V: Clone> {
    table: Table<V>,
}

impl<V: Clone + Send + Sync + 'static> Default for Coalescer<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V: Clone + Send + Sync + 'static> Coalescer<V> {
    pub fn new() -> Self {
        Self { table: Arc::new((0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect()) }
    }

    /// Joins the flight for `key`, starting one if none is open.
    pub fn join(&self, key: &[u8; 32]) -> Join<V> {
        let mut shard = self.table[key[0] as usize % SHARDS].lock();
        if let Some(flight) = shard.get(key) {
            // A flight whose waiters all left is cancelled: start afresh rather than inherit it.
            if !flight.cancel.is_cancelled() {
                flight.waiters.fetch_add(1, Ordering::AcqRel);
                let flight = flight.clone();
                return Join::Follower(self.waiter(key, flight.tx.subscribe(), flight));
            }
        }
        let (tx, rx) = watch::channel(None);
        let flight = Arc::new(Flight {
            tx,
            waiters: AtomicUsize::new(1),
            cancel: CancellationToken::new(),
            interim: watch::channel(None).0,
            detached: AtomicBool::new(false),
        });
        shard.insert(*key, flight.clone());
        let permit = Permit { key: *key, flight: flight.clone(), table: self.table.clone(), finished: false };
        Join::Leader(permit, self.waiter(key, rx, flight))
    }

    fn waiter(&self, key: &[u8; 32], rx: watch::Receiver<Option<Outcome<V>>>, flight: Arc<Flight<V>>) -> Waiter<V> {
        Waiter { rx, flight, key: *key, table: self.table.clone() }
    }

    /// Open flights (for tests and metrics).
    pub fn in_flight(&self) -> usize {
        self.table.iter().map(|s| s.lock().len()).sum()
    }

    /// Requests waiting on open flights (tests wait for followers to have joined).
    pub fn waiters(&self) -> usize {
        self.table.iter().map(|s| s.lock().values().map(|f| f.waiters.load(Ordering::Acquire)).sum::<usize>()).sum()
    }
}

/// The leader's right and duty to publish the outcome.
pub struct Permit<V> {
    key: [u8; 32],
    flight: Arc<Flight<V>>,
    table: Table<V>,
    finished: bool,
}

impl<V> Permit<V> {
    /// Fires when every waiter has gone away; the work should stop.
    pub fn cancellation(&self) -> CancellationToken {
        self.flight.cancel.clone()
    }

    /// What the work may do to its own flight while it runs.
    pub fn handle(&self) -> FlightHandle<V> {
        FlightHandle { flight: self.flight.clone() }
    }

    pub fn finish(mut self, value: V) {
        self.finished = true;
        self.release(Outcome::Done(value));
    }

    fn release(&self, outcome: Outcome<V>) {
        {
            let mut shard = self.table[self.key[0] as usize % SHARDS].lock();
            // Only remove our own flight: a cancelled one may have been replaced already.
            if shard.get(&self.key).is_some_and(|f| Arc::ptr_eq(f, &self.flight)) {
                shard.remove(&self.key);
            }
        }
        self.flight.tx.send_replace(Some(outcome));
    }
}

impl<V> Drop for Permit<V> {
    fn drop(&mut self) {
        if !self.finished {
            self.release(Outcome::Dangling);
        }
    }
}

/// The running work's side of its flight: detach from waiters, publish an interim value.
pub struct FlightHandle<V> {
    flight: Arc<Flight<V>>,
}

impl<V> FlightHandle<V> {
    /// From now on, waiters leaving do not cancel the work (it runs to its outcome).
    pub fn detach(&self) {
        self.flight.detached.store(true, Ordering::Release);
    }

    /// Offers `value` to every waiter, present and later, until the flight ends.
    pub fn publish_interim(&self, value: V) {
        self.flight.interim.send_replace(Some(value));
    }
}

/// What `Waiter::wait_or_interim` saw: the outcome, and the interim value, whichever are there
/// (at least one).
pub struct Seen<V> {
    pub outcome: Option<Outcome<V>>,
    pub interim: Option<V>,
}

/// One request's interest in a flight. Dropping the last one cancels unfinished work.
pub struct Waiter<V> {
    rx: watch::Receiver<Option<Outcome<V>>>,
    flight: Arc<Flight<V>>,
    key: [u8; 32],
    table: Table<V>,
}

impl<V: Clone> Waiter<V> {
    pub async fn wait(mut self) -> Outcome<V> {
        match self.rx.wait_for(Option::is_some).await {
            Ok(v) => v.clone().expect("waited for Some"),
            // The sender lives in the flight we hold, so this cannot happen; be safe anyway.
            Err(_) => Outcome::Dangling,
        }
    }

    /// Waits for the outcome or an interim value, whichever comes first; reports both as they are
    /// then, so the caller can prefer a good outcome to the interim.
    pub async fn wait_or_interim(mut self) -> Seen<V> {
        let mut interim = self.flight.interim.subscribe();
        tokio::select! {
            _ = self.rx.wait_for(Option::is_some) => {}
            _ = interim.wait_for(Option::is_some) => {}
        }
        let outcome = self.rx.borrow().clone();
        let interim = interim.borrow().clone();
        Seen { outcome, interim }
    }
}

impl<V> Drop for Waiter<V> {
    fn drop(&mut self) {
        // Under the shard lock: a join between the count reaching zero and the cancel would
        // follow a flight that is cancelled a moment later (its request would end in a 504).
        let mut shard = self.table[self.key[0] as usize % SHARDS].lock();
        let left = self.flight.waiters.fetch_sub(1, Ordering::AcqRel) - 1;
        #[cfg(test)]
        tests::hook::run();
        if left == 0 && self.flight.tx.borrow().is_none() && !self.flight.detached.load(Ordering::Acquire) {
            self.flight.cancel.cancel();
            if shard.get(&self.key).is_some_and(|f| Arc::ptr_eq(f, &self.flight)) {
                shard.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;
    use std::time::Duration;

    /// A test hook run inside `Waiter::drop` between the count going down and the cancel check,
    /// where the old code released the lock: whatever it does there is the interleaving.
    pub mod hook {
        use std::cell::RefCell;

        thread_local! {
            static HOOK: RefCell<Option<Box<dyn FnOnce()>>> = RefCell::new(None);
        }

        pub fn set(f: impl FnOnce() + 'static) {
            HOOK.with(|h| *h.borrow_mut() = Some(Box::new(f)));
        }

        pub fn run() {
            if let Some(f) = HOOK.with(|h| h.borrow_mut().take()) {
                f();
            }
        }
    }

    impl<V: Clone + Send + Sync + 'static> Coalescer<V> {
        /// `join` that gives up instead of blocking when the shard is locked.
        fn try_join(&self, key: &[u8; 32]) -> Option<Join<V>> {
            let shard = self.table[key[0] as usize % SHARDS].try_lock()?;
            drop(shard);
            Some(self.join(key))
        }
    }

    #[tokio::test]
    async fn a_join_racing_the_last_waiters_exit_never_follows_a_cancelled_flight() {
        // The interleaving that gave a spurious 504: the last waiter's count reaches zero, a new
        // request joins, then the cancel fires on the flight the new request now follows.
        let c = Arc::new(Coalescer::<u32>::new());
        let Join::Leader(permit, waiter) = c.join(&[5; 32]) else { panic!() };
        let token = permit.cancellation();
        let racer: Arc<parking_lot::Mutex<Option<Join<u32>>>> = Default::default();
        hook::set({
            let (c, racer) = (c.clone(), racer.clone());
            move || *racer.lock() = c.try_join(&[5; 32])
        });
        drop(waiter);
        assert!(token.is_cancelled(), "nobody waits: the work stops");
        // The join inside the exit could not interleave (the shard is locked for the whole exit)…
        if let Some(Join::Follower(w)) = racer.lock().take() {
            assert!(!w.flight.cancel.is_cancelled(), "a follower joined a flight that was then cancelled");
        }
        // …and a join after it starts a fresh, live flight.
        let Join::Leader(fresh, w) = c.join(&[5; 32]) else { panic!("a cancelled flight is not joined") };
        assert!(!fresh.cancellation().is_cancelled());
        drop(permit);
        fresh.finish(9);
        assert!(matches!(w.wait().await, Outcome::Done(9)));
        assert_eq!(c.in_flight(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn many_concurrent_joins_run_the_work_once() {
        // moka's entry-API test idiom: release many tasks at once, count the inits. The work
        // finishes only once all 64 have joined, so a late join cannot start a second flight.
        let c = Arc::new(Coalescer::<u32>::new());
        let runs = Arc::new(AtomicU32::new(0));
        let start = Arc::new(tokio::sync::Barrier::new(64));
        let joined = Arc::new(tokio::sync::Barrier::new(65));
        let mut tasks = Vec::new();
        for _ in 0..64 {
            let (c, runs, start, joined) = (c.clone(), runs.clone(), start.clone(), joined.clone());
            tasks.push(tokio::spawn(async move {
                start.wait().await;
                let waiter = match c.join(&[1; 32]) {
                    Join::Leader(permit, waiter) => {
                        let (runs, joined) = (runs.clone(), joined.clone());
                        tokio::spawn(async move {
                            joined.wait().await;
                            runs.fetch_add(1, Ordering::SeqCst);
                            permit.finish(42);
                        });
                        waiter
                    }
                    Join::Follower(waiter) => waiter,
                };
                joined.wait().await;
                match waiter.wait().await {
                    Outcome::Done(v) => v,
                    Outcome::Dangling => 0,
                }
            }));
        }
        for t in tasks {
            let value = tokio::time::timeout(Duration::from_secs(10), t).await.expect("a second flight never finishes");
            assert_eq!(value.unwrap(), 42);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(c.in_flight(), 0);
    }

    #[tokio::test]
    async fn dropped_permit_gives_dangling() {
        let c = Coalescer::<u32>::new();
        let Join::Leader(permit, waiter) = c.join(&[2; 32]) else { panic!("first join leads") };
        let Join::Follower(follower) = c.join(&[2; 32]) else { panic!("second join follows") };
        drop(permit);
        assert!(matches!(waiter.wait().await, Outcome::Dangling));
        assert!(matches!(follower.wait().await, Outcome::Dangling));
        assert_eq!(c.in_flight(), 0);
    }

    #[tokio::test]
    async fn last_waiter_leaving_cancels_and_next_join_leads_afresh() {
        let c = Coalescer::<u32>::new();
        let Join::Leader(permit, waiter) = c.join(&[3; 32]) else { panic!() };
        let Join::Follower(follower) = c.join(&[3; 32]) else { panic!() };
        let token = permit.cancellation();
        drop(waiter);
        assert!(!token.is_cancelled(), "one waiter is still there");
        drop(follower);
        assert!(token.is_cancelled());
        let Join::Leader(permit2, waiter2) = c.join(&[3; 32]) else { panic!("a cancelled flight is not joined") };
        // The old leader finishing must not remove the new flight.
        permit.finish(1);
        assert_eq!(c.in_flight(), 1);
        permit2.finish(2);
        assert!(matches!(waiter2.wait().await, Outcome::Done(2)));
    }

    #[tokio::test]
    async fn a_detached_flight_survives_its_waiters_and_offers_its_interim_value() {
        let c = Coalescer::<u32>::new();
        let Join::Leader(permit, waiter) = c.join(&[5; 32]) else { panic!() };
        let token = permit.cancellation();
        let handle = permit.handle();
        handle.detach();
        handle.publish_interim(1);
        let seen = waiter.wait_or_interim().await;
        assert!(seen.outcome.is_none() && seen.interim == Some(1));
        assert!(!token.is_cancelled(), "detached: the last waiter leaving does not cancel");
        let Join::Follower(late) = c.join(&[5; 32]) else { panic!("the flight is still open") };
        assert_eq!(late.wait_or_interim().await.interim, Some(1), "a later waiter sees the interim value");
        let Join::Follower(last) = c.join(&[5; 32]) else { panic!() };
        permit.finish(2);
        let seen = last.wait_or_interim().await;
        assert!(matches!(seen.outcome, Some(Outcome::Done(2))));
    }

    #[tokio::test]
    async fn waiters_after_finish_do_not_cancel() {
        let c = Coalescer::<u32>::new();
        let Join::Leader(permit, waiter) = c.join(&[4; 32]) else { panic!() };
        let token = permit.cancellation();
        permit.finish(7);
        assert!(matches!(waiter.wait().await, Outcome::Done(7)));
        assert!(!token.is_cancelled());
    }
}
