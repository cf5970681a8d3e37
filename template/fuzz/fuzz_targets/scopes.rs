//! The scope grammar and matcher on any text: never a panic, and the rules hold (a valid scope
//! grants itself, `*` grants every valid scope, all-of implies any-of).
#![no_main]

use libfuzzer_sys::fuzz_target;
use {{crate_name}}::scope::{self, Match};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (held, required) = text.split_once('\n').unwrap_or((text, ""));
    let held: Vec<&str> = held.split(',').collect();
    let required: Vec<&str> = required.split(',').filter(|s| scope::is_valid(s)).collect();
    for scope in &held {
        if scope::is_valid(scope) {
            assert!(scope::is_valid_grant(scope));
            assert!(scope::grants(scope, scope));
            assert!(scope::grants("*", scope));
        }
    }
    let all = scope::satisfies(&held, &required, Match::All);
    let any = scope::satisfies(&held, &required, Match::Any);
    if all && !required.is_empty() {
        assert!(any);
    }
});
