//! The integration test binary: real servers on ephemeral ports, real HTTP clients, temporary
//! origin and store folders. One module per area:
mod support; // server harness, test engines, image makers
mod process; // the upres binary as a child process: its environment, its peak memory
mod serving; // dimensions, formats, headers, cache tiers, 304, HEAD, /r/
mod cdn; // Cache-Control per route, Last-Modified/If-Modified-Since, source tags, purge
mod coalescing; // concurrent identical misses, cancellation on disconnect
mod firsthit; // the first-hit budget: preview, then the final; background runs
mod jobs; // the jobs API end to end, with a signed callback to a local receiver
mod errors; // every error status and server health afterwards
mod origins; // an HTTP origin: fetch, 404, deadline, byte cap, SSRF guard
mod guards; // API keys, CORS, rate limits, header/body size limits
mod hostile; // the hostile-file corpus through the URL path, PNG metadata bombs
mod fuzz; // the fuzz targets on stable: corpus replay and mutations, bounded
mod tls; // rustls, ALPN h2 and http/1.1
mod playground; // pages, samples, signing, progress streams, cancel with a progress id
mod browser; // the playground in headless Chromium (playwright-core)
mod api; // REST API: uploads, batch, limits, OpenAPI
mod models; // real SPAN models by name, alias and `photo` over the URL and REST APIs
mod examples; // examples/ (curl, Python, Node) run against a live server
mod warm; // `upres warm`, the binary against a live server
mod shared_limits; // replicas sharing a real Redis: one rate limit, its fallback, purge fan-out
mod fleet; // replicas sharing a real S3 tier (moto): cross-replica hits, verification, claims
mod pressure; // quiet connections, a hanging result store, a memory budget under a burst
mod deploy; // deploy/: manifests parse and hold the fleet design; Dockerfiles name real files
mod imgproxy; // imgproxy's URL syntax: the official Node SDK against a live server, shared cache entries
mod quality; // consistency scores on misses and hits, the quality gate's fallback, canary sources, shadow runs
mod info; // /info/…: the plan and keys of a transform URL as JSON, signed, never running a model
mod smartcrop; // gravity=smart: off-centre subjects on the resize and model paths, one cache key, replicas agree
mod rules; // the URL API's "what runs" rules: resize vs model, limits and formats decided in the plan
mod slo; // deploy/prometheus rules under promtool's unit tests; the dashboard names only exported metrics
mod traces; // X-Request-Id, traceparent to the origin and job callbacks, the binary's log ids and OTLP export
mod layering; // no import loops among the crate's files (a scan of `use` lines)
