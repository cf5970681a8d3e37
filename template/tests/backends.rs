//! The backend conformance suite against every backend that runs without a server.

use {{crate_name}}::store::{MemoryBackend, conformance};

#[tokio::test]
async fn memory_backend_conforms() {
    conformance::run(&MemoryBackend::default()).await;
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn sqlite_backend_conforms() {
    use {{crate_name}}::store::{SqlBackend, migrate};

    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("keys.db").display());
    assert_eq!(
        migrate(&url).await.unwrap(),
        1,
        "a new database gets every migration"
    );
    assert_eq!(
        migrate(&url).await.unwrap(),
        0,
        "migrating twice is a no-op"
    );
    conformance::run(&SqlBackend::connect(&url).await.unwrap()).await;
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn postgres_backend_conforms() {
    use {{crate_name}}::store::{SqlBackend, migrate};

    let Ok(url) = std::env::var("TEST_POSTGRES_URL") else {
        eprintln!(
            "SKIPPED postgres_backend_conforms: set TEST_POSTGRES_URL=postgres://... to run it"
        );
        return;
    };
    migrate(&url).await.unwrap();
    assert_eq!(
        migrate(&url).await.unwrap(),
        0,
        "migrating twice is a no-op"
    );
    conformance::run(&SqlBackend::connect(&url).await.unwrap()).await;
}
