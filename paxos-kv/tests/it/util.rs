//! Helpers shared by the integration tests.

use bytes::Bytes;
use paxos_kv::client::Client;
use paxos_kv::client_proto::ReadMode;
use std::time::{Duration, Instant};

/// A linearizable read of `key`, retried (every 100 ms) until the cluster
/// answers or `within` has passed (then the test fails).
pub(crate) async fn read_eventually(
    client: &Client,
    key: &'static [u8],
    within: Duration,
) -> Option<Bytes> {
    let deadline = Instant::now() + within;
    loop {
        match client
            .get(Bytes::from_static(key), ReadMode::Linearizable)
            .await
        {
            Ok(v) => return v,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "read retried");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("no linearizable read within {within:?}: {e}"),
        }
    }
}

/// A put of `value` under `key`, asked again (every 200 ms) while the
/// cluster is between leaders or the outcome is unknown, until it commits
/// or `within` has passed (then the test fails). A put of one value is
/// idempotent, so asking again is safe.
pub(crate) async fn put_eventually(
    client: &Client,
    key: &'static [u8],
    value: &'static [u8],
    within: Duration,
) {
    let deadline = Instant::now() + within;
    loop {
        match client
            .put(Bytes::from_static(key), Bytes::from_static(value))
            .await
        {
            Ok(_) => return,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "put retried");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("no commit of {key:?} within {within:?}: {e}"),
        }
    }
}
