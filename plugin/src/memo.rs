//! A process-wide memo of one answer and the question it answers: what the fork server works
//! out once about the host (cgroup layout, system directories, the jobs' root directory), so
//! that every monitor forked from it starts knowing it.

use std::borrow::Borrow;
use std::sync::Mutex;

/// The last value computed for a key; asked with another key, it computes afresh.
pub struct LastFor<K, V> {
    slot: Mutex<Option<(K, V)>>,
}

impl<K, V: Clone> Default for LastFor<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K, V: Clone> LastFor<K, V> {
    pub const fn new() -> Self {
        LastFor {
            slot: Mutex::new(None),
        }
    }

    /// The remembered value for `key`, if it is the one remembered.
    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: PartialEq + ?Sized,
    {
        let slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
        slot.as_ref()
            .filter(|(k, _)| k.borrow() == key)
            .map(|(_, v)| v.clone())
    }

    pub fn put(&self, key: K, value: V) {
        *self.slot.lock().unwrap_or_else(|p| p.into_inner()) = Some((key, value));
    }

    pub fn clear(&self) {
        *self.slot.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// The remembered value for `key`, else `compute()`'s, remembered when it succeeds.
    pub fn get_or_try<Q, E>(&self, key: &Q, compute: impl FnOnce() -> Result<V, E>) -> Result<V, E>
    where
        K: Borrow<Q>,
        Q: PartialEq + ToOwned<Owned = K> + ?Sized,
    {
        if let Some(v) = self.get(key) {
            return Ok(v);
        }
        let v = compute()?;
        self.put(key.to_owned(), v.clone());
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_one_key_and_recomputes_for_another() {
        let memo: LastFor<String, u32> = LastFor::new();
        let mut calls = 0;
        let mut ask = |k: &str, v: u32| {
            memo.get_or_try(k, || {
                calls += 1;
                Ok::<_, ()>(v)
            })
        };
        assert_eq!(ask("a", 1), Ok(1));
        assert_eq!(ask("a", 2), Ok(1));
        assert_eq!(ask("b", 3), Ok(3));
        assert_eq!(calls, 2);
        memo.clear();
        assert_eq!(memo.get("b"), None);
        assert_eq!(memo.get_or_try("b", || Err::<u32, _>("no")), Err("no"));
        assert_eq!(memo.get("b"), None, "a failure is not remembered");
    }
}
