//! The SSRF guard for `http(s)` origins: the HTTP client object_store uses for them is built here,
//! so that no request reaches an internal address or a host the operator did not name.
//!
//! The operator fixes an origin's base URL, but redirects and DNS can still lead elsewhere:
//! - every address is checked **after resolution**, by our DNS resolver, and the client connects
//!   only to the addresses it returned (pinned: no second lookup a rebinding DNS could change);
//!   IP-literal hosts never reach a resolver, so they are checked before the request is sent;
//! - loopback, private, link-local (cloud metadata), CGNAT, unique-local, site-local, multicast,
//!   unspecified, IPv6 forms embedding such an IPv4 address, and the IPv6 ranges that reach IPv4
//!   hosts through a translator or tunnel (IPv4-mapped, local-use NAT64, Teredo) are refused
//!   unless `allow_private = true`;
//! - redirects are followed (at most `MAX_REDIRECTS`) only to the origin's own host and port or
//!   a host (and port) in `redirect_hosts`, and each hop's address is checked again;
//! - environment proxies are ignored (a proxy would resolve names for us, unchecked).
//!
//! A refusal is never retried and surfaces as `SourceError::Refused` (502, `upstream_error`).
//! object_store's `HttpConnector` hook is the seam: its own client cannot take a redirect
//! policy, and its `DnsResolver` hook sees neither IP literals nor redirect targets.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http_body_util::BodyExt;
use object_store::client::{
    ClientOptions, HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpResponse, HttpResponseBody,
    HttpService,
};
use reqwest13 as reqwest;

use crate::trace_context::{TraceParent, TRACEPARENT};

/// Redirect hops followed at most.
pub const MAX_REDIRECTS: usize = 5;

/// Why a request to an origin was not made. Travels inside object_store's error chain.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
#[error("refused by the origin policy: {0}")]
pub struct Refused(pub String);

/// What an `http(s)` origin may reach.
#[derive(Clone, Debug)]
pub struct OriginPolicy {
    /// Connect to internal addresses too.
    pub allow_private: bool,
    /// Where the client may talk to: the origin's own host and port, then `redirect_hosts`.
    pub hosts: Vec<Endpoint>,
}

/// A host (lowercase; IPv6 without brackets) and a port. `port: None` is the scheme's default
/// port (80 for `http`, 443 for `https`), so an `http` origin may redirect to its `https` form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: Option<u16>,
}

impl Endpoint {
    /// `host`, `host:port`, `[v6]`, `[v6]:port` or a bare IPv6 address (no port).
    pub fn parse(s: &str) -> Result<Endpoint, String> {
        let s = s.trim();
        let bad = || format!("`{s}` is not `host` or `host:port`");
        let (host, port) = if let Ok(v6) = s.parse::<Ipv6Addr>() {
            (v6.to_string(), None)
        } else if let Some(rest) = s.strip_prefix('[') {
            let (ip, after) = rest.split_once(']').ok_or_else(bad)?;
            let v6 = ip.parse::<Ipv6Addr>().map_err(|_| bad())?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').and_then(|p| p.parse().ok()).ok_or_else(bad)?),
            };
            (v6.to_string(), port)
        } else if let Some((host, port)) = s.rsplit_once(':') {
            (host.to_string(), Some(port.parse::<u16>().map_err(|_| bad())?))
        } else {
            (s.to_string(), None)
        };
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if host.is_empty() {
            return Err(bad());
        }
        Ok(Endpoint { host, port })
    }

    /// The host and explicit port of `url` (`None` when it is the scheme's default).
    fn of(url: &url::Url) -> Option<Endpoint> {
        let host = match url.host()? {
            url::Host::Domain(d) => d.trim_end_matches('.').to_ascii_lowercase(),
            url::Host::Ipv4(v4) => v4.to_string(),
            url::Host::Ipv6(v6) => v6.to_string(),
        };
        Some(Endpoint { host, port: url.port() })
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v6 = self.host.contains(':');
        match (self.port, v6) {
            (None, _) => f.write_str(&self.host),
            (Some(p), true) => write!(f, "[{}]:{p}", self.host),
            (Some(p), false) => write!(f, "{}:{p}", self.host),
        }
    }
}

impl OriginPolicy {
    fn check_ip(&self, ip: IpAddr) -> Result<(), Refused> {
        match (self.allow_private, internal_range(ip)) {
            (false, Some(range)) => Err(Refused(format!("{ip} is {range} (set allow_private = true to allow)"))),
            _ => Ok(()),
        }
    }

    /// The host and port of `url` must be allowed, and an IP-literal host must be an allowed
    /// address.
    fn check_url(&self, url: &url::Url) -> Result<(), Refused> {
        let to = Endpoint::of(url).ok_or_else(|| Refused(format!("`{url}` has no host")))?;
        if !self.hosts.contains(&to) {
            let what = if self.hosts.iter().any(|h| h.host == to.host) { "port" } else { "host" };
            return Err(Refused(format!("`{to}`: the {what} is not this origin's or in its redirect_hosts")));
        }
        match url.host().expect("checked above") {
            url::Host::Ipv4(v4) => self.check_ip(IpAddr::V4(v4)),
            url::Host::Ipv6(v6) => self.check_ip(IpAddr::V6(v6)),
            url::Host::Domain(_) => Ok(()),
        }
    }
}

/// The internal range `ip` falls in, if any.
pub fn internal_range(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => internal_v4(v4),
        IpAddr::V6(v6) => {
            if v6.to_ipv4_mapped().is_some() {
                // Public IPv4 origins are reached over IPv4; no resolver answers with these.
                return Some("IPv4-mapped (::ffff:0:0/96)");
            }
            if let Some(v4) = embedded_v4(v6) {
                return internal_v4(v4).map(|_| "an IPv6 form of an internal IPv4 address");
            }
            let seg = v6.segments();
            if seg[..3] == [0x64, 0xff9b, 1] {
                Some("local-use NAT64 (64:ff9b:1::/48)")
            } else if seg[..2] == [0x2001, 0] {
                Some("Teredo (2001::/32)")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if v6.is_loopback() {
                Some("loopback")
            } else if seg[0] & 0xfe00 == 0xfc00 {
                Some("unique-local (fc00::/7)")
            } else if seg[0] & 0xffc0 == 0xfe80 {
                Some("link-local (fe80::/10)")
            } else if seg[0] & 0xffc0 == 0xfec0 {
                Some("site-local (fec0::/10)")
            } else if seg[0] & 0xff00 == 0xff00 {
                Some("multicast")
            } else {
                None
            }
        }
    }
}

fn internal_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    if o[0] == 0 {
        Some("unspecified (0.0.0.0/8)")
    } else if ip.is_loopback() {
        Some("loopback (127.0.0.0/8)")
    } else if ip.is_private() {
        Some("private (10/8, 172.16/12, 192.168/16)")
    } else if ip.is_link_local() {
        Some("link-local (169.254.0.0/16, cloud metadata)")
    } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
        Some("shared address space (100.64.0.0/10)")
    } else if o[0] == 192 && o[1] == 0 && o[2] == 0 {
        Some("IETF protocol assignments (192.0.0.0/24)")
    } else if o[0] == 198 && (o[1] & 0xfe) == 18 {
        Some("benchmarking (198.18.0.0/15)")
    } else if ip.is_multicast() || o[0] >= 240 {
        Some("multicast, reserved or broadcast")
    } else {
        None
    }
}

/// IPv4-compatible (`::a.b.c.d`), NAT64 (`64:ff9b::/96`) and 6to4 (`2002:AABB:CCDD::/48`)
/// addresses carry an IPv4 address that is what gets reached.
fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    let tail = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    let v4_compatible = s[..6] == [0, 0, 0, 0, 0, 0] && !v6.is_loopback() && !v6.is_unspecified();
    let nat64 = s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0];
    if v4_compatible || nat64 {
        Some(tail)
    } else if s[0] == 0x2002 {
        Some(Ipv4Addr::new((s[1] >> 8) as u8, s[1] as u8, (s[2] >> 8) as u8, s[2] as u8))
    } else {
        None
    }
}

// === the resolver ===

/// Resolves with the system resolver, then keeps only allowed addresses.
struct CheckedResolver(Arc<OriginPolicy>);

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.0.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refusals = Vec::new();
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| match policy.check_ip(a.ip()) {
                    Ok(()) => true,
                    Err(r) => {
                        refusals.push(r.0);
                        false
                    }
                })
                .collect();
            if allowed.is_empty() {
                let why = refusals.first().cloned().unwrap_or_else(|| "no address".into());
                return Err(Box::new(Refused(format!("`{host}` resolves to {why}"))) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

// === job callbacks ===

/// The client for job callbacks (`jobs/callback.rs`): any host the job names, but only public
/// addresses unless `allow_private`, pinned by the checked resolver; no redirects (a callback
/// receiver has no reason to send one, and following it would be a second, unchecked target).
pub fn callback_client(allow_private: bool, timeout: Duration) -> Result<reqwest::Client, String> {
    let policy = Arc::new(OriginPolicy { allow_private, hosts: Vec::new() });
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(Arc::new(CheckedResolver(policy)))
        .no_proxy()
        .timeout(timeout)
        .user_agent(concat!("upres/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| e.to_string())
}

/// A callback URL is `http(s)` with a host, and an IP-literal host (which never reaches the
/// resolver) must be allowed.
pub fn check_callback_url(url: &url::Url, allow_private: bool) -> Result<(), Refused> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Refused(format!("callback scheme `{}` is not http or https", url.scheme())));
    }
    let policy = OriginPolicy { allow_private, hosts: Vec::new() };
    match url.host() {
        None => Err(Refused("the callback URL has no host".into())),
        Some(url::Host::Ipv4(v4)) => policy.check_ip(IpAddr::V4(v4)),
        Some(url::Host::Ipv6(v6)) => policy.check_ip(IpAddr::V6(v6)),
        Some(url::Host::Domain(_)) => Ok(()),
    }
}

/// POSTs `body` as JSON with extra headers through a `callback_client` built with the same
/// `allow_private`; the status on an answer.
pub async fn post_json(
    client: &reqwest::Client,
    allow_private: bool,
    url: &url::Url,
    headers: &[(&'static str, String)],
    body: Vec<u8>,
) -> Result<u16, String> {
    check_callback_url(url, allow_private).map_err(|e| e.to_string())?;
    let mut request = client.post(url.clone()).header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let response = request.body(body).send().await.map_err(|e| match refusal_in(&e) {
        Some(r) => r.to_string(),
        None => e.to_string(),
    })?;
    Ok(response.status().as_u16())
}

// === the connector object_store calls ===

/// Client settings for an `http(s)` origin: the object_store options we honour, and the policy.
#[derive(Debug)]
pub struct OriginConnector {
    policy: Arc<OriginPolicy>,
    allow_http: bool,
    allow_invalid_certificates: bool,
    connect_timeout: Option<Duration>,
}

/// The object_store client options an `http(s)` origin accepts (others are a startup error,
/// rather than silently ignored).
pub const SUPPORTED_OPTIONS: &[&str] = &["allow_http", "allow_invalid_certificates", "connect_timeout"];

impl OriginConnector {
    /// `base` is the origin URL; `options` its object_store options.
    pub fn new(
        base: &url::Url,
        options: &BTreeMap<String, String>,
        allow_private: bool,
        redirect_hosts: &[String],
    ) -> Result<OriginConnector, String> {
        let mut hosts = vec![Endpoint::of(base).ok_or("the URL has no host")?];
        for h in redirect_hosts {
            hosts.push(Endpoint::parse(h).map_err(|e| format!("redirect_hosts: {e}"))?);
        }
        let flag = |k: &str| options.get(k).is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes"));
        if let Some(k) = options.keys().find(|k| !SUPPORTED_OPTIONS.contains(&k.to_ascii_lowercase().as_str())) {
            return Err(format!("option `{k}` is not supported for http(s) origins (supported: {})", SUPPORTED_OPTIONS.join(", ")));
        }
        let connect_timeout = match options.get("connect_timeout") {
            Some(v) => Some(humantime::parse_duration(v).map_err(|e| format!("connect_timeout: {e}"))?),
            None => None,
        };
        Ok(OriginConnector {
            policy: Arc::new(OriginPolicy { allow_private, hosts }),
            allow_http: flag("allow_http"),
            allow_invalid_certificates: flag("allow_invalid_certificates"),
            connect_timeout,
        })
    }

    fn client(&self) -> Result<reqwest::Client, reqwest::Error> {
        let policy = self.policy.clone();
        let redirects = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() > MAX_REDIRECTS {
                return attempt.error(Refused(format!("more than {MAX_REDIRECTS} redirects")));
            }
            match policy.check_url(attempt.url()) {
                Ok(()) => attempt.follow(),
                Err(refused) => attempt.error(refused),
            }
        });
        let mut b = reqwest::Client::builder()
            .redirect(redirects)
            .dns_resolver(Arc::new(CheckedResolver(self.policy.clone())))
            .no_proxy()
            .https_only(!self.allow_http)
            .user_agent(concat!("upres/", env!("CARGO_PKG_VERSION")))
            .tls_danger_accept_invalid_certs(self.allow_invalid_certificates);
        if let Some(t) = self.connect_timeout {
            b = b.connect_timeout(t);
        }
        b.build()
    }
}

impl HttpConnector for OriginConnector {
    fn connect(&self, _options: &ClientOptions) -> object_store::Result<HttpClient> {
        let client = self.client().map_err(|e| object_store::Error::Generic { store: "HTTP", source: Box::new(e) })?;
        Ok(HttpClient::new(GuardedClient { client, policy: self.policy.clone() }))
    }
}

#[derive(Debug)]
struct GuardedClient {
    client: reqwest::Client,
    policy: Arc<OriginPolicy>,
}

#[async_trait]
impl HttpService for GuardedClient {
    async fn call(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        let (parts, body) = req.into_parts();
        let url: url::Url = parts.uri.to_string().parse().map_err(|e| HttpError::new(HttpErrorKind::Unknown, e))?;
        // IP literals bypass the resolver; check them here (the host itself is the origin's).
        self.policy.check_url(&url).map_err(|e| HttpError::new(HttpErrorKind::Unknown, e))?;
        let mut request = reqwest::Request::new(parts.method, url);
        *request.headers_mut() = parts.headers;
        // The fetching request's trace (`source.rs` puts it in the extensions).
        if let Some(trace) = parts.extensions.get::<TraceParent>() {
            let value = http::HeaderValue::from_str(&trace.header_value()).expect("hex and dashes");
            request.headers_mut().insert(TRACEPARENT, value);
        }
        if !body.is_empty() {
            // Origins are only read (GET/HEAD); a body would be a bug upstream of here.
            let bytes = body.as_bytes().cloned().ok_or_else(|| {
                HttpError::new(HttpErrorKind::Unknown, Refused("streaming request bodies are not supported".into()))
            })?;
            *request.body_mut() = Some(bytes.into());
        }
        let response = self.client.execute(request).await.map_err(classify)?;
        let (parts, body) = http::Response::<reqwest::Body>::from(response).into_parts();
        let body = HttpResponseBody::new(body.map_err(classify));
        Ok(HttpResponse::from_parts(parts, body))
    }
}

/// Refusals are final (`Unknown` is never retried); the rest as object_store classifies them.
fn classify(e: reqwest::Error) -> HttpError {
    let kind = if refusal_in(&e).is_some() {
        HttpErrorKind::Unknown
    } else if e.is_timeout() {
        HttpErrorKind::Timeout
    } else if e.is_connect() {
        HttpErrorKind::Connect
    } else if e.is_decode() || e.is_body() {
        HttpErrorKind::Decode
    } else {
        HttpErrorKind::Unknown
    };
    HttpError::new(kind, e)
}

/// The `Refused` somewhere in an error's source chain, if any.
pub fn refusal_in<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a Refused> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = next {
        if let Some(r) = err.downcast_ref::<Refused>() {
            return Some(r);
        }
        next = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_ranges_table() {
        #[rustfmt::skip]
        let internal = [
            "127.0.0.1", "127.255.0.9", "10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.1",
            "169.254.169.254", "0.0.0.0", "0.1.2.3", "100.64.0.1", "255.255.255.255", "224.0.0.1",
            "::1", "::", "fc00::1", "fd00:ec2::254", "fe80::1", "ff02::1",
            "::ffff:127.0.0.1", "::ffff:169.254.169.254", "::10.0.0.1", "64:ff9b::a9fe:a9fe", "2002:7f00:1::",
        ];
        for ip in internal {
            assert!(internal_range(ip.parse().unwrap()).is_some(), "{ip} must be internal");
        }
        let public = ["93.184.215.14", "8.8.8.8", "172.32.0.1", "100.128.0.1", "2606:4700::1111", "2002:808:808::",
            "64:ff9b::808:808", "64:ff9b:2::1", "2001:db8::1", "2001:1::1", "fe00::1", "fbff::1"];
        for ip in public {
            assert!(internal_range(ip.parse().unwrap()).is_none(), "{ip} must be public");
        }
    }

    /// The IPv6 ranges that reach IPv4 hosts through a translator or tunnel, and the deprecated
    /// site-local range, whatever IPv4 address they carry: each range at its edges.
    #[test]
    fn translated_tunnelled_and_site_local_ranges_are_internal() {
        #[rustfmt::skip]
        let cases = [
            // IPv4-mapped: even a public IPv4 address behind it (the stack would connect over IPv4).
            ("::ffff:8.8.8.8", "IPv4-mapped"), ("::ffff:0:0", "IPv4-mapped"), ("::ffff:ffff:ffff", "IPv4-mapped"),
            // Local-use NAT64 (RFC 8215): the translator is the operator's own.
            ("64:ff9b:1::", "NAT64"), ("64:ff9b:1::808:808", "NAT64"), ("64:ff9b:1:ffff:ffff:ffff:ffff:ffff", "NAT64"),
            // Teredo: server and client IPv4 addresses inside, obfuscated.
            ("2001::", "Teredo"), ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"), ("2001:0:ffff:ffff:ffff:ffff:ffff:ffff", "Teredo"),
            // Site-local (deprecated, still routed inside some networks).
            ("fec0::", "site-local"), ("fec0::1", "site-local"), ("feff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "site-local"),
        ];
        for (ip, want) in cases {
            let got = internal_range(ip.parse().unwrap());
            assert!(got.is_some_and(|r| r.contains(want)), "{ip}: {got:?}, want {want}");
        }
    }

    fn endpoints(list: &[&str]) -> Vec<Endpoint> {
        list.iter().map(|e| Endpoint::parse(e).unwrap()).collect()
    }

    #[test]
    fn urls_must_name_an_allowed_host_port_and_address() {
        let p = OriginPolicy { allow_private: false, hosts: endpoints(&["img.example", "cdn.example:8443", "127.0.0.1"]) };
        let check = |u: &str| p.check_url(&u.parse().unwrap());
        assert!(check("https://img.example/a.png").is_ok());
        assert!(check("http://img.example/a.png").is_ok(), "the scheme's default port");
        assert!(check("https://CDN.example.:8443/a.png").is_ok());
        assert!(check("https://evil.example/a.png").unwrap_err().0.contains("the host is not"));
        // A listed host on another port is another service.
        assert!(check("https://img.example:22/a.png").unwrap_err().0.contains("the port is not"));
        assert!(check("https://cdn.example/a.png").unwrap_err().0.contains("the port is not"));
        assert!(check("http://169.254.169.254/latest/meta-data").is_err());
        assert!(check("http://127.0.0.1/a.png").unwrap_err().0.contains("loopback"), "listed but internal");
        let open = OriginPolicy { allow_private: true, hosts: endpoints(&["127.0.0.1:8080", "[::1]:8080"]) };
        assert!(open.check_url(&"http://127.0.0.1:8080/a.png".parse().unwrap()).is_ok());
        assert!(open.check_url(&"http://[::1]:8080/a.png".parse().unwrap()).is_ok());
        assert!(open.check_url(&"http://127.0.0.1:8081/a.png".parse().unwrap()).is_err());
        assert!(open.check_url(&"http://127.0.0.1/a.png".parse().unwrap()).is_err());
    }

    #[test]
    fn endpoints_parse() {
        let e = |host: &str, port: Option<u16>| Endpoint { host: host.into(), port };
        assert_eq!(Endpoint::parse("CDN.Example.").unwrap(), e("cdn.example", None));
        assert_eq!(Endpoint::parse("cdn.example:8443").unwrap(), e("cdn.example", Some(8443)));
        assert_eq!(Endpoint::parse("2001:db8::1").unwrap(), e("2001:db8::1", None));
        assert_eq!(Endpoint::parse("[2001:DB8::1]:443").unwrap(), e("2001:db8::1", Some(443)));
        assert_eq!(Endpoint::parse("[2001:db8::1]:443").unwrap().to_string(), "[2001:db8::1]:443");
        for bad in ["", ":80", "cdn.example:http", "cdn.example:99999", "[::1", "[::1]x"] {
            assert!(Endpoint::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn the_resolver_drops_internal_addresses() {
        use reqwest13::dns::Resolve;
        let strict = CheckedResolver(Arc::new(OriginPolicy { allow_private: false, hosts: vec![] }));
        let e = match strict.resolve("localhost".parse().unwrap()).await {
            Ok(_) => panic!("localhost must be refused"),
            Err(e) => e,
        };
        assert!(refusal_in(e.as_ref()).is_some(), "{e}");
        let open = CheckedResolver(Arc::new(OriginPolicy { allow_private: true, hosts: vec![] }));
        assert!(open.resolve("localhost".parse().unwrap()).await.is_ok());
    }

    #[test]
    fn unsupported_client_options_are_refused() {
        let base: url::Url = "https://img.example/p".parse().unwrap();
        let mut o = BTreeMap::new();
        o.insert("allow_http".to_string(), "true".to_string());
        assert!(OriginConnector::new(&base, &o, false, &[]).unwrap().allow_http);
        assert!(OriginConnector::new(&base, &o, false, &["cdn.example:x".into()]).is_err(), "a bad redirect host");
        o.insert("proxy_url".to_string(), "http://proxy".to_string());
        assert!(OriginConnector::new(&base, &o, false, &[]).is_err());
    }
}
