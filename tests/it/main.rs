//! The integration test binary: real servers on ephemeral ports, real HTTP clients, temporary
//! origin and store folders. One module per area:
mod support; // server harness, test engines, image makers
mod serving; // dimensions, formats, headers, cache tiers, 304, HEAD, /r/
mod coalescing; // concurrent identical misses, cancellation on disconnect
mod errors; // every error status and server health afterwards
mod origins; // an HTTP origin: fetch, 404, deadline, byte cap, SSRF guard
mod guards; // API keys, CORS, rate limits, header/body size limits
mod hostile; // the hostile-file corpus through the URL path
mod tls; // rustls, ALPN h2 and http/1.1
