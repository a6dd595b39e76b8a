//! upres: an on-the-fly image super-resolution proxy.
//!
//! An `<img src>` points at upres; it fetches the original from an origin, upscales it (a
//! classical filter, a GAN, or a prompt-guided diffusion model), encodes WebP/JPEG/PNG, caches
//! the result by content hash in memory and in an object store, and answers like a good CDN
//! origin.
//!
//! # Life of a request
//! ```text
//! GET /x4/w=800/format=auto/shop/cat.jpg
//!  server     accept → TLS → HTTP/1.1 or HTTP/2 → routes::handle
//!  guards     CORS preflight, body policy, rate limit, API key (413/429/401/403) guard/
//!  route      the route table: /healthz /readyz /metrics /api/v1/* /r/… / /docs,   routes.rs
//!             else a transform path                                      pipeline.rs
//!  verify     signature segment when signing is on (403)                 verify.rs
//!  parse      path → TransformSpec + source key (400/414)                params/
//!  negotiate  format=auto + Accept → Variant (Vary: Accept)              plan.rs
//!  key        RequestKey = H(canonical spec, variant, origin, source)    key.rs
//!  memory     moka tier by RequestKey → 200 hit-memory                   cache/memory.rs
//!  coalesce   one flight per RequestKey; followers wait (504 deadline)   coalesce.rs
//!  ── leader, in its own task (a client disconnect cancels only when nobody else waits) ──
//!  source     origin fetch, byte cap while streaming, timeout (404/413/502/504) source.rs
//!  probe      header → format, dimensions, pixel limit (413/415/422)    imaging/decode.rs
//!  plan       engine, sizes, output format, limits (400/413)             plan.rs
//!  result key ResultKey = H(source hash, plan, engine id + weights)      key.rs
//!  store      object-store tier by ResultKey, hash-verified → hit-store  cache/store.rs
//!  claim      claims/<key> in a shared store, or wait for the replica    cache/claim.rs
//!             holding it → hit-store
//!  budget     model slower than serve.first_hit_budget → a Lanczos       preview.rs
//!             preview to every waiter now, the model run goes on detached
//!  decode     pixels, EXIF orientation, alpha split                      imaging/decode.rs
//!  infer      tiles → bounded batcher → engine forward passes (503)     engine/
//!  finish     stitch, resize/fit/crop, alpha (Lanczos), encode           imaging/
//!  publish    store put, release the claim, memory insert, then release the flight
//!  respond    200/304, ETag, Cache-Control, Server-Timing, X-Upres-*     respond.rs
//! ```
//! An upload (`POST /api/v1/upscale`, `api/`) reads the multipart body within limits, then
//! joins the same path at `probe`: its flight is keyed by the `ResultKey`, its memory entry by
//! `RequestKey::for_upload` (`pipeline::uploaded`).
//!
//! # Layout
//! - `main.rs`/`cli.rs`: commands (`serve`, `upscale`, `sign`, `warm`, `hash-key`); the only users of clap/anyhow.
//! - `warm.rs`: `upres warm`, cache warming against a running server (reqwest, indicatif).
//! - `config.rs`: the config tree (file + `UPRES_*` env + flags), validated.
//! - `server.rs`: accept loop, TLS, HTTP/1+2, graceful shutdown (the only hyper server code).
//! - `app.rs`: shared state and readiness. `routes.rs`: the route table and `handle`, above
//!   everything else. `pipeline.rs`: the image path, top-down (transform URLs and uploads);
//!   `miss.rs`: the miss path behind a flight; `flight.rs`: what a flight delivers;
//!   `health.rs`: liveness, readiness, metrics; `stored.rs`: `/r/<result key>`.
//! - `api/`: the REST API (multipart uploads, batch, jobs, purge, model-info, the OpenAPI document).
//! - `preview.rs`: the first-hit budget (preview now, the model's result in the background).
//! - `jobs/`: job records behind `JobStore`, the job task, signed callbacks.
//! - `params/`, `plan.rs`, `key.rs`, `verify.rs`, `source.rs`, `objects.rs`, `cache/`,
//!   `guard/` (API keys, CORS, rate limits, client IP), `ssrf.rs` (HTTP origin address policy),
//!   `coalesce.rs`, `imaging/`, `engine/` (interface, batcher, tiling, registry, Lanczos),
//!   `ml/` (candle models), `respond.rs`, `error.rs`, `telemetry.rs`.
//! - `playground/`: the page at `/`, the API docs at `/docs`, their helper endpoints and the
//!   progress streams (`assets/playground/` holds the compiled-in HTML, CSS and JavaScript).
// `unsafe_code` is denied crate-wide in Cargo.toml's `[lints]`; the fastconv kernel files allow it.

pub mod admission;
pub mod api;
pub mod app;
pub mod cache;
pub mod cli;
pub mod coalesce;
pub mod config;
pub mod engine;
pub mod error;
pub mod flight;
pub mod guard;
pub mod health;
pub mod imaging;
pub mod jobs;
pub mod key;
pub mod miss;
pub mod ml;
pub mod objects;
pub mod params;
pub mod pipeline;
pub mod playground;
pub mod plan;
pub mod preview;
pub mod purge_bus;
pub mod quality;
pub mod respond;
pub mod routes;
pub mod server;
pub mod shadow;
pub mod source;
pub mod ssrf;
pub mod stored;
pub mod telemetry;
pub mod trace_context;
pub mod verify;
pub mod warm;
