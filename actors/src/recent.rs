//! A map that keeps only its `N` most recently added keys: the room's
//! window of cids per user, and the connections that left it lately.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

#[derive(Debug, Clone)]
pub(crate) struct Recent<K, V, const N: usize> {
    /// Keys, oldest first.
    order: VecDeque<K>,
    values: HashMap<K, V>,
}

impl<K: Eq + Hash, V: PartialEq, const N: usize> PartialEq for Recent<K, V, N> {
    fn eq(&self, other: &Self) -> bool {
        self.order == other.order && self.values == other.values
    }
}

impl<K, V, const N: usize> Default for Recent<K, V, N> {
    fn default() -> Self {
        Recent {
            order: VecDeque::new(),
            values: HashMap::new(),
        }
    }
}

impl<K: Eq + Hash + Clone, V, const N: usize> Recent<K, V, N> {
    pub(crate) fn get(&self, key: &K) -> Option<&V> {
        self.values.get(key)
    }

    pub(crate) fn contains(&self, key: &K) -> bool {
        self.values.contains_key(key)
    }

    /// Adds `key`, forgetting the oldest key beyond `N`; a key already
    /// there gets the new value and keeps its place.
    pub(crate) fn insert(&mut self, key: K, value: V) {
        if self.values.insert(key.clone(), value).is_none() {
            self.order.push_back(key);
            if self.order.len() > N
                && let Some(oldest) = self.order.pop_front()
            {
                self.values.remove(&oldest);
            }
        }
    }

    pub(crate) fn remove(&mut self, key: &K) {
        if self.values.remove(key).is_some() {
            self.order.retain(|k| k != key);
        }
    }

    /// Keys and values, oldest first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.order
            .iter()
            .filter_map(|key| self.values.get(key).map(|value| (key, value)))
    }
}

#[cfg(test)]
mod tests {
    use super::Recent;

    #[test]
    fn keeps_the_newest_keys_in_the_order_they_came() {
        let mut recent = Recent::<u32, &str, 2>::default();
        recent.insert(1, "a");
        recent.insert(2, "b");
        recent.insert(1, "a2"); // already there: keeps its place
        recent.insert(3, "c"); // 1 is the oldest and goes
        assert!(!recent.contains(&1));
        assert_eq!(recent.get(&2), Some(&"b"));
        assert_eq!(recent.iter().collect::<Vec<_>>(), [(&2, &"b"), (&3, &"c")]);
        recent.remove(&2);
        recent.insert(4, "d");
        assert_eq!(recent.iter().collect::<Vec<_>>(), [(&3, &"c"), (&4, &"d")]);
    }
}
