use auth_macros::require_scope;

#[require_scope()]
async fn handler() {}

fn main() {}
