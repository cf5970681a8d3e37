//! The change feed of the Redis store (see [`crate::store::feed`]): every change script publishes
//! the changed key's id on `apikeys:changed`; each instance subscribes on a connection of its own,
//! and publishes its heartbeats on the same channel from another.

use async_trait::async_trait;
use futures_util::StreamExt;
use redis::AsyncCommands;
use tokio::sync::mpsc::Sender;
use tokio::time::timeout;

use crate::store::StoreError;
use crate::store::feed::{ChangeFeed, Heard, SILENCE, follow_with_heartbeats};

/// The channel changes are published on, by the scripts in [`super`].
pub const CHANNEL: &str = "apikeys:changed";

pub struct RedisFeed {
    client: redis::Client,
}

impl RedisFeed {
    pub fn new(url: &str) -> Result<Self, StoreError> {
        let client =
            redis::Client::open(url).map_err(|e| unavailable(format!("Redis URL: {e}")))?;
        Ok(Self { client })
    }
}

fn unavailable(reason: impl ToString) -> StoreError {
    StoreError::Unavailable(format!("Redis change feed: {}", reason.to_string()))
}

#[async_trait]
impl ChangeFeed for RedisFeed {
    async fn follow(&self, heard: Sender<Heard>) -> Result<(), StoreError> {
        let pubsub = timeout(SILENCE, self.client.get_async_pubsub())
            .await
            .map_err(unavailable)?
            .map_err(unavailable)?;
        let (mut sink, messages) = pubsub.split();
        timeout(SILENCE, sink.subscribe(CHANNEL))
            .await
            .map_err(unavailable)?
            .map_err(unavailable)?;
        let publisher = timeout(SILENCE, self.client.get_multiplexed_async_connection())
            .await
            .map_err(unavailable)?
            .map_err(unavailable)?;
        // The sink stays with the stream: dropping it would end the subscription.
        let mut conn = (publisher, messages, sink);
        follow_with_heartbeats(
            &mut conn,
            &heard,
            async |(publisher, _, _), beat| {
                let _: i64 = publisher.publish(CHANNEL, beat).await.map_err(unavailable)?;
                Ok(())
            },
            async |(_, messages, _), wait| match timeout(wait, messages.next()).await {
                Err(_) => Ok(None),
                Ok(None) => Err(unavailable("the connection closed")),
                Ok(Some(message)) => message.get_payload().map(Some).map_err(unavailable),
            },
        )
        .await
    }
}
