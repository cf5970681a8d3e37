use auth_macros::require_api_key;

#[require_api_key]
fn handler() {}

fn main() {}
