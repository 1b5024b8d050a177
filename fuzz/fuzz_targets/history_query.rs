//! The history endpoint's query string (`GET /v1/rooms/{id}/history?
//! before=…&limit=…&kinds=…`), decoded as the gateway decodes it: axum's `Query`
//! into three optional strings, then `kinds` through the protocol's
//! `parse_kinds`.
//!
//! `before` and `limit` are parsed by private functions of the gateway's
//! HTTP module, out of this crate's reach; docs/fuzzing.md says so. What
//! is checked here: no panic; a refused `kinds` is `bad_request`; an
//! accepted one is a non-empty list of distinct kinds, each named in the
//! input, that parses back from its own names to itself.
#![no_main]

use axum::extract::Query;
use axum::http::Uri;
use collab_protocol::ErrorCode;
use collab_protocol::ops::parse_kinds;
use libfuzzer_sys::fuzz_target;
use serde::Deserialize;

/// The parameters the gateway reads, each as the raw string it gets.
#[derive(Debug, Deserialize)]
struct HistoryQuery {
    #[allow(dead_code)]
    before: Option<String>,
    #[allow(dead_code)]
    limit: Option<String>,
    kinds: Option<String>,
}

fuzz_target!(|data: &[u8]| {
    let Ok(query) = std::str::from_utf8(data) else {
        return;
    };
    // Checked on the list alone too, so the fuzzer need not find a valid
    // URI to reach it.
    check_kinds(query);
    let Ok(uri) = format!("/v1/rooms/r/history?{query}").parse::<Uri>() else {
        return;
    };
    if let Ok(Query(params)) = Query::<HistoryQuery>::try_from_uri(&uri) {
        // An empty `kinds` filters nothing and never reaches parse_kinds.
        if let Some(kinds) = params.kinds.filter(|k| !k.is_empty()) {
            check_kinds(&kinds);
        }
    }
});

fn check_kinds(list: &str) {
    match parse_kinds(list) {
        Ok(kinds) => {
            assert!(!kinds.is_empty(), "{list:?} gave no kinds");
            let named: Vec<&str> = list.split(',').map(str::trim).collect();
            for (i, kind) in kinds.iter().enumerate() {
                assert!(!kinds[..i].contains(kind), "{list:?} gave {kind:?} twice");
                assert!(named.contains(&kind.as_str()), "{list:?} gave {kind:?}");
            }
            let names: Vec<&str> = kinds.iter().map(|k| k.as_str()).collect();
            assert_eq!(parse_kinds(&names.join(",")).as_ref(), Ok(&kinds));
        }
        Err(error) => assert_eq!(error.code, ErrorCode::BadRequest, "{list:?}: {error}"),
    }
}
