//! The key parser and checksum on any bytes: never a panic, and what parses verifies against its
//! own digest.
#![no_main]

use libfuzzer_sys::fuzz_target;
use {{crate_name}}::auth::key_format::KeyFormat;

fuzz_target!(|data: &[u8]| {
    let format = KeyFormat::new("sk_", None);
    if let Ok(parsed) = format.parse(data) {
        assert_eq!(data.len(), format.key_len());
        assert_eq!(parsed.id().len(), 12);
        assert!(format.verify(parsed, &format.hash(parsed)));
    }
    if let Ok(shaped) = format.parse_shape(data) {
        assert_eq!(shaped.check_checksum().is_ok(), format.parse(data).is_ok());
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = format.appears_in(text);
    }
});
