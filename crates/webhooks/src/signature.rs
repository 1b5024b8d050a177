//! The `Collab-Signature` header: `t=<unix seconds>,v1=<hex>`, where the
//! hex is HMAC-SHA256, keyed with the endpoint's secret, of the timestamp,
//! a `.` and the raw body — the scheme Stripe and Svix use. The timestamp
//! lets a receiver refuse replays of old deliveries.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "collab-signature";
/// The header carrying the event's id (also in the body).
pub const EVENT_ID_HEADER: &str = "collab-event-id";

/// The `v1` signature of `body` sent at `timestamp` (Unix seconds).
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    hex::encode(mac(secret, timestamp, body).finalize().into_bytes())
}

/// The header's value.
pub fn header(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    format!("t={timestamp},v1={}", sign(secret, timestamp, body))
}

/// Checks a header's value against `body` as a receiver would: a `t`, and
/// a `v1` that matches (compared in constant time). Returns the timestamp;
/// judging its age is the receiver's business.
pub fn verify(secret: &[u8], header: &str, body: &[u8]) -> Result<i64, &'static str> {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => timestamp = t.parse::<i64>().ok(),
            Some(("v1", v1)) => signatures.push(v1),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or("no timestamp")?;
    for candidate in signatures {
        let Ok(bytes) = hex::decode(candidate) else {
            continue;
        };
        if mac(secret, timestamp, body).verify_slice(&bytes).is_ok() {
            return Ok(timestamp);
        }
    }
    Err("no matching v1 signature")
}

fn mac(secret: &[u8], timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC accepts every key length"));
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_known_vector() {
        // printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac 'whsec_test_secret'
        assert_eq!(
            sign(b"whsec_test_secret", 1_700_000_000, br#"{"a":1}"#),
            "aecbc681fe3d2604c08ff8e880a0988d997a12367fcf9545e6a3b90c1dfc04b7"
        );
    }

    #[test]
    fn verify_accepts_its_own_and_refuses_changes() {
        let body = br#"{"id":"op:r1:1"}"#;
        let value = header(b"secret-0123456789", 1_700_000_000, body);
        assert_eq!(
            verify(b"secret-0123456789", &value, body),
            Ok(1_700_000_000)
        );
        assert!(verify(b"another-secret-00", &value, body).is_err());
        assert!(verify(b"secret-0123456789", &value, br#"{"id":"op:r1:2"}"#).is_err());
        let shifted = value.replace("t=1700000000", "t=1700000001");
        assert!(verify(b"secret-0123456789", &shifted, body).is_err());
        assert!(verify(b"secret-0123456789", "v1=00", body).is_err());
    }
}
