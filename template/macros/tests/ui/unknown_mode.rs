use auth_macros::require_scope;

#[require_scope(some("billing:read", "billing:admin"))]
async fn handler() {}

fn main() {}
