//! The client frame decoder, differentially: `decode_client_frame` (its
//! fast path, then the Value path for whatever the fast path is not sure
//! of) against `decode_client_frame_via_value` (the Value path alone).
//!
//! The fast path's contract (`frames/fast.rs`) is to answer only with the
//! frame the Value path would return and to leave everything else, every
//! bad frame included, to the Value path. So the two must return the same
//! result for any text: the same frame, or the same error (code, message,
//! room and cid). Beyond that: every refusal is `bad_request`, and a
//! decoded frame encodes to JSON that decodes to the same frame.
#![no_main]

use collab_protocol::ErrorCode;
use collab_protocol::frames::{decode_client_frame, decode_client_frame_via_value};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // A WebSocket text frame is UTF-8; the gateway refuses anything else
    // before it decodes.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let decoded = decode_client_frame(text);
    let reference = decode_client_frame_via_value(text);
    assert_eq!(decoded, reference, "the fast path disagrees on {text:?}");
    match decoded {
        Ok(frame) => {
            let json = serde_json::to_string(&frame).expect("a decoded frame encodes");
            assert_eq!(
                decode_client_frame(&json).as_ref(),
                Ok(&frame),
                "{text:?} decoded to a frame that does not survive encoding: {json}"
            );
        }
        Err(error) => assert_eq!(error.error.code, ErrorCode::BadRequest, "{text:?}: {error}"),
    }
});
