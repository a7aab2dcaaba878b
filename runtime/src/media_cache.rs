//! Vision tokens per image and latents per media item, cached by content
//! hash within a memory bound (least recently used out first), so that
//! few-shot support images are encoded once across requests.

use std::collections::HashMap;

use ndarray::ArrayD;

/// Caches vision tokens per image and latents per media item, by content hash.
pub struct MediaCache {
    entries: HashMap<[u8; 32], (ArrayD<f32>, u64)>,
    bytes: usize,
    budget: usize,
    clock: u64,
    hits: u64,
    misses: u64,
}

/// What a [`MediaCache`] has served.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MediaCacheStats {
    pub hits: u64,
    pub misses: u64,
    pub bytes: usize,
}

impl MediaCache {
    /// An empty cache of at most `budget` bytes (0 disables it).
    pub fn new(budget: usize) -> MediaCache {
        MediaCache {
            entries: HashMap::new(),
            bytes: 0,
            budget,
            clock: 0,
            hits: 0,
            misses: 0,
        }
    }
}

impl MediaCache {
    pub fn get(&mut self, k: &[u8; 32]) -> Option<ArrayD<f32>> {
        self.clock += 1;
        let c = self.clock;
        let hit = self.entries.get_mut(k).map(|e| {
            e.1 = c;
            e.0.clone()
        });
        match hit {
            Some(_) => self.hits += 1,
            None => self.misses += 1,
        }
        hit
    }
    pub fn stats(&self) -> MediaCacheStats {
        MediaCacheStats {
            hits: self.hits,
            misses: self.misses,
            bytes: self.bytes,
        }
    }
    pub fn put(&mut self, k: [u8; 32], v: ArrayD<f32>) {
        let size = v.len() * 4;
        if size > self.budget {
            return;
        }
        while self.bytes + size > self.budget {
            let Some(oldest) = self.entries.iter().min_by_key(|e| (e.1).1).map(|e| *e.0) else {
                break;
            };
            if let Some((old, _)) = self.entries.remove(&oldest) {
                self.bytes -= old.len() * 4;
            }
        }
        self.clock += 1;
        if let Some((old, _)) = self.entries.insert(k, (v, self.clock)) {
            self.bytes -= old.len() * 4;
        }
        self.bytes += size;
    }
}
