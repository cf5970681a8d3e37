use auth_macros::require_api_key;

struct Routes;

impl Routes {
    #[require_api_key]
    async fn handler(&self) {}
}

fn main() {}
