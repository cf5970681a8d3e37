use auth_macros::require_scope;

#[require_scope(any(billing_read))]
async fn handler() {}

fn main() {}
