//! Progress of running computations, by a client-chosen id, as server-sent events.
//!
//! The page picks a random id, opens `GET /api/v1/progress/<id>` (an event stream) and sends its
//! image request with `X-Upres-Progress: <id>`. The request path attaches the id to the flight it
//! joined (leader or follower alike), and the flight's progress (tiles done for tiled models,
//! denoising steps for sd-x4) is fanned out to every attached id.
//!
//! Only counts and a state travel: no keys, prompts or pixels, so a guessed id shows nothing
//! of another user's data beyond how far a computation got. Memory is bounded: at most `MAX_IDS`
//! ids, each living at most `ID_TTL`; flights are tracked only while their leader runs (a
//! guard removes them). Does not own cancellation: that is the flight's last waiter leaving.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::watch;

use crate::engine::batcher::{JobProgress, ProgressFn};
use crate::respond::Body;

/// The request header naming the progress id.
pub const HEADER: &str = "x-upres-progress";
/// Ids watched at once, at most; past it new ids are refused (503).
pub const MAX_IDS: usize = 1024;
/// How long an id (and its event stream) lives at most.
pub const ID_TTL: Duration = Duration::from_secs(600);

/// What a watcher sees.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    pub state: State,
    pub tiles_done: u32,
    pub tiles_total: u32,
    pub steps_done: u32,
    pub steps_total: u32,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// No request with this id has reached a computation yet (or it is queued).
    #[default]
    Waiting,
    /// Tiles are being upscaled.
    Running,
    /// The request was answered with a result.
    Done,
    /// The request ended without a result (error, cancel, client gone).
    Failed,
}

impl State {
    fn is_final(self) -> bool {
        matches!(self, State::Done | State::Failed)
    }
}

#[derive(thiserror::Error, Debug)]
pub enum ProgressError {
    #[error("a progress id is 8 to 64 characters of A-Z, a-z, 0-9, `-` and `_`")]
    BadId,
    #[error("too many progress streams are open; retry later")]
    Full,
}

impl crate::error::Classify for ProgressError {
    fn class(&self) -> crate::error::ErrorClass {
        match self {
            ProgressError::BadId => crate::error::ErrorClass::BadRequest,
            ProgressError::Full => crate::error::ErrorClass::Overloaded,
        }
    }
}

/// The table of watched ids and running flights.
#[derive(Default)]
pub struct ProgressBoard {
    board: Mutex<Board>,
}

#[derive(Default)]
struct Board {
    ids: HashMap<String, Watched>,
    flights: HashMap<[u8; 32], Tracked>,
}

struct Watched {
    born: Instant,
    tx: watch::Sender<Snapshot>,
}

#[derive(Default)]
struct Tracked {
    snapshot: Snapshot,
    ids: Vec<String>,
}

pub fn valid_id(id: &str) -> bool {
    (8..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Board {
    /// The id's entry, created (after dropping expired ones) when new; `None` when full.
    fn watched(&mut self, id: &str) -> Option<&mut Watched> {
        if !self.ids.contains_key(id) {
            if self.ids.len() >= MAX_IDS {
                self.ids.retain(|_, w| w.born.elapsed() < ID_TTL);
                if self.ids.len() >= MAX_IDS {
                    return None;
                }
            }
            let (tx, _) = watch::channel(Snapshot::default());
            self.ids.insert(id.to_string(), Watched { born: Instant::now(), tx });
        }
        self.ids.get_mut(id)
    }

    fn publish(&self, flight: &[u8; 32]) {
        if let Some(t) = self.flights.get(flight) {
            for id in &t.ids {
                if let Some(w) = self.ids.get(id) {
                    w.tx.send_replace(t.snapshot);
                }
            }
        }
    }
}

impl ProgressBoard {
    pub fn new() -> Self {
        Self::default()
    }

    /// The stream side: a receiver of the id's snapshots (the id is created if new).
    pub fn subscribe(&self, id: &str) -> Result<watch::Receiver<Snapshot>, ProgressError> {
        if !valid_id(id) {
            return Err(ProgressError::BadId);
        }
        let mut board = self.board.lock();
        Ok(board.watched(id).ok_or(ProgressError::Full)?.tx.subscribe())
    }

    /// The request side: `id` now follows `flight`. Best effort: a full board or a flight that
    /// already ended leaves the id waiting until `finish`.
    pub fn attach(&self, id: &str, flight: &[u8; 32]) {
        let mut board = self.board.lock();
        if board.watched(id).is_none() {
            return;
        }
        if let Some(t) = board.flights.get_mut(flight) {
            if !t.ids.iter().any(|i| i == id) {
                t.ids.push(id.to_string());
            }
            board.publish(flight);
        }
    }

    /// The request side: the request was answered (`ok`) or ended without a result. The id's
    /// stream sees the final state and ends; the id is forgotten.
    pub fn finish(&self, id: &str, ok: bool) {
        let mut board = self.board.lock();
        for t in board.flights.values_mut() {
            t.ids.retain(|i| i != id);
        }
        if let Some(w) = board.ids.remove(id) {
            let mut last = *w.tx.borrow();
            last.state = if ok { State::Done } else { State::Failed };
            w.tx.send_replace(last);
        }
    }

    /// The leader side: track `flight` while the returned guard lives.
    pub fn track(self: &Arc<Self>, flight: [u8; 32]) -> Tracking {
        self.board.lock().flights.entry(flight).or_default();
        Tracking { board: self.clone(), flight }
    }

    /// Ids watched now (for tests).
    pub fn watched(&self) -> usize {
        self.board.lock().ids.len()
    }

    fn update(&self, flight: &[u8; 32], p: JobProgress) {
        let mut board = self.board.lock();
        let Some(t) = board.flights.get_mut(flight) else { return };
        let s = &mut t.snapshot;
        s.state = State::Running;
        match p {
            JobProgress::Tiles(p) => {
                (s.tiles_done, s.tiles_total) = (p.done, p.total);
                // The next pass starts its steps afresh.
                s.steps_done = 0;
            }
            JobProgress::Steps(p) => (s.steps_done, s.steps_total) = (p.done, p.total),
        }
        if !t.ids.is_empty() {
            board.publish(flight);
        }
    }
}

/// A running flight's entry on the board; dropping it forgets the flight.
pub struct Tracking {
    board: Arc<ProgressBoard>,
    flight: [u8; 32],
}

impl Tracking {
    /// The callback the batcher reports this flight's progress to.
    pub fn sink(&self) -> ProgressFn {
        let (board, flight) = (self.board.clone(), self.flight);
        Arc::new(move |p| board.update(&flight, p))
    }
}

impl Drop for Tracking {
    fn drop(&mut self) {
        self.board.board.lock().flights.remove(&self.flight);
    }
}

/// The id's snapshots as an event stream: one `data:` event per change, ending after the final
/// state, when the id is dropped, or after `ttl`.
pub fn event_stream(rx: watch::Receiver<Snapshot>, ttl: Duration) -> Body {
    let deadline = tokio::time::Instant::now() + ttl;
    let events = futures::stream::unfold(Some((rx, true)), move |state| async move {
        let (mut rx, first) = state?;
        if !first {
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => return None,
            }
        }
        let snapshot = *rx.borrow_and_update();
        let json = serde_json::to_string(&snapshot).expect("a snapshot serialises");
        let frame = Frame::data(Bytes::from(format!("data: {json}\n\n")));
        let next = (!snapshot.state.is_final()).then_some((rx, false));
        Some((Ok::<_, Infallible>(frame), next))
    });
    StreamBody::new(events).boxed_unsync()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Progress;

    #[test]
    fn ids_follow_their_flight_and_end_with_the_request() {
        let board = Arc::new(ProgressBoard::new());
        let flight = [7u8; 32];
        let tracking = board.track(flight);
        let mut a = board.subscribe("aaaaaaaa").unwrap();
        board.attach("aaaaaaaa", &flight);
        board.attach("bbbbbbbb", &flight); // a request whose stream is not open yet
        let sink = tracking.sink();
        sink(JobProgress::Tiles(Progress { done: 2, total: 6 }));
        sink(JobProgress::Steps(Progress { done: 3, total: 20 }));
        let s = *a.borrow_and_update();
        assert_eq!((s.state, s.tiles_done, s.tiles_total, s.steps_done, s.steps_total), (State::Running, 2, 6, 3, 20));
        let b = board.subscribe("bbbbbbbb").unwrap();
        assert_eq!(b.borrow().tiles_done, 2, "a late stream starts from the flight's snapshot");
        board.finish("aaaaaaaa", true);
        assert_eq!(a.borrow_and_update().state, State::Done);
        assert!(a.has_changed().is_err(), "the id's sender is gone: the stream ends");
        drop(tracking);
        board.finish("bbbbbbbb", false);
        assert_eq!(b.borrow().state, State::Failed);
        assert_eq!(board.watched(), 0);
        assert!(board.board.lock().flights.is_empty());
    }

    #[test]
    fn ids_are_validated_and_bounded() {
        let board = ProgressBoard::new();
        assert!(matches!(board.subscribe("short"), Err(ProgressError::BadId)));
        assert!(matches!(board.subscribe("has space in it"), Err(ProgressError::BadId)));
        for i in 0..MAX_IDS {
            board.subscribe(&format!("id-{i:08}")).unwrap();
        }
        assert!(matches!(board.subscribe("one-too-many"), Err(ProgressError::Full)));
        board.subscribe("id-00000001").expect("a known id is still served");
    }

    #[tokio::test]
    async fn the_event_stream_sends_each_change_and_ends_on_the_final_state() {
        // Frame by frame: each change is made once the previous event has been read.
        let board = Arc::new(ProgressBoard::new());
        let tracking = board.track([1; 32]);
        let rx = board.subscribe("stream-01").unwrap();
        board.attach("stream-01", &[1; 32]);
        let mut body = event_stream(rx, Duration::from_secs(5));
        assert!(next_event(&mut body).await.unwrap().contains("\"state\":\"waiting\""));
        tracking.sink()(JobProgress::Tiles(Progress { done: 1, total: 1 }));
        let running = next_event(&mut body).await.unwrap();
        assert!(running.contains("\"tiles_done\":1"), "{running}");
        board.finish("stream-01", true);
        assert!(next_event(&mut body).await.unwrap().contains("\"state\":\"done\""));
        assert!(next_event(&mut body).await.is_none(), "the stream ends on the final state");
    }

    async fn next_event(body: &mut Body) -> Option<String> {
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame()).await.expect("an event in time")?;
        Some(String::from_utf8(frame.unwrap().into_data().unwrap().to_vec()).unwrap())
    }
}
