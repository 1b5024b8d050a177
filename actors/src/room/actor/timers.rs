//! What a live room does on its own: timed-out commits, strokes whose
//! grace is over, snapshots, going idle and draining.

use super::*;

impl RoomActorState {
    pub(super) fn on_tick(&mut self, myself: &ActorRef<RoomMsg>) {
        let config = &self.ctx.config;
        let Phase::Live(live) = &mut self.phase else {
            return;
        };
        if let Some(in_flight) = &live.in_flight {
            if in_flight.sent_at.elapsed() >= config.commit_timeout {
                // Its outcome is unknown: like a failed commit, answer
                // `unavailable` and rebuild from what the store holds.
                let batch = in_flight.batch;
                let timed_out = Err(StoreError::Unavailable("commit timed out".into()));
                self.on_committed(myself, batch, Vec::new(), timed_out);
            }
            return;
        }
        if live.end_overdue_orphans() {
            self.pump(myself);
            return;
        }
        if live.committed > live.snapshot_seq && live.snapshot_at.elapsed() >= config.snapshot_every
        {
            self.start_snapshot(myself);
            return;
        }
        let idle = live.state.presence().is_empty()
            && live.next.is_empty()
            && live.joins.is_empty()
            && live.last_activity.elapsed() >= config.idle_after;
        if idle {
            self.retire(myself);
        }
    }

    /// Asks the supervisor to take this actor out of its map and drain it
    /// (without a supervisor, it stops now).
    pub(super) fn retire(&self, myself: &ActorRef<RoomMsg>) {
        match &self.supervisor {
            Some(supervisor) => {
                let _ = supervisor
                    .send_message(SupervisorMsg::Retire(self.room.clone(), myself.get_id()));
            }
            None => myself.stop(Some("retired".into())),
        }
    }

    /// Stops serving: answers `reply` to `parked` and to every request
    /// until the drain, and asks to be retired.
    pub(super) fn close(
        &mut self,
        myself: &ActorRef<RoomMsg>,
        reply: RoomReply,
        parked: Vec<(RoomRequest, Reply)>,
    ) {
        for (_, port) in parked {
            answer(port, reply.clone());
        }
        self.phase = Phase::Closed(reply);
        self.retire(myself);
    }

    /// Writes a snapshot of the committed state. Only called with no batch
    /// in flight, when the state holds nothing uncommitted.
    pub(super) fn start_snapshot(&mut self, myself: &ActorRef<RoomMsg>) {
        let Phase::Live(live) = &mut self.phase else {
            return;
        };
        if live.snapshot_running || live.in_flight.is_some() || live.committed <= live.snapshot_seq
        {
            return;
        }
        live.snapshot_running = true;
        live.snapshot_at = Instant::now();
        let snapshot = collab_store::Snapshot {
            seq: live.committed,
            data: live.state.snapshot(),
        };
        let store = self.ctx.store.clone();
        let room = self.room.clone();
        let myself = myself.clone();
        tokio::spawn(async move {
            let seq = snapshot.seq;
            let result = store.put_snapshot(&room, &snapshot).await;
            let _ = myself.send_message(RoomMsg::SnapshotWritten(seq, result));
        });
    }

    pub(super) fn on_snapshot_written(
        &mut self,
        myself: &ActorRef<RoomMsg>,
        seq: Seq,
        result: Result<(), StoreError>,
    ) {
        let Phase::Live(live) = &mut self.phase else {
            return;
        };
        live.snapshot_running = false;
        match result {
            Ok(()) => {
                self.ctx.metrics.snapshots.inc();
                live.snapshot_seq = live.snapshot_seq.max(seq);
                debug!(room = %self.room, seq = %seq, "snapshot written");
            }
            Err(e) => {
                // The log still has every op; the next snapshot will try
                // again. A draining room stops without one.
                warn!(room = %self.room, error = %e, "snapshot failed");
                if live.drain.is_some() {
                    live.snapshot_seq = live.committed;
                }
            }
        }
        if self.maybe_delete(myself) {
            return;
        }
        if let Phase::Live(live) = &self.phase
            && live.drain.is_some()
        {
            self.finish_drain(myself);
        }
    }

    pub(super) fn on_gateway_gone(&mut self, myself: &ActorRef<RoomMsg>, gateway: &str) {
        let Phase::Live(live) = &mut self.phase else {
            return;
        };
        let ts = now_ms();
        // Users with a connection there that asked to resume its strokes.
        let mut resuming = HashSet::new();
        live.resumers.retain(|conn| {
            let gone = conn.gateway == gateway;
            if gone && let Some(user) = live.state.presence().user_of(conn) {
                resuming.insert(user.clone());
            }
            !gone
        });
        for change in live.state.presence_mut().leave_gateway(gateway) {
            if let PresenceChange::Left(info) = change {
                let resumes = resuming.contains(&info.id);
                live.orphaned(&self.ctx, &info.id, resumes, ts);
                live.told_gone.insert(info.id.clone());
                let left = RoomEvent::Presence {
                    room: self.room.clone(),
                    event: PresenceEvent::Leave,
                    user: info,
                    origin: None,
                };
                self.ctx.sink.emit(left, live.term);
            }
        }
        self.pump(myself);
    }

    pub(super) fn on_drain(&mut self, myself: &ActorRef<RoomMsg>, reply: Option<RpcReplyPort<()>>) {
        match &mut self.phase {
            Phase::Live(live) => {
                live.drain.get_or_insert_with(Vec::new).extend(reply);
                if live.in_flight.is_none() {
                    self.finish_drain(myself);
                }
            }
            Phase::Loading { parked, expire, .. } => {
                for (_, port) in parked.drain(..) {
                    answer(port, unavailable("the room is moving; retry"));
                }
                if let Some(port) = expire.take() {
                    let _ = port.send(Expiry::NotOwner);
                }
                if let Some(reply) = reply {
                    let _ = reply.send(());
                }
                myself.stop(Some("drained".into()));
            }
            // The deletion finishes first (it cannot be handed to another
            // node half done; if this node dies, the next loader finishes
            // it), then the actor stops.
            Phase::Deleting(deleting) => {
                deleting.drains.get_or_insert_with(Vec::new).extend(reply);
            }
            Phase::Closed(_) => {
                if let Some(reply) = reply {
                    let _ = reply.send(());
                }
                myself.stop(Some("closed".into()));
            }
        }
    }

    /// Drain, once nothing is in flight: snapshot if anything changed, then
    /// stop. Ops still waiting are committed first by `pump`.
    pub(super) fn finish_drain(&mut self, myself: &ActorRef<RoomMsg>) {
        let Phase::Live(live) = &mut self.phase else {
            return;
        };
        if live.in_flight.is_some()
            || live.snapshot_running
            || live.deletion.is_some()
            || live.updating.is_some()
            || !live.updates.is_empty()
        {
            return;
        }
        if !live.next.is_empty() {
            self.pump(myself);
            return;
        }
        if live.committed > live.snapshot_seq {
            self.start_snapshot(myself);
            return;
        }
        for port in live.drain.take().unwrap_or_default() {
            let _ = port.send(());
        }
        info!(room = %self.room, head = %live.committed, "room stopped");
        // Unused from now on, as far as this node knows.
        if let Some(ttl) = live.record.ttl_secs.filter(|ttl| *ttl > 0) {
            self.ctx
                .usage
                .stopped(&self.room, std::time::Duration::from_secs(ttl));
        }
        myself.stop(Some("drained".into()));
    }
}
