//! Who may hold what of the daemon's connections: a cap on all connections
//! (kept below the open-files limit), a cap per client address, and a request
//! rate per address for requests without credentials. Each refusal is counted
//! in `parleyd_limit_refusals_total{limit}` and answered over HTTP.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock as _, DefaultClock};
use governor::DefaultKeyedRateLimiter;
use tokio::sync::Notify;
use warp::Reply;

use crate::api::Response;
use crate::config::ConnectionsConfig;
use crate::error::ApiError;

/// What a client is told to wait before trying a refused connection again.
const RETRY_CONNECTION_AFTER: Duration = Duration::from_secs(1);

/// What the per-address limits count by: an IPv4 address, or the /64 an IPv6
/// address belongs to (the smallest block a site is assigned, RFC 6177: one
/// host can pick any of its 2^64 addresses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKey(IpAddr);

/// The length of the IPv6 prefix one client is counted by.
const IPV6_CLIENT_PREFIX: u32 = 64;

impl From<IpAddr> for ClientKey {
    fn from(address: IpAddr) -> ClientKey {
        match address.to_canonical() {
            IpAddr::V6(v6) => {
                let mask = u128::MAX << (128 - IPV6_CLIENT_PREFIX);
                ClientKey(IpAddr::V6((u128::from(v6) & mask).into()))
            }
            v4 => ClientKey(v4),
        }
    }
}

impl std::fmt::Display for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/{IPV6_CLIENT_PREFIX}"),
        }
    }
}

pub struct Admission {
    max_open: usize,
    max_per_address: usize,
    open: AtomicUsize,
    per_address: Mutex<HashMap<ClientKey, usize>>,
    anonymous: DefaultKeyedRateLimiter<ClientKey>,
    /// Notified when the last connection closes (shutdown waits for it).
    drained: Notify,
}

/// Why a connection or request was turned away.
#[derive(Debug, Clone)]
pub enum Refusal {
    /// Every one of the `max` connection slots is taken.
    Full { max: usize },
    /// `address` already holds `max` connections.
    Address { address: ClientKey, max: usize },
    /// `address` sent requests without credentials faster than allowed.
    Anonymous {
        address: ClientKey,
        retry_after: Duration,
    },
}

impl Refusal {
    /// The `limit` label of `parleyd_limit_refusals_total`.
    fn limit(&self) -> &'static str {
        match self {
            Refusal::Full { .. } => "connections",
            Refusal::Address { .. } => "connections_per_address",
            Refusal::Anonymous { .. } => "anonymous_requests_per_address",
        }
    }

    fn counted(self) -> Refusal {
        crate::api::count_refusal(self.limit());
        self
    }

    /// The answer: 503 `unavailable` when the daemon is full, 429
    /// `rate_limited` for a limit of the client's own; both with `Retry-After`.
    pub fn response(&self) -> Response {
        let error = match self {
            Refusal::Full { max } => ApiError::Unavailable(format!(
                "the server holds its limit of {max} connections; retry shortly"
            )),
            Refusal::Address { address, max } => ApiError::RateLimited {
                message: format!(
                    "{address} holds {max} connections, the most one address may \
                     (connections.max_per_address); close one first"
                ),
                retry_after: RETRY_CONNECTION_AFTER,
            },
            Refusal::Anonymous {
                address,
                retry_after,
            } => ApiError::RateLimited {
                message: format!(
                    "too many requests without credentials from {address} \
                     (connections.anonymous_rate)"
                ),
                retry_after: *retry_after,
            },
        };
        let mut response = error.into_response();
        if let Refusal::Full { .. } = self {
            response.headers_mut().insert(
                warp::http::header::RETRY_AFTER,
                warp::http::HeaderValue::from(RETRY_CONNECTION_AFTER.as_secs()),
            );
        }
        response
    }
}

/// A connection slot, an address slot, or both; dropping it gives them back.
pub struct Slot {
    admission: Arc<Admission>,
    connection: bool,
    address: Option<ClientKey>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(address) = self.address {
            self.admission.release_address(address);
        }
        if self.connection {
            metrics::gauge!("parleyd_connections").decrement(1.0);
            if self.admission.open.fetch_sub(1, Ordering::AcqRel) == 1 {
                self.admission.drained.notify_waiters();
            }
        }
    }
}

impl Admission {
    /// Limits from `config`, with at most `max_open` connections in all (the
    /// caller lowers the configured number to what the open-files limit allows).
    /// One address never gets more than half of `max_open`, whatever
    /// `max_per_address` says: under a low open-files limit, one client must
    /// still not be able to take every slot.
    pub fn new(config: &ConnectionsConfig, max_open: usize) -> Admission {
        let quota = config.anonymous_rate.quota();
        metrics::gauge!("parleyd_connection_limit").set(max_open as f64);
        Admission {
            max_open,
            max_per_address: config.max_per_address.min((max_open / 2).max(1)),
            open: AtomicUsize::new(0),
            per_address: Mutex::new(HashMap::new()),
            anonymous: DefaultKeyedRateLimiter::keyed(quota),
            drained: Notify::new(),
        }
    }

    /// A new TCP connection, from `address` (`None` for a trusted proxy, whose
    /// requests count against the addresses they forward instead).
    pub fn connection(self: &Arc<Self>, address: Option<IpAddr>) -> Result<Slot, Refusal> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_open).then_some(n + 1)
            })
            .map_err(|_| Refusal::Full { max: self.max_open }.counted())?;
        metrics::gauge!("parleyd_connections").increment(1.0);
        let mut slot = Slot {
            admission: Arc::clone(self),
            connection: true,
            address: None,
        };
        if let Some(address) = address.map(ClientKey::from) {
            // On refusal, dropping `slot` gives the connection slot back.
            self.hold_address(address)?;
            slot.address = Some(address);
        }
        Ok(slot)
    }

    /// A request forwarded by a trusted proxy for `address`: held for as long
    /// as the request (a stream: its whole life).
    pub fn forwarded_request(self: &Arc<Self>, address: IpAddr) -> Result<Slot, Refusal> {
        let address = ClientKey::from(address);
        self.hold_address(address)?;
        Ok(Slot {
            admission: Arc::clone(self),
            connection: false,
            address: Some(address),
        })
    }

    /// A request without credentials from `address`.
    pub fn anonymous_request(&self, address: IpAddr) -> Result<(), Refusal> {
        let address = ClientKey::from(address);
        self.anonymous.check_key(&address).map_err(|not_until| {
            Refusal::Anonymous {
                address,
                retry_after: not_until.wait_time_from(DefaultClock::default().now()),
            }
            .counted()
        })
    }

    fn hold_address(&self, address: ClientKey) -> Result<(), Refusal> {
        let mut held = self.per_address.lock().unwrap_or_else(|e| e.into_inner());
        let count = held.entry(address).or_insert(0);
        if *count >= self.max_per_address {
            return Err(Refusal::Address {
                address,
                max: self.max_per_address,
            }
            .counted());
        }
        *count += 1;
        Ok(())
    }

    fn release_address(&self, address: ClientKey) {
        let mut held = self.per_address.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = held.get_mut(&address) {
            *count -= 1;
            if *count == 0 {
                held.remove(&address);
            }
        }
    }

    /// Forgets the rate state of addresses that have been quiet a while.
    pub fn prune(&self) {
        self.anonymous.retain_recent();
        self.anonymous.shrink_to_fit();
    }

    /// Waits (up to `timeout`) until no connection is open.
    pub async fn drained(&self, timeout: Duration) {
        let all_closed = async {
            loop {
                let drained = self.drained.notified();
                if self.open.load(Ordering::Acquire) == 0 {
                    return;
                }
                drained.await;
            }
        };
        if tokio::time::timeout(timeout, all_closed).await.is_err() {
            tracing::warn!(
                left = self.open.load(Ordering::Acquire),
                "connections still open at the shutdown deadline"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Rate;

    fn admission(max_open: usize, max_per_address: usize) -> Arc<Admission> {
        let config = ConnectionsConfig {
            max_per_address,
            anonymous_rate: Rate::new(1, 2),
            ..ConnectionsConfig::default()
        };
        Arc::new(Admission::new(&config, max_open))
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn one_address_cannot_take_another_addresss_connections() {
        let admission = admission(10, 2);
        let a = [
            admission.connection(Some(ip("192.0.2.1"))).unwrap(),
            admission.connection(Some(ip("192.0.2.1"))).unwrap(),
        ];
        assert!(matches!(
            admission.connection(Some(ip("192.0.2.1"))),
            Err(Refusal::Address { max: 2, .. })
        ));
        let _b = admission.connection(Some(ip("192.0.2.2"))).unwrap();
        drop(a);
        // Both slots came back, and the refused attempt took none.
        assert_eq!(admission.open.load(Ordering::Acquire), 1);
        let _again = admission.connection(Some(ip("192.0.2.1"))).unwrap();
    }

    #[test]
    fn an_ipv6_host_is_counted_by_its_64() {
        let admission = admission(10, 1);
        let _held = admission.connection(Some(ip("2001:db8:1:2::1"))).unwrap();
        match admission.connection(Some(ip("2001:db8:1:2:ffff::9"))) {
            Err(Refusal::Address { address, .. }) => {
                assert_eq!(address.to_string(), "2001:db8:1:2::/64")
            }
            _ => panic!("a second address of the same /64 was admitted"),
        }
        assert!(admission.connection(Some(ip("2001:db8:1:3::1"))).is_ok());
    }

    #[test]
    fn one_address_gets_at_most_half_of_all_connections() {
        let admission = admission(4, 100);
        let _held = [
            admission.connection(Some(ip("192.0.2.1"))).unwrap(),
            admission.connection(Some(ip("192.0.2.1"))).unwrap(),
        ];
        assert!(matches!(
            admission.connection(Some(ip("192.0.2.1"))),
            Err(Refusal::Address { max: 2, .. })
        ));
    }

    #[test]
    fn the_total_cap_holds_across_addresses_and_frees_on_drop() {
        let admission = admission(2, 5);
        let first = admission.connection(Some(ip("192.0.2.1"))).unwrap();
        let _second = admission.connection(None).unwrap();
        assert!(matches!(
            admission.connection(Some(ip("192.0.2.3"))),
            Err(Refusal::Full { max: 2 })
        ));
        drop(first);
        assert!(admission.connection(Some(ip("192.0.2.3"))).is_ok());
    }

    #[test]
    fn forwarded_requests_count_against_the_forwarded_address() {
        let admission = admission(10, 1);
        let _proxy = admission.connection(None).unwrap();
        let held = admission.forwarded_request(ip("198.51.100.7")).unwrap();
        assert!(admission.forwarded_request(ip("198.51.100.7")).is_err());
        assert!(admission.forwarded_request(ip("198.51.100.8")).is_ok());
        drop(held);
        assert!(admission.forwarded_request(ip("198.51.100.7")).is_ok());
    }

    #[test]
    fn anonymous_requests_are_rated_per_address() {
        let admission = admission(10, 10);
        assert!(admission.anonymous_request(ip("192.0.2.1")).is_ok());
        assert!(admission.anonymous_request(ip("192.0.2.1")).is_ok());
        match admission.anonymous_request(ip("192.0.2.1")) {
            Err(Refusal::Anonymous { retry_after, .. }) => assert!(retry_after > Duration::ZERO),
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert!(admission.anonymous_request(ip("192.0.2.2")).is_ok());
    }
}
