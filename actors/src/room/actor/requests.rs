//! Requests in the order they came: ops batched into commits, and what
//! each request of a live room is answered.

use super::*;

impl RoomActorState {
    pub(super) fn on_request(
        &mut self,
        myself: &ActorRef<RoomMsg>,
        request: RoomRequest,
        reply: Reply,
    ) {
        let live = match &mut self.phase {
            Phase::Loading { parked, .. } => {
                parked.push((request, reply));
                return;
            }
            Phase::Closed(closed) => {
                answer(reply, closed.clone());
                return;
            }
            Phase::Deleting(deleting) => {
                match request {
                    RoomRequest::Delete { .. } => {
                        deleting.askers.push(DeleteAsker::Request(reply));
                    }
                    // Nothing to leave once it is gone.
                    RoomRequest::Leave { .. } | RoomRequest::Away { .. } => {
                        answer(reply, RoomReply::Done)
                    }
                    request => deleting.parked.push((request, reply)),
                }
                return;
            }
            Phase::Live(live) => live,
        };
        if let RoomRequest::Inspect { .. } = request {
            // Before the activity stamp: an operator watching a room does
            // not keep it from going idle.
            let waiting = self.backlog.load(Ordering::Relaxed);
            answer(
                reply,
                RoomReply::Inspected(live.inspection(&self.ctx, waiting)),
            );
            return;
        }
        live.last_activity = Instant::now();
        if live.drain.is_some() {
            answer(reply, unavailable("the room is moving; retry"));
            return;
        }
        if let Some(wanted) = &mut live.deletion {
            // Came after the `Delete`: not for this room any more.
            match request {
                RoomRequest::Delete { .. } => wanted.askers.push(DeleteAsker::Request(reply)),
                RoomRequest::Leave { .. } | RoomRequest::Away { .. } => {
                    answer(reply, RoomReply::Done)
                }
                RoomRequest::Fetch { after, limit, .. } => {
                    live.fetch(&self.ctx, after, limit as usize, reply);
                }
                request => wanted.parked.push((request, reply)),
            }
            return;
        }
        match request {
            RoomRequest::Delete { epoch, .. } => {
                if epoch.is_some_and(|epoch| epoch != live.record.epoch) {
                    let gone = ProtocolError::not_found(format!(
                        "room {} is not the one of that epoch any more",
                        self.room
                    ));
                    answer(reply, gone.into());
                    return;
                }
                live.deletion = Some(DeleteWanted {
                    askers: vec![DeleteAsker::Request(reply)],
                    parked: Vec::new(),
                });
                // Commits what came before it, then deletes.
                self.pump(myself);
            }
            RoomRequest::Join { .. } | RoomRequest::Snapshot { .. } => {
                if live.in_flight.is_some() || live.updating.is_some() {
                    live.joins.push((request, reply));
                } else {
                    live.answer_join(&self.ctx, request, reply);
                }
            }
            RoomRequest::Attach {
                room,
                conn,
                user,
                resume_strokes,
            } => {
                live.attach(&self.ctx, room, conn, user, resume_strokes, reply);
            }
            RoomRequest::Leave { conn, dropped, .. } => {
                let ts = now_ms();
                live.leave(&self.ctx, &conn, dropped, ts);
                answer(reply, RoomReply::Done);
                self.pump(myself);
            }
            RoomRequest::Away { conn, .. } => {
                live.away(&self.ctx, &conn, now_ms());
                answer(reply, RoomReply::Done);
                self.pump(myself);
            }
            RoomRequest::Op {
                conn,
                user,
                access,
                cid,
                op,
                ..
            } => {
                live.next.push_back(PendingOp {
                    conn: Some(conn),
                    request: OpRequest {
                        user,
                        cid: Some(cid),
                        op,
                        access,
                        ts: now_ms(),
                    },
                    reply: Some(reply),
                });
                self.pump(myself);
            }
            // A backend's op: no connection, so no presence to ask; the
            // gateway checked the token's `service` scope.
            RoomRequest::Publish { user, cid, op, .. } => {
                live.next.push_back(PendingOp {
                    conn: None,
                    request: OpRequest {
                        user,
                        cid: Some(cid),
                        op,
                        access: Access::Write,
                        ts: now_ms(),
                    },
                    reply: Some(reply),
                });
                self.pump(myself);
            }
            RoomRequest::Fetch { after, limit, .. } => {
                live.fetch(&self.ctx, after, limit as usize, reply);
            }
            RoomRequest::Update { .. } => {
                live.updates.push_back((request, reply));
                self.start_update(myself);
            }
            // Answered above, before the activity stamp.
            RoomRequest::Inspect { .. } => {}
        }
    }

    /// Starts the next batch if none is in flight: first the joins that
    /// waited (the state is exactly the committed one now), then every
    /// waiting op up to the batch limit.
    pub(super) fn pump(&mut self, myself: &ActorRef<RoomMsg>) {
        let Phase::Live(live) = &mut self.phase else {
            return;
        };
        if live.in_flight.is_some() {
            return;
        }
        // Joins wait for a change of members being written, to be checked
        // against it.
        if live.updating.is_none() {
            for (request, reply) in std::mem::take(&mut live.joins) {
                live.answer_join(&self.ctx, request, reply);
            }
        }
        let config = &self.ctx.config;
        let mut events = Vec::new();
        let mut acks = Vec::new();
        let mut refusals = Vec::new();
        while events.len() < config.max_batch {
            let Some(pending) = live.next.pop_front() else {
                break;
            };
            let cid = pending.request.cid.clone();
            // Only members send ops; a retry of an op already applied is
            // re-acked before any other check, joined or not.
            let joined = pending
                .conn
                .as_ref()
                .is_none_or(|conn| live.state.presence().contains(conn));
            if !joined
                && live
                    .state
                    .duplicate_of(&pending.request.user, cid.as_ref())
                    .is_none()
            {
                if let Some(reply) = pending.reply {
                    answer(reply, RoomReply::NotJoined);
                }
                continue;
            }
            match live.state.apply(pending.request, &config.limits) {
                Ok(Applied::New(event)) => {
                    acks.push((event.seq, pending.reply));
                    events.push(event);
                }
                Ok(Applied::Duplicate(seq)) => match pending.reply {
                    Some(reply) if seq <= live.committed => answer(reply, RoomReply::Ack { seq }),
                    Some(reply) => live.duplicates.push((seq, reply)),
                    None => {}
                },
                Err(error) => {
                    debug!(room = %self.room, code = %error.code, cid = ?cid.as_ref().map(Cid::as_str), "op refused");
                    if let Some(reply) = pending.reply {
                        refusals.push((reply, error.into()));
                    }
                }
            }
        }
        if events.is_empty() && refusals.is_empty() {
            if self.maybe_delete(myself) {
                return;
            }
            if let Phase::Live(live) = &self.phase
                && live.drain.is_some()
            {
                self.finish_drain(myself);
            }
            return;
        }
        let batch = self.next_batch;
        self.next_batch += 1;
        live.in_flight = Some(InFlight {
            batch,
            sent_at: Instant::now(),
            acks,
            refusals,
        });
        if events.is_empty() {
            // Only refusals: confirm that nobody else has written the room
            // since this actor's last commit before answering them.
            let store = self.ctx.store.clone();
            let room = self.room.clone();
            let committed = live.committed;
            let myself = myself.clone();
            tokio::spawn(async move {
                let result = match store.head(&room).await {
                    Ok(head) if head == committed => Ok(()),
                    Ok(head) => Err(StoreError::Conflict(format!(
                        "the log's head is {head}, this owner's {committed}"
                    ))),
                    Err(e) => Err(e),
                };
                let _ = myself.send_message(RoomMsg::Committed(batch, Vec::new(), result));
            });
            return;
        }
        let writer = Writer {
            node: config.node.clone(),
            term: live.term,
        };
        let myself = myself.clone();
        let metrics = self.ctx.metrics.clone();
        metrics.batch_size.observe(events.len() as f64);
        let started = Instant::now();
        let first = events[0].seq;
        // The store answers straight into the mailbox: no task of ours
        // waits in between (see `Store::append_then`).
        let done: AppendDone = Box::new(move |events, result| {
            metrics
                .commit_latency
                .observe(started.elapsed().as_secs_f64());
            let _ = myself.send_message(RoomMsg::Committed(batch, events, result));
        });
        self.ctx
            .store
            .clone()
            .append_then(self.room.clone(), first, events, writer, done);
    }

    pub(super) fn on_committed(
        &mut self,
        myself: &ActorRef<RoomMsg>,
        batch: u64,
        events: Vec<OpEvent>,
        result: Result<(), StoreError>,
    ) {
        let Phase::Live(live) = &mut self.phase else {
            return;
        };
        // An answer for a batch given up on is late news: the room was
        // rebuilt from the store since.
        if live.in_flight.as_ref().is_none_or(|f| f.batch != batch) {
            return;
        }
        let Some(in_flight) = live.in_flight.take() else {
            return;
        };
        match result {
            Ok(()) => {
                let config = &self.ctx.config;
                for event in events {
                    live.committed = event.seq;
                    live.tail.push_back(event.clone());
                    if live.tail.len() > config.tail_len {
                        live.tail.pop_front();
                    }
                    self.ctx.sink.emit(RoomEvent::Op(event), live.term);
                }
                for (seq, reply) in in_flight.acks {
                    if let Some(reply) = reply {
                        answer(reply, RoomReply::Ack { seq });
                    }
                }
                for (reply, refusal) in in_flight.refusals {
                    answer(reply, refusal);
                }
                let committed = live.committed;
                let (due, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut live.duplicates)
                    .into_iter()
                    .partition(|(seq, _)| *seq <= committed);
                live.duplicates = waiting;
                for (seq, reply) in due {
                    answer(reply, RoomReply::Ack { seq });
                }
                if committed.get() - live.snapshot_seq.get() >= config.snapshot_every_ops {
                    self.start_snapshot(myself);
                }
                self.pump(myself);
            }
            Err(StoreError::Conflict(reason)) => {
                self.ctx.metrics.fenced.inc();
                error!(room = %self.room, %reason, "another owner wrote this room; stopping");
                let moved = unavailable("the room moved to another node; retry");
                let mut live =
                    match std::mem::replace(&mut self.phase, Phase::Closed(moved.clone())) {
                        Phase::Live(live) => live,
                        _ => return,
                    };
                let drains = live.drain.take();
                fail_all(*live, in_flight, "the room moved to another node; retry");
                match drains {
                    // The supervisor has taken this actor out of its map
                    // already and waits for it to stop: asking it to retire
                    // again would go unheard.
                    Some(drains) => stop_drained(myself, drains, "fenced"),
                    None => self.close(myself, moved, Vec::new()),
                }
            }
            Err(e) => {
                self.ctx.metrics.commits_failed.inc();
                warn!(room = %self.room, error = %e, "commit failed; rebuilding from the store");
                let rebuilding = Phase::Closed(unavailable("the room is rebuilding; retry"));
                let live = match std::mem::replace(&mut self.phase, rebuilding) {
                    Phase::Live(live) => live,
                    _ => return,
                };
                let mut live = *live;
                let presence = std::mem::take(live.state.presence_mut());
                let joins = std::mem::take(&mut live.joins);
                let drains = live.drain.take();
                fail_all(
                    live,
                    in_flight,
                    "the store did not confirm; retry with the same cid",
                );
                if let Some(drains) = drains {
                    // Stopping was asked for: the log holds whatever did
                    // commit, and the room's next actor loads it.
                    for (_, reply) in joins {
                        answer(reply, unavailable("the room is moving; retry"));
                    }
                    stop_drained(myself, drains, "drained after a failed commit");
                    return;
                }
                self.phase = Phase::Loading {
                    parked: joins,
                    presence: Some(presence),
                    expire: None,
                };
                self.start_load(myself);
            }
        }
    }
}

/// Tells whoever asked for the drain that it is done, and stops.
pub(super) fn stop_drained(
    myself: &ActorRef<RoomMsg>,
    drains: Vec<RpcReplyPort<()>>,
    reason: &str,
) {
    for port in drains {
        let _ = port.send(());
    }
    myself.stop(Some(reason.into()));
}

/// Answers `unavailable` to every op the room was holding (and to a
/// deletion waiting for them, and what waited behind it).
pub(super) fn fail_all(mut live: Live, in_flight: InFlight, reason: &str) {
    if let Some(wanted) = live.deletion.take() {
        let failed = unavailable(reason);
        for asker in wanted.askers {
            asker.answer(&Err(failed.clone()));
        }
        for (_, reply) in wanted.parked {
            answer(reply, failed.clone());
        }
    }
    let replies = in_flight
        .acks
        .into_iter()
        .filter_map(|(_, reply)| reply)
        .chain(in_flight.refusals.into_iter().map(|(reply, _)| reply))
        .chain(live.next.into_iter().filter_map(|p| p.reply))
        .chain(live.duplicates.into_iter().map(|(_, reply)| reply))
        .chain(live.joins.into_iter().map(|(_, reply)| reply))
        .chain(live.updating.map(|updating| updating.reply))
        .chain(live.updates.into_iter().map(|(_, reply)| reply));
    for reply in replies {
        answer(reply, unavailable(reason));
    }
}
