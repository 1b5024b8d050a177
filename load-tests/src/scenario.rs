//! The scenarios, as plans: how many rooms of how many users, and what each
//! user sends on which schedule. A plan is pure data, so workers in other
//! processes can be handed their share of it.

use serde::{Deserialize, Serialize};

use crate::target::OpKind;

/// Points in one generated stroke op.
pub const POINTS_PER_OP: usize = 16;

/// A scenario with its parameters.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "name")]
pub enum Scenario {
    /// N boards × `users`; in each, one user draws `ops_per_sec`
    /// `stroke_points` ops/s and moves the cursor at `cursor_hz`; the
    /// others watch.
    Boards {
        boards: u32,
        users: u32,
        ops_per_sec: f64,
        cursor_hz: f64,
    },
    /// `rooms` × `users`; every user moves a cursor at `cursor_hz` and
    /// draws a stroke (`stroke_begin` + `stroke_end`) every `stroke_secs`.
    Classroom {
        rooms: u32,
        users: u32,
        cursor_hz: f64,
        stroke_secs: f64,
    },
    /// `channels` × `users`, `messages_per_sec` per channel, the members
    /// taking turns.
    Chat {
        channels: u32,
        users: u32,
        messages_per_sec: f64,
    },
    /// `connections` clients in rooms of `users`, sending nothing.
    Idle { connections: u32, users: u32 },
}

impl Scenario {
    pub fn name(&self) -> &'static str {
        match self {
            Scenario::Boards { .. } => "boards",
            Scenario::Classroom { .. } => "classroom",
            Scenario::Chat { .. } => "chat",
            Scenario::Idle { .. } => "idle",
        }
    }

    /// Rooms, and users in each.
    pub fn shape(&self) -> (u32, u32) {
        match *self {
            Scenario::Boards { boards, users, .. } => (boards, users),
            Scenario::Classroom { rooms, users, .. } => (rooms, users),
            Scenario::Chat {
                channels, users, ..
            } => (channels, users),
            Scenario::Idle { connections, users } => {
                let users = users.max(1);
                (connections.div_ceil(users), users)
            }
        }
    }

    /// Users in room `room` (the last idle room may be smaller).
    pub fn users_in(&self, room: u32) -> u32 {
        let (rooms, users) = self.shape();
        match *self {
            Scenario::Idle { connections, .. } if room + 1 == rooms => {
                connections - users * (rooms - 1)
            }
            _ => users,
        }
    }

    /// Whether rooms are boards (else chat channels).
    pub fn boards(&self) -> bool {
        !matches!(self, Scenario::Chat { .. })
    }

    /// What member `member` of room `room` does.
    pub fn behaviour(&self, room: u32, member: u32) -> Behaviour {
        match *self {
            Scenario::Boards {
                ops_per_sec,
                cursor_hz,
                ..
            } if member == 0 => Behaviour {
                ops: Some(OpStream {
                    period_us: period(ops_per_sec),
                    phase_us: spread(room, member, period(ops_per_sec)),
                    pattern: Pattern::Draw { stroke_ops: 50 },
                }),
                cursor: cursor_stream(cursor_hz, room, member),
            },
            Scenario::Boards { .. } | Scenario::Idle { .. } => Behaviour::default(),
            Scenario::Classroom {
                cursor_hz,
                stroke_secs,
                ..
            } => {
                let p = period(1.0 / stroke_secs);
                Behaviour {
                    ops: Some(OpStream {
                        period_us: p,
                        phase_us: spread(room, member, p),
                        pattern: Pattern::StrokePair,
                    }),
                    cursor: cursor_stream(cursor_hz, room, member),
                }
            }
            Scenario::Chat {
                users,
                messages_per_sec,
                ..
            } => {
                // Each member sends every `users` turns: the channel as a
                // whole sends `messages_per_sec`.
                let turn = period(messages_per_sec);
                Behaviour {
                    ops: Some(OpStream {
                        period_us: turn * u64::from(users),
                        phase_us: turn * u64::from(member) + spread(room, 0, turn),
                        pattern: Pattern::Message,
                    }),
                    cursor: None,
                }
            }
        }
    }

    /// A copy of the scenario at `n` rooms (the capacity search steps it).
    pub fn with_rooms(&self, n: u32) -> Scenario {
        let mut s = self.clone();
        match &mut s {
            Scenario::Boards { boards, .. } => *boards = n,
            Scenario::Classroom { rooms, .. } => *rooms = n,
            Scenario::Chat { channels, .. } => *channels = n,
            Scenario::Idle { connections, .. } => *connections = n,
        }
        s
    }

    /// A copy with every sending rate at `percent` % (ops, cursors,
    /// messages; the capacity search can step the rate instead of the
    /// size).
    pub fn with_rate_percent(&self, percent: u32) -> Scenario {
        let f = f64::from(percent) / 100.0;
        let mut s = self.clone();
        match &mut s {
            Scenario::Boards {
                ops_per_sec,
                cursor_hz,
                ..
            } => {
                *ops_per_sec *= f;
                *cursor_hz *= f;
            }
            Scenario::Classroom {
                cursor_hz,
                stroke_secs,
                ..
            } => {
                *cursor_hz *= f;
                *stroke_secs /= f.max(1e-6);
            }
            Scenario::Chat {
                messages_per_sec, ..
            } => *messages_per_sec *= f,
            Scenario::Idle { .. } => {}
        }
        s
    }

    /// Ops per second the whole scenario offers (sent, before fan-out).
    pub fn offered_ops_per_sec(&self) -> f64 {
        let (rooms, users) = self.shape();
        match *self {
            Scenario::Boards { ops_per_sec, .. } => f64::from(rooms) * ops_per_sec,
            Scenario::Classroom { stroke_secs, .. } => {
                f64::from(rooms) * f64::from(users) * 2.0 / stroke_secs
            }
            Scenario::Chat {
                messages_per_sec, ..
            } => f64::from(rooms) * messages_per_sec,
            Scenario::Idle { .. } => 0.0,
        }
    }
}

fn period(per_sec: f64) -> u64 {
    if per_sec > 0.0 {
        ((1e6 / per_sec) as u64).max(1)
    } else {
        u64::MAX
    }
}

fn cursor_stream(hz: f64, room: u32, member: u32) -> Option<CursorStream> {
    (hz > 0.0).then(|| CursorStream {
        period_us: period(hz),
        phase_us: spread(room, member ^ 0x5555, period(hz)),
    })
}

/// A fixed pseudo-random offset in `0..period`, so that senders do not all
/// fire at the same instant.
fn spread(room: u32, member: u32, period: u64) -> u64 {
    if period == u64::MAX {
        return 0;
    }
    let mut x = (u64::from(room) << 32 | u64::from(member)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 29;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 32;
    x % period
}

/// What one connection sends.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Behaviour {
    pub ops: Option<OpStream>,
    pub cursor: Option<CursorStream>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpStream {
    pub period_us: u64,
    pub phase_us: u64,
    pub pattern: Pattern,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CursorStream {
    pub period_us: u64,
    pub phase_us: u64,
}

/// Which ops a stream sends, tick by tick.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pattern {
    /// One op per tick: `stroke_begin`, then `stroke_points` until the
    /// stroke has `stroke_ops` ops, then `stroke_end`; again.
    Draw { stroke_ops: u32 },
    /// Two ops per tick: `stroke_begin` with points, `stroke_end`.
    StrokePair,
    /// One chat message per tick.
    Message,
}

impl Pattern {
    /// The ops of tick number `tick` (0-based), and the stroke they belong
    /// to (its number).
    pub fn ops(&self, tick: u64) -> (&'static [OpKind], u64) {
        match *self {
            Pattern::Draw { stroke_ops } => {
                let len = u64::from(stroke_ops.max(2));
                let kinds: &'static [OpKind] = match tick % len {
                    0 => &[OpKind::StrokeBegin],
                    i if i == len - 1 => &[OpKind::StrokeEnd],
                    _ => &[OpKind::StrokePoints],
                };
                (kinds, tick / len)
            }
            Pattern::StrokePair => (&[OpKind::StrokeBegin, OpKind::StrokeEnd], tick),
            Pattern::Message => (&[OpKind::Message], tick),
        }
    }
}

/// `[[x,y],…]` with [`POINTS_PER_OP`] points, different per sender.
pub fn points_json(sender: u32) -> String {
    let mut out = String::from("[");
    for i in 0..POINTS_PER_OP {
        if i > 0 {
            out.push(',');
        }
        let x = 100.0 + f64::from(sender % 1000) + i as f64 * 3.5;
        let y = 200.0 + i as f64 * 1.25;
        out.push_str(&format!("[{x},{y}]"));
    }
    out.push(']');
    out
}

#[cfg(test)]
mod tests;
