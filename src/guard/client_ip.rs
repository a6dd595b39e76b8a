//! Who the client is: the TCP peer, or — only when the peer is a trusted proxy — the first
//! untrusted hop named by the one header the config trusts (`server.client_ip_header`):
//! `Forwarded` (RFC 7239), `X-Forwarded-For`, or a single-address header such as `X-Real-IP`.
//!
//! Exactly one header is read. A proxy overwrites or appends to the header it writes, but passes
//! every other header through from the client: trusting a second one would let any client pick
//! its own rate-limit key. Hops are read right to left (each proxy appends), skipping trusted
//! proxies; the first address that is not a trusted proxy is the client. A malformed or
//! obfuscated hop (`unknown`, `_x`) stops the walk at the last hop we could trust to be
//! truthful, the proxy that reported it. Headers from an untrusted peer are ignored entirely:
//! anyone can send them.

use std::net::IpAddr;

use http::{HeaderMap, HeaderName};
use ipnet::IpNet;

/// Trusted proxy networks from `server.trusted_proxies`, and the header they write.
#[derive(Clone, Debug)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
    header: HeaderName,
}

impl TrustedProxies {
    /// Parses CIDRs (`10.0.0.0/8`) or single addresses (`10.1.2.3`), and the header name.
    pub fn parse(entries: &[String], header: &str) -> Result<TrustedProxies, String> {
        let header = HeaderName::from_bytes(header.trim().as_bytes())
            .map_err(|_| format!("server.client_ip_header: `{header}` is not a header name"))?;
        let nets = entries
            .iter()
            .map(|e| {
                e.parse::<IpNet>()
                    .or_else(|_| e.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("server.trusted_proxies: `{e}` is not an address or CIDR"))
            })
            .collect::<Result<_, _>>()?;
        Ok(TrustedProxies { nets, header })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.nets.iter().any(|net| net.contains(&ip))
    }

    /// The client address for a request from `peer` carrying `headers`.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer);
        if !self.contains(peer) {
            return peer;
        }
        let hops = hops(headers, &self.header);
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

/// The hops `header` names, in order, client first; `None` for a hop that is not a readable
/// address. `Forwarded` elements give their `for=`; any other header is a comma list of
/// addresses (`X-Forwarded-For`), possibly of one (`X-Real-IP`). Several lines are one list.
fn hops(headers: &HeaderMap, header: &HeaderName) -> Vec<Option<IpAddr>> {
    let lines = headers.get_all(header).iter().map(|v| v.to_str().ok());
    if header == http::header::FORWARDED {
        return lines
            .flat_map(|v| v.unwrap_or("_unreadable").split(','))
            .filter_map(|element| {
                element.split(';').find_map(|pair| {
                    let (k, v) = pair.trim().split_once('=')?;
                    k.trim().eq_ignore_ascii_case("for").then(|| parse_node(v.trim().trim_matches('"')))
                })
            })
            .collect();
    }
    lines.flat_map(|v| v.unwrap_or("_unreadable").split(',')).map(|hop| parse_node(hop.trim())).collect()
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

    fn proxies(header: &str) -> TrustedProxies {
        TrustedProxies::parse(&["10.0.0.0/8".into(), "192.0.2.1".into()], header).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn client_ip_table() {
        let trusted = proxies("x-forwarded-for");
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
            // IPv6 with port in brackets
            ("10.0.0.5", &[("x-forwarded-for", "[2001:db8::1]:4711")], "2001:db8::1"),
            // IPv4-mapped peers are IPv4
            ("::ffff:10.0.0.5", &[("x-forwarded-for", "198.51.100.7")], "198.51.100.7"),
        ];
        for (peer, hdrs, want) in cases {
            assert_eq!(trusted.client_ip(ip(peer), &headers(hdrs)), ip(want), "peer {peer} headers {hdrs:?}");
        }
    }

    #[test]
    fn forwarded_elements_give_their_for() {
        let trusted = proxies("forwarded");
        #[rustfmt::skip]
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("forwarded", "for=\"[2001:db8::1]:4711\";proto=https")], "2001:db8::1"),
            (&[("forwarded", "for=6.6.6.6, for=198.51.100.7:80;by=10.0.0.5")], "198.51.100.7"),
            (&[("forwarded", "for=unknown")], "10.0.0.5"),
            (&[("forwarded", "proto=https;For=198.51.100.7")], "198.51.100.7"),
        ];
        for (hdrs, want) in cases {
            assert_eq!(trusted.client_ip(ip("10.0.0.5"), &headers(hdrs)), ip(want), "{hdrs:?}");
        }
    }

    /// A client behind the trusted proxy adds the headers the proxy does not write: each is
    /// ignored, whichever header the proxy writes.
    #[test]
    fn only_the_configured_header_is_believed() {
        let real = "198.51.100.7";
        let spoof = [("forwarded", "for=6.6.6.6"), ("x-forwarded-for", "6.6.6.6"), ("x-real-ip", "6.6.6.6")];
        for (configured, written) in [("forwarded", "for=198.51.100.7"), ("x-forwarded-for", real), ("x-real-ip", real)] {
            let trusted = proxies(configured);
            let mut h: Vec<(&str, &str)> = spoof.iter().copied().filter(|(k, _)| *k != configured).collect();
            h.push((configured, written));
            assert_eq!(trusted.client_ip(ip("10.0.0.5"), &headers(&h)), ip(real), "trusting {configured}, sent {h:?}");
            // The proxy's value is the last of the header's hops: a client-sent line before it is
            // a hop further away, skipped only if it is a trusted proxy.
            let mut h = vec![(configured, if configured == "forwarded" { "for=10.9.9.9" } else { "10.9.9.9" })];
            h.push((configured, written));
            assert_eq!(trusted.client_ip(ip("10.0.0.5"), &headers(&h)), ip(real), "trusting {configured}, sent {h:?}");
        }
        // X-Real-IP holds one address; a header without one leaves the proxy as the client.
        let trusted = proxies("x-real-ip");
        assert_eq!(trusted.client_ip(ip("10.0.0.5"), &headers(&[("x-forwarded-for", real)])), ip("10.0.0.5"));
    }

    #[test]
    fn bad_cidrs_are_config_errors() {
        assert!(TrustedProxies::parse(&["10.0.0.0/33".into()], "x-forwarded-for").is_err());
        assert!(TrustedProxies::parse(&["proxy.local".into()], "x-forwarded-for").is_err());
        assert!(TrustedProxies::parse(&[], "x real ip").is_err());
    }
}
