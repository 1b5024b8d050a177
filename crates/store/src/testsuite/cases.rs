//! The conformance cases. Each takes a fresh store, uses only rooms and
//! users it made up itself, and panics on the first broken promise of the
//! [`Store`] contract.

use std::sync::Arc;

use collab_protocol::{Epoch, Op, OpEvent, OpKind, RoomId, RoomKind, Seq, StrokeId};

use super::{
    event, message, points_batch, random_u64, room_record, stroke_points, unique_room, unique_user,
    writer,
};
use crate::{Deletion, RoomsPage, Snapshot, Store, StoreError, Writer};

fn seqs(events: &[OpEvent]) -> Vec<u64> {
    events.iter().map(|e| e.seq.get()).collect()
}

fn stroke_end() -> Op {
    Op::StrokeEnd {
        stroke: StrokeId::parse("s1").expect("a valid stroke id"),
    }
}

/// The op of seq `n` in the mixed logs of the history cases: a message
/// every 3rd seq, a `stroke_end` every 5th (that is not a message), else
/// points.
fn mixed_op(n: u64) -> Op {
    if n.is_multiple_of(3) {
        message(&format!("m{n}"))
    } else if n.is_multiple_of(5) {
        stroke_end()
    } else {
        stroke_points(4)
    }
}

/// Appends ops `1..=n` of [`mixed_op`] to `room`, in batches of up to 4.
async fn fill_mixed(store: &dyn Store, room: &collab_protocol::RoomId, n: u64) {
    let w = writer("node-a", 1);
    let mut next = 1;
    while next <= n {
        let last = (next + 3).min(n);
        let batch: Vec<OpEvent> = (next..=last).map(|s| event(room, s, mixed_op(s))).collect();
        store
            .append(room, Seq(next), &batch, &w)
            .await
            .expect("append");
        next = last + 1;
    }
}

pub async fn create_room_then_read(store: Arc<dyn Store>) {
    let id = unique_room("create");
    let alice = unique_user("alice");
    assert_eq!(store.room(&id).await.expect("room"), None);
    let mut record = room_record(&id, RoomKind::Board, &alice, None);
    record.ttl_secs = Some(86_400);
    store.create_room(&record).await.expect("create_room");
    assert_eq!(store.room(&id).await.expect("room"), Some(record));

    let private = unique_room("create-private");
    let bob = unique_user("bob");
    let record = room_record(
        &private,
        RoomKind::Channel,
        &alice,
        Some(vec![alice.clone(), bob]),
    );
    store.create_room(&record).await.expect("create_room");
    assert_eq!(store.room(&private).await.expect("room"), Some(record));
}

pub async fn create_room_conflict_keeps_the_first(store: Arc<dyn Store>) {
    let id = unique_room("dup");
    let alice = unique_user("alice");
    let first = room_record(&id, RoomKind::Board, &alice, None);
    store.create_room(&first).await.expect("create_room");
    let mallory = unique_user("mallory");
    let mut second = room_record(&id, RoomKind::Channel, &mallory, None);
    second.name = "another".into();
    match store.create_room(&second).await {
        Err(StoreError::Conflict(_)) => {}
        other => panic!("duplicate create_room: expected Conflict, got {other:?}"),
    }
    assert_eq!(store.room(&id).await.expect("room"), Some(first));
    assert!(
        store
            .rooms_of_user(&mallory)
            .await
            .expect("rooms_of_user")
            .is_empty(),
        "the losing creator must not be indexed"
    );
}

pub async fn rooms_of_user_lists_created_and_private_memberships(store: Arc<dyn Store>) {
    let alice = unique_user("alice");
    let bob = unique_user("bob");
    let carol = unique_user("carol");
    let dave = unique_user("dave");
    // One random base, distinct prefixes: the expected order is by id.
    let base = format!("{:016x}", random_u64());
    let id = |p: &str| collab_protocol::RoomId::parse(format!("{p}-{base}")).expect("room id");
    let (a, b, c, d) = (id("d-pub"), id("b-priv"), id("a-pub"), id("c-priv"));
    let rooms = [
        room_record(&a, RoomKind::Board, &alice, None),
        room_record(
            &b,
            RoomKind::Channel,
            &alice,
            Some(vec![alice.clone(), bob.clone()]),
        ),
        room_record(&c, RoomKind::Board, &bob, None),
        room_record(
            &d,
            RoomKind::Channel,
            &carol,
            Some(vec![carol.clone(), alice.clone()]),
        ),
    ];
    for room in &rooms {
        store.create_room(room).await.expect("create_room");
    }
    let listed = |user: collab_protocol::UserId| {
        let store = Arc::clone(&store);
        async move {
            store
                .rooms_of_user(&user)
                .await
                .expect("rooms_of_user")
                .into_iter()
                .map(|r| r.id)
                .collect::<Vec<_>>()
        }
    };
    // Alice: created a and b, member of d. Ordered by id: b, d (c-priv), a (d-pub).
    assert_eq!(
        listed(alice.clone()).await,
        vec![b.clone(), d.clone(), a.clone()]
    );
    // Bob: member of b, created c; not alice's public a.
    assert_eq!(listed(bob.clone()).await, vec![c.clone(), b.clone()]);
    assert_eq!(listed(carol.clone()).await, vec![d.clone()]);
    assert!(listed(dave).await.is_empty());
    // Full records come back, not just ids.
    let records = store.rooms_of_user(&carol).await.expect("rooms_of_user");
    assert_eq!(records, vec![rooms[3].clone()]);
}

/// The ids of one page of `user`'s rooms.
async fn page_ids(
    store: &Arc<dyn Store>,
    user: &collab_protocol::UserId,
    after: Option<&RoomId>,
    limit: usize,
    kind: Option<RoomKind>,
) -> Vec<RoomId> {
    let page = RoomsPage {
        after: after.cloned(),
        limit,
        kind,
    };
    store
        .rooms_of_user_page(user, &page)
        .await
        .expect("rooms_of_user_page")
        .into_iter()
        .map(|r| r.id)
        .collect()
}

pub async fn rooms_of_user_page_pages_by_id_and_kind(store: Arc<dyn Store>) {
    let alice = unique_user("alice");
    let bob = unique_user("bob");
    let base = format!("{:016x}", random_u64());
    let ids: Vec<RoomId> = (0..7)
        .map(|i| RoomId::parse(format!("p{i}-{base}")).expect("room id"))
        .collect();
    // Alice's rooms: p0..p4 created by her (boards, with p1 and p3
    // channels), p5 a private room of Bob's with her as a member; p6 is
    // Bob's public room, not hers.
    for (i, id) in ids.iter().enumerate() {
        let kind = if i == 1 || i == 3 || i == 5 {
            RoomKind::Channel
        } else {
            RoomKind::Board
        };
        let record = match i {
            5 => room_record(id, kind, &bob, Some(vec![bob.clone(), alice.clone()])),
            6 => room_record(id, kind, &bob, None),
            _ => room_record(id, kind, &alice, None),
        };
        store.create_room(&record).await.expect("create_room");
    }
    let first = page_ids(&store, &alice, None, 2, None).await;
    assert_eq!(first, ids[0..2]);
    let second = page_ids(&store, &alice, first.last(), 2, None).await;
    assert_eq!(second, ids[2..4]);
    let third = page_ids(&store, &alice, second.last(), 2, None).await;
    assert_eq!(third, ids[4..6]);
    assert!(
        page_ids(&store, &alice, third.last(), 2, None)
            .await
            .is_empty()
    );
    // A page asked for beyond the end, and one of size 0.
    assert!(page_ids(&store, &alice, None, 0, None).await.is_empty());
    // By kind: the channels p1, p3, p5, two at a time.
    let channels = page_ids(&store, &alice, None, 2, Some(RoomKind::Channel)).await;
    assert_eq!(channels, [ids[1].clone(), ids[3].clone()]);
    let rest = page_ids(&store, &alice, channels.last(), 2, Some(RoomKind::Channel)).await;
    assert_eq!(rest, [ids[5].clone()]);
    // The pages together are the whole listing.
    let all: Vec<RoomId> = store
        .rooms_of_user(&alice)
        .await
        .expect("rooms_of_user")
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(page_ids(&store, &alice, None, 100, None).await, all);
    assert_eq!(page_ids(&store, &bob, None, 100, None).await, ids[5..7]);
}

pub async fn update_room_changes_name_members_and_listing(store: Arc<dyn Store>) {
    let alice = unique_user("alice");
    let bob = unique_user("bob");
    let carol = unique_user("carol");
    let room = unique_room("update");
    let record = room_record(
        &room,
        RoomKind::Board,
        &alice,
        Some(vec![alice.clone(), bob.clone()]),
    );
    store.create_room(&record).await.expect("create_room");
    let mut update = record.clone();
    update.name = "renamed".into();
    update.members = Some(vec![alice.clone(), carol.clone()]);
    // Fields other than name and members are the stored ones, whatever
    // the update says.
    update.created_at = 1;
    store.update_room(&update).await.expect("update_room");
    let stored = store.room(&room).await.expect("room").expect("exists");
    assert_eq!(stored.name, "renamed");
    assert_eq!(stored.members, Some(vec![alice.clone(), carol.clone()]));
    assert_eq!(stored.created_at, record.created_at);
    assert_eq!(stored.epoch, record.epoch);
    assert!(stored.admits(&carol) && !stored.admits(&bob));
    let listed = |user: collab_protocol::UserId| {
        let store = Arc::clone(&store);
        async move {
            store
                .rooms_of_user(&user)
                .await
                .expect("rooms_of_user")
                .into_iter()
                .map(|r| r.id)
                .collect::<Vec<_>>()
        }
    };
    assert!(listed(bob.clone()).await.is_empty(), "bob was removed");
    assert_eq!(listed(carol.clone()).await, vec![room.clone()]);
    assert_eq!(listed(alice.clone()).await, vec![room.clone()]);
    assert_eq!(
        page_ids(&store, &carol, None, 10, None).await,
        vec![room.clone()]
    );
    assert!(page_ids(&store, &bob, None, 10, None).await.is_empty());

    // A room of another epoch (created again since) is not this one.
    let mut stale = update.clone();
    stale.epoch = Epoch::parse("other").expect("epoch");
    stale.name = "stale".into();
    assert!(matches!(
        store.update_room(&stale).await,
        Err(StoreError::NotFound(_))
    ));
    // A public room cannot be given members, nor a private one lose them.
    let mut public = update.clone();
    public.members = None;
    assert!(matches!(
        store.update_room(&public).await,
        Err(StoreError::InvalidBatch(_))
    ));
    let unknown = room_record(&unique_room("nope"), RoomKind::Board, &alice, None);
    assert!(matches!(
        store.update_room(&unknown).await,
        Err(StoreError::NotFound(_))
    ));
    // None of the refusals changed anything.
    assert_eq!(store.room(&room).await.expect("room"), Some(stored));

    // A public room's name changes; a deleted room's does not.
    let open = unique_room("update-pub");
    let record = room_record(&open, RoomKind::Channel, &alice, None);
    store.create_room(&record).await.expect("create_room");
    let mut renamed = record.clone();
    renamed.name = "lobby".into();
    store.update_room(&renamed).await.expect("rename");
    assert_eq!(
        store.room(&open).await.expect("room").map(|r| r.name),
        Some("lobby".into())
    );
    store
        .delete_room(
            &open,
            &Deletion {
                epoch: record.epoch.clone(),
                at: Seq(1),
                writer: writer("node-a", 1),
            },
        )
        .await
        .expect("delete");
    assert!(matches!(
        store.update_room(&renamed).await,
        Err(StoreError::NotFound(_))
    ));
}

pub async fn append_then_read(store: Arc<dyn Store>) {
    let room = unique_room("append");
    let w = writer("node-a", 7);
    let batch = vec![
        event(&room, 1, stroke_points(16)),
        event(&room, 2, stroke_end()),
        event(&room, 3, message("hello")),
    ];
    store
        .append(&room, Seq(1), &batch, &w)
        .await
        .expect("append");
    assert_eq!(store.head(&room).await.expect("head"), Seq(3));
    assert_eq!(
        store
            .read_ops(&room, Seq::ZERO, 100)
            .await
            .expect("read_ops"),
        batch
    );
    let log = store
        .read_log(&room, Seq::ZERO, 100)
        .await
        .expect("read_log");
    assert_eq!(log.len(), 3);
    for (logged, sent) in log.iter().zip(&batch) {
        assert_eq!(&logged.event, sent);
        assert_eq!(logged.writer, w);
    }
    let more = vec![event(&room, 4, message("again"))];
    store
        .append(&room, Seq(4), &more, &w)
        .await
        .expect("append");
    assert_eq!(store.head(&room).await.expect("head"), Seq(4));
    assert_eq!(
        store.read_ops(&room, Seq(3), 100).await.expect("read_ops"),
        more
    );
}

/// Runs [`Store::append_then`] and waits for its one answer.
async fn append_then(
    store: &Arc<dyn Store>,
    room: &collab_protocol::RoomId,
    first: u64,
    batch: Vec<OpEvent>,
    by: crate::Writer,
) -> (Vec<OpEvent>, Result<(), StoreError>) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let done: crate::AppendDone = Box::new(move |batch, result| {
        let _ = tx.send((batch, result));
    });
    Arc::clone(store).append_then(room.clone(), Seq(first), batch, by, done);
    tokio::time::timeout(std::time::Duration::from_secs(30), rx)
        .await
        .expect("append_then answers within 30 s")
        .expect("append_then answers exactly once, never dropping its callback")
}

pub async fn append_then_answers_once_with_the_batch(store: Arc<dyn Store>) {
    let room = unique_room("append-then");
    let batch = points_batch(&room, 1, 3);
    let owner = writer("node-a", 1);
    let (back, result) = append_then(&store, &room, 1, batch.clone(), owner.clone()).await;
    result.expect("append_then");
    assert_eq!(back, batch, "the batch comes back whole");
    assert_eq!(
        store.read_ops(&room, Seq::ZERO, 10).await.expect("read"),
        batch
    );
    // Refusals come the same way, with the batch.
    let usurper = writer("node-b", 2);
    let (back, result) = append_then(&store, &room, 1, batch.clone(), usurper).await;
    assert!(matches!(result, Err(StoreError::Conflict(_))), "{result:?}");
    assert_eq!(back, batch);
    let gap = points_batch(&room, 5, 1);
    let (_, result) = append_then(&store, &room, 4, gap, owner).await;
    assert!(
        matches!(result, Err(StoreError::InvalidBatch(_))),
        "{result:?}"
    );
    assert_eq!(store.head(&room).await.expect("head"), Seq(3));
}

pub async fn append_conflict_full_overlap(store: Arc<dyn Store>) {
    let room = unique_room("conflict-full");
    let owner = writer("node-a", 1);
    let usurper = writer("node-b", 2);
    let batch = points_batch(&room, 1, 3);
    store
        .append(&room, Seq(1), &batch, &owner)
        .await
        .expect("append");
    let rival: Vec<OpEvent> = (1..=3).map(|s| event(&room, s, message("rival"))).collect();
    match store.append(&room, Seq(1), &rival, &usurper).await {
        Err(StoreError::Conflict(_)) => {}
        other => panic!("full overlap: expected Conflict, got {other:?}"),
    }
    // A single-op batch on an existing seq, too.
    match store.append(&room, Seq(2), &rival[1..2], &usurper).await {
        Err(StoreError::Conflict(_)) => {}
        other => panic!("single seq overlap: expected Conflict, got {other:?}"),
    }
    let log = store
        .read_log(&room, Seq::ZERO, 100)
        .await
        .expect("read_log");
    assert_eq!(
        log.iter().map(|l| l.event.clone()).collect::<Vec<_>>(),
        batch
    );
    assert!(log.iter().all(|l| l.writer == owner));
    let messages = store
        .history(&room, Seq(u64::MAX), 100, Some(&[OpKind::Message]))
        .await
        .expect("history");
    assert!(
        messages.is_empty(),
        "the loser left index rows: {messages:?}"
    );
}

pub async fn append_conflict_partial_overlap_writes_nothing(store: Arc<dyn Store>) {
    let room = unique_room("conflict-partial");
    let owner = writer("node-a", 1);
    let usurper = writer("node-b", 2);
    let batch = points_batch(&room, 1, 3);
    store
        .append(&room, Seq(1), &batch, &owner)
        .await
        .expect("append");
    // Seqs 3..=6: only 3 exists; 4, 5 and 6 must not be written either.
    let rival: Vec<OpEvent> = (3..=6).map(|s| event(&room, s, message("rival"))).collect();
    match store.append(&room, Seq(3), &rival, &usurper).await {
        Err(StoreError::Conflict(_)) => {}
        other => panic!("partial overlap: expected Conflict, got {other:?}"),
    }
    assert_eq!(store.head(&room).await.expect("head"), Seq(3));
    assert!(
        store
            .read_log(&room, Seq(3), 100)
            .await
            .expect("read_log")
            .is_empty()
    );
    assert_eq!(
        seqs(
            &store
                .history(&room, Seq(u64::MAX), 100, None)
                .await
                .expect("history")
        ),
        vec![3, 2, 1]
    );
    assert!(
        store
            .history(&room, Seq(u64::MAX), 100, Some(&[OpKind::Message]))
            .await
            .expect("history")
            .is_empty(),
        "the loser left index rows"
    );
    // The rightful owner continues where it was.
    let next = points_batch(&room, 4, 2);
    store
        .append(&room, Seq(4), &next, &owner)
        .await
        .expect("append after a rejected rival");
    let log = store
        .read_log(&room, Seq::ZERO, 100)
        .await
        .expect("read_log");
    assert_eq!(log.len(), 5);
    assert!(log.iter().all(|l| l.writer == owner));
}

pub async fn append_races_have_one_winner(store: Arc<dyn Store>) {
    for _ in 0..20 {
        let room = unique_room("race");
        let contenders: Vec<_> = (0..4u64)
            .map(|i| {
                let store = Arc::clone(&store);
                let room = room.clone();
                tokio::spawn(async move {
                    let w = writer(&format!("node-{i}"), i + 1);
                    let batch: Vec<OpEvent> = (1..=2)
                        .map(|s| event(&room, s, message(&format!("from {i}"))))
                        .collect();
                    (w.clone(), store.append(&room, Seq(1), &batch, &w).await)
                })
            })
            .collect();
        let mut winners = Vec::new();
        for contender in contenders {
            let (w, result) = contender.await.expect("contender task");
            match result {
                Ok(()) => winners.push(w),
                Err(StoreError::Conflict(_)) => {}
                Err(e) => panic!("race: expected Ok or Conflict, got {e:?}"),
            }
        }
        assert_eq!(winners.len(), 1, "exactly one contender must win");
        let log = store
            .read_log(&room, Seq::ZERO, 10)
            .await
            .expect("read_log");
        assert_eq!(log.len(), 2);
        assert!(
            log.iter().all(|l| l.writer == winners[0]),
            "the log mixes writers"
        );
    }
}

pub async fn invalid_batches_write_nothing(store: Arc<dyn Store>) {
    let room = unique_room("invalid");
    let other = unique_room("invalid-other");
    let w = writer("node-a", 1);
    let cases: Vec<(&str, Seq, Vec<OpEvent>)> = vec![
        ("empty", Seq(1), vec![]),
        (
            "seq zero",
            Seq::ZERO,
            vec![event(&room, 0, message("zero"))],
        ),
        (
            "first does not match",
            Seq(1),
            vec![event(&room, 2, message("two"))],
        ),
        (
            "gap inside",
            Seq(1),
            vec![event(&room, 1, message("1")), event(&room, 3, message("3"))],
        ),
        (
            "out of order",
            Seq(1),
            vec![event(&room, 2, message("2")), event(&room, 1, message("1"))],
        ),
        (
            "another room's op",
            Seq(1),
            vec![
                event(&room, 1, message("1")),
                event(&other, 2, message("2")),
            ],
        ),
    ];
    for (name, first, batch) in cases {
        match store.append(&room, first, &batch, &w).await {
            Err(StoreError::InvalidBatch(_)) => {}
            other => panic!("{name}: expected InvalidBatch, got {other:?}"),
        }
    }
    assert_eq!(store.head(&room).await.expect("head"), Seq::ZERO);
    assert_eq!(store.head(&other).await.expect("head"), Seq::ZERO);
    assert!(
        store
            .read_log(&room, Seq::ZERO, 10)
            .await
            .expect("read_log")
            .is_empty()
    );
}

pub async fn writer_is_stored_per_op(store: Arc<dyn Store>) {
    let room = unique_room("writers");
    let a = writer("node-a", 3);
    let b = writer("node-b", 4);
    store
        .append(&room, Seq(1), &points_batch(&room, 1, 2), &a)
        .await
        .expect("append");
    store
        .append(&room, Seq(3), &points_batch(&room, 3, 3), &b)
        .await
        .expect("append");
    let log = store
        .read_log(&room, Seq::ZERO, 10)
        .await
        .expect("read_log");
    let writers: Vec<_> = log.iter().map(|l| l.writer.clone()).collect();
    assert_eq!(writers, vec![a.clone(), a, b.clone(), b.clone(), b]);
}

pub async fn many_appends_are_gapless(store: Arc<dyn Store>) {
    let room = unique_room("many");
    let w = writer("node-a", 1);
    let mut next = 1u64;
    for i in 0..150usize {
        let len = 1 + i % 3;
        let batch = points_batch(&room, next, len);
        store
            .append(&room, Seq(next), &batch, &w)
            .await
            .expect("append");
        next += len as u64;
    }
    let head = next - 1;
    assert_eq!(store.head(&room).await.expect("head"), Seq(head));
    let ops = store
        .read_ops(&room, Seq::ZERO, usize::MAX)
        .await
        .expect("read_ops");
    assert_eq!(seqs(&ops), (1..=head).collect::<Vec<_>>());
}

pub async fn read_ops_pages_with_after_and_limit(store: Arc<dyn Store>) {
    let room = unique_room("paging");
    let w = writer("node-a", 1);
    for first in (1..=50u64).step_by(5) {
        store
            .append(&room, Seq(first), &points_batch(&room, first, 5), &w)
            .await
            .expect("append");
    }
    let page = |after: u64, limit: usize| {
        let store = Arc::clone(&store);
        let room = room.clone();
        async move {
            seqs(
                &store
                    .read_ops(&room, Seq(after), limit)
                    .await
                    .expect("read_ops"),
            )
        }
    };
    assert_eq!(page(0, 10).await, (1..=10).collect::<Vec<_>>());
    assert_eq!(page(10, 3).await, vec![11, 12, 13]);
    assert_eq!(page(45, 10).await, vec![46, 47, 48, 49, 50]);
    assert!(page(50, 10).await.is_empty());
    assert!(page(500, 10).await.is_empty());
    assert!(page(0, 0).await.is_empty());
    // Paging by the last seq seen collects the whole log exactly once.
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let got = page(after, 7).await;
        let Some(&last) = got.last() else { break };
        all.extend(got);
        after = last;
    }
    assert_eq!(all, (1..=50).collect::<Vec<_>>());
}

pub async fn history_is_newest_first_before_exclusive(store: Arc<dyn Store>) {
    let room = unique_room("history");
    fill_mixed(store.as_ref(), &room, 30).await;
    let page = |before: u64, limit: usize| {
        let store = Arc::clone(&store);
        let room = room.clone();
        async move {
            seqs(
                &store
                    .history(&room, Seq(before), limit, None)
                    .await
                    .expect("history"),
            )
        }
    };
    assert_eq!(page(u64::MAX, 5).await, vec![30, 29, 28, 27, 26]);
    assert_eq!(page(31, 3).await, vec![30, 29, 28]);
    assert_eq!(page(10, 4).await, vec![9, 8, 7, 6]);
    assert_eq!(page(4, 10).await, vec![3, 2, 1]);
    assert!(page(1, 10).await.is_empty());
    assert!(page(0, 10).await.is_empty());
    assert!(page(20, 0).await.is_empty());
    // Paging backwards by the oldest seq seen covers everything once.
    let mut all = Vec::new();
    let mut before = u64::MAX;
    loop {
        let got = page(before, 7).await;
        let Some(&oldest) = got.last() else { break };
        all.extend(got);
        before = oldest;
    }
    assert_eq!(all, (1..=30).rev().collect::<Vec<_>>());
    // Events come back whole.
    let events = store
        .history(&room, Seq(4), 1, None)
        .await
        .expect("history");
    assert_eq!(events, vec![event(&room, 3, mixed_op(3))]);
}

pub async fn history_filters_kinds(store: Arc<dyn Store>) {
    let room = unique_room("kinds");
    fill_mixed(store.as_ref(), &room, 40).await;
    let expect = |kinds: &[OpKind], before: u64, limit: usize| -> Vec<u64> {
        (1..before.min(41))
            .rev()
            .filter(|&s| kinds.contains(&mixed_op(s).kind()))
            .take(limit)
            .collect()
    };
    let cases: Vec<(Vec<OpKind>, u64, usize)> = vec![
        (vec![OpKind::Message], u64::MAX, 100),
        (vec![OpKind::Message], 30, 4),
        (vec![OpKind::StrokeEnd], u64::MAX, 100),
        (vec![OpKind::Message, OpKind::StrokeEnd], u64::MAX, 100),
        (vec![OpKind::StrokeEnd, OpKind::Message], 26, 5),
        (vec![OpKind::Message, OpKind::Message], 20, 3),
        (vec![OpKind::Undo], u64::MAX, 100),
        (vec![OpKind::Undo, OpKind::Message], 10, 100),
        (OpKind::ALL.to_vec(), 35, 6),
        (
            vec![OpKind::StrokePoints, OpKind::StrokeEnd, OpKind::Message],
            u64::MAX,
            10,
        ),
    ];
    for (kinds, before, limit) in cases {
        let got = store
            .history(&room, Seq(before), limit, Some(&kinds))
            .await
            .expect("history");
        assert!(
            got.iter().all(|e| kinds.contains(&e.op.kind())),
            "kinds {kinds:?}: wrong kind returned"
        );
        assert_eq!(
            seqs(&got),
            expect(&kinds, before, limit),
            "kinds {kinds:?}, before {before}, limit {limit}"
        );
    }
    assert!(
        store
            .history(&room, Seq(u64::MAX), 10, Some(&[]))
            .await
            .expect("history")
            .is_empty(),
        "no kinds asked, none returned"
    );
    let messages = store
        .history(&room, Seq(7), 10, Some(&[OpKind::Message]))
        .await
        .expect("history");
    assert_eq!(
        messages,
        vec![event(&room, 6, mixed_op(6)), event(&room, 3, mixed_op(3))]
    );
}

pub async fn history_page_is_stable(store: Arc<dyn Store>) {
    let room = unique_room("stable");
    fill_mixed(store.as_ref(), &room, 20).await;
    let pages = |store: Arc<dyn Store>, room: collab_protocol::RoomId| async move {
        (
            store
                .history(&room, Seq(15), 5, None)
                .await
                .expect("history"),
            store
                .history(&room, Seq(15), 3, Some(&[OpKind::Message]))
                .await
                .expect("history"),
        )
    };
    let before = pages(Arc::clone(&store), room.clone()).await;
    assert_eq!(seqs(&before.0), vec![14, 13, 12, 11, 10]);
    assert_eq!(seqs(&before.1), vec![12, 9, 6]);
    let w = writer("node-a", 1);
    for first in (21..=40u64).step_by(4) {
        let batch: Vec<OpEvent> = (first..first + 4)
            .map(|s| event(&room, s, mixed_op(s)))
            .collect();
        store
            .append(&room, Seq(first), &batch, &w)
            .await
            .expect("append");
    }
    assert_eq!(pages(Arc::clone(&store), room.clone()).await, before);
}

pub async fn latest_snapshot_wins(store: Arc<dyn Store>) {
    let room = unique_room("snap");
    let snap = |seq: u64, tag: &str| Snapshot {
        seq: Seq(seq),
        data: format!("state at {seq} {tag}").into_bytes(),
    };
    store
        .put_snapshot(&room, &snap(10, "a"))
        .await
        .expect("put_snapshot");
    assert_eq!(
        store.latest_snapshot(&room).await.expect("latest"),
        Some(snap(10, "a"))
    );
    store
        .put_snapshot(&room, &snap(20, "b"))
        .await
        .expect("put_snapshot");
    assert_eq!(
        store.latest_snapshot(&room).await.expect("latest"),
        Some(snap(20, "b"))
    );
    // An older snapshot written later (a slow former owner) is ignored.
    store
        .put_snapshot(&room, &snap(15, "stale"))
        .await
        .expect("an older snapshot is not an error");
    assert_eq!(
        store.latest_snapshot(&room).await.expect("latest"),
        Some(snap(20, "b"))
    );
    // Another room's snapshots are its own.
    let other = unique_room("snap-other");
    assert_eq!(store.latest_snapshot(&other).await.expect("latest"), None);
    store
        .put_snapshot(&other, &snap(5, "o"))
        .await
        .expect("put_snapshot");
    assert_eq!(
        store.latest_snapshot(&room).await.expect("latest"),
        Some(snap(20, "b"))
    );
    assert_eq!(
        store.latest_snapshot(&other).await.expect("latest"),
        Some(snap(5, "o"))
    );
}

pub async fn chunked_snapshot_round_trip(store: Arc<dyn Store>) {
    let room = unique_room("bigsnap");
    // 3.5 MiB of pseudo-random bytes (xorshift): several chunks in any
    // backend, and a misordered or dropped chunk cannot go unnoticed.
    let mut x = random_u64() | 1;
    let big: Vec<u8> = (0..(7usize << 19))
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let first = Snapshot {
        seq: Seq(100),
        data: big,
    };
    store
        .put_snapshot(&room, &first)
        .await
        .expect("put_snapshot");
    let got = store
        .latest_snapshot(&room)
        .await
        .expect("latest")
        .expect("a snapshot");
    assert_eq!(got.seq, first.seq);
    assert!(got.data == first.data, "snapshot bytes differ");
    // A smaller successor replaces it entirely (no stale chunks appended).
    let second = Snapshot {
        seq: Seq(200),
        data: vec![7u8; 1000],
    };
    store
        .put_snapshot(&room, &second)
        .await
        .expect("put_snapshot");
    assert_eq!(
        store.latest_snapshot(&room).await.expect("latest"),
        Some(second)
    );
    // An empty snapshot is a snapshot.
    let empty = Snapshot {
        seq: Seq(300),
        data: Vec::new(),
    };
    store
        .put_snapshot(&room, &empty)
        .await
        .expect("put_snapshot");
    assert_eq!(
        store.latest_snapshot(&room).await.expect("latest"),
        Some(empty)
    );
}

pub async fn empty_room_reads(store: Arc<dyn Store>) {
    let room = unique_room("empty");
    assert_eq!(store.room(&room).await.expect("room"), None);
    assert_eq!(store.head(&room).await.expect("head"), Seq::ZERO);
    assert!(
        store
            .read_log(&room, Seq::ZERO, 10)
            .await
            .expect("read_log")
            .is_empty()
    );
    assert!(
        store
            .read_ops(&room, Seq::ZERO, 10)
            .await
            .expect("read_ops")
            .is_empty()
    );
    assert!(
        store
            .history(&room, Seq(u64::MAX), 10, None)
            .await
            .expect("history")
            .is_empty()
    );
    assert!(
        store
            .history(&room, Seq(u64::MAX), 10, Some(&[OpKind::Message]))
            .await
            .expect("history")
            .is_empty()
    );
    assert_eq!(store.latest_snapshot(&room).await.expect("latest"), None);
    // A room with a record but no ops reads the same.
    let alice = unique_user("alice");
    store
        .create_room(&room_record(&room, RoomKind::Board, &alice, None))
        .await
        .expect("create_room");
    assert_eq!(store.head(&room).await.expect("head"), Seq::ZERO);
    // A neighbour whose id extends this one's must not leak into it.
    let neighbour = collab_protocol::RoomId::parse(format!("{room}x")).expect("a valid room id");
    store
        .append(
            &neighbour,
            Seq(1),
            &points_batch(&neighbour, 1, 2),
            &writer("node-a", 1),
        )
        .await
        .expect("append");
    assert_eq!(store.head(&room).await.expect("head"), Seq::ZERO);
    assert!(
        store
            .history(&room, Seq(u64::MAX), 10, None)
            .await
            .expect("history")
            .is_empty()
    );
}

pub async fn concurrent_appends_from_many_rooms(store: Arc<dyn Store>) {
    const ROOMS: usize = 200;
    const APPENDS: u64 = 10;
    let prefix = format!("conc-{:08x}", random_u64() as u32);
    let tasks: Vec<_> = (0..ROOMS)
        .map(|i| {
            let store = Arc::clone(&store);
            let room = collab_protocol::RoomId::parse(format!("{prefix}-{i}")).expect("room id");
            tokio::spawn(async move {
                let w = writer("node-a", 1);
                let mut next = 1u64;
                for a in 0..APPENDS {
                    let len = 1 + (a as usize + i) % 2;
                    let batch = points_batch(&room, next, len);
                    store
                        .append(&room, Seq(next), &batch, &w)
                        .await
                        .expect("concurrent append");
                    next += len as u64;
                }
                (room, next - 1)
            })
        })
        .collect();
    let mut written = Vec::new();
    for task in tasks {
        written.push(task.await.expect("append task"));
    }
    for (room, head) in written {
        assert_eq!(store.head(&room).await.expect("head"), Seq(head));
        let ops = store
            .read_ops(&room, Seq::ZERO, usize::MAX)
            .await
            .expect("read_ops");
        assert_eq!(seqs(&ops), (1..=head).collect::<Vec<_>>(), "room {room}");
        assert!(ops.iter().all(|e| e.room == room));
    }
}

// === deletion ===

fn deletion(epoch: &str, at: u64, by: &Writer) -> Deletion {
    Deletion {
        epoch: Epoch::parse(epoch).expect("a valid epoch"),
        at: Seq(at),
        writer: by.clone(),
    }
}

/// The seqs of every op `read_log` returns after `after`, or the error.
async fn log_seqs(store: &dyn Store, room: &RoomId, after: u64) -> Result<Vec<u64>, StoreError> {
    Ok(store
        .read_log(room, Seq(after), 100)
        .await?
        .iter()
        .map(|op| op.event.seq.get())
        .collect())
}

/// A deleted room is gone for every reader: no record, no membership, no
/// snapshot, no history; its log ends in the tombstone, which is its head.
/// Deleting it again is harmless.
pub async fn delete_room_removes_it_and_its_history(store: Arc<dyn Store>) {
    let id = unique_room("delete");
    let alice = unique_user("alice");
    let bob = unique_user("bob");
    let record = room_record(
        &id,
        RoomKind::Channel,
        &alice,
        Some(vec![alice.clone(), bob.clone()]),
    );
    store.create_room(&record).await.expect("create_room");
    fill_mixed(store.as_ref(), &id, 5).await;
    store
        .put_snapshot(
            &id,
            &Snapshot {
                seq: Seq(3),
                data: b"state at 3".to_vec(),
            },
        )
        .await
        .expect("put_snapshot");
    // A neighbour, which must not notice.
    let other = unique_room("delete-neighbour");
    store
        .create_room(&room_record(&other, RoomKind::Board, &alice, None))
        .await
        .expect("create_room");
    fill_mixed(store.as_ref(), &other, 3).await;

    let owner = writer("node-a", 2);
    store
        .delete_room(&id, &deletion("e1", 6, &owner))
        .await
        .expect("delete_room");
    assert_eq!(store.room(&id).await.expect("room"), None);
    for user in [&alice, &bob] {
        let listed: Vec<RoomId> = store
            .rooms_of_user(user)
            .await
            .expect("rooms_of_user")
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert!(!listed.contains(&id), "{user} still lists {id}");
    }
    assert_eq!(store.latest_snapshot(&id).await.expect("snapshot"), None);
    assert_eq!(store.head(&id).await.expect("head"), Seq(6));
    for after in [0, 4] {
        assert_eq!(
            log_seqs(store.as_ref(), &id, after).await,
            Err(StoreError::RoomDeleted(Seq(6))),
            "read_log after {after}"
        );
    }
    assert_eq!(log_seqs(store.as_ref(), &id, 6).await, Ok(vec![]));
    for kinds in [None, Some(&[OpKind::Message][..])] {
        assert!(
            store
                .history(&id, Seq(7), 100, kinds)
                .await
                .expect("history")
                .is_empty(),
            "history of a deleted room ({kinds:?})"
        );
    }

    // Again (a retry, or another node finishing it): nothing changes.
    store
        .delete_room(&id, &deletion("e1", 6, &writer("node-b", 3)))
        .await
        .expect("delete_room again");
    assert_eq!(store.head(&id).await.expect("head"), Seq(6));

    assert_eq!(
        store.room(&other).await.expect("room").map(|r| r.id),
        Some(other.clone())
    );
    assert_eq!(log_seqs(store.as_ref(), &other, 0).await, Ok(vec![1, 2, 3]));
    assert_eq!(store.head(&other).await.expect("head"), Seq(3));
}

/// The id of a deleted room can be used again: the new room has its own
/// epoch, nothing of the old one, and a log that starts after the old
/// room's tombstone, so no seq means two things.
pub async fn delete_then_create_again_starts_after_the_tombstone(store: Arc<dyn Store>) {
    let id = unique_room("again");
    let alice = unique_user("alice");
    let carol = unique_user("carol");
    store
        .create_room(&room_record(&id, RoomKind::Board, &alice, None))
        .await
        .expect("create_room");
    fill_mixed(store.as_ref(), &id, 3).await;
    store
        .put_snapshot(
            &id,
            &Snapshot {
                seq: Seq(3),
                data: b"old".to_vec(),
            },
        )
        .await
        .expect("put_snapshot");
    store
        .delete_room(&id, &deletion("e1", 4, &writer("node-a", 1)))
        .await
        .expect("delete_room");

    let mut again = room_record(&id, RoomKind::Channel, &carol, None);
    again.epoch = Epoch::parse("e2").expect("epoch");
    again.ttl_secs = Some(60);
    store
        .create_room(&again)
        .await
        .expect("create the id again");
    match store.create_room(&again).await {
        Err(StoreError::Conflict(_)) => {}
        other => panic!("a second creation: expected Conflict, got {other:?}"),
    }
    let stored = store.room(&id).await.expect("room").expect("the new room");
    assert_eq!(
        stored.floor,
        Seq(4),
        "the new log starts after the tombstone"
    );
    assert_eq!(
        stored,
        crate::RoomRecord {
            floor: Seq(4),
            ..again.clone()
        }
    );
    assert_eq!(
        store
            .rooms_of_user(&carol)
            .await
            .expect("rooms_of_user")
            .into_iter()
            .map(|r| r.id)
            .collect::<Vec<_>>(),
        vec![id.clone()]
    );
    assert!(
        store
            .rooms_of_user(&alice)
            .await
            .expect("rooms_of_user")
            .is_empty()
    );
    assert_eq!(store.head(&id).await.expect("head"), Seq(4));
    assert_eq!(store.latest_snapshot(&id).await.expect("snapshot"), None);
    assert!(
        store
            .history(&id, Seq(5), 100, None)
            .await
            .expect("history")
            .is_empty()
    );

    let w = writer("node-b", 5);
    store
        .append(&id, Seq(5), &[event(&id, 5, message("new"))], &w)
        .await
        .expect("the new room's first op");
    assert_eq!(log_seqs(store.as_ref(), &id, 4).await, Ok(vec![5]));
    assert_eq!(store.head(&id).await.expect("head"), Seq(5));
    for kinds in [None, Some(&[OpKind::Message][..])] {
        assert_eq!(
            seqs(
                &store
                    .history(&id, Seq(6), 100, kinds)
                    .await
                    .expect("history")
            ),
            vec![5],
            "history of the new room ({kinds:?})"
        );
    }

    // And again: the next room starts after this one's tombstone.
    store
        .delete_room(&id, &deletion("e2", 6, &w))
        .await
        .expect("delete the second room");
    again.epoch = Epoch::parse("e3").expect("epoch");
    store.create_room(&again).await.expect("a third room");
    assert_eq!(
        store.room(&id).await.expect("room").map(|r| r.floor),
        Some(Seq(6))
    );
}

/// Deleting a room that does not exist, or not with that epoch, is
/// `NotFound` and writes nothing: the id stays new.
pub async fn delete_of_an_unknown_room_changes_nothing(store: Arc<dyn Store>) {
    let id = unique_room("unknown");
    let w = writer("node-a", 1);
    match store.delete_room(&id, &deletion("e1", 1, &w)).await {
        Err(StoreError::NotFound(_)) => {}
        other => panic!("deleting an unknown room: expected NotFound, got {other:?}"),
    }
    assert_eq!(store.head(&id).await.expect("head"), Seq::ZERO);
    let alice = unique_user("alice");
    store
        .create_room(&room_record(&id, RoomKind::Board, &alice, None))
        .await
        .expect("create_room");
    assert_eq!(
        store.room(&id).await.expect("room").map(|r| r.floor),
        Some(Seq::ZERO)
    );
    fill_mixed(store.as_ref(), &id, 2).await;
    // Another epoch: that room is not this one.
    match store.delete_room(&id, &deletion("e9", 3, &w)).await {
        Err(StoreError::NotFound(_)) => {}
        other => panic!("deleting with another epoch: expected NotFound, got {other:?}"),
    }
    assert!(store.room(&id).await.expect("room").is_some());
    assert_eq!(log_seqs(store.as_ref(), &id, 0).await, Ok(vec![1, 2]));
    assert_eq!(store.head(&id).await.expect("head"), Seq(2));
}

/// An owner that loaded the room before it was deleted, and so believes
/// the next seq is free, conflicts on the tombstone and writes nothing,
/// whether the id was used again or not.
pub async fn stale_owner_is_fenced_by_the_tombstone(store: Arc<dyn Store>) {
    let id = unique_room("stale");
    let alice = unique_user("alice");
    store
        .create_room(&room_record(&id, RoomKind::Board, &alice, None))
        .await
        .expect("create_room");
    fill_mixed(store.as_ref(), &id, 3).await;
    let stale = writer("node-stale", 7);
    store
        .delete_room(&id, &deletion("e1", 4, &writer("node-a", 8)))
        .await
        .expect("delete_room");
    let attempt = [
        event(&id, 4, message("late")),
        event(&id, 5, message("later")),
    ];
    match store.append(&id, Seq(4), &attempt, &stale).await {
        Err(StoreError::Conflict(_)) => {}
        other => panic!("a stale owner's append: expected Conflict, got {other:?}"),
    }
    assert_eq!(store.head(&id).await.expect("head"), Seq(4));
    assert_eq!(log_seqs(store.as_ref(), &id, 4).await, Ok(vec![]));

    let mut again = room_record(&id, RoomKind::Board, &alice, None);
    again.epoch = Epoch::parse("e2").expect("epoch");
    store
        .create_room(&again)
        .await
        .expect("create the id again");
    match store.append(&id, Seq(4), &attempt, &stale).await {
        Err(StoreError::Conflict(_)) => {}
        other => {
            panic!("a stale owner's append after re-creation: expected Conflict, got {other:?}")
        }
    }
    assert_eq!(store.head(&id).await.expect("head"), Seq(4));
    assert!(
        store
            .history(&id, Seq(10), 100, None)
            .await
            .expect("history")
            .is_empty()
    );
}

/// A deleting owner is fenced like an appending one: when another owner
/// wrote the seq it meant for the tombstone, the deletion is `Conflict`
/// and the room, its log and its record stay as they were.
pub async fn delete_room_is_fenced_like_an_append(store: Arc<dyn Store>) {
    let id = unique_room("fenced-delete");
    let alice = unique_user("alice");
    let record = room_record(&id, RoomKind::Board, &alice, None);
    store.create_room(&record).await.expect("create_room");
    fill_mixed(store.as_ref(), &id, 4).await;
    // The deleting owner thinks the head is 3; another owner wrote 4.
    match store
        .delete_room(&id, &deletion("e1", 4, &writer("node-old", 1)))
        .await
    {
        Err(StoreError::Conflict(_)) => {}
        other => panic!("deleting at a written seq: expected Conflict, got {other:?}"),
    }
    assert_eq!(store.room(&id).await.expect("room"), Some(record));
    assert_eq!(log_seqs(store.as_ref(), &id, 0).await, Ok(vec![1, 2, 3, 4]));
    assert_eq!(store.head(&id).await.expect("head"), Seq(4));
    assert_eq!(
        store
            .rooms_of_user(&alice)
            .await
            .expect("rooms_of_user")
            .len(),
        1
    );
}

/// Webhook cursors are per (endpoint, room) and overwritten; marks are
/// per (room, mark id), and removing one leaves the others.
pub async fn webhook_cursors_and_marks(store: Arc<dyn Store>) {
    let log = store.webhook_log().expect("the store keeps webhook state");
    let (a, b) = (unique_room("hooks"), unique_room("hooks"));
    assert!(log.webhook_cursors(&a).await.expect("read").is_empty());

    log.set_webhook_cursor("hook-2", &a, Seq(5))
        .await
        .expect("set");
    log.set_webhook_cursor("hook-1", &a, Seq(3))
        .await
        .expect("set");
    log.set_webhook_cursor("hook-1", &b, Seq(9))
        .await
        .expect("set");
    log.set_webhook_cursor("hook-1", &a, Seq(4))
        .await
        .expect("overwrite");
    assert_eq!(
        log.webhook_cursors(&a).await.expect("read"),
        vec![("hook-1".to_owned(), Seq(4)), ("hook-2".to_owned(), Seq(5))]
    );
    assert_eq!(
        log.webhook_cursors(&b).await.expect("read"),
        vec![("hook-1".to_owned(), Seq(9))]
    );

    let ours = |marks: Vec<(RoomId, String)>| -> Vec<(String, String)> {
        let mut ours: Vec<(String, String)> = marks
            .into_iter()
            .filter(|(room, _)| *room == a || *room == b)
            .map(|(room, mark)| (room.to_string(), mark))
            .collect();
        ours.sort();
        ours
    };
    log.add_webhook_mark(&a, "n1/i1/1").await.expect("mark");
    log.add_webhook_mark(&a, "n2/i7/1").await.expect("mark");
    log.add_webhook_mark(&b, "n1/i1/2").await.expect("mark");
    log.add_webhook_mark(&b, "n1/i1/2")
        .await
        .expect("mark again");
    let mut expected = vec![
        (a.to_string(), "n1/i1/1".to_owned()),
        (a.to_string(), "n2/i7/1".to_owned()),
        (b.to_string(), "n1/i1/2".to_owned()),
    ];
    expected.sort();
    assert_eq!(ours(log.webhook_marks().await.expect("list")), expected);

    log.remove_webhook_mark(&a, "n1/i1/1")
        .await
        .expect("unmark");
    log.remove_webhook_mark(&a, "no-such-mark")
        .await
        .expect("no-op");
    expected.retain(|(_, mark)| mark != "n1/i1/1");
    assert_eq!(ours(log.webhook_marks().await.expect("list")), expected);
}
