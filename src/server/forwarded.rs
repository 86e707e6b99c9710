//! The client's address: the TCP peer, or, when the peer is a trusted proxy,
//! the address the proxies say they received the request from.

use std::net::IpAddr;

use ipnet::IpNet;
use warp::http::HeaderMap;

/// The proxies (`connections.trusted_proxies`) whose `X-Forwarded-For` is believed.
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    pub fn new(networks: Vec<IpNet>) -> TrustedProxies {
        TrustedProxies(networks)
    }

    pub fn contains(&self, address: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&address))
    }

    /// The client of a request that `peer` sent with `headers`.
    ///
    /// Each proxy appends the address it received the request from to
    /// `X-Forwarded-For`, so the list is read from the right, skipping trusted
    /// proxies: the first address that is not one is the client (MDN,
    /// "X-Forwarded-For: selecting an IP address"; nginx's realip module with
    /// `real_ip_recursive on`). Whatever a client wrote itself sits to the left
    /// of that and is never read. A peer that is not trusted is the client; an
    /// entry that is not an address ends the walk at the last trusted hop.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.contains(peer) {
            return peer;
        }
        let forwarded = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .collect::<Vec<_>>();
        let mut client = peer;
        for entry in forwarded.iter().rev() {
            match entry.trim().parse::<IpAddr>() {
                Ok(address) => {
                    client = address.to_canonical();
                    if !self.contains(client) {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        client
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxies() -> TrustedProxies {
        TrustedProxies::new(vec![
            "10.0.0.0/8".parse().unwrap(),
            "127.0.0.1/32".parse().unwrap(),
        ])
    }

    fn client(peer: &str, forwarded: &[&str]) -> String {
        let mut headers = HeaderMap::new();
        for value in forwarded {
            headers.append("x-forwarded-for", value.parse().unwrap());
        }
        proxies()
            .client(peer.parse().unwrap(), &headers)
            .to_string()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        assert_eq!(client("192.0.2.9", &["198.51.100.1"]), "192.0.2.9");
    }

    #[test]
    fn the_rightmost_untrusted_address_is_the_client() {
        // The client forged the first entry; our proxies appended the rest.
        assert_eq!(
            client("127.0.0.1", &["203.0.113.66, 198.51.100.7, 10.1.2.3"]),
            "198.51.100.7"
        );
        // The same list split over several header lines.
        assert_eq!(
            client("127.0.0.1", &["203.0.113.66", "198.51.100.7", "10.1.2.3"]),
            "198.51.100.7"
        );
    }

    #[test]
    fn without_a_usable_header_the_nearest_known_hop_is_the_client() {
        assert_eq!(client("127.0.0.1", &[]), "127.0.0.1");
        assert_eq!(client("127.0.0.1", &["10.0.0.5"]), "10.0.0.5");
        assert_eq!(client("127.0.0.1", &["unknown, 10.0.0.5"]), "10.0.0.5");
        assert_eq!(
            client("127.0.0.1", &["::ffff:198.51.100.7"]),
            "198.51.100.7"
        );
    }
}
