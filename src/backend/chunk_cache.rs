//! A bounded LRU of decoded backup chunks, shared by the readers of an
//! instant-restore LUN and its read-ahead threads.
//!
//! A chunk being loaded has a `Loading` slot: a second reader of the same
//! chunk waits for the first instead of reading the pack again. Errors are
//! not cached (a damaged chunk fails every read of it, never returns data).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

type Id = blake3::Hash;

enum Slot {
    Loading,
    Ready { data: Arc<[u8]>, tick: u64 },
}

#[derive(Default)]
struct State {
    slots: HashMap<Id, Slot>,
    /// Ready chunks by last use, oldest first.
    order: BTreeMap<u64, Id>,
    bytes: u64,
    tick: u64,
}

pub struct ChunkCache {
    state: Mutex<State>,
    loaded: Condvar,
    limit: u64,
}

impl ChunkCache {
    /// A cache holding at most `limit` bytes of decoded chunks.
    pub fn new(limit: u64) -> ChunkCache {
        ChunkCache {
            state: Mutex::default(),
            loaded: Condvar::new(),
            limit,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The chunk `id`, loaded with `load` unless cached or being loaded.
    pub fn get<E>(
        &self,
        id: &Id,
        load: impl FnOnce() -> Result<Vec<u8>, E>,
    ) -> Result<Arc<[u8]>, E> {
        let mut s = self.lock();
        loop {
            match s.slots.get(id) {
                Some(Slot::Ready { .. }) => return Ok(s.touch(id)),
                Some(Slot::Loading) => {
                    s = self.loaded.wait(s).unwrap_or_else(|e| e.into_inner());
                }
                None => break,
            }
        }
        s.slots.insert(*id, Slot::Loading);
        drop(s);
        self.finish(id, load())
    }

    /// Load `id` ahead of its reader unless it is cached or being loaded.
    pub fn prefetch<E>(&self, id: &Id, load: impl FnOnce() -> Result<Vec<u8>, E>) {
        {
            let mut s = self.lock();
            if s.slots.contains_key(id) {
                return;
            }
            s.slots.insert(*id, Slot::Loading);
        }
        let _ = self.finish(id, load());
    }

    fn finish<E>(&self, id: &Id, r: Result<Vec<u8>, E>) -> Result<Arc<[u8]>, E> {
        let mut s = self.lock();
        s.slots.remove(id);
        let out = r.map(|data| {
            let data: Arc<[u8]> = data.into();
            s.insert(*id, data.clone(), self.limit);
            data
        });
        drop(s);
        self.loaded.notify_all();
        out
    }

    /// Bytes of decoded chunks held now.
    #[cfg(test)]
    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }
}

impl State {
    fn touch(&mut self, id: &Id) -> Arc<[u8]> {
        self.tick += 1;
        let now = self.tick;
        let Some(Slot::Ready { data, tick }) = self.slots.get_mut(id) else {
            unreachable!("touch is only called on a ready slot");
        };
        self.order.remove(tick);
        *tick = now;
        self.order.insert(now, *id);
        data.clone()
    }

    fn insert(&mut self, id: Id, data: Arc<[u8]>, limit: u64) {
        self.tick += 1;
        self.bytes += data.len() as u64;
        self.order.insert(self.tick, id);
        let tick = self.tick;
        self.slots.insert(id, Slot::Ready { data, tick });
        while self.bytes > limit {
            let Some((_, old)) = self.order.pop_first() else {
                break;
            };
            if let Some(Slot::Ready { data, .. }) = self.slots.remove(&old) {
                self.bytes -= data.len() as u64;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn id(n: u8) -> Id {
        blake3::hash(&[n])
    }

    #[test]
    fn bounded_least_recently_used() {
        let c = ChunkCache::new(3 * 100);
        let loads = AtomicUsize::new(0);
        let load = |n: u8| {
            loads.fetch_add(1, Ordering::Relaxed);
            Ok::<_, ()>(vec![n; 100])
        };
        for n in 0..3 {
            assert_eq!(c.get(&id(n), || load(n)).unwrap()[0], n);
        }
        // Touch 0, so 1 is the oldest when 3 comes in.
        c.get(&id(0), || load(0)).unwrap();
        c.get(&id(3), || load(3)).unwrap();
        assert_eq!(loads.load(Ordering::Relaxed), 4);
        assert_eq!(c.bytes(), 300);
        c.get(&id(0), || load(0)).unwrap();
        c.get(&id(2), || load(2)).unwrap();
        assert_eq!(loads.load(Ordering::Relaxed), 4);
        c.get(&id(1), || load(1)).unwrap();
        assert_eq!(loads.load(Ordering::Relaxed), 5);
    }

    #[test]
    fn errors_are_not_cached_and_waiters_retry() {
        let c = Arc::new(ChunkCache::new(1 << 20));
        assert_eq!(c.get(&id(1), || Err::<Vec<u8>, _>("bad")), Err("bad"));
        assert_eq!(c.get(&id(1), || Err::<Vec<u8>, _>("again")), Err("again"));
        assert_eq!(c.bytes(), 0);
        // A reader waiting on a load that fails loads it itself.
        let c2 = c.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            c2.get(&id(2), || {
                tx.send(()).unwrap();
                std::thread::sleep(std::time::Duration::from_millis(50));
                Err::<Vec<u8>, _>("first")
            })
        });
        rx.recv().unwrap();
        assert_eq!(&*c.get(&id(2), || Ok::<_, &str>(vec![9])).unwrap(), &[9]);
        assert_eq!(t.join().unwrap(), Err("first"));
    }

    #[test]
    fn prefetch_fills_once() {
        let c = ChunkCache::new(1 << 20);
        c.prefetch(&id(1), || Ok::<_, ()>(vec![1; 10]));
        c.prefetch(&id(1), || -> Result<Vec<u8>, ()> { panic!("loaded twice") });
        let got = c
            .get(&id(1), || -> Result<Vec<u8>, ()> { panic!("not cached") })
            .unwrap();
        assert_eq!(got.len(), 10);
    }
}
