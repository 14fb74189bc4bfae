//! The gate's state for the Streamable HTTP proxy, where the question and its answer travel in
//! different HTTP exchanges: which sessions can be asked (from their `initialize`), and the
//! questions waiting for the client's POSTed answer.
//!
//! The held call's POST is answered as an SSE stream that carries the proxy's
//! `elicitation/create`; the client answers with a separate POST in the same session, which the
//! proxy takes out of the traffic (202) and hands to the waiting exchange here.

use super::Gate;
use super::legacy::Answer;
use std::collections::HashMap;
use std::sync::Mutex;
use tokio::sync::oneshot;

/// A question waiting for its answer.
#[derive(Debug)]
struct Waiting {
    /// The session that was asked: an answer from another session does not count.
    session: String,
    /// The held call's id (JSON text), for the client's cancellation of it.
    call: String,
    answer: oneshot::Sender<Answer>,
}

/// The HTTP proxy's gate.
#[derive(Debug)]
pub(crate) struct HttpGate {
    gate: Gate,
    /// Session key → whether its client declared elicitation.
    sessions: Mutex<HashMap<String, bool>>,
    waiting: Mutex<HashMap<String, Waiting>>,
}

impl HttpGate {
    pub(crate) fn new(gate: Gate) -> Self {
        HttpGate {
            gate,
            sessions: Mutex::new(HashMap::new()),
            waiting: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn gate(&self) -> &Gate {
        &self.gate
    }

    /// Remembers what the client of `session` declared at `initialize`.
    pub(crate) fn initialized(&self, session: String, can_elicit: bool) {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(session, can_elicit);
    }

    pub(crate) fn can_elicit(&self, session: &str) -> bool {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(session)
            .copied()
            .unwrap_or(false)
    }

    pub(crate) fn closed(&self, session: &str) {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(session);
    }

    /// Registers the question `own` asked in `session` about the call `call` (its id's JSON
    /// text); the receiver gets the answer.
    pub(crate) fn ask(&self, own: &str, session: &str, call: &str) -> oneshot::Receiver<Answer> {
        let (tx, rx) = oneshot::channel();
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                own.to_owned(),
                Waiting {
                    session: session.to_owned(),
                    call: call.to_owned(),
                    answer: tx,
                },
            );
        rx
    }

    /// Hands `answer` to the question `own` if `session` asked it and it is still open;
    /// returns whether it was.
    pub(crate) fn answer(&self, own: &str, session: &str, answer: Answer) -> bool {
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        match waiting.get(own) {
            Some(w) if w.session == session => {}
            _ => return false,
        }
        let w = waiting.remove(own).expect("just found");
        w.answer.send(answer).is_ok()
    }

    /// The client of `session` cancelled its call `call` (id JSON text): if that call is held,
    /// its exchange gets [`Answer::Withdrawn`]; returns whether it was held.
    pub(crate) fn cancel(&self, session: &str, call: &str) -> bool {
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        let Some(own) = waiting
            .iter()
            .find(|(_, w)| w.session == session && w.call == call)
            .map(|(own, _)| own.clone())
        else {
            return false;
        };
        let w = waiting.remove(&own).expect("just found");
        w.answer.send(Answer::Withdrawn).is_ok()
    }

    /// Forgets the question `own` (answered, timed out, or the client went away).
    pub(crate) fn forget(&self, own: &str) {
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(own);
    }
}
