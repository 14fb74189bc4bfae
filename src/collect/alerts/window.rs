//! Exact sliding-window counts: buckets of the configured resolution, summed over
//! `(now - window, now]`, late spans inserted in order.

use std::collections::{HashMap, VecDeque};

/// Exact counts per bucket over a sliding window; the sum is kept up to date.
#[derive(Debug, Default)]
pub(super) struct Window {
    buckets: VecDeque<(i64, u64)>,
    sum: u64,
}

impl Window {
    pub(super) fn add(&mut self, bucket: i64, n: u64) {
        self.sum += n;
        match self.buckets.back_mut() {
            Some((b, c)) if *b == bucket => *c += n,
            Some((b, _)) if *b > bucket => {
                // Late: keep the buckets sorted.
                match self.buckets.binary_search_by_key(&bucket, |(b, _)| *b) {
                    Ok(i) => self.buckets[i].1 += n,
                    Err(i) => self.buckets.insert(i, (bucket, n)),
                }
            }
            _ => self.buckets.push_back((bucket, n)),
        }
    }

    /// Drops buckets at or before `cutoff`; returns the sum of what is left.
    pub(super) fn prune(&mut self, cutoff: i64) -> u64 {
        while let Some(&(b, c)) = self.buckets.front() {
            if b > cutoff {
                break;
            }
            self.sum -= c;
            self.buckets.pop_front();
        }
        self.sum
    }
}

/// Windows keyed by a label tuple.
#[derive(Debug, Default)]
pub(super) struct Keyed<K> {
    pub(super) windows: HashMap<K, Window>,
}

impl<K: std::hash::Hash + Eq + Clone> Keyed<K> {
    /// Adds `(bucket, calls)` pairs to `key`'s window (cloning the key only for a window it
    /// opens), drops its buckets at or before `cutoff`; returns the sum left.
    pub(super) fn add_all(&mut self, key: &K, buckets: &[(i64, u64)], cutoff: i64) -> u64 {
        if !self.windows.contains_key(key) {
            self.windows.insert(key.clone(), Window::default());
        }
        let w = self.windows.get_mut(key).expect("present");
        for &(b, n) in buckets {
            w.add(b, n);
        }
        w.prune(cutoff)
    }
}
