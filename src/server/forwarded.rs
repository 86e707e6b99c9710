//! The client's address: the TCP peer, or, when the peer is a trusted proxy,
//! the address the proxies say they received the request from.

use std::net::IpAddr;

use ipnet::IpNet;
use warp::http::HeaderMap;

/// The proxies (`connections.trusted_proxies`) whose `X-Forwarded-For` is believed.
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// IPv4-mapped IPv6 blocks (`::ffff:10.0.0.0/104`) are kept as the IPv4
    /// blocks they are, since peers are compared in their canonical form.
    pub fn new(networks: Vec<IpNet>) -> TrustedProxies {
        let canonical = networks.into_iter().map(|net| match net {
            IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
                Some(v4) => IpNet::new(v4.into(), v6.prefix_len() - 96).unwrap_or(net),
                None => net,
            },
            _ => net,
        });
        TrustedProxies(canonical.collect())
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
            match parse_entry(entry) {
                Some(address) => {
                    client = address.to_canonical();
                    if !self.contains(client) {
                        break;
                    }
                }
                None => break,
            }
        }
        client
    }
}

/// One `X-Forwarded-For` entry: `192.0.2.7`, `2001:db8::1`, or either with a
/// port (`192.0.2.7:5123`, `[2001:db8::1]:5123`) or in brackets, as some proxies
/// write them.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| {
            let bracketed = entry.strip_prefix('[')?.strip_suffix(']')?;
            bracketed.parse::<IpAddr>().ok()
        })
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

    #[test]
    fn entries_with_ports_and_brackets_are_addresses() {
        assert_eq!(client("127.0.0.1", &["198.51.100.7:5123"]), "198.51.100.7");
        assert_eq!(client("127.0.0.1", &["[2001:db8::1]:5123"]), "2001:db8::1");
        assert_eq!(client("127.0.0.1", &["[2001:db8::1]"]), "2001:db8::1");
    }

    #[test]
    fn a_mapped_trusted_block_trusts_its_ipv4_peers() {
        let proxies = TrustedProxies::new(vec!["::ffff:10.0.0.0/104".parse().unwrap()]);
        assert!(proxies.contains("10.1.2.3".parse().unwrap()));
    }
}
