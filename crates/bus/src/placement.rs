//! Which room node owns a room: rendezvous (highest random weight) hashing
//! over the live room nodes.
//!
//! Every node gets a weight for the room, [`score`], and the highest weight
//! wins. Removing a node moves only the rooms it owned (each to its runner
//! up); adding one moves only the rooms it now wins, about 1/N of them. No
//! ring, no virtual nodes, no state: two processes that see the same live
//! set agree on every owner.
//!
//! The weight is XXH3-64 (seed 0) of the room id's bytes, one zero byte and
//! the node id's bytes. XXH3 is a published, fixed function (the tests pin
//! values computed with the reference C implementation); `std`'s
//! `DefaultHasher` would not do, as it may change with any Rust release. A
//! change of function or input layout is a new [`PLACEMENT_VERSION`] and a
//! new wire version.

use std::hash::Hasher;

use collab_protocol::{NodeId, RoomId};
use twox_hash::XxHash3_64;

/// The version of the placement function; part of
/// [`collab_protocol::subjects::WIRE_VERSION`] 1.
pub const PLACEMENT_VERSION: u32 = 1;

/// The weight of `node` for `room`. Room ids never contain a zero byte, so
/// the separator makes the input unambiguous.
pub fn score(room: &RoomId, node: &NodeId) -> u64 {
    let mut hasher = XxHash3_64::with_seed(0);
    hasher.write(room.as_str().as_bytes());
    hasher.write(&[0]);
    hasher.write(node.as_str().as_bytes());
    hasher.finish()
}

/// The owner of `room` among `nodes`: the highest [`score`], and on a tie
/// (astronomically rare) the smallest node id. `None` if `nodes` is empty.
pub fn owner<'a>(room: &RoomId, nodes: impl IntoIterator<Item = &'a NodeId>) -> Option<&'a NodeId> {
    nodes
        .into_iter()
        .map(|node| (score(room, node), node))
        .max_by(|(a, na), (b, nb)| a.cmp(b).then_with(|| nb.cmp(na)))
        .map(|(_, node)| node)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn room(s: &str) -> RoomId {
        RoomId::parse(s).expect("id")
    }

    fn node(s: &str) -> NodeId {
        NodeId::parse(s).expect("id")
    }

    fn nodes(n: usize) -> Vec<NodeId> {
        (0..n).map(|i| node(&format!("room-node-{i}"))).collect()
    }

    fn rooms() -> Vec<RoomId> {
        (0..10_000).map(|i| room(&format!("room-{i}"))).collect()
    }

    fn owners(rooms: &[RoomId], nodes: &[NodeId]) -> Vec<NodeId> {
        rooms
            .iter()
            .map(|r| owner(r, nodes).expect("an owner").clone())
            .collect()
    }

    #[test]
    fn the_hash_is_xxh3_64() {
        // Values from the reference C implementation (XXH3_64bits). If this
        // fails, every room would move: that needs a new PLACEMENT_VERSION.
        let empty = XxHash3_64::oneshot_with_seed(0, b"");
        assert_eq!(empty, 0x2d06_8005_38d3_94c2);
        let cases = [
            ("board-1", "room-node-0", 0x5395_a0e9_43d4_31a1),
            ("board-1", "room-node-1", 0xcfc1_0040_0695_f1e0),
            ("chat-general", "room-node-0", 0x9688_4cb8_e61c_0d9f),
            ("r", "n", 0x4739_fd84_7cd2_ac78),
        ];
        for (r, n, expected) in cases {
            assert_eq!(score(&room(r), &node(n)), expected, "{r} on {n}");
        }
        // Past 240 bytes XXH3 takes its long-input path.
        let long = score(&room(&"r".repeat(64)), &node(&"n".repeat(128)));
        assert_eq!(long, 0x519d_0493_4bd0_73fd);
    }

    #[test]
    fn owners_are_pinned() {
        let three = [node("node-a"), node("node-b"), node("node-c")];
        let got: Vec<&str> = (0..12)
            .map(|i| {
                owner(&room(&format!("room-{i}")), &three)
                    .expect("an owner")
                    .as_str()
            })
            .collect();
        // Computed independently with the reference implementation.
        assert_eq!(
            got,
            [
                "node-c", "node-a", "node-c", "node-a", "node-a", "node-a", "node-b", "node-a",
                "node-c", "node-a", "node-a", "node-c"
            ]
        );
    }

    #[test]
    fn the_order_of_the_live_set_does_not_matter() {
        let mut live = nodes(7);
        let before = owners(&rooms()[..500], &live);
        live.reverse();
        assert_eq!(owners(&rooms()[..500], &live), before);
    }

    #[test]
    fn no_nodes_no_owner() {
        assert_eq!(owner(&room("r"), &[]), None);
    }

    #[test]
    fn rooms_spread_evenly() {
        let live = nodes(8);
        let mut counts: HashMap<NodeId, usize> = HashMap::new();
        for o in owners(&rooms(), &live) {
            *counts.entry(o).or_default() += 1;
        }
        assert_eq!(counts.len(), 8);
        for (n, count) in counts {
            // 1,250 expected; the binomial deviation is about 33.
            assert!((1_100..=1_400).contains(&count), "{n}: {count}");
        }
    }

    #[test]
    fn adding_one_of_n_moves_about_one_nth_and_only_to_it() {
        let rooms = rooms();
        for n in [1, 3, 10] {
            let before = owners(&rooms, &nodes(n));
            let grown = nodes(n + 1);
            let newcomer = &grown[n];
            let after = owners(&rooms, &grown);
            let moved: Vec<_> = before.iter().zip(&after).filter(|(b, a)| b != a).collect();
            assert!(
                moved.iter().all(|(_, a)| *a == newcomer),
                "only to the new node"
            );
            let expected = rooms.len() / (n + 1);
            let tolerance = expected / 7;
            assert!(
                moved.len().abs_diff(expected) <= tolerance,
                "{n} -> {}: moved {} of {}, expected about {expected}",
                n + 1,
                moved.len(),
                rooms.len()
            );
        }
    }

    #[test]
    fn removing_one_of_n_moves_only_its_rooms() {
        let rooms = rooms();
        for n in [2, 4, 10] {
            let all = nodes(n);
            let before = owners(&rooms, &all);
            let gone = &all[n / 2];
            let rest: Vec<NodeId> = all.iter().filter(|x| *x != gone).cloned().collect();
            let after = owners(&rooms, &rest);
            let mut moved = 0usize;
            for (b, a) in before.iter().zip(&after) {
                if b == gone {
                    moved += 1;
                } else {
                    assert_eq!(a, b, "a room of a node still alive moved");
                }
            }
            let expected = rooms.len() / n;
            assert!(
                moved.abs_diff(expected) <= expected / 7,
                "{n} -> {}: moved {moved}, expected about {expected}",
                n - 1
            );
        }
    }
}
