//! Scope grammar and matching. Pure: no I/O, no actix, nothing but std, as the macros crate
//! compiles this file too (to refuse a malformed `#[require_scope]` when the service is built).
//!
//! A scope is one or more segments joined by `:`, each segment made of `a-z`, `0-9`, `_` and `-`
//! (`users:read`, `admin:delete`, `billing:invoices:write`), at most 64 characters.
//!
//! A key may also hold wildcards, which grant more than one scope:
//! - `resource:*` grants every scope that starts with `resource:` (`users:*` grants `users:read`
//!   and `users:emails:write`, not `users` itself);
//! - `*` grants every scope.
//!
//! Matching is case-sensitive and otherwise exact. Required scopes (what a route demands) never
//! contain wildcards.

pub const MAX_SCOPE_LEN: usize = 64;

/// Whether a route needs all of its scopes or any one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Match {
    All,
    Any,
}

/// Whether `scope` is a valid concrete scope (what a route may require).
pub fn is_valid(scope: &str) -> bool {
    scope.len() <= MAX_SCOPE_LEN
        && scope.split(':').all(|segment| {
            !segment.is_empty()
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        })
}

/// Whether `scope` may be held by a key: a concrete scope, `resource:*`, or `*`.
pub fn is_valid_grant(scope: &str) -> bool {
    scope == "*" || scope.strip_suffix(":*").map_or_else(|| is_valid(scope), is_valid)
}

/// Whether one held scope grants the required one.
pub fn grants(held: &str, required: &str) -> bool {
    if held == "*" || held == required {
        return true;
    }
    match held.strip_suffix('*') {
        Some(stem) if stem.ends_with(':') => {
            required.starts_with(stem) && required.len() > stem.len()
        }
        _ => false,
    }
}

/// Whether the held scopes satisfy `required` under `mode`.
pub fn satisfies<S: AsRef<str>, R: AsRef<str>>(held: &[S], required: &[R], mode: Match) -> bool {
    let granted = |r: &R| held.iter().any(|h| grants(h.as_ref(), r.as_ref()));
    match mode {
        Match::All => required.iter().all(granted),
        Match::Any => required.iter().any(granted),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grammar() {
        for ok in ["read", "users:read", "billing:invoices:write", "api_keys:admin", "a-b:c_d:9"] {
            assert!(is_valid(ok), "{ok}");
            assert!(is_valid_grant(ok), "{ok}");
        }
        for bad in
            ["", ":", "users:", ":read", "Users:read", "users read", "users:*", "*", "ü", "a::b"]
        {
            assert!(!is_valid(bad), "{bad:?}");
        }
        assert!(!is_valid(&"a".repeat(MAX_SCOPE_LEN + 1)));
        for ok in ["*", "users:*", "billing:invoices:*"] {
            assert!(is_valid_grant(ok), "{ok}");
        }
        for bad in ["**", "users*", "*:read", "users:*:read", ":*", "users:**"] {
            assert!(!is_valid_grant(bad), "{bad:?}");
        }
    }

    #[test]
    fn exact_and_wildcard_matching() {
        assert!(grants("users:read", "users:read"));
        assert!(!grants("users:read", "users:write"));
        assert!(!grants("users:read", "Users:read"));
        assert!(grants("users:*", "users:read"));
        assert!(grants("users:*", "users:emails:write"));
        assert!(!grants("users:*", "users"));
        assert!(!grants("users:*", "usersx:read"));
        assert!(!grants("api_keys:admin", "admin"));
        assert!(grants("*", "anything:at:all"));
    }

    #[test]
    fn all_and_any() {
        let held = ["users:read", "billing:*"];
        assert!(satisfies(&held, &["users:read", "billing:write"], Match::All));
        assert!(!satisfies(&held, &["users:read", "users:write"], Match::All));
        assert!(satisfies(&held, &["users:write", "billing:read"], Match::Any));
        assert!(!satisfies(&held, &["users:write", "admin"], Match::Any));
        let none: [&str; 0] = [];
        assert!(!satisfies(&none, &["users:read"], Match::Any));
    }
}
