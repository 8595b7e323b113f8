//! A lock-free tournament tree: one 64-bit entry per server at the leaves, the smallest
//! entry at the root. The least-load algorithms read the root in O(1) and update a leaf in
//! O(log n) when a server's load changes.
//!
//! Entries are packed by the caller so that the server's index is in them; "smaller" is the
//! caller's order. Concurrent updates of the same path converge: whoever writes a node checks
//! afterwards that its two children are still the ones it compared, and does it again if not,
//! so the last writer of every node has seen its children's latest values.

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

/// The entry of a leaf with no server behind it; every order must put it last.
pub const VACANT: u64 = u64::MAX;

#[derive(Debug)]
pub struct MinTree {
    /// Heap layout: the root at 1, the children of node `i` at `2i` and `2i + 1`, leaves from
    /// `leaves` on.
    nodes: Box<[AtomicU64]>,
    leaves: usize,
}

impl MinTree {
    /// A tree over `entries`, one per server.
    pub fn new(entries: &[u64], less: impl Fn(u64, u64) -> bool) -> Self {
        let leaves = entries.len().max(1).next_power_of_two();
        let nodes: Box<[AtomicU64]> = (0..2 * leaves).map(|_| AtomicU64::new(VACANT)).collect();
        for (index, &entry) in entries.iter().enumerate() {
            nodes[leaves + index].store(entry, SeqCst);
        }
        for node in (1..leaves).rev() {
            let (left, right) = (
                nodes[2 * node].load(SeqCst),
                nodes[2 * node + 1].load(SeqCst),
            );
            nodes[node].store(if less(right, left) { right } else { left }, SeqCst);
        }
        Self { nodes, leaves }
    }

    /// The smallest entry.
    pub fn top(&self) -> u64 {
        self.nodes[1].load(SeqCst)
    }

    /// The entry of server `index`.
    pub fn leaf(&self, index: usize) -> u64 {
        self.nodes[self.leaves + index].load(SeqCst)
    }

    /// Sets the entry of server `index` and carries the change up as far as it matters.
    pub fn set(&self, index: usize, entry: u64, less: impl Fn(u64, u64) -> bool) {
        let leaf = self.leaves + index;
        if self.nodes[leaf].swap(entry, SeqCst) != entry {
            self.carry_up(leaf, true, less);
        }
    }

    /// Recomputes the path from server `index` to the root, for when the root disagrees with
    /// a leaf that no longer changes (another thread may have stopped halfway).
    pub fn repair(&self, index: usize, less: impl Fn(u64, u64) -> bool) {
        self.carry_up(self.leaves + index, false, less);
    }

    /// Recomputes the ancestors of `node`; with `stop_early`, only up to the first one whose
    /// entry stays the same.
    fn carry_up(&self, mut node: usize, stop_early: bool, less: impl Fn(u64, u64) -> bool) {
        while node > 1 {
            node /= 2;
            let (left, right) = (&self.nodes[2 * node], &self.nodes[2 * node + 1]);
            loop {
                let (l, r) = (left.load(SeqCst), right.load(SeqCst));
                let best = if less(r, l) { r } else { l };
                let before = self.nodes[node].swap(best, SeqCst);
                if left.load(SeqCst) == l && right.load(SeqCst) == r {
                    if stop_early && before == best {
                        // Nothing above this node depends on the change.
                        return;
                    }
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn less(a: u64, b: u64) -> bool {
        a < b
    }

    #[test]
    fn the_root_is_the_smallest_leaf() {
        let tree = MinTree::new(&[5, 3, 9], less);
        assert_eq!(tree.top(), 3);
        tree.set(2, 1, less);
        assert_eq!(tree.top(), 1);
        tree.set(2, 10, less);
        assert_eq!(tree.top(), 3);
        tree.set(1, 7, less);
        assert_eq!(tree.top(), 5);
        assert_eq!(tree.leaf(1), 7);
    }

    #[test]
    fn an_empty_tree_has_only_vacant_entries() {
        assert_eq!(MinTree::new(&[], less).top(), VACANT);
        assert_eq!(MinTree::new(&[4], less).top(), 4);
    }

    #[test]
    fn concurrent_updates_leave_the_true_minimum_at_the_root() {
        let tree = MinTree::new(&[1000; 64], less);
        std::thread::scope(|scope| {
            for thread in 0..4u64 {
                let tree = &tree;
                scope.spawn(move || {
                    for round in 0..2000u64 {
                        let index = ((round * 7 + thread * 13) % 64) as usize;
                        tree.set(index, 100 + (round * 31 + thread) % 500, less);
                    }
                });
            }
        });
        let smallest = (0..64).map(|i| tree.leaf(i)).min().unwrap();
        assert_eq!(tree.top(), smallest);
    }
}
