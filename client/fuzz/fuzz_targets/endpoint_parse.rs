//! Fuzzes the one parser of Workload API endpoint addresses (`SPIFFE_ENDPOINT_SOCKET`, the
//! `--socket` flags) on arbitrary UTF-8: it must never panic, an accepted path is absolute
//! and is the value itself or the value after `unix:` / `unix://`, and the flag and
//! environment routes through `socket_path_from` agree with it.
#![no_main]

use std::path::Path;

use lanyard_client::endpoint::{
    DEFAULT_SOCKET, EndpointError, SPIFFE_ENDPOINT_SOCKET, parse, socket_path_from,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = parse(value);
    match &parsed {
        Ok(path) => {
            assert!(path.is_absolute(), "{value:?} gave {path:?}");
            let text = path.to_str().expect("a path parsed from UTF-8 is UTF-8");
            assert!(text.starts_with('/'));
            assert!(
                value == text
                    || value.strip_prefix("unix:") == Some(text)
                    || value.strip_prefix("unix://") == Some(text),
                "{value:?} gave {text:?}"
            );
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
    assert_eq!(socket_path_from(Some(value), None), parsed);
    // The environment is read only when no flag is given; an empty one means "not set", and
    // a refusal says where the value came from.
    let from_env = socket_path_from(None, Some(value));
    match (from_env, parsed) {
        (Ok(path), _) if value.is_empty() => assert_eq!(path, Path::new(DEFAULT_SOCKET)),
        (Ok(path), Ok(parsed)) => assert_eq!(path, parsed),
        (Err(EndpointError::From { origin, source }), Err(e)) => {
            assert_eq!(origin, SPIFFE_ENDPOINT_SOCKET);
            assert_eq!(*source, e);
        }
        (from_env, parsed) => panic!("{value:?}: {from_env:?} from the environment, {parsed:?}"),
    }
});
