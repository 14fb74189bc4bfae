//! Signed checkpoints, in the manner of CloudTrail digest files: every N rows or T seconds the
//! writer records the chain head (row id and hash) in `audit_checkpoints`, signed with an
//! Ed25519 key that is created on first start (file mode 0600). Checkpoints are chained too:
//! each signs the digest of the one before, so removing one in the middle is detected.
//!
//! A retention checkpoint is the same record with `kind = retention`: it names the last pruned
//! row and its hash, which the first remaining row links to.

use super::error::AuditError;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};

const CHECKPOINT_TAG: &[u8] = b"mcp-otel/audit/checkpoint/v1\0";

/// Why a checkpoint was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CheckpointKind {
    /// Every N rows or T seconds.
    Periodic,
    /// When the writer shuts down cleanly.
    Shutdown,
    /// Rows up to `row_id` were pruned; `row_hash` is the last pruned row's hash.
    Retention,
}

impl CheckpointKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            CheckpointKind::Periodic => "periodic",
            CheckpointKind::Shutdown => "shutdown",
            CheckpointKind::Retention => "retention",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "periodic" => Some(CheckpointKind::Periodic),
            "shutdown" => Some(CheckpointKind::Shutdown),
            "retention" => Some(CheckpointKind::Retention),
            _ => None,
        }
    }
}

/// One signed statement "the chain had `row_hash` at `row_id`".
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Checkpoint {
    /// 1, 2, 3, … without gaps.
    pub(crate) seq: i64,
    pub(crate) kind: CheckpointKind,
    pub(crate) row_id: i64,
    pub(crate) row_hash: [u8; 32],
    /// RFC 3339 UTC, milliseconds.
    pub(crate) created_at: String,
    /// [`Checkpoint::digest`] of checkpoint `seq - 1`; zeros for the first.
    pub(crate) prev_digest: [u8; 32],
    pub(crate) signature: [u8; 64],
}

impl Checkpoint {
    /// A checkpoint to be signed: every field but the signature.
    pub(crate) fn unsigned(
        seq: i64,
        kind: CheckpointKind,
        row_id: i64,
        row_hash: [u8; 32],
        created_at: String,
        prev_digest: [u8; 32],
    ) -> Self {
        Checkpoint {
            seq,
            kind,
            row_id,
            row_hash,
            created_at,
            prev_digest,
            signature: [0; 64],
        }
    }

    /// The checkpoint after `previous` (the first when there is none), still to be signed:
    /// the next sequence number, chained to `previous`'s digest, stamped now.
    pub(crate) fn next(
        previous: Option<&Checkpoint>,
        kind: CheckpointKind,
        row_id: i64,
        row_hash: [u8; 32],
    ) -> Self {
        Checkpoint::unsigned(
            previous.map_or(1, |c| c.seq + 1),
            kind,
            row_id,
            row_hash,
            super::store::format_time(chrono::Utc::now()),
            previous.map_or([0; 32], Checkpoint::digest),
        )
    }

    /// The bytes that are signed: everything but the signature, bound to the chain's id.
    pub(crate) fn signed_message(&self, chain_id: &str) -> Vec<u8> {
        let mut m = Vec::with_capacity(160);
        m.extend_from_slice(CHECKPOINT_TAG);
        for s in [chain_id, self.kind.as_str(), &self.created_at] {
            m.extend_from_slice(&(s.len() as u32).to_be_bytes());
            m.extend_from_slice(s.as_bytes());
        }
        m.extend_from_slice(&self.seq.to_be_bytes());
        m.extend_from_slice(&self.row_id.to_be_bytes());
        m.extend_from_slice(&self.row_hash);
        m.extend_from_slice(&self.prev_digest);
        m
    }

    /// What the next checkpoint signs as `prev_digest`.
    pub(crate) fn digest(&self) -> [u8; 32] {
        Sha256::digest(self.signature).into()
    }

    /// Checks the signature against `key` for the chain `chain_id`.
    pub(crate) fn verify(&self, chain_id: &str, key: &VerifyingKey) -> bool {
        let m = self.signed_message(chain_id);
        key.verify(&m, &Signature::from_bytes(&self.signature))
            .is_ok()
    }
}

/// The Ed25519 key that signs checkpoints.
pub struct AuditKey {
    key: SigningKey,
}

impl AuditKey {
    /// The key file that goes with a database: `mcp-audit.db` → `mcp-audit.key`.
    pub fn default_path(db: &Path) -> PathBuf {
        db.with_extension("key")
    }

    /// Loads the key at `path`, creating it (mode 0600, never overwriting) when absent.
    /// A key file that others can read is refused, as ssh refuses a private key.
    pub fn load_or_create(path: &Path) -> Result<Self, AuditError> {
        match Self::load(path) {
            Err(AuditError::KeyIo { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                Self::create(path)
            }
            other => other,
        }
    }

    /// Loads an existing key file: 64 hex digits (the 32-byte seed) and a newline.
    pub(crate) fn load(path: &Path) -> Result<Self, AuditError> {
        let io = |source| AuditError::KeyIo {
            path: path.to_path_buf(),
            source: std::sync::Arc::new(source),
        };
        let text = std::fs::read_to_string(path).map_err(io)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path).map_err(io)?.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(AuditError::Key {
                    path: path.to_path_buf(),
                    reason: format!(
                        "mode is {mode:04o}, readable by others; run `chmod 600 {}`",
                        path.display()
                    ),
                });
            }
        }
        let seed = super::chain::from_hex(text.trim()).ok_or_else(|| AuditError::Key {
            path: path.to_path_buf(),
            reason: "expected 64 hex digits (an Ed25519 seed)".to_owned(),
        })?;
        Ok(AuditKey {
            key: SigningKey::from_bytes(&seed),
        })
    }

    fn create(path: &Path) -> Result<Self, AuditError> {
        let io = |source| AuditError::KeyIo {
            path: path.to_path_buf(),
            source: std::sync::Arc::new(source),
        };
        let mut seed = [0u8; 32];
        rand::fill(&mut seed);
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(path).map_err(io)?;
        writeln!(file, "{}", super::chain::to_hex(&seed)).map_err(io)?;
        file.sync_all().map_err(io)?;
        Ok(AuditKey {
            key: SigningKey::from_bytes(&seed),
        })
    }

    /// The Ed25519 public key that verifies this key's checkpoint signatures.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// The public key as `audit pubkey` prints it and `audit verify --pubkey` takes it.
    pub(crate) fn public_hex(&self) -> String {
        public_key_hex(&self.verifying_key())
    }

    /// Signs `checkpoint` (made with [`Checkpoint::unsigned`]) for the chain `chain_id`.
    pub(crate) fn sign(&self, chain_id: &str, mut checkpoint: Checkpoint) -> Checkpoint {
        let m = checkpoint.signed_message(chain_id);
        checkpoint.signature = self.key.sign(&m).to_bytes();
        checkpoint
    }
}

/// Lower-case hex of a public key.
pub(crate) fn public_key_hex(key: &VerifyingKey) -> String {
    crate::hex::encode(key.as_bytes())
}

/// Parses a public key given as 64 hex digits (an optional `ed25519:` prefix is accepted).
pub(crate) fn parse_public_key(s: &str) -> Result<VerifyingKey, AuditError> {
    let invalid = |reason: &str| AuditError::Invalid {
        field: "--pubkey",
        reason: format!("{reason}, got {s:?}"),
    };
    let hex = s.trim().strip_prefix("ed25519:").unwrap_or(s.trim());
    let bytes = super::chain::from_hex(hex).ok_or_else(|| invalid("expected 64 hex digits"))?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| invalid("not a valid Ed25519 public key"))
}

/// Parses a stored 128-hex-digit signature.
pub(crate) fn signature_from_hex(s: &str) -> Option<[u8; 64]> {
    if s.len() != 128 {
        return None;
    }
    let lo = super::chain::from_hex(&s[..64])?;
    let hi = super::chain::from_hex(&s[64..])?;
    let mut out = [0u8; 64];
    out[..32].copy_from_slice(&lo);
    out[32..].copy_from_slice(&hi);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_is_created_private_and_reloads_the_same_key() {
        let (_dir, path) = crate::testing::temp_path("audit.key");
        let created = AuditKey::load_or_create(&path).unwrap();
        let loaded = AuditKey::load_or_create(&path).unwrap();
        assert_eq!(created.public_hex(), loaded.public_hex());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            let err = AuditKey::load(&path).err().unwrap().to_string();
            assert!(err.contains("0644") && err.contains("audit.key"), "{err}");
        }
    }

    #[test]
    fn a_checkpoint_verifies_only_unchanged_and_with_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let key = AuditKey::load_or_create(&dir.path().join("k")).unwrap();
        let other = AuditKey::load_or_create(&dir.path().join("o")).unwrap();
        let cp = key.sign(
            "chain",
            Checkpoint::unsigned(
                1,
                CheckpointKind::Periodic,
                42,
                [7; 32],
                "2026-01-01T00:00:00.000Z".into(),
                [0; 32],
            ),
        );
        assert!(cp.verify("chain", &key.verifying_key()));
        assert!(!cp.verify("other-chain", &key.verifying_key()));
        assert!(!cp.verify("chain", &other.verifying_key()));
        let moved = Checkpoint {
            row_id: 41,
            ..cp.clone()
        };
        assert!(!moved.verify("chain", &key.verifying_key()));
        let hex = crate::hex::encode(&cp.signature);
        assert_eq!(signature_from_hex(&hex), Some(cp.signature));
        assert_eq!(
            parse_public_key(&key.public_hex()).unwrap(),
            key.verifying_key()
        );
        assert!(parse_public_key("abc").is_err());
    }
}
