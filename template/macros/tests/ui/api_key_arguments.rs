use auth_macros::require_api_key;

#[require_api_key("admin:delete")]
async fn handler() {}

fn main() {}
