//! Confirmation for 2026-07-28 peers, through the multi round-trip (MRTR) pattern: the proxy
//! answers the first gated `tools/call` itself with an `InputRequiredResult` (an elicitation
//! under the key [`INPUT_KEY`], and a `requestState` it can verify), and forwards the client's
//! retry once it carries an approval under that key and the state checks out.
//!
//! The state is `hex(claims JSON) "." hex(HMAC-SHA256(key, claims JSON))`. The claims bind the
//! caller's identity, the tool, the digest of the exact arguments, an expiry (the policy's
//! timeout) and a nonce; the server's own `requestState`, when the client sent one, rides inside
//! and is restored on the forwarded retry. A state is accepted once: its nonce is spent when
//! the retry is accepted, and a spent nonce is refused until the state expires.
//!
//! Where the spent nonces are kept follows from where the key lives. With a random key (the
//! default) only the process that issued a state can verify it, so its memory is the whole
//! record. A key from `confirm.state_key_file` is shared by replicas (and outlives a restart),
//! so the configuration must also name `confirm.replay_dir`, a directory every replica sharing
//! the key opens: a nonce is spent by creating the file `EXPIRY-NONCE` there with `O_EXCL`, which
//! exactly one replica can do (also on NFSv3+). Files are removed some minutes after their
//! expiry, so that a replica whose clock is behind still finds them.
//!
//! The client's capability is checked per request (`_meta` client capabilities), as 2026-07-28
//! has no session to remember it in.

use super::legacy::{self, Answer};
use super::policy::Unsupported;
use super::{Gate, gated};
use crate::record::{Confirmation, ConfirmationOutcome, arguments_digest};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The proxy's key in `inputRequests` / `inputResponses`.
pub(crate) const INPUT_KEY: &str = "io.mcp-otel/confirm";
/// The protocol revision that confirms through MRTR.
pub(crate) const MODERN: &str = "2026-07-28";
const META_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";
/// JSON-RPC "invalid params": what a state that fails verification is answered with.
pub(crate) const INVALID_STATE_CODE: i64 = -32602;

/// The key that signs request states.
#[derive(Clone)]
pub(crate) struct StateKey([u8; 32]);

impl std::fmt::Debug for StateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StateKey(…)")
    }
}

impl StateKey {
    /// At least 32 bytes of a file (its SHA-256 is the key), so that replicas can share it.
    pub(crate) fn load(path: &Path) -> Result<Self, String> {
        let bytes =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if bytes.len() < 32 {
            return Err(format!(
                "{} holds {} bytes; a state key needs at least 32 (e.g. `head -c 32 /dev/urandom`)",
                path.display(),
                bytes.len()
            ));
        }
        Ok(StateKey(Sha256::digest(&bytes).into()))
    }

    pub(crate) fn random() -> Self {
        let mut k = [0u8; 32];
        rand::fill(&mut k);
        StateKey(k)
    }

    fn mac(&self, msg: &[u8]) -> [u8; 32] {
        hmac_sha256(&self.0, msg)
    }
}

/// HMAC-SHA256 (RFC 2104) for keys up to one block.
pub(crate) fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let (mut ipad, mut opad) = ([0x36u8; 64], [0x5cu8; 64]);
    for i in 0..64 {
        ipad[i] ^= k[i];
        opad[i] ^= k[i];
    }
    let mut inner = Sha256::new();
    inner.update(ipad);
    inner.update(msg);
    let inner = inner.finalize();
    let mut outer = Sha256::new();
    outer.update(opad);
    outer.update(inner);
    outer.finalize().into()
}

/// What a request state says.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Claims {
    /// The caller the question was put to.
    pub(crate) sub: String,
    pub(crate) tool: String,
    /// [`arguments_digest`] of the arguments the question was about.
    pub(crate) digest: String,
    /// Expiry, Unix milliseconds.
    pub(crate) exp: i64,
    pub(crate) nonce: String,
    /// When the question was put, Unix milliseconds (for the wait).
    pub(crate) iat: i64,
    /// The server's own `requestState` the client sent with the call, restored on forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) inner: Option<String>,
}

/// Why a request state was refused.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub(crate) enum StateError {
    #[error("the requestState is not one the proxy issued (malformed)")]
    Malformed,
    #[error("the requestState's signature does not verify (tampered with, or another key)")]
    BadSignature,
    #[error("the requestState has expired; call the tool again to be asked anew")]
    Expired,
    #[error("the requestState was already used; an approval counts once")]
    Replayed,
    #[error("the requestState was issued to another caller")]
    OtherCaller,
    #[error("the requestState was issued for the tool {0}, not this one")]
    OtherTool(String),
    #[error("the arguments differ from the ones the user approved")]
    OtherArguments,
    #[error("an answer under {INPUT_KEY} came without the proxy's requestState")]
    Missing,
    /// The replay directory could not record the nonce: refused, since it cannot be spent.
    #[error("the approval could not be recorded as used ({0}); call the tool again")]
    ReplayStore(String),
}

/// Spent nonces are removed from the replay directory this long after their state expired (so
/// that replicas with clocks up to this far apart agree).
pub(crate) const REPLAY_KEEP_AFTER_EXPIRY: Duration = Duration::from_secs(600);
/// How often a replica sweeps the replay directory.
const REPLAY_SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Where the nonces of accepted states are kept.
#[derive(Debug)]
enum Spent {
    /// This process only (the key is its own).
    Memory(Mutex<HashMap<String, i64>>),
    /// A directory the replicas sharing the key share; the time of the last sweep.
    Dir { path: PathBuf, swept: Mutex<i64> },
}

impl Spent {
    fn spend(&self, claims: &Claims, now: i64) -> Result<(), StateError> {
        match self {
            Spent::Memory(used) => {
                let mut used = used.lock().unwrap_or_else(|e| e.into_inner());
                used.retain(|_, exp| *exp > now);
                match used.insert(claims.nonce.clone(), claims.exp) {
                    Some(_) => Err(StateError::Replayed),
                    None => Ok(()),
                }
            }
            Spent::Dir { path, swept } => {
                // The nonce is the proxy's own hex (the state is signed), never a path.
                if claims.nonce.is_empty() || !claims.nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(StateError::Malformed);
                }
                let name = format!("{}-{}", claims.exp, claims.nonce);
                let created = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(path.join(name));
                let result = match created {
                    Ok(_) => Ok(()),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        Err(StateError::Replayed)
                    }
                    Err(e) => Err(StateError::ReplayStore(format!("{}: {e}", path.display()))),
                };
                let mut last = swept.lock().unwrap_or_else(|e| e.into_inner());
                if now - *last > duration_ms(REPLAY_SWEEP_EVERY) {
                    *last = now;
                    sweep(path, now - duration_ms(REPLAY_KEEP_AFTER_EXPIRY));
                }
                result
            }
        }
    }
}

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2)
}

/// Removes the spent nonces of states that expired before `before` (Unix ms).
fn sweep(dir: &Path, before: i64) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let expired = name
            .to_str()
            .and_then(|n| n.split_once('-'))
            .and_then(|(exp, _)| exp.parse::<i64>().ok())
            .is_some_and(|exp| exp < before);
        if expired {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Checks that `dir` can hold spent nonces: a directory the proxy can create files in.
pub(crate) fn check_replay_dir(dir: &Path) -> Result<(), String> {
    if !dir.is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    let probe = dir.join(format!(".mcp-otel-probe-{}", std::process::id()));
    std::fs::write(&probe, b"")
        .and_then(|()| std::fs::remove_file(&probe))
        .map_err(|e| format!("cannot create files in {}: {e}", dir.display()))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Issues and checks request states.
#[derive(Debug)]
pub(crate) struct StateBook {
    key: StateKey,
    /// Nonces already accepted.
    spent: Spent,
}

impl StateBook {
    /// A book whose spent nonces live in this process (for a key only this process has).
    pub(crate) fn new(key: StateKey) -> Self {
        StateBook {
            key,
            spent: Spent::Memory(Mutex::new(HashMap::new())),
        }
    }

    /// A book whose spent nonces live in `dir`, shared by every replica holding `key`.
    pub(crate) fn shared(key: StateKey, dir: PathBuf) -> Self {
        StateBook {
            key,
            spent: Spent::Dir {
                path: dir,
                swept: Mutex::new(0),
            },
        }
    }

    pub(crate) fn seal(&self, claims: &Claims) -> String {
        let payload = serde_json::to_vec(claims).expect("claims serialise");
        format!(
            "{}.{}",
            crate::hex::encode(&payload),
            crate::hex::encode(&self.key.mac(&payload))
        )
    }

    /// Checks signature and expiry (not the binding, not single use).
    pub(crate) fn open(&self, state: &str, now: i64) -> Result<Claims, StateError> {
        let (payload, mac) = state.split_once('.').ok_or(StateError::Malformed)?;
        let payload = crate::hex::decode_vec(payload, crate::hex::Case::Lower)
            .ok_or(StateError::Malformed)?;
        let mac =
            crate::hex::decode_vec(mac, crate::hex::Case::Lower).ok_or(StateError::Malformed)?;
        let expected = self.key.mac(&payload);
        // Constant time: the comparison does not stop at the first differing byte.
        let same = mac.len() == expected.len()
            && mac
                .iter()
                .zip(expected)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if !same {
            return Err(StateError::BadSignature);
        }
        let claims: Claims = serde_json::from_slice(&payload).map_err(|_| StateError::Malformed)?;
        if claims.exp <= now {
            return Err(StateError::Expired);
        }
        Ok(claims)
    }

    /// Checks `state` for a retry by `caller` of `tool` with `arguments`, and spends it.
    pub(crate) fn redeem(
        &self,
        state: &str,
        caller: &str,
        tool: &str,
        arguments: Option<&Value>,
    ) -> Result<Claims, StateError> {
        let now = now_ms();
        let claims = self.open(state, now)?;
        if claims.sub != caller {
            return Err(StateError::OtherCaller);
        }
        if claims.tool != tool {
            return Err(StateError::OtherTool(claims.tool));
        }
        if claims.digest != arguments_digest(arguments) {
            return Err(StateError::OtherArguments);
        }
        self.spent.spend(&claims, now)?;
        Ok(claims)
    }
}

/// What the proxy does with a 2026-07-28 gated call.
#[derive(Debug)]
pub(crate) enum ModernStep {
    /// Answer the client with this `InputRequiredResult` response (one JSON text).
    Ask(Vec<u8>),
    /// Forward this request (rewritten: the proxy's answer and state taken out).
    Forward {
        body: Vec<u8>,
        confirmation: Confirmation,
    },
    /// Answer the client with this response; record the call with `confirmation`.
    Refuse {
        response: Vec<u8>,
        confirmation: Confirmation,
    },
}

/// Whether `request` (a parsed `tools/call`) is a 2026-07-28 one: `_meta` names the revision,
/// or the transport said so (`MCP-Protocol-Version`).
pub(crate) fn is_modern(request: &Value, header_version: Option<&str>) -> bool {
    request
        .pointer("/params/_meta/io.modelcontextprotocol~1protocolVersion")
        .and_then(Value::as_str)
        .or(header_version)
        == Some(MODERN)
}

/// The per-request capability check: `_meta` client capabilities name elicitation (form).
fn can_elicit(request: &Value) -> bool {
    match request
        .pointer("/params/_meta")
        .and_then(|m| m.get(META_CAPABILITIES))
        .and_then(|c| c.get("elicitation"))
    {
        Some(Value::Object(modes)) => modes.is_empty() || modes.contains_key("form"),
        _ => false,
    }
}

fn response(id: &Value, result: Value) -> Vec<u8> {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
        .to_string()
        .into_bytes()
}

fn error_response(id: &Value, code: i64, message: String) -> Vec<u8> {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
        .to_string()
        .into_bytes()
}

fn refusal(id: &Value, text: String) -> Vec<u8> {
    response(
        id,
        json!({
            "resultType": "complete",
            "content": [{"type": "text", "text": text}],
            "isError": true
        }),
    )
}

/// The MRTR gate: `request` is the whole gated `tools/call` (parsed), `caller` the identity the
/// state is bound to.
pub(crate) fn step(gate: &Gate, book: &StateBook, mut request: Value, caller: &str) -> ModernStep {
    let id = request.get("id").cloned().unwrap_or(Value::Null);
    let params = request.get("params").cloned().unwrap_or(Value::Null);
    let tool = params
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let arguments = params.get("arguments");
    let answer = params
        .pointer("/inputResponses")
        .and_then(|r| r.get(INPUT_KEY));
    let state = params.get("requestState").and_then(Value::as_str);
    let Some(answer) = answer else {
        if !can_elicit(&request) {
            let confirmation = gated(ConfirmationOutcome::UnsupportedClient, arguments, None);
            return match gate.unsupported() {
                Unsupported::Allow => ModernStep::Forward {
                    body: request.to_string().into_bytes(),
                    confirmation,
                },
                Unsupported::Deny => ModernStep::Refuse {
                    response: refusal(&id, legacy::refusal_text(&tool, confirmation.outcome, 0.0)),
                    confirmation,
                },
            };
        }
        // First round: ask, keeping any state the server gave the client.
        let question = gate.question(&tool, arguments);
        let asked = input_required(
            book,
            caller,
            &tool,
            arguments,
            gate.timeout(),
            state,
            &question,
        );
        return ModernStep::Ask(response(&id, asked));
    };
    let digest_args = arguments.cloned();
    let (verdict, claims) =
        match redeem_answer(book, state, caller, &tool, digest_args.as_ref(), answer) {
            Ok(v) => v,
            Err(e) => {
                let confirmation = Confirmation::new(ConfirmationOutcome::Declined, None);
                return ModernStep::Refuse {
                    response: error_response(
                        &id,
                        INVALID_STATE_CODE,
                        format!("mcp-otel proxy: confirmation refused: {e}"),
                    ),
                    confirmation: Confirmation {
                        arguments_digest: Some(arguments_digest(digest_args.as_ref())),
                        ..confirmation
                    },
                };
            }
        };
    let waited = claims.waited();
    let confirmation = gated(verdict.outcome(), digest_args.as_ref(), Some(waited));
    if verdict != Answer::Approved {
        return ModernStep::Refuse {
            response: refusal(&id, legacy::refusal_text(&tool, confirmation.outcome, 0.0)),
            confirmation,
        };
    }
    // Forward without the proxy's answer and state; the server's own come back as they were.
    if let Some(p) = request.get_mut("params").and_then(Value::as_object_mut) {
        strip(p, claims.inner);
    }
    ModernStep::Forward {
        body: request.to_string().into_bytes(),
        confirmation,
    }
}

/// The `InputRequiredResult` (the result object) asking `question` about a call by `caller` to
/// `tool` with `arguments`, open for `timeout`; `inner` is a `requestState` of the server's
/// that the client sent with the call, carried inside the proxy's.
pub(crate) fn input_required(
    book: &StateBook,
    caller: &str,
    tool: &str,
    arguments: Option<&Value>,
    timeout: Duration,
    inner: Option<&str>,
    question: &str,
) -> Value {
    let now = now_ms();
    let mut nonce = [0u8; 16];
    rand::fill(&mut nonce);
    let claims = Claims {
        sub: caller.to_owned(),
        tool: tool.to_owned(),
        digest: arguments_digest(arguments),
        exp: now + duration_ms(timeout),
        nonce: crate::hex::encode(&nonce),
        iat: now,
        inner: inner.map(str::to_owned),
    };
    let elicitation: Value =
        serde_json::from_str(&legacy::request("x", question)).expect("our own JSON");
    let mut elicit_params = elicitation["params"].clone();
    elicit_params["mode"] = json!("form");
    json!({
        "resultType": "input_required",
        "inputRequests": {
            INPUT_KEY: {"method": "elicitation/create", "params": elicit_params}
        },
        "requestState": book.seal(&claims)
    })
}

/// Reads the client's `answer` (its response under [`INPUT_KEY`]) to the question sealed in
/// `state`, after checking and spending the state for this caller, tool and arguments.
pub(crate) fn redeem_answer(
    book: &StateBook,
    state: Option<&str>,
    caller: &str,
    tool: &str,
    arguments: Option<&Value>,
    answer: &Value,
) -> Result<(Answer, Claims), StateError> {
    let claims = book.redeem(state.ok_or(StateError::Missing)?, caller, tool, arguments)?;
    Ok((legacy::read(Some(answer), None), claims))
}

impl Claims {
    /// How long the user took: from the question to now.
    pub(crate) fn waited(&self) -> Duration {
        Duration::from_millis(u64::try_from(now_ms() - self.iat).unwrap_or(0))
    }
}

fn strip(params: &mut Map<String, Value>, inner: Option<String>) {
    if let Some(Value::Object(responses)) = params.get_mut("inputResponses") {
        responses.remove(INPUT_KEY);
        if responses.is_empty() {
            params.remove("inputResponses");
        }
    }
    match inner {
        Some(s) => params.insert("requestState".to_owned(), Value::String(s)),
        None => params.remove("requestState"),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            crate::hex::encode(&mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    fn claims(exp: i64) -> Claims {
        Claims {
            sub: "alice".into(),
            tool: "delete_task".into(),
            digest: arguments_digest(Some(&json!({"id": "t1"}))),
            exp,
            nonce: "n1".into(),
            iat: 0,
            inner: None,
        }
    }

    #[test]
    fn states_verify_once_for_their_caller_tool_and_arguments() {
        let book = StateBook::new(StateKey::random());
        let far = now_ms() + 60_000;
        let s = book.seal(&claims(far));
        let args = json!({"id": "t1"});
        assert_eq!(
            book.redeem(&s, "bob", "delete_task", Some(&args)),
            Err(StateError::OtherCaller)
        );
        assert!(matches!(
            book.redeem(&s, "alice", "create_task", Some(&args)),
            Err(StateError::OtherTool(_))
        ));
        assert_eq!(
            book.redeem(&s, "alice", "delete_task", Some(&json!({"id": "t2"}))),
            Err(StateError::OtherArguments)
        );
        assert!(book.redeem(&s, "alice", "delete_task", Some(&args)).is_ok());
        assert_eq!(
            book.redeem(&s, "alice", "delete_task", Some(&args)),
            Err(StateError::Replayed)
        );
        let expired = book.seal(&claims(now_ms() - 1));
        assert_eq!(
            book.redeem(&expired, "alice", "delete_task", Some(&args)),
            Err(StateError::Expired)
        );
        // One bit of the claims changed: the signature no longer matches.
        let (payload, mac) = s.split_once('.').unwrap();
        let mut bytes = crate::hex::decode_vec(payload, crate::hex::Case::Lower).unwrap();
        let at = bytes.iter().position(|b| *b == b'a').unwrap();
        bytes[at] = b'b';
        let forged = format!("{}.{mac}", crate::hex::encode(&bytes));
        assert_eq!(book.open(&forged, 0), Err(StateError::BadSignature));
        assert_eq!(book.open("nonsense", 0), Err(StateError::Malformed));
        // Another proxy's key.
        let other = StateBook::new(StateKey::random());
        assert_eq!(
            other.open(&book.seal(&claims(far)), 0),
            Err(StateError::BadSignature)
        );
    }

    #[test]
    fn replicas_sharing_a_key_and_a_replay_dir_accept_a_state_once() {
        let dir = tempfile::tempdir().unwrap();
        let key = StateKey::random();
        let a = StateBook::shared(key.clone(), dir.path().to_owned());
        let b = StateBook::shared(key, dir.path().to_owned());
        let args = json!({"id": "t1"});
        let mut c = claims(now_ms() + 60_000);
        c.nonce = "00ff".into();
        let s = a.seal(&c);
        assert!(b.redeem(&s, "alice", "delete_task", Some(&args)).is_ok());
        assert_eq!(
            a.redeem(&s, "alice", "delete_task", Some(&args)),
            Err(StateError::Replayed),
            "spent at the other replica"
        );
        // Long expired nonces are swept; recent ones stay.
        let old = now_ms() - duration_ms(REPLAY_KEEP_AFTER_EXPIRY) - 1;
        std::fs::write(dir.path().join(format!("{old}-aa")), b"").unwrap();
        sweep(dir.path(), now_ms() - duration_ms(REPLAY_KEEP_AFTER_EXPIRY));
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(left.len(), 1);
        // A nonce that is not hex never names a path.
        c.nonce = "../x".into();
        let bad = a.seal(&c);
        assert_eq!(
            a.redeem(&bad, "alice", "delete_task", Some(&args)),
            Err(StateError::Malformed)
        );
    }
}
