//! The change feed of the Redis store (see [`crate::store::feed`]): every change script publishes
//! the changed key's id on `apikeys:changed`; each instance subscribes on a connection of its own,
//! and pings it when it has heard nothing for a heartbeat.

use async_trait::async_trait;
use futures_util::StreamExt;
use tokio::sync::mpsc::Sender;
use tokio::time::timeout;

use crate::store::StoreError;
use crate::store::feed::{ChangeFeed, HEARTBEAT, Heard, SILENCE, tell};

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
        let (mut sink, mut messages) = pubsub.split();
        sink.subscribe(CHANNEL).await.map_err(unavailable)?;
        let mut next = Heard::Listening;
        while tell(&heard, next).await {
            next = match timeout(HEARTBEAT, messages.next()).await {
                Ok(Some(message)) => Heard::Changed(message.get_payload().map_err(unavailable)?),
                Ok(None) => return Err(unavailable("the connection closed")),
                Err(_) => {
                    let _: redis::Value = timeout(SILENCE, sink.ping())
                        .await
                        .map_err(unavailable)?
                        .map_err(unavailable)?;
                    Heard::Alive
                }
            };
        }
        Ok(())
    }
}
