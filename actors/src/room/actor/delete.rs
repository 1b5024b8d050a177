//! Deleting a room: what came before the deletion commits, what comes
//! after is refused, and a deletion cut short is finished by the next load.

use super::*;

impl RoomActorState {
    /// The supervisor asks to delete the room for its time to live.
    pub(super) fn on_expire(&mut self, port: RpcReplyPort<Expiry>) {
        match &mut self.phase {
            Phase::Loading { expire, .. } => {
                if let Some(earlier) = expire.replace(port) {
                    let _ = earlier.send(Expiry::Failed("asked again".into()));
                }
            }
            // The supervisor asks only rooms that are not live; one that is
            // came back into use meanwhile.
            Phase::Live(_) => {
                let _ = port.send(Expiry::InUse);
            }
            Phase::Deleting(deleting) => deleting.askers.push(DeleteAsker::Expiry(port)),
            Phase::Closed(closed) => {
                let expiry = match closed {
                    RoomReply::Error {
                        code: ErrorCode::NotFound,
                        ..
                    } => Expiry::NoSuchRoom,
                    other => Expiry::Failed(format!("{other:?}")),
                };
                let _ = port.send(expiry);
            }
        }
    }

    /// Deletes the loaded room if it has a time to live (it may have been
    /// created again without one since it was due).
    pub(super) fn expire_live(&mut self, myself: &ActorRef<RoomMsg>, port: RpcReplyPort<Expiry>) {
        let Phase::Live(live) = &mut self.phase else {
            let _ = port.send(Expiry::Failed("the room is not live".into()));
            return;
        };
        if live.record.ttl_secs.unwrap_or(0) == 0 {
            let _ = port.send(Expiry::NoTtl);
            return;
        }
        match &mut live.deletion {
            Some(wanted) => wanted.askers.push(DeleteAsker::Expiry(port)),
            None => {
                live.deletion = Some(DeleteWanted {
                    askers: vec![DeleteAsker::Expiry(port)],
                    parked: Vec::new(),
                });
            }
        }
        self.pump(myself);
    }

    /// Starts a wanted deletion once nothing is in flight: the ops that
    /// came before it are committed (and acked) by then, the ones after it
    /// wait. Returns whether it started.
    pub(super) fn maybe_delete(&mut self, myself: &ActorRef<RoomMsg>) -> bool {
        let Phase::Live(live) = &self.phase else {
            return false;
        };
        if live.deletion.is_none()
            || live.in_flight.is_some()
            || !live.next.is_empty()
            || live.snapshot_running
            || live.updating.is_some()
            || !live.updates.is_empty()
        {
            return false;
        }
        let deleting = Phase::Closed(unavailable("the room is being deleted; retry"));
        let Phase::Live(mut live) = std::mem::replace(&mut self.phase, deleting) else {
            return false;
        };
        let Some(wanted) = live.deletion.take() else {
            return false;
        };
        let deleting = Deleting {
            askers: wanted.askers,
            parked: wanted.parked,
            term: live.term,
            drains: live.drain.take(),
        };
        self.start_deletion(
            myself,
            live.record.epoch.clone(),
            live.committed.next(),
            deleting,
        );
        true
    }

    /// Has the store delete the room, with its tombstone at `at` (see
    /// `Store::delete_room`); the answer comes back as `DeleteDone`.
    pub(super) fn start_deletion(
        &mut self,
        myself: &ActorRef<RoomMsg>,
        epoch: collab_protocol::Epoch,
        at: Seq,
        deleting: Deleting,
    ) {
        let deletion = Deletion {
            epoch,
            at,
            writer: Writer {
                node: self.ctx.config.node.clone(),
                term: deleting.term,
            },
        };
        debug!(room = %self.room, at = %at, "deleting the room");
        let store = self.ctx.store.clone();
        let room = self.room.clone();
        let myself = myself.clone();
        tokio::spawn(async move {
            let result = store.delete_room(&room, &deletion).await;
            let _ = myself.send_message(RoomMsg::DeleteDone(result));
        });
        self.phase = Phase::Deleting(Box::new(deleting));
    }

    pub(super) fn on_deleted(
        &mut self,
        myself: &ActorRef<RoomMsg>,
        result: Result<(), StoreError>,
    ) {
        let not_found = || -> RoomReply {
            ProtocolError::not_found(format!("room {} was deleted", self.room)).into()
        };
        let closing = Phase::Closed(not_found());
        let Phase::Deleting(deleting) = std::mem::replace(&mut self.phase, closing) else {
            return;
        };
        let Deleting {
            askers,
            parked,
            term,
            drains,
        } = *deleting;
        let (outcome, closed) = match result {
            Ok(()) => {
                info!(room = %self.room, "room deleted");
                // Every gateway with members here tells them and drops them.
                let deleted = RoomEvent::Deleted {
                    room: self.room.clone(),
                };
                self.ctx.sink.emit(deleted, term);
                self.ctx.usage.deleted(&self.room);
                (Ok(()), not_found())
            }
            Err(StoreError::Conflict(reason)) => {
                self.ctx.metrics.fenced.inc();
                error!(room = %self.room, %reason, "another owner wrote this room; not deleted here");
                let moved = unavailable("the room moved to another node; retry");
                (Err(moved.clone()), moved)
            }
            Err(StoreError::NotFound(_)) => (Err(not_found()), not_found()),
            Err(e) => {
                warn!(room = %self.room, error = %e, "room deletion failed");
                let failed = unavailable("the room could not be deleted; retry");
                (Err(failed.clone()), failed)
            }
        };
        for asker in askers {
            asker.answer(&outcome);
        }
        for (_, reply) in parked {
            answer(reply, closed.clone());
        }
        match drains {
            // Taken out of the supervisor's map already: stop now.
            Some(drains) => stop_drained(myself, drains, "deleted"),
            None => self.close(myself, closed, Vec::new()),
        }
    }
}
