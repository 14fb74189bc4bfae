//! Who may see the console: with `--token`, a browser proves it once on the token prompt
//! (`POST /console/login`, the token in the form body, never in a URL) and gets a random session
//! id in a cookie (`HttpOnly`, `SameSite=Strict`, `Path=/`); scripts send the token as a bearer
//! header. Without `--token` everyone on the listener may (it binds loopback by default).

use axum::http::HeaderMap;
use axum::http::header::{AUTHORIZATION, COOKIE};
use rand::RngCore;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The session cookie's name.
pub(crate) const COOKIE_NAME: &str = "mcp_otel_console";
/// How long a session lasts.
pub(crate) const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at once; the oldest leaves first.
const MAX_SESSIONS: usize = 1024;
/// Wrong tokens the prompt takes per [`LOGIN_WINDOW`] (from anyone: the listener is loopback
/// by default, and a guesser with many addresses must not get more); past that it checks no
/// token, right or wrong, until the oldest failure is a window old. Scripts' bearer headers
/// are not limited by it.
pub const MAX_FAILED_LOGINS: usize = 5;
/// The window of [`MAX_FAILED_LOGINS`].
pub const LOGIN_WINDOW: Duration = Duration::from_secs(60);

/// The token and the sessions it opened.
pub(crate) struct Gate {
    token: Option<Box<str>>,
    sessions: Mutex<HashMap<String, Instant>>,
    /// When the last wrong tokens were given on the prompt, oldest first.
    failures: Mutex<std::collections::VecDeque<Instant>>,
}

impl Gate {
    pub(crate) fn new(token: Option<&str>) -> Gate {
        Gate {
            token: token.map(Box::from),
            sessions: Mutex::new(HashMap::new()),
            failures: Mutex::new(std::collections::VecDeque::new()),
        }
    }

    /// How long the prompt stays locked at `now`, or `None` when it takes a token.
    pub(crate) fn login_locked(&self, now: Instant) -> Option<Duration> {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        while f
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= LOGIN_WINDOW)
        {
            f.pop_front();
        }
        (f.len() >= MAX_FAILED_LOGINS)
            .then(|| LOGIN_WINDOW.saturating_sub(now.saturating_duration_since(f[0])))
    }

    /// Counts a wrong token given on the prompt at `now`.
    pub(crate) fn login_failed(&self, now: Instant) {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        f.push_back(now);
        while f.len() > MAX_FAILED_LOGINS {
            f.pop_front();
        }
    }

    /// Whether a token is required at all.
    pub(crate) fn required(&self) -> bool {
        self.token.is_some()
    }

    /// Whether `offered` is the token (in constant time for equal lengths).
    pub(crate) fn token_matches(&self, offered: &str) -> bool {
        match &self.token {
            None => true,
            Some(t) => {
                let (a, b) = (t.as_bytes(), offered.as_bytes());
                a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
            }
        }
    }

    /// Whether the request carries the bearer token or a live session cookie.
    pub(crate) fn allows(&self, headers: &HeaderMap) -> bool {
        if !self.required() {
            return true;
        }
        let bearer = headers
            .get_all(AUTHORIZATION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|v| v.strip_prefix("Bearer "))
            .any(|t| self.token_matches(t.trim()));
        bearer || session_ids(headers).any(|id| self.session_live(id))
    }

    fn session_live(&self, id: &str) -> bool {
        let mut s = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        match s.get(id) {
            Some(born) if born.elapsed() < SESSION_TTL => true,
            Some(_) => {
                s.remove(id);
                false
            }
            None => false,
        }
    }

    /// Opens a session; returns its `Set-Cookie` value.
    pub(crate) fn open_session(&self, secure: bool) -> String {
        let mut raw = [0u8; 32];
        rand::rng().fill_bytes(&mut raw);
        let id = crate::hex::encode(&raw);
        let mut s = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        s.retain(|_, born| born.elapsed() < SESSION_TTL);
        if s.len() >= MAX_SESSIONS
            && let Some(oldest) = s.iter().min_by_key(|(_, b)| **b).map(|(k, _)| k.clone())
        {
            s.remove(&oldest);
        }
        s.insert(id.clone(), Instant::now());
        format!(
            "{COOKIE_NAME}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{}",
            SESSION_TTL.as_secs(),
            if secure { "; Secure" } else { "" }
        )
    }

    /// Ends the sessions named by the request's cookies.
    pub(crate) fn close_sessions(&self, headers: &HeaderMap) {
        let mut s = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        for id in session_ids(headers) {
            s.remove(id);
        }
    }
}

/// The values of every console cookie the request carries.
fn session_ids(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().strip_prefix(COOKIE_NAME)?.strip_prefix('='))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn wrong_tokens_lock_the_prompt_for_the_rest_of_the_window() {
        let g = Gate::new(Some("a-token-of-sixteen-chars"));
        let t0 = Instant::now();
        for i in 0..MAX_FAILED_LOGINS {
            assert_eq!(g.login_locked(t0), None, "after {i} failures");
            g.login_failed(t0 + Duration::from_secs(i as u64));
        }
        let at = t0 + Duration::from_secs(10);
        assert_eq!(
            g.login_locked(at),
            Some(LOGIN_WINDOW - Duration::from_secs(10))
        );
        // Once the oldest failure is a window old, one more guess is taken.
        assert_eq!(g.login_locked(t0 + LOGIN_WINDOW), None);
        g.login_failed(t0 + LOGIN_WINDOW);
        assert!(g.login_locked(t0 + LOGIN_WINDOW).is_some());
    }

    fn headers(pairs: &[(axum::http::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(k.clone(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn a_session_cookie_or_the_bearer_token_lets_in_nothing_else_does() {
        let gate = Gate::new(Some("s3cret"));
        assert!(!gate.allows(&HeaderMap::new()));
        assert!(gate.allows(&headers(&[(AUTHORIZATION, "Bearer s3cret")])));
        assert!(!gate.allows(&headers(&[(AUTHORIZATION, "Bearer s3cre")])));
        assert!(!gate.allows(&headers(&[(COOKIE, "mcp_otel_console=s3cret")])));
        let set = gate.open_session(false);
        assert!(
            set.contains("HttpOnly") && set.contains("SameSite=Strict"),
            "{set}"
        );
        let id = set.split(';').next().unwrap();
        let cookie = format!("theme=dark; {id}");
        assert!(gate.allows(&headers(&[(COOKIE, &cookie)])));
        gate.close_sessions(&headers(&[(COOKIE, &cookie)]));
        assert!(!gate.allows(&headers(&[(COOKIE, &cookie)])));
        assert!(Gate::new(None).allows(&HeaderMap::new()));
    }
}
