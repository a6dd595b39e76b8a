//! Who the client is: the TCP peer, or — only when the peer is a trusted proxy — the first
//! untrusted hop named by `Forwarded` (RFC 7239) or, without it, `X-Forwarded-For`.
//!
//! Hops are read right to left (each proxy appends), skipping trusted proxies; the first address
//! that is not a trusted proxy is the client. A malformed or obfuscated hop (`unknown`, `_x`)
//! stops the walk at the last hop we could trust to be truthful, the proxy that reported it.
//! Headers from an untrusted peer are ignored entirely: anyone can send them.

use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;

/// Trusted proxy networks from `server.trusted_proxies`.
#[derive(Clone, Debug, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Parses CIDRs (`10.0.0.0/8`) or single addresses (`10.1.2.3`).
    pub fn parse(entries: &[String]) -> Result<TrustedProxies, String> {
        entries
            .iter()
            .map(|e| {
                e.parse::<IpNet>()
                    .or_else(|_| e.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("server.trusted_proxies: `{e}` is not an address or CIDR"))
            })
            .collect::<Result<_, _>>()
            .map(TrustedProxies)
    }

    fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client address for a request from `peer` carrying `headers`.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer);
        if !self.contains(peer) {
            return peer;
        }
        let hops = forwarded_hops(headers);
        let mut client = peer;
        for hop in hops.iter().rev() {
            match hop {
                Some(ip) => {
                    client = *ip;
                    if !self.contains(*ip) {
                        break;
                    }
                }
                None => break,
            }
        }
        client
    }
}

/// IPv4-mapped IPv6 (`::ffff:1.2.3.4`) is the IPv4 address: one client, one bucket.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// Hops in order, client first; `None` for a hop that is not a readable address.
fn forwarded_hops(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let forwarded: Vec<&str> = headers.get_all("forwarded").iter().filter_map(|v| v.to_str().ok()).collect();
    if !forwarded.is_empty() {
        return forwarded
            .iter()
            .flat_map(|v| v.split(','))
            .filter_map(|element| {
                element.split(';').find_map(|pair| {
                    let (k, v) = pair.trim().split_once('=')?;
                    k.trim().eq_ignore_ascii_case("for").then(|| parse_node(v.trim().trim_matches('"')))
                })
            })
            .collect();
    }
    headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|hop| parse_node(hop.trim()))
        .collect()
}

/// `1.2.3.4`, `1.2.3.4:80`, `[2001:db8::1]`, `[2001:db8::1]:443`, `2001:db8::1`.
fn parse_node(node: &str) -> Option<IpAddr> {
    if let Ok(ip) = node.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Some(rest) = node.strip_prefix('[') {
        return rest.split_once(']').and_then(|(ip, _)| ip.parse().ok()).map(canonical);
    }
    node.rsplit_once(':').and_then(|(ip, _port)| ip.parse::<std::net::Ipv4Addr>().ok()).map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    #[test]
    fn client_ip_table() {
        let trusted = TrustedProxies::parse(&["10.0.0.0/8".into(), "192.0.2.1".into()]).unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        #[rustfmt::skip]
        let cases: &[(&str, &[(&str, &str)], &str)] = &[
            // untrusted peer: headers ignored
            ("203.0.113.9", &[("x-forwarded-for", "1.1.1.1")], "203.0.113.9"),
            // trusted peer, one hop
            ("10.0.0.5", &[("x-forwarded-for", "198.51.100.7")], "198.51.100.7"),
            // spoofed left part: the first untrusted hop from the right wins
            ("10.0.0.5", &[("x-forwarded-for", "6.6.6.6, 198.51.100.7, 10.0.0.9")], "198.51.100.7"),
            // several header lines are one list
            ("10.0.0.5", &[("x-forwarded-for", "6.6.6.6"), ("x-forwarded-for", "198.51.100.7")], "198.51.100.7"),
            // all hops trusted: the leftmost
            ("10.0.0.5", &[("x-forwarded-for", "10.1.1.1, 10.2.2.2")], "10.1.1.1"),
            // garbage hop: stop at the proxy that reported it
            ("10.0.0.5", &[("x-forwarded-for", "198.51.100.7, nonsense")], "10.0.0.5"),
            // no header from a trusted peer: the peer
            ("192.0.2.1", &[], "192.0.2.1"),
            // Forwarded wins over X-Forwarded-For; quoted IPv6 with port
            ("10.0.0.5", &[("forwarded", "for=\"[2001:db8::1]:4711\";proto=https"), ("x-forwarded-for", "6.6.6.6")], "2001:db8::1"),
            ("10.0.0.5", &[("forwarded", "for=6.6.6.6, for=198.51.100.7:80;by=10.0.0.5")], "198.51.100.7"),
            ("10.0.0.5", &[("forwarded", "for=unknown")], "10.0.0.5"),
            // IPv4-mapped peers are IPv4
            ("::ffff:10.0.0.5", &[("x-forwarded-for", "198.51.100.7")], "198.51.100.7"),
        ];
        for (peer, hdrs, want) in cases {
            assert_eq!(trusted.client_ip(ip(peer), &headers(hdrs)), ip(want), "peer {peer} headers {hdrs:?}");
        }
    }

    #[test]
    fn bad_cidrs_are_config_errors() {
        assert!(TrustedProxies::parse(&["10.0.0.0/33".into()]).is_err());
        assert!(TrustedProxies::parse(&["proxy.local".into()]).is_err());
    }
}
