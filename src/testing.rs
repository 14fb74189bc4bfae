//! Support for the crate's own unit tests.

use std::path::PathBuf;
use tempfile::TempDir;

/// The path of `file` in a fresh temporary directory (the file is not created). The directory
/// and what the test writes into it are removed when the returned [`TempDir`] drops.
pub(crate) fn temp_path(file: &str) -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join(file);
    (dir, path)
}

/// Asserts that validation reported `count` problems and that, together, they name each of
/// `needles` (one problem may name several).
#[track_caller]
pub(crate) fn assert_problems(problems: &[String], count: usize, needles: &[&str]) {
    let all = problems.join("\n");
    for needle in needles {
        assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
    }
    assert_eq!(problems.len(), count, "{all}");
}
