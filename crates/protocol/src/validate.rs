//! One check per protocol rule, each returning the code the protocol
//! prescribes, and [`validate_op`], which applies the stateless ones in the
//! protocol's precedence order.
//!
//! Precedence when an op breaks several rules: malformed or over a limit
//! (`bad_request`, `too_large`) → not allowed (`forbidden`) → room state.
//! Within the first tier, malformed comes before over a limit. The room-state
//! tier needs the room and lives with the room state machine.

use crate::claims::Access;
use crate::error::ProtocolError;
use crate::limits::{Limits, MAX_STROKE_WIDTH};
use crate::ops::{Op, OpKind, Point, RoomKind};

/// Tier one and two for an op: everything that needs no room state.
pub fn validate_op(
    op: &Op,
    room_kind: RoomKind,
    access: Access,
    limits: &Limits,
) -> Result<(), ProtocolError> {
    check_op_shape(op, room_kind)?;
    check_op_limits(op, limits)?;
    check_write_access(access)
}

/// Malformed: wrong room kind, bad colour or width, empty or non-finite
/// points, empty text.
pub fn check_op_shape(op: &Op, room_kind: RoomKind) -> Result<(), ProtocolError> {
    check_kind_allowed(op.kind(), room_kind)?;
    match op {
        Op::StrokeBegin {
            color,
            width,
            points,
            ..
        } => {
            check_color(color)?;
            check_width(*width)?;
            check_points_finite(points)
        }
        Op::StrokePoints { points, .. } => {
            check_points_non_empty(points)?;
            check_points_finite(points)
        }
        Op::Message { text } => check_text_non_empty(text),
        Op::StrokeEnd { .. } | Op::Undo { .. } | Op::Redo { .. } => Ok(()),
    }
}

/// Over a limit: too many points, too long a text.
pub fn check_op_limits(op: &Op, limits: &Limits) -> Result<(), ProtocolError> {
    match op {
        Op::StrokeBegin { points, .. } | Op::StrokePoints { points, .. } => {
            check_points_count(points, limits)
        }
        Op::Message { text } => check_text_length(text, limits),
        Op::StrokeEnd { .. } | Op::Undo { .. } | Op::Redo { .. } => Ok(()),
    }
}

/// Stroke ops, undo and redo are for boards only.
pub fn check_kind_allowed(kind: OpKind, room_kind: RoomKind) -> Result<(), ProtocolError> {
    if room_kind == RoomKind::Channel && kind.is_board_only() {
        return Err(ProtocolError::bad_request(format!(
            "{kind} is not allowed in a channel"
        )));
    }
    Ok(())
}

/// `#rrggbb`, hex digits in either case.
pub fn check_color(color: &str) -> Result<(), ProtocolError> {
    let bytes = color.as_bytes();
    let ok = bytes.len() == 7 && bytes[0] == b'#' && bytes[1..].iter().all(u8::is_ascii_hexdigit);
    if ok {
        Ok(())
    } else {
        Err(ProtocolError::bad_request("color must be #rrggbb"))
    }
}

/// `0 < width ≤ 100`.
pub fn check_width(width: f64) -> Result<(), ProtocolError> {
    if width.is_finite() && width > 0.0 && width <= MAX_STROKE_WIDTH {
        Ok(())
    } else {
        Err(ProtocolError::bad_request(format!(
            "width must be greater than 0 and at most {MAX_STROKE_WIDTH}"
        )))
    }
}

pub fn check_points_non_empty(points: &[Point]) -> Result<(), ProtocolError> {
    if points.is_empty() {
        Err(ProtocolError::bad_request("points must not be empty"))
    } else {
        Ok(())
    }
}

pub fn check_points_finite(points: &[Point]) -> Result<(), ProtocolError> {
    if points.iter().flatten().all(|c| c.is_finite()) {
        Ok(())
    } else {
        Err(ProtocolError::bad_request("points must be finite numbers"))
    }
}

pub fn check_points_count(points: &[Point], limits: &Limits) -> Result<(), ProtocolError> {
    if points.len() > limits.max_points {
        Err(ProtocolError::too_large(format!(
            "at most {} points in one op",
            limits.max_points
        )))
    } else {
        Ok(())
    }
}

pub fn check_text_non_empty(text: &str) -> Result<(), ProtocolError> {
    if text.is_empty() {
        Err(ProtocolError::bad_request("text must not be empty"))
    } else {
        Ok(())
    }
}

/// Counted in Unicode code points, not bytes.
pub fn check_text_length(text: &str, limits: &Limits) -> Result<(), ProtocolError> {
    // Cheap early exit: a string cannot have more chars than bytes.
    if text.len() > limits.max_text_chars && text.chars().count() > limits.max_text_chars {
        Err(ProtocolError::too_large(format!(
            "at most {} characters in one message",
            limits.max_text_chars
        )))
    } else {
        Ok(())
    }
}

/// Cursor coordinates must be finite.
pub fn check_cursor(x: f64, y: f64) -> Result<(), ProtocolError> {
    if x.is_finite() && y.is_finite() {
        Ok(())
    } else {
        Err(ProtocolError::bad_request("x and y must be finite numbers"))
    }
}

/// Ops need write access; read access allows join, history and cursors.
pub fn check_write_access(access: Access) -> Result<(), ProtocolError> {
    match access {
        Access::Write => Ok(()),
        Access::Read => Err(ProtocolError::forbidden("read-only access to this room")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;
    use crate::ids::StrokeId;

    fn stroke() -> StrokeId {
        StrokeId::parse("s1").expect("valid id")
    }

    fn points(n: usize) -> Vec<Point> {
        vec![[1.0, 2.0]; n]
    }

    fn code(op: &Op, kind: RoomKind, access: Access) -> Option<ErrorCode> {
        validate_op(op, kind, access, &Limits::default())
            .err()
            .map(|e| e.code)
    }

    #[test]
    fn points_limit_at_its_edge() {
        let ok = Op::StrokePoints {
            stroke: stroke(),
            points: points(1024),
        };
        let over = Op::StrokePoints {
            stroke: stroke(),
            points: points(1025),
        };
        assert_eq!(code(&ok, RoomKind::Board, Access::Write), None);
        assert_eq!(
            code(&over, RoomKind::Board, Access::Write),
            Some(ErrorCode::TooLarge)
        );
        let begin_over = Op::StrokeBegin {
            stroke: stroke(),
            color: "#000000".into(),
            width: 1.0,
            points: points(1025),
        };
        assert_eq!(
            code(&begin_over, RoomKind::Board, Access::Write),
            Some(ErrorCode::TooLarge)
        );
    }

    #[test]
    fn text_limit_counts_code_points() {
        let ok = Op::Message {
            text: "é".repeat(4000),
        };
        let over = Op::Message {
            text: "é".repeat(4001),
        };
        let ascii_over = Op::Message {
            text: "a".repeat(4001),
        };
        assert_eq!(code(&ok, RoomKind::Channel, Access::Write), None);
        assert_eq!(
            code(&over, RoomKind::Channel, Access::Write),
            Some(ErrorCode::TooLarge)
        );
        assert_eq!(
            code(&ascii_over, RoomKind::Board, Access::Write),
            Some(ErrorCode::TooLarge)
        );
        let empty = Op::Message {
            text: String::new(),
        };
        assert_eq!(
            code(&empty, RoomKind::Board, Access::Write),
            Some(ErrorCode::BadRequest)
        );
    }

    #[test]
    fn colours() {
        assert!(check_color("#00ffAA").is_ok());
        for bad in ["00ffaa", "#00ffa", "#00ffaag", "#00ffzz", "", "#", "red"] {
            assert_eq!(
                check_color(bad).err().map(|e| e.code),
                Some(ErrorCode::BadRequest),
                "{bad}"
            );
        }
    }

    #[test]
    fn widths() {
        assert!(check_width(0.1).is_ok());
        assert!(check_width(100.0).is_ok());
        for bad in [0.0, -1.0, 100.01, 1e9, f64::NAN, f64::INFINITY] {
            assert!(check_width(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn non_finite_points_and_cursors() {
        assert!(check_points_finite(&[[0.0, f64::NAN]]).is_err());
        assert!(check_points_finite(&[[f64::NEG_INFINITY, 0.0]]).is_err());
        assert!(check_points_finite(&[[1e300, -1e300]]).is_ok());
        assert!(check_cursor(f64::NAN, 0.0).is_err());
        assert!(check_cursor(1.0, 2.0).is_ok());
    }

    #[test]
    fn empty_points_only_for_stroke_points() {
        let begin = Op::StrokeBegin {
            stroke: stroke(),
            color: "#123456".into(),
            width: 3.0,
            points: vec![],
        };
        assert_eq!(code(&begin, RoomKind::Board, Access::Write), None);
        let pts = Op::StrokePoints {
            stroke: stroke(),
            points: vec![],
        };
        assert_eq!(
            code(&pts, RoomKind::Board, Access::Write),
            Some(ErrorCode::BadRequest)
        );
    }

    #[test]
    fn board_ops_in_a_channel() {
        for op in [
            Op::StrokeEnd { stroke: stroke() },
            Op::Undo { stroke: None },
            Op::Redo { stroke: None },
        ] {
            assert_eq!(
                code(&op, RoomKind::Channel, Access::Write),
                Some(ErrorCode::BadRequest)
            );
            assert_eq!(code(&op, RoomKind::Board, Access::Write), None);
        }
    }

    #[test]
    fn precedence_malformed_then_limit_then_forbidden() {
        // Malformed (NaN) and over the limit: malformed wins.
        let mut pts = points(1025);
        pts[3] = [f64::NAN, 0.0];
        let op = Op::StrokePoints {
            stroke: stroke(),
            points: pts,
        };
        assert_eq!(
            code(&op, RoomKind::Board, Access::Read),
            Some(ErrorCode::BadRequest)
        );
        // Over the limit and read-only: the limit wins.
        let op = Op::StrokePoints {
            stroke: stroke(),
            points: points(1025),
        };
        assert_eq!(
            code(&op, RoomKind::Board, Access::Read),
            Some(ErrorCode::TooLarge)
        );
        // Stroke op in a channel by a read-only user: bad_request first.
        let op = Op::StrokeEnd { stroke: stroke() };
        assert_eq!(
            code(&op, RoomKind::Channel, Access::Read),
            Some(ErrorCode::BadRequest)
        );
        // A valid op by a read-only user.
        let op = Op::Message { text: "hi".into() };
        assert_eq!(
            code(&op, RoomKind::Board, Access::Read),
            Some(ErrorCode::Forbidden)
        );
    }
}
