//! A room's name and members, changed in the order of its requests.

use super::*;

impl RoomActorState {
    /// Starts the next waiting change of name and members unless one is
    /// being written. A change that writes nothing (the same name, members
    /// removed who were not members) is answered at once, its removals
    /// done all the same: a kick is idempotent.
    pub(super) fn start_update(&mut self, myself: &ActorRef<RoomMsg>) {
        let Phase::Live(live) = &mut self.phase else {
            return;
        };
        while live.updating.is_none() {
            let Some((request, reply)) = live.updates.pop_front() else {
                return;
            };
            let RoomRequest::Update {
                epoch,
                name,
                add,
                remove,
                ..
            } = request
            else {
                continue;
            };
            if epoch.is_some_and(|epoch| epoch != live.record.epoch) {
                let gone = ProtocolError::not_found(format!(
                    "room {} is not the one of that epoch any more",
                    self.room
                ));
                answer(reply, gone.into());
                continue;
            }
            let (record, removed) = match planned_update(&live.record, name, add, remove) {
                Ok(planned) => planned,
                Err(refusal) => {
                    answer(reply, refusal.into());
                    continue;
                }
            };
            if record == live.record {
                live.remove_users(&self.ctx, &removed);
                answer(reply, RoomReply::Updated(live.updated()));
                continue;
            }
            debug!(room = %self.room, removed = removed.len(), "changing the room's name or members");
            let store = self.ctx.store.clone();
            let update = record.clone();
            let me = myself.clone();
            tokio::spawn(async move {
                let result = store.update_room(&update).await;
                let _ = me.send_message(RoomMsg::UpdateDone(result));
            });
            live.updating = Some(Updating {
                record,
                removed,
                reply,
            });
        }
    }

    pub(super) fn on_updated(
        &mut self,
        myself: &ActorRef<RoomMsg>,
        result: Result<(), StoreError>,
    ) {
        let Phase::Live(live) = &mut self.phase else {
            return;
        };
        let Some(updating) = live.updating.take() else {
            return;
        };
        match result {
            Ok(()) => {
                info!(room = %self.room, removed = updating.removed.len(), "room's name or members changed");
                live.record = updating.record;
                live.remove_users(&self.ctx, &updating.removed);
                answer(updating.reply, RoomReply::Updated(live.updated()));
            }
            Err(StoreError::NotFound(_)) => {
                let gone = ProtocolError::not_found(format!("no room {}", self.room));
                answer(updating.reply, gone.into());
            }
            Err(StoreError::InvalidBatch(reason)) => {
                answer(updating.reply, ProtocolError::bad_request(reason).into());
            }
            Err(e) => {
                warn!(room = %self.room, error = %e, "changing the room's name or members failed");
                answer(
                    updating.reply,
                    unavailable("the room could not be changed; retry"),
                );
            }
        }
        self.start_update(myself);
        self.pump(myself);
    }
}

/// The record `record` becomes with `name`, `add` and `remove`, and the
/// users to take out of the room (each of `remove` once). Refused: an
/// empty name, members changed in a public room, the creator removed.
pub(super) fn planned_update(
    record: &RoomRecord,
    name: Option<String>,
    add: Vec<UserId>,
    remove: Vec<UserId>,
) -> Result<(RoomRecord, Vec<UserId>), ProtocolError> {
    let mut updated = record.clone();
    if let Some(name) = name {
        if name.trim().is_empty() {
            return Err(ProtocolError::bad_request("name must not be empty"));
        }
        updated.name = name;
    }
    let mut removed: Vec<UserId> = Vec::with_capacity(remove.len());
    for user in remove {
        if !removed.contains(&user) {
            removed.push(user);
        }
    }
    if add.is_empty() && removed.is_empty() {
        return Ok((updated, removed));
    }
    let Some(members) = &mut updated.members else {
        return Err(ProtocolError::bad_request(format!(
            "room {} is public: anyone may join it, so it has no members to change",
            record.id
        )));
    };
    if removed.contains(&record.created_by) {
        return Err(ProtocolError::bad_request(format!(
            "{} created room {} and is always a member of it",
            record.created_by, record.id
        )));
    }
    members.retain(|member| !removed.contains(member));
    for user in add {
        if !removed.contains(&user) && !members.contains(&user) {
            members.push(user);
        }
    }
    Ok((updated, removed))
}
