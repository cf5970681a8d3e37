use auth_macros::require_scope;

#[require_scope("admin:*")]
async fn handler() {}

fn main() {}
