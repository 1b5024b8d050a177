//! Who is in the room: joins (with their replay), leaves, silent and
//! returning connections, open strokes left behind, and fetches.

use super::*;

impl Live {
    /// The room as an operator sees it; `waiting` requests are in the
    /// mailbox behind this one.
    pub(super) fn inspection(&self, ctx: &RoomContext, waiting: usize) -> RoomInspection {
        let mut members: Vec<RoomMember> = self
            .state
            .presence()
            .connections()
            .map(|(conn, user)| RoomMember {
                user: user.id.clone(),
                name: user.name.clone(),
                conn: conn.conn.clone(),
                gateway: conn.gateway.clone(),
            })
            .collect();
        members.sort();
        RoomInspection {
            node: Some(ctx.config.node.clone()),
            live: true,
            term: Some(self.term),
            head: Some(self.committed),
            members,
            mailbox_depth: waiting as u64,
            last_commit: self.tail.back().map(|op| LastCommit {
                seq: op.seq,
                at: op.ts,
            }),
        }
    }

    /// Re-adds a connection the room forgot (see `RoomRequest::Attach`).
    pub(super) fn attach(
        &mut self,
        ctx: &RoomContext,
        room: RoomId,
        conn: ConnRef,
        user: UserInfo,
        resume_strokes: bool,
        reply: Reply,
    ) {
        // A gateway re-attaches a member when the room's owner changed;
        // if the member left at that moment, the re-attach may come second.
        if self.left.contains(&conn.conn) {
            answer(reply, RoomReply::Done);
            return;
        }
        // The connection was in the room before it moved or restarted, and
        // nobody was told it left: putting it back tells nobody either,
        // unless its gateway had been declared dead.
        let announce = self.told_gone.contains(&user.id);
        match self.admit(ctx, &room, conn, user, announce, resume_strokes) {
            Ok(()) => answer(reply, RoomReply::Done),
            Err(refusal) => answer(reply, refusal.into()),
        }
    }

    /// Puts `conn` into the presence if `user` may be in the room, telling
    /// the others (if `announce`) when the user was not there yet.
    pub(super) fn admit(
        &mut self,
        ctx: &RoomContext,
        room: &RoomId,
        conn: ConnRef,
        user: UserInfo,
        announce: bool,
        resume_strokes: bool,
    ) -> Result<(), ProtocolError> {
        if !self.record.admits(&user.id) {
            return Err(ProtocolError::forbidden("this room is private"));
        }
        if resume_strokes {
            self.resumers.insert(conn.clone());
        } else {
            self.resumers.remove(&conn);
        }
        if let Some(PresenceChange::Joined(info)) =
            self.state.presence_mut().join(conn.clone(), user)
        {
            self.told_gone.remove(&info.id);
            if !announce {
                return Ok(());
            }
            let joined = RoomEvent::Presence {
                room: room.clone(),
                event: PresenceEvent::Join,
                user: info,
                origin: Some(conn),
            };
            ctx.sink.emit(joined, self.term);
        }
        Ok(())
    }

    pub(super) fn answer_join(&mut self, ctx: &RoomContext, request: RoomRequest, reply: Reply) {
        let (room, conn, user, since, epoch, resume_strokes) = match request {
            RoomRequest::Join {
                room,
                conn,
                user,
                since,
                epoch,
                resume_strokes,
            } => (room, conn, user, since, epoch, resume_strokes),
            RoomRequest::Snapshot { room, user } => {
                self.answer_snapshot(room, &user, reply);
                return;
            }
            _ => return,
        };
        // Joining again after a leave.
        self.left.remove(&conn.conn);
        if let Err(refusal) = self.admit(ctx, &room, conn, user, true, resume_strokes) {
            answer(reply, refusal.into());
            return;
        }
        let head = self.committed;
        let mut body = JoinedBody {
            room,
            kind: self.record.kind,
            epoch: self.record.epoch.clone(),
            head,
            presence: self.state.presence().list(),
            reset: false,
            state: None,
            ops: None,
        };
        // Seqs up to the floor are a deleted room's, whose id this one
        // took: whoever remembers one of them starts over.
        let since = since.filter(|since| *since >= self.record.floor.get());
        match plan_join(
            since,
            epoch.as_ref(),
            &self.record.epoch,
            head,
            ctx.config.limits.replay_limit,
        ) {
            JoinPlan::Reset => {
                body.reset = true;
                body.state = Some(self.state.view());
                answer(reply, RoomReply::Joined(body));
            }
            JoinPlan::Replay { since } => match self.tail_after(since, head) {
                Some(ops) => {
                    body.ops = Some(ops);
                    answer(reply, RoomReply::Joined(body));
                }
                None => {
                    let store = ctx.store.clone();
                    tokio::spawn(async move {
                        let result = read_range(store.as_ref(), &body.room, since, head).await;
                        match result {
                            Ok(ops) => {
                                body.ops = Some(ops);
                                answer(reply, RoomReply::Joined(body));
                            }
                            Err(e) => answer(reply, unavailable(&e.to_string())),
                        }
                    });
                }
            },
        }
    }

    /// The full state as a `joined` with `reset: true` carries it, joining
    /// nobody; like a join it waits for the batch in flight, so the state
    /// is exactly the committed one at `head`.
    pub(super) fn answer_snapshot(&self, room: RoomId, user: &UserId, reply: Reply) {
        if !self.record.admits(user) {
            let refusal = ProtocolError::forbidden("this room is private");
            answer(reply, refusal.into());
            return;
        }
        let body = JoinedBody {
            room,
            kind: self.record.kind,
            epoch: self.record.epoch.clone(),
            head: self.committed,
            presence: self.state.presence().list(),
            reset: true,
            state: Some(self.state.view()),
            ops: None,
        };
        answer(reply, RoomReply::Joined(body));
    }

    /// The committed ops in `(after, up_to]` if the tail holds all of them.
    pub(super) fn tail_after(&self, after: Seq, up_to: Seq) -> Option<Vec<OpEvent>> {
        if after >= up_to {
            return Some(Vec::new());
        }
        let first = self.tail.front()?.seq;
        if first.get() > after.get() + 1 {
            return None;
        }
        Some(
            self.tail
                .iter()
                .filter(|op| op.seq > after && op.seq <= up_to)
                .cloned()
                .collect(),
        )
    }

    pub(super) fn fetch(&self, ctx: &RoomContext, after: Seq, limit: usize, reply: Reply) {
        let limit = limit.clamp(1, 4096);
        let up_to = Seq(self.committed.get().min(after.get() + limit as u64));
        if let Some(ops) = self.tail_after(after, up_to) {
            answer(reply, RoomReply::Ops { ops });
            return;
        }
        let store = ctx.store.clone();
        let room = self.record.id.clone();
        tokio::spawn(async move {
            match read_range(store.as_ref(), &room, after, up_to).await {
                Ok(ops) => answer(reply, RoomReply::Ops { ops }),
                Err(e) => answer(reply, unavailable(&e.to_string())),
            }
        });
    }

    /// A connection leaves. When it was its user's last one, everyone hears
    /// of it and the user's open strokes are ended for them: now, or after
    /// the grace if the connection dropped and had asked to resume its
    /// strokes.
    pub(super) fn leave(&mut self, ctx: &RoomContext, conn: &ConnRef, dropped: bool, ts: i64) {
        // Even if not present (a re-attach may be on its way).
        self.left.insert(conn.conn.clone(), ());
        let resumes = self.resumers.remove(conn) && dropped;
        if let Some(PresenceChange::Left(info)) = self.state.presence_mut().leave(conn) {
            self.orphaned(ctx, &info.id, resumes, ts);
            let left = RoomEvent::Presence {
                room: self.record.id.clone(),
                event: PresenceEvent::Leave,
                user: info,
                origin: Some(conn.clone()),
            };
            ctx.sink.emit(left, self.term);
        }
    }

    /// A connection went silent: out of the presence as if it had dropped,
    /// but not counted as left, so that `Attach` puts it back (announced)
    /// when it is heard from again.
    pub(super) fn away(&mut self, ctx: &RoomContext, conn: &ConnRef, ts: i64) {
        let resumes = self.resumers.contains(conn);
        if let Some(PresenceChange::Left(info)) = self.state.presence_mut().leave(conn) {
            self.told_gone.insert(info.id.clone());
            self.orphaned(ctx, &info.id, resumes, ts);
            let left = RoomEvent::Presence {
                room: self.record.id.clone(),
                event: PresenceEvent::Leave,
                user: info,
                origin: Some(conn.clone()),
            };
            ctx.sink.emit(left, self.term);
        }
    }

    /// `user`'s last connection is gone: their open strokes end now, or
    /// when the grace is over if they have not come back by then.
    pub(super) fn orphaned(&mut self, ctx: &RoomContext, user: &UserId, resumes: bool, ts: i64) {
        if resumes {
            if !self.state.open_strokes_of(user).is_empty() {
                let ends = Instant::now() + ctx.config.orphan_grace;
                self.orphan_deadlines.insert(user.clone(), ends);
            }
        } else {
            self.end_orphans_of(user, ts);
        }
    }

    /// Ends the open strokes of users whose grace is over and who are not
    /// back; true if any were.
    pub(super) fn end_overdue_orphans(&mut self) -> bool {
        let now = Instant::now();
        if !self.orphan_deadlines.values().any(|at| *at <= now) {
            return false;
        }
        let ts = now_ms();
        let mut overdue: Vec<UserId> = Vec::new();
        self.orphan_deadlines.retain(|user, at| {
            let due = *at <= now;
            if due {
                overdue.push(user.clone());
            }
            !due
        });
        overdue.sort();
        for user in overdue {
            if !self.state.presence().is_present(&user) {
                self.end_orphans_of(&user, ts);
            }
        }
        true
    }

    /// Takes every connection of `users` out of the room's presence (the
    /// others hear they left) and tells the gateways to drop them
    /// (`RoomEvent::Removed`).
    pub(super) fn remove_users(&mut self, ctx: &RoomContext, users: &[UserId]) {
        if users.is_empty() {
            return;
        }
        let ts = now_ms();
        let conns: Vec<ConnRef> = self
            .state
            .presence()
            .connections()
            .filter(|(_, user)| users.contains(&user.id))
            .map(|(conn, _)| conn.clone())
            .collect();
        for conn in &conns {
            self.leave(ctx, conn, false, ts);
        }
        let removed = RoomEvent::Removed {
            room: self.record.id.clone(),
            users: users.to_vec(),
        };
        ctx.sink.emit(removed, self.term);
    }

    /// The room as `PATCH` answers it.
    pub(super) fn updated(&self) -> RoomUpdated {
        RoomUpdated {
            id: self.record.id.clone(),
            kind: self.record.kind,
            name: self.record.name.clone(),
            epoch: self.record.epoch.clone(),
            created_by: self.record.created_by.clone(),
            members: self.record.members.clone(),
        }
    }

    pub(super) fn end_orphans_of(&mut self, user: &UserId, ts: i64) {
        // Strokes already ending in a waiting op are left to it.
        for request in self.state.orphan_endings(user, ts) {
            self.next.push_back(PendingOp {
                request,
                conn: None,
                reply: None,
            });
        }
    }
}

/// Committed ops in `(after, up_to]`, read from the store in pages.
pub(super) async fn read_range(
    store: &dyn Store,
    room: &RoomId,
    after: Seq,
    up_to: Seq,
) -> Result<Vec<OpEvent>, StoreError> {
    let mut ops = Vec::new();
    let mut cursor = after;
    while cursor < up_to {
        let want = (up_to.get() - cursor.get()).min(4096) as usize;
        let page = store.read_ops(room, cursor, want).await?;
        let Some(last) = page.last() else {
            break;
        };
        cursor = last.seq;
        ops.extend(page.into_iter().filter(|op| op.seq <= up_to));
    }
    Ok(ops)
}
