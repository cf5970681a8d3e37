//! Finding the key in request headers, on any header values: never a panic, and a key is only ever
//! taken from one header that appears once.
#![no_main]

use actix_web::http::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use {{crate_name}}::auth::authenticator::presented_key;
use {{crate_name}}::auth::key_format::KeyFormat;

fuzz_target!(|data: &[u8]| {
    let custom = HeaderName::from_static("x-api-key");
    let mut headers = HeaderMap::new();
    // Each line is a header value, alternately Authorization and X-API-Key.
    for (n, line) in data.split(|&b| b == b'\n').take(4).enumerate() {
        if let Ok(value) = HeaderValue::from_bytes(line) {
            let name = if n % 2 == 0 { AUTHORIZATION } else { custom.clone() };
            headers.append(name, value);
        }
    }
    if let Ok(key) = presented_key(&headers, &custom) {
        assert!(key.len() <= data.len());
        let _ = KeyFormat::new("sk_", None).parse(key);
    }
});
