//! Which address a request comes from: the connection's peer, or, when the peer is one of your own
//! proxies (`TRUSTED_PROXIES`), the address your proxies report in `X-Forwarded-For` (or
//! `Forwarded`, or `X-Real-IP`: `PROXY_HEADER`).
//!
//! Proxies append to the chain, so it is read from the right: each trusted hop vouches for the entry
//! before it, and the first address that is not a trusted proxy is the client. Entries further left
//! were written by the client and are never believed. A chain that cannot be read falls back to the
//! peer: there is always an address to count failures against.

use std::net::{IpAddr, SocketAddr};

use actix_web::http::header::{HeaderMap, HeaderName};
use ipnet::IpNet;

use crate::config::{Config, ConfigError, ProxyHeader};

/// Your proxies, and how they report the client. The default trusts none.
#[derive(Debug, Clone)]
pub struct TrustedProxies {
    networks: Vec<IpNet>,
    header: ProxyHeader,
}

impl TrustedProxies {
    /// Believes `networks` to report the client in `header`.
    pub fn new(networks: Vec<IpNet>, header: ProxyHeader) -> Self {
        Self { networks, header }
    }

    /// The proxies `TRUSTED_PROXIES` and `PROXY_HEADER` name.
    pub fn from_config(config: &Config) -> Result<Self, ConfigError> {
        let (networks, header) = config.trusted_proxies()?;
        Ok(Self::new(networks, header))
    }

    /// The client's address; `None` only when the connection has no peer address (in tests).
    pub fn client(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        let peer = peer?.to_canonical();
        if !self.trusts(peer) {
            return Some(peer);
        }
        let Some(chain) = self.chain(headers) else {
            return Some(peer);
        };
        let mut client = peer;
        for hop in chain.iter().rev() {
            let Some(hop) = hop else {
                return Some(peer);
            };
            client = *hop;
            if !self.trusts(client) {
                break;
            }
        }
        Some(client)
    }

    fn trusts(&self, address: IpAddr) -> bool {
        self.networks.iter().any(|net| net.contains(&address))
    }

    /// The reported chain, left to right; an entry that is not an address is `None`. `None` for the
    /// whole chain when the header is absent.
    fn chain(&self, headers: &HeaderMap) -> Option<Vec<Option<IpAddr>>> {
        let (name, parameter) = match self.header {
            ProxyHeader::XForwardedFor => ("x-forwarded-for", None),
            ProxyHeader::Forwarded => ("forwarded", Some("for=")),
            ProxyHeader::XRealIp => ("x-real-ip", None),
        };
        let mut chain = Vec::new();
        for value in headers.get_all(HeaderName::from_static(name)) {
            // Element by element: bytes a client wrote on the left must not spoil what the proxies
            // appended on the right.
            for element in value.as_bytes().split(|byte| *byte == b',') {
                let Ok(element) = std::str::from_utf8(element) else {
                    chain.push(None);
                    continue;
                };
                let entry = match parameter {
                    None => Some(element),
                    Some(parameter) => element.split(';').find_map(|pair| {
                        let pair = pair.trim();
                        pair.get(..parameter.len())
                            .filter(|key| key.eq_ignore_ascii_case(parameter))
                            .map(|_| &pair[parameter.len()..])
                    }),
                };
                chain.push(entry.and_then(address));
            }
        }
        (!chain.is_empty()).then_some(chain)
    }
}

/// An address as proxies write it: bare, with a port, bracketed, or quoted (`"[2001:db8::1]:443"`).
fn address(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim().trim_matches('"');
    entry
        .parse::<IpAddr>()
        .or_else(|_| entry.parse::<SocketAddr>().map(|socket| socket.ip()))
        .or_else(|_| entry.trim_start_matches('[').trim_end_matches(']').parse())
        .ok()
        .map(|ip: IpAddr| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use actix_web::http::header::HeaderValue;

    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn trusting(proxies: &str, header: ProxyHeader) -> Result<TrustedProxies, String> {
        crate::config::networks(proxies).map(|networks| TrustedProxies::new(networks, header))
    }

    fn client(proxies: &str, header: ProxyHeader, peer: &str, sent: &[(&str, &str)]) -> IpAddr {
        let mut headers = HeaderMap::new();
        for (name, value) in sent {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        trusting(proxies, header).unwrap().client(Some(ip(peer)), &headers).unwrap()
    }

    const NGINX: &str = "10.0.0.5";
    const XFF: ProxyHeader = ProxyHeader::XForwardedFor;

    #[test]
    fn without_trusted_proxies_the_peer_is_the_client_whatever_it_sends() {
        let sent = [("x-forwarded-for", "203.0.113.9")];
        assert_eq!(client("", XFF, "198.51.100.7", &sent), ip("198.51.100.7"));
        // A peer that is not a configured proxy cannot speak for anyone else either.
        assert_eq!(client(NGINX, XFF, "198.51.100.7", &sent), ip("198.51.100.7"));
    }

    #[test]
    fn the_rightmost_address_no_trusted_proxy_wrote_is_the_client() {
        // nginx's $proxy_add_x_forwarded_for appends the address it saw to what the client sent.
        let spoofed = [("x-forwarded-for", "1.2.3.4, 198.51.100.7")];
        assert_eq!(client(NGINX, XFF, NGINX, &spoofed), ip("198.51.100.7"));
        // Two proxies of ours: the load balancer's hop is skipped too.
        let two = [("x-forwarded-for", "1.2.3.4, 198.51.100.7, 10.1.2.3")];
        assert_eq!(client("10.0.0.0/8", XFF, NGINX, &two), ip("198.51.100.7"));
        // Repeated header lines are one list, in order.
        let lines = [("x-forwarded-for", "1.2.3.4"), ("x-forwarded-for", "198.51.100.7")];
        assert_eq!(client(NGINX, XFF, NGINX, &lines), ip("198.51.100.7"));
    }

    #[test]
    fn what_cannot_be_read_falls_back_to_the_peer() {
        for sent in [
            [("x-forwarded-for", "unknown")],
            [("x-forwarded-for", "1.2.3.4, not-an-address")],
            [("x-forwarded-for", "")],
        ] {
            assert_eq!(client(NGINX, XFF, NGINX, &sent), ip(NGINX), "{sent:?}");
        }
        assert_eq!(client(NGINX, XFF, NGINX, &[]), ip(NGINX));
        let forwarded = [("forwarded", "for=unknown")];
        assert_eq!(client(NGINX, ProxyHeader::Forwarded, NGINX, &forwarded), ip(NGINX));
    }

    #[test]
    fn forwarded_and_ipv6() {
        let forwarded = [(
            "forwarded",
            r#"for=1.2.3.4;proto=https, For="[2001:db8:cafe::17]:4711";by=10.0.0.5"#,
        )];
        assert_eq!(
            client(NGINX, ProxyHeader::Forwarded, NGINX, &forwarded),
            ip("2001:db8:cafe::17")
        );
        let xff = [("x-forwarded-for", "1.2.3.4, 2001:db8::1")];
        assert_eq!(client("fd00::/8", XFF, "fd00::5", &xff), ip("2001:db8::1"));
        // An IPv4 peer seen through an IPv6 socket is still the IPv4 proxy.
        assert_eq!(client(NGINX, XFF, "::ffff:10.0.0.5", &xff), ip("2001:db8::1"));
        let real = [("x-real-ip", "198.51.100.7")];
        assert_eq!(client(NGINX, ProxyHeader::XRealIp, NGINX, &real), ip("198.51.100.7"));
    }

    #[test]
    fn bytes_a_client_wrote_do_not_hide_what_the_proxy_appended() {
        let mut headers = HeaderMap::new();
        headers.insert(
            HeaderName::from_static("x-forwarded-for"),
            HeaderValue::from_bytes(b"\xff\xfe, 198.51.100.7").unwrap(),
        );
        let proxies = trusting(NGINX, XFF).unwrap();
        assert_eq!(proxies.client(Some(ip(NGINX)), &headers), Some(ip("198.51.100.7")));
        // A network written IPv4-mapped trusts the IPv4 proxy it names.
        let sent = [("x-forwarded-for", "198.51.100.7")];
        assert_eq!(client("::ffff:10.0.0.0/104", XFF, "10.0.0.5", &sent), ip("198.51.100.7"));
    }

    #[test]
    fn bad_lists_and_headers_are_refused() {
        assert!(trusting("10.0.0.0/33", XFF).is_err());
        assert!(trusting("nginx", XFF).is_err());
        assert!("via".parse::<ProxyHeader>().is_err());
        assert_eq!("Forwarded".parse(), Ok(ProxyHeader::Forwarded));
    }
}
