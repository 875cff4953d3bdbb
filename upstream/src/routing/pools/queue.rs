//! The wait line of one pool, fair across organisations: waiters are served
//! one organisation at a time in turn, so one organisation's burst of 500
//! does not put another's single call behind all of it.

use std::collections::{HashMap, VecDeque};

pub struct FairQueue<T> {
    /// Organisations with waiters, in the order their turn comes.
    turns: VecDeque<String>,
    by_org: HashMap<String, VecDeque<(u64, T)>>,
    len: usize,
}

impl<T> Default for FairQueue<T> {
    fn default() -> Self {
        Self {
            turns: VecDeque::new(),
            by_org: HashMap::new(),
            len: 0,
        }
    }
}

impl<T> FairQueue<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Waiters of `org`.
    pub fn len_of(&self, org: &str) -> usize {
        self.by_org.get(org).map_or(0, VecDeque::len)
    }

    pub fn push(&mut self, org: &str, id: u64, item: T) {
        let line = self.by_org.entry(org.to_string()).or_default();
        if line.is_empty() {
            self.turns.push_back(org.to_string());
        }
        line.push_back((id, item));
        self.len += 1;
    }

    /// The next waiter: the first of the organisation whose turn it is.
    pub fn pop(&mut self) -> Option<(String, u64, T)> {
        let org = self.turns.pop_front()?;
        let line = self.by_org.get_mut(&org)?;
        let (id, item) = line.pop_front()?;
        if line.is_empty() {
            self.by_org.remove(&org);
        } else {
            self.turns.push_back(org.clone());
        }
        self.len -= 1;
        Some((org, id, item))
    }

    /// Takes waiter `id` out of the line (it gave up).
    pub fn remove(&mut self, id: u64) -> Option<T> {
        let (org, index) = self
            .by_org
            .iter()
            .find_map(|(org, line)| line.iter().position(|(i, _)| *i == id).map(|p| (org.clone(), p)))?;
        let line = self.by_org.get_mut(&org)?;
        let (_, item) = line.remove(index)?;
        if line.is_empty() {
            self.by_org.remove(&org);
            self.turns.retain(|o| *o != org);
        }
        self.len -= 1;
        Some(item)
    }

    /// How many waiters are served before `id`.
    pub fn ahead_of(&self, id: u64) -> Option<usize> {
        let (org, index) = self
            .by_org
            .iter()
            .find_map(|(org, line)| line.iter().position(|(i, _)| *i == id).map(|p| (org, p)))?;
        let turn = self.turns.iter().position(|o| o == org)?;
        // Each full round serves one of every organisation still waiting.
        let ahead = self
            .turns
            .iter()
            .enumerate()
            .map(|(t, o)| {
                let waiting = self.len_of(o);
                waiting.min(index) + usize::from(t < turn && waiting > index)
            })
            .sum();
        Some(ahead)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn organisations_take_turns() {
        let mut queue = FairQueue::default();
        for id in 0..5 {
            queue.push("burst", id, ());
        }
        queue.push("single", 100, ());
        assert_eq!(queue.ahead_of(100), Some(1), "one of the burst, then the single call");
        assert_eq!(queue.ahead_of(3), Some(4));
        let order: Vec<u64> = std::iter::from_fn(|| queue.pop().map(|(_, id, _)| id)).collect();
        assert_eq!(order, [0, 100, 1, 2, 3, 4]);
        assert!(queue.is_empty());
    }

    #[test]
    fn a_waiter_that_gives_up_leaves_the_line() {
        let mut queue = FairQueue::default();
        queue.push("a", 1, "a1");
        queue.push("b", 2, "b1");
        queue.push("a", 3, "a2");
        assert_eq!(queue.remove(2), Some("b1"));
        assert_eq!(queue.len_of("b"), 0);
        assert_eq!(queue.ahead_of(3), Some(1));
        assert_eq!(queue.remove(2), None);
        assert_eq!(queue.pop().map(|(org, id, _)| (org, id)), Some(("a".into(), 1)));
        assert_eq!(queue.pop().map(|(org, id, _)| (org, id)), Some(("a".into(), 3)));
        assert_eq!(queue.len(), 0);
    }
}
