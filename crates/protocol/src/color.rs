//! The stable colour each user gets, derived from the user id.

/// FNV-1a, 64 bit: fixed and versionless, so every process and every
/// release gives a user the same colour.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// `#rrggbb` for a user id: a hue from the id's hash, with saturation and
/// lightness fixed so every colour reads well on white.
pub fn user_color(user_id: &str) -> String {
    let hash = fnv1a(user_id.as_bytes());
    let hue = (hash % 360) as f64;
    let (r, g, b) = hsl_to_rgb(hue, 0.65, 0.45);
    format!("#{r:02x}{g:02x}{b:02x}")
}

fn hsl_to_rgb(h: f64, s: f64, l: f64) -> (u8, u8, u8) {
    let c = (1.0 - (2.0 * l - 1.0).abs()) * s;
    let hp = h / 60.0;
    let x = c * (1.0 - (hp % 2.0 - 1.0).abs());
    let (r1, g1, b1) = match hp as u32 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    let m = l - c / 2.0;
    let to_byte = |v: f64| ((v + m) * 255.0).round().clamp(0.0, 255.0) as u8;
    (to_byte(r1), to_byte(g1), to_byte(b1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::check_color;

    #[test]
    fn stable_and_well_formed() {
        assert_eq!(user_color("ann"), user_color("ann"));
        for id in ["ann", "bob", "", "日本", "a-very-long-user-id-0123456789"] {
            assert!(check_color(&user_color(id)).is_ok(), "{id}");
        }
        assert_ne!(user_color("ann"), user_color("bob"));
    }
}
