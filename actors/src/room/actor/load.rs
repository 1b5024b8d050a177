//! Loading a room: replaying its log after the last snapshot, the term it
//! takes, and telling a hand-off from a takeover.

use super::*;

impl RoomActorState {
    pub(super) fn start_load(&self, myself: &ActorRef<RoomMsg>) {
        let store = self.ctx.store.clone();
        let room = self.room.clone();
        let myself = myself.clone();
        tokio::spawn(async move {
            let result = match load_room_replaying(store.as_ref(), &room).await {
                Ok(Found::Room(record, state, replayed)) => {
                    let state = *state;
                    let floor = record.floor;
                    last_writer(store.as_ref(), &room, floor, state.head())
                        .await
                        .map(|writer| {
                            Load::Room(Box::new(LoadedRoom {
                                record,
                                state,
                                last_term: writer.as_ref().map_or(0, |w| w.term),
                                last_node: writer.map(|w| w.node),
                                replayed,
                            }))
                        })
                }
                Ok(Found::Missing) => Ok(Load::Missing),
                Ok(Found::Deleting(record, at)) => Ok(Load::Deleting { record, at }),
                Err(e) => Err(e),
            };
            let _ = myself.send_message(RoomMsg::Loaded(Box::new(result)));
        });
    }

    pub(super) fn on_loaded(&mut self, myself: &ActorRef<RoomMsg>, result: Result<Load, String>) {
        let placeholder = Phase::Closed(unavailable("the room is loading; retry"));
        let Phase::Loading {
            parked,
            presence,
            expire,
        } = std::mem::replace(&mut self.phase, placeholder)
        else {
            return;
        };
        match result {
            Ok(Load::Room(loaded)) => {
                let LoadedRoom {
                    record,
                    mut state,
                    last_term,
                    last_node,
                    replayed,
                } = *loaded;
                let config = &self.ctx.config;
                // Whoever had a stroke open under the last owner gets the
                // grace to come back and go on with it.
                let grace_ends = Instant::now() + config.orphan_grace;
                let orphan_deadlines = state
                    .users_with_open_strokes()
                    .into_iter()
                    .map(|user| (user, grace_ends))
                    .collect();
                let fresh = presence.is_none();
                if let Some(presence) = presence {
                    *state.presence_mut() = presence;
                }
                let head = state.head();
                let term = next_term(last_term);
                debug!(room = %self.room, head = %head, term, "room loaded");
                if fresh {
                    if let Some(kind) = takeover(last_node.as_ref(), &config.node, replayed) {
                        debug!(
                            room = %self.room, from = ?last_node, kind = kind.as_str(), replayed,
                            "room taken over from another node"
                        );
                        self.ctx.metrics.takeover(kind);
                    }
                    // Connections that were in the room under a previous
                    // owner come back (their gateways re-attach them).
                    let loaded = RoomEvent::Loaded {
                        room: self.room.clone(),
                    };
                    self.ctx.sink.emit(loaded, term);
                }
                self.phase = Phase::Live(Box::new(Live {
                    record,
                    state,
                    term,
                    committed: head,
                    tail: VecDeque::new(),
                    in_flight: None,
                    next: VecDeque::new(),
                    joins: Vec::new(),
                    duplicates: Vec::new(),
                    told_gone: HashSet::new(),
                    left: LeftConns::default(),
                    snapshot_seq: head,
                    snapshot_running: false,
                    snapshot_at: Instant::now(),
                    last_activity: Instant::now(),
                    resumers: HashSet::new(),
                    orphan_deadlines,
                    drain: None,
                    deletion: None,
                    updating: None,
                    updates: VecDeque::new(),
                }));
                // An expiry is the first request of its actor: it decides
                // before the ones that came while the room loaded.
                if let Some(port) = expire {
                    self.expire_live(myself, port);
                }
                for (request, reply) in parked {
                    self.on_request(myself, request, reply);
                }
            }
            Ok(Load::Missing) => {
                if let Some(port) = expire {
                    let _ = port.send(Expiry::NoSuchRoom);
                }
                let reply: RoomReply =
                    ProtocolError::not_found(format!("no room {}", self.room)).into();
                self.close(myself, reply, parked);
            }
            Ok(Load::Deleting { record, at }) => {
                info!(room = %self.room, at = %at, "finishing a deletion its owner did not finish");
                // A retried `Delete` is answered once the deletion is done.
                let (deletes, parked): (Vec<_>, Vec<_>) = parked
                    .into_iter()
                    .partition(|(request, _)| matches!(request, RoomRequest::Delete { .. }));
                let askers = expire
                    .map(DeleteAsker::Expiry)
                    .into_iter()
                    .chain(
                        deletes
                            .into_iter()
                            .map(|(_, reply)| DeleteAsker::Request(reply)),
                    )
                    .collect();
                let deleting = Deleting {
                    askers,
                    parked,
                    term: next_term(0),
                    drains: None,
                };
                self.start_deletion(myself, record.epoch, at, deleting);
            }
            Err(reason) => {
                warn!(room = %self.room, %reason, "room failed to load");
                if let Some(port) = expire {
                    let _ = port.send(Expiry::Failed(reason.clone()));
                }
                let reply = unavailable("the room could not be loaded; retry");
                self.close(myself, reply, parked);
            }
        }
    }
}

/// The term of a new owner of a room whose last batch was written in
/// `last_term`: above it, and above every term handed out before on this
/// clock (milliseconds since the Unix epoch), so a later owner always has a
/// higher term even when the previous one never wrote.
pub(super) fn next_term(last_term: u64) -> u64 {
    u64::try_from(now_ms()).unwrap_or(0).max(last_term + 1)
}

/// How this node came to hold a room whose last op `last_node` wrote, with
/// `replayed` ops on top of its latest snapshot: `None` when no other node
/// wrote it last (a new room, or this node's own).
pub(super) fn takeover(
    last_node: Option<&NodeId>,
    this_node: &NodeId,
    replayed: u64,
) -> Option<Takeover> {
    match last_node {
        Some(last) if last != this_node => Some(if replayed == 0 {
            Takeover::Handoff
        } else {
            Takeover::Failover
        }),
        _ => None,
    }
}

/// The writer of the last op up to `head` (`None` for a room without ops:
/// at its floor, the row is a deleted room's tombstone).
pub(super) async fn last_writer(
    store: &dyn Store,
    room: &RoomId,
    floor: Seq,
    head: Seq,
) -> Result<Option<Writer>, String> {
    if head <= floor {
        return Ok(None);
    }
    let last = store
        .read_log(room, Seq(head.get() - 1), 1)
        .await
        .map_err(|e| e.to_string())?;
    Ok(last.into_iter().next().map(|logged| logged.writer))
}

/// Reads a room: its record, its latest snapshot and every op after it,
/// replayed. `None` when there is no such room (or it is being deleted).
pub async fn load_room(
    store: &dyn Store,
    room: &RoomId,
) -> Result<Option<(RoomRecord, RoomState)>, String> {
    Ok(match load_room_replaying(store, room).await? {
        Found::Room(record, state, _) => Some((record, *state)),
        Found::Missing | Found::Deleting(..) => None,
    })
}

/// What [`load_room_replaying`] found.
pub(super) enum Found {
    /// The room, and how many ops were replayed after its snapshot.
    Room(RoomRecord, Box<RoomState>, u64),
    Missing,
    /// The room, whose log ends in a tombstone at this seq.
    Deleting(RoomRecord, Seq),
}

/// [`load_room`], and how many ops were replayed after the snapshot.
pub(super) async fn load_room_replaying(store: &dyn Store, room: &RoomId) -> Result<Found, String> {
    let Some(record) = store.room(room).await.map_err(|e| e.to_string())? else {
        // A deletion cut short after the room disappeared left rows
        // behind: whoever meets the room next removes them.
        if let Err(e) = store.finish_deletion(room).await {
            warn!(%room, error = %e, "could not finish a room's deletion");
        }
        return Ok(Found::Missing);
    };
    let mut state = match store
        .latest_snapshot(room)
        .await
        .map_err(|e| e.to_string())?
    {
        // One at or below the floor is a deleted room's, written by an
        // owner that did not know of the deletion.
        Some(snapshot) if snapshot.seq > record.floor => {
            RoomState::restore(room, &snapshot.data).map_err(|e| e.to_string())?
        }
        _ => RoomState::starting_after(
            RoomMeta {
                id: record.id.clone(),
                kind: record.kind,
                epoch: record.epoch.clone(),
            },
            record.floor,
        ),
    };
    let mut replayed = 0;
    loop {
        let ops = match store.read_ops(room, state.head(), 4096).await {
            Ok(ops) => ops,
            Err(StoreError::RoomDeleted(at)) => return Ok(Found::Deleting(record, at)),
            Err(e) => return Err(e.to_string()),
        };
        if ops.is_empty() {
            break;
        }
        for op in &ops {
            state.replay(op).map_err(|e| e.to_string())?;
        }
        replayed += ops.len() as u64;
    }
    // A deletion that went on while this read the log may have removed
    // rows under it (the reader then saw a log that ends early): the
    // record, gone by then, tells.
    match store.room(room).await.map_err(|e| e.to_string())? {
        Some(now) if now.epoch == record.epoch => {
            Ok(Found::Room(record, Box::new(state), replayed))
        }
        _ => Ok(Found::Missing),
    }
}
