use auth_macros::require_scope;

#[require_scope("reports:read", "Admin:Delete")]
async fn handler() {}

fn main() {}
