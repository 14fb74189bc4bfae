//! API keys for the Streamable HTTP proxy (`--keys FILE`): `name = "sha256:<hex of the key>"`.
//!
//! Only hashes are stored and only names (or a fingerprint of an unknown key) are recorded: a
//! raw key never reaches a span, a log line or an error message.

use super::config::ConfigError;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::Path;

/// Key hash → key name.
#[derive(Clone, Debug, Default)]
pub struct KeyRing {
    by_hash: HashMap<[u8; 32], String>,
}

/// What a presented key turned out to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Identity {
    /// A configured key: its name.
    Known(String),
    /// A key that is not configured: `key:` + the first 8 hex digits of its SHA-256.
    Unknown(String),
    /// No key was presented.
    Missing,
}

impl Identity {
    /// The `user` recorded for a call made with this identity.
    pub(crate) fn user(&self) -> &str {
        match self {
            Identity::Known(name) | Identity::Unknown(name) => name,
            Identity::Missing => "anonymous",
        }
    }
}

/// `key:` + the first 8 hex digits of the key's SHA-256: names an unknown key without
/// revealing it.
pub fn fingerprint(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    format!("key:{}", crate::hex::encode(&digest[..4]))
}

impl KeyRing {
    pub(crate) fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|problems| ConfigError::Invalid {
            path: path.to_owned(),
            problems,
        })
    }

    /// Parses `name = "sha256:<hex>"` lines; every problem is named by its key name.
    pub fn parse(text: &str) -> Result<Self, Vec<String>> {
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| vec![format!("not valid TOML: {}", e.message())])?;
        let mut ring = KeyRing::default();
        let mut problems = Vec::new();
        for (name, value) in &table {
            let Some(s) = value.as_str() else {
                problems.push(format!(
                    "`{name}` must be a string \"sha256:<64 hex digits>\""
                ));
                continue;
            };
            let Some(hash) = s
                .strip_prefix("sha256:")
                .and_then(|h| crate::hex::decode::<32>(h, crate::hex::Case::Any))
            else {
                problems.push(format!(
                    "`{name}` must be \"sha256:\" followed by 64 hex digits (the SHA-256 of the \
                     key, e.g. from `printf %s KEY | sha256sum`)"
                ));
                continue;
            };
            if let Some(other) = ring.by_hash.insert(hash, name.clone()) {
                problems.push(format!("`{name}` has the same key hash as `{other}`"));
            }
        }
        if table.is_empty() {
            problems.push("no keys are configured".to_owned());
        }
        if problems.is_empty() {
            Ok(ring)
        } else {
            Err(problems)
        }
    }

    /// Looks up a presented key (or its absence).
    pub(crate) fn identify(&self, key: Option<&str>) -> Identity {
        let Some(key) = key else {
            return Identity::Missing;
        };
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        match self.by_hash.get(&digest) {
            Some(name) => Identity::Known(name.clone()),
            None => Identity::Unknown(fingerprint(key)),
        }
    }
}

/// The key a request presents: `Authorization: Bearer <key>`, else `X-API-Key`.
pub(crate) fn presented_key(headers: &http::HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        })
        .filter(|k| !k.is_empty());
    bearer.or_else(|| {
        headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|k| !k.is_empty())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE_KEY: &str = "sk-alice-0123456789";

    fn hash(key: &str) -> String {
        crate::hex::encode(&Sha256::digest(key.as_bytes()))
    }

    #[test]
    fn keys_are_looked_up_by_hash_and_unknown_keys_are_fingerprinted() {
        let ring = KeyRing::parse(&format!("alice = \"sha256:{}\"", hash(ALICE_KEY))).unwrap();
        assert_eq!(
            ring.identify(Some(ALICE_KEY)),
            Identity::Known("alice".into())
        );
        let unknown = ring.identify(Some("sk-mallory"));
        let expected = format!("key:{}", &hash("sk-mallory")[..8]);
        assert_eq!(unknown, Identity::Unknown(expected.clone()));
        assert_eq!(unknown.user(), expected);
        assert!(!unknown.user().contains("mallory"));
        assert_eq!(ring.identify(None).user(), "anonymous");
    }

    #[test]
    fn bad_entries_are_named() {
        let err = KeyRing::parse(&format!(
            "a = \"md5:abc\"\nb = 3\nc = \"sha256:{h}\"\nd = \"sha256:{h}\"",
            h = hash("k")
        ))
        .unwrap_err();
        let all = err.join("\n");
        assert!(all.contains("`a` must be \"sha256:\""), "{all}");
        assert!(all.contains("`b` must be a string"), "{all}");
        assert!(all.contains("`d` has the same key hash as `c`"), "{all}");
    }

    #[test]
    fn key_comes_from_bearer_then_x_api_key() {
        let mut h = http::HeaderMap::new();
        assert_eq!(presented_key(&h), None);
        h.insert("x-api-key", "k2".parse().unwrap());
        assert_eq!(presented_key(&h), Some("k2"));
        h.insert("authorization", "Bearer k1".parse().unwrap());
        assert_eq!(presented_key(&h), Some("k1"));
    }
}
