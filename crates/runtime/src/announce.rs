//! Changes announced over the shared Redis Cluster. A service that owns some data announces the
//! keys it changed, under a name, on its own channel; its other replicas and the services that
//! keep copies follow the channel and drop or refresh theirs.
//!
//! The channels are sharded ones (SPUBLISH): a cluster-wide PUBLISH is relayed to every node over
//! the cluster bus, which cost more Redis CPU than all the cache reads and writes together.
//! Pub/sub is fire-and-forget, so a follower that was disconnected or fell behind may have missed
//! announcements; it is told so ([`Changed::Unknown`]) and must treat everything it holds as
//! changed.

use std::ops::ControlFlow;

use fred::interfaces::EventInterface;
use fred::prelude::PubsubInterface;
use tokio::sync::broadcast::error::RecvError;

use crate::redis::Redis;

/// What a followed channel said.
#[derive(Debug)]
pub enum Changed<'a> {
    /// These keys changed.
    Keys(std::str::Lines<'a>),
    /// Announcements may have been missed: anything may have changed.
    Unknown,
}

/// The channel the owner with Redis prefix `owner_prefix` announces changes of `name` on.
pub fn channel(owner_prefix: &str, name: &str) -> String {
    format!("{owner_prefix}:{name}:invalidate")
}

/// Announces that `keys` of `name` changed, on this service's channel for `name`.
pub async fn announce(redis: &Redis, name: &str, keys: &[String]) -> Result<(), fred::error::Error> {
    let channel = channel(redis.prefix(), name);
    redis.admit()?.next().spublish::<i64, _, _>(channel, keys.join("\n")).await.map(drop)
}

/// Follows what the owner with Redis prefix `owner_prefix` announces about `name`, on a task
/// of its own, until `on_change` breaks.
pub fn follow<F>(redis: Redis, owner_prefix: &str, name: &str, mut on_change: F)
where
    F: FnMut(Changed<'_>) -> ControlFlow<()> + Send + 'static,
{
    let channel = channel(owner_prefix, name);
    let mut messages = redis.subscriber().message_rx();
    let mut reconnections = redis.subscriber().reconnect_rx();
    tokio::spawn(async move {
        if let Err(err) = redis.subscriber().ssubscribe(channel.clone()).await {
            // manage_subscriptions re-subscribes once the subscriber connects.
            tracing::debug!(%channel, error = %err, "announcement channel not subscribed yet");
        }
        loop {
            let flow = tokio::select! {
                message = messages.recv() => match message {
                    Ok(message) if message.channel == channel.as_str() => match message.value.as_string() {
                        Some(keys) => on_change(Changed::Keys(keys.lines())),
                        None => ControlFlow::Continue(()),
                    },
                    Ok(_) => ControlFlow::Continue(()),
                    Err(RecvError::Lagged(missed)) => {
                        tracing::warn!(%channel, missed, "announcements missed; everything counts as changed");
                        on_change(Changed::Unknown)
                    }
                    Err(RecvError::Closed) => return,
                },
                reconnected = reconnections.recv() => {
                    if matches!(reconnected, Err(RecvError::Closed)) {
                        return;
                    }
                    tracing::debug!(%channel, "announcement subscriber reconnected; everything counts as changed");
                    on_change(Changed::Unknown)
                }
            };
            if flow.is_break() {
                return;
            }
        }
    });
}
