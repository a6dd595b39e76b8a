//! The configuration tree: one serde struct per section, strict, documented, validated.
//!
//! Sources, later overriding earlier: built-in defaults → the TOML file → `UPRES_*` environment
//! variables (`UPRES_SERVER__LISTEN=…` sets `server.listen`; `__` separates sections) → CLI flags.
//! The env overlay is the same tree through figment, not a second hand-written mapping; the few
//! short names (`UPRES_MODELS`, `UPRES_KEY`, `UPRES_SALT`, and the kernel switches
//! `UPRES_FASTCONV`, `UPRES_FASTCONV_WINOGRAD`, `UPRES_CPU_HIDE`) are aliases into it.
//! Only those two forms are read: any other `UPRES_*` variable is not ours (Kubernetes injects
//! `UPRES_SERVICE_HOST`, `UPRES_PORT_8080_TCP…` for a Service named `upres`) and is ignored,
//! while a misspelt key inside a section (`UPRES_SERVER__LISTN`) is still an error.
//! imgproxy's `IMGPROXY_*` names are aliases too (`imgproxy_env`), below the `UPRES_*` ones.
//!
//! `config/upres.toml` lists every key with its default and is round-trip-tested against
//! `Config::default()`. Doc comments on fields are the config reference.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

mod imgproxy_env;
mod quality;

pub use quality::{CanaryConfig, Minimum, QualityConfig, ShadowConfig};

use figment::providers::{Env, Format as _, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::ml::fastconv::{Backend, CpuFeature, KernelOverrides, Winograd};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub tls: TlsConfig,
    /// Origins by name. `default` serves URLs without an `origin=` option.
    pub origins: BTreeMap<String, OriginConfig>,
    pub limits: LimitsConfig,
    pub cache: CacheConfig,
    pub engine: EngineConfig,
    pub ml: MlConfig,
    pub sd: SdConfig,
    pub output: OutputConfig,
    pub signing: SigningConfig,
    pub api: ApiConfig,
    pub cors: CorsConfig,
    pub rate_limit: RateLimitConfig,
    pub telemetry: TelemetryConfig,
    pub playground: PlaygroundConfig,
    pub serve: ServeConfig,
    pub jobs: JobsConfig,
    pub kernels: KernelsConfig,
    pub imgproxy: ImgproxyConfig,
    /// Named option sets in upres's URL syntax (`thumb = "w=300/h=300/fit=cover"`), used as
    /// `preset=thumb` or imgproxy's `pr:thumb`; `default` applies to every request.
    pub presets: BTreeMap<String, String>,
}

impl Default for Config {
    fn default() -> Self {
        let mut origins = BTreeMap::new();
        origins.insert("default".to_string(), OriginConfig::default());
        Self {
            server: ServerConfig::default(),
            tls: TlsConfig::default(),
            origins,
            limits: LimitsConfig::default(),
            cache: CacheConfig::default(),
            engine: EngineConfig::default(),
            ml: MlConfig::default(),
            sd: SdConfig::default(),
            output: OutputConfig::default(),
            signing: SigningConfig::default(),
            api: ApiConfig::default(),
            cors: CorsConfig::default(),
            rate_limit: RateLimitConfig::default(),
            telemetry: TelemetryConfig::default(),
            playground: PlaygroundConfig::default(),
            serve: ServeConfig::default(),
            jobs: JobsConfig::default(),
            kernels: KernelsConfig::default(),
            imgproxy: ImgproxyConfig::default(),
            presets: BTreeMap::new(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Time allowed for a client to send its request head, counted from the connection's opening
    /// (or its TLS handshake, which gets the same time): a connection that starts no request
    /// within it is closed. Also how long HTTP/2 waits for a keep-alive ping's answer.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long after its last one is closed
    /// (HTTP/1 keep-alive and HTTP/2 alike); HTTP/2 peers are pinged at this interval.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// On SIGTERM/ctrl-c, how long in-flight requests may take to finish.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Open connections at most; further accepts wait.
    pub max_connections: usize,
    /// Whole-request deadline for transform requests; past it the answer is 504. Uploads get it
    /// twice: once to receive the body (408 past it), once for the result.
    #[serde(with = "humantime_serde")]
    pub request_deadline: Duration,
    /// Longest accepted request path in bytes (414 above).
    pub max_path_bytes: usize,
    /// Largest request head in bytes: HTTP/1's read buffer (at least 8192; over it, 431) and
    /// HTTP/2's header list.
    pub max_header_bytes: usize,
    /// Proxies (CIDRs or addresses) whose `client_ip_header` names the client; other peers are
    /// the client themselves.
    pub trusted_proxies: Vec<String>,
    /// The one header the trusted proxies write with the client's address: `x-forwarded-for`,
    /// `forwarded` (RFC 7239) or a single-address header such as `x-real-ip`. Any other
    /// forwarding header is ignored: the proxy passes those through from the client.
    pub client_ip_header: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".parse().expect("valid address"),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(30),
            max_connections: 4096,
            request_deadline: Duration::from_secs(60),
            max_path_bytes: 8192,
            max_header_bytes: 64 * 1024,
            trusted_proxies: Vec::new(),
            client_ip_header: "x-forwarded-for".into(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain; TLS is on when both `cert` and `key` are set.
    pub cert: Option<PathBuf>,
    /// PEM private key.
    pub key: Option<PathBuf>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OriginConfig {
    /// Base URL: `file:///abs/dir` or a relative `file://dir`, `s3://bucket/prefix`,
    /// `gs://bucket`, `az://container`, `http(s)://host/prefix`.
    pub url: String,
    /// Deadline for fetching one source (connect + all bytes).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Extra `object_store` options (credentials, region, endpoint…), passed through by key.
    #[serde(deserialize_with = "string_map")]
    pub options: BTreeMap<String, String>,
    /// `http(s)` origins only: allow connecting to loopback, private, link-local and other
    /// internal addresses (checked on the resolved address). Off: such origins are refused (502).
    pub allow_private: bool,
    /// `http(s)` origins only: where a redirect may lead besides the origin's own host and port:
    /// `host` (its default ports 80/443 only) or `host:port`.
    pub redirect_hosts: Vec<String>,
}

impl Default for OriginConfig {
    fn default() -> Self {
        Self {
            url: "file://samples".into(),
            timeout: Duration::from_secs(10),
            options: BTreeMap::new(),
            allow_private: false,
            redirect_hosts: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest source file, enforced while streaming.
    pub max_source_bytes: u64,
    /// Largest source image in pixels, read from the header before decoding.
    pub max_source_pixels: u64,
    /// Largest output image in pixels (after upscaling and resizing).
    pub max_output_pixels: u64,
    /// Largest prompt or negative prompt in bytes.
    pub max_prompt_bytes: usize,
    /// Bytes of image buffers all running jobs may hold together; a job is estimated from its
    /// plan before decoding and refused with 503 + `Retry-After` while the budget is in use (413
    /// when it exceeds the whole budget). 0: `memory_budget_fraction` of the memory limit.
    pub memory_budget: u64,
    /// With `memory_budget = 0`: this fraction of the cgroup's memory limit (v2 `memory.max`,
    /// v1 `memory.limit_in_bytes`), or of `MemTotal` when no limit is set.
    pub memory_budget_fraction: f64,
    /// Largest enlargement of the source a request may ask for (model scale × Lanczos beyond
    /// it); more is a 413.
    pub max_upscale: f64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_source_bytes: 10 * 1024 * 1024,
            max_source_pixels: 16_000_000,
            max_output_pixels: 64_000_000,
            max_prompt_bytes: 1024,
            memory_budget: 0,
            memory_budget_fraction: 0.5,
            max_upscale: 8.0,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    pub memory: MemoryCacheConfig,
    pub store: StoreCacheConfig,
    pub claims: ClaimsConfig,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryCacheConfig {
    /// Bytes of encoded results kept in memory.
    pub max_bytes: u64,
    /// How long a URL keeps mapping to its result before the origin is consulted again.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
}

impl Default for MemoryCacheConfig {
    fn default() -> Self {
        Self { max_bytes: 512 * 1024 * 1024, ttl: Duration::from_secs(3600) }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreCacheConfig {
    /// Result tier URL (`file://dir`, `s3://bucket/prefix`, …); empty turns the tier off.
    pub url: String,
    /// Extra `object_store` options, passed through by key.
    #[serde(deserialize_with = "string_map")]
    pub options: BTreeMap<String, String>,
    /// Longest time one store call (read with its body, write, probe, claim step) may take;
    /// past it the call counts as failed: a read is a miss, a write is retried once.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Result writes in flight at most (they run after the response); a result finished while
    /// all are taken is served but not stored (`event="write_dropped"`).
    pub max_pending_writes: usize,
}

impl Default for StoreCacheConfig {
    fn default() -> Self {
        Self {
            url: "file://data/results".into(),
            options: BTreeMap::new(),
            timeout: Duration::from_secs(5),
            max_pending_writes: 64,
        }
    }
}

/// Cross-replica coalescing through claim objects in the result store (`cache/claim.rs`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClaimsConfig {
    /// Claim a result in the store before computing it, and wait for another replica's claim.
    pub enabled: bool,
    /// How long a claim lives unrenewed (the owner renews it every ttl/3 while computing);
    /// past it a crashed owner's claim is taken over. At least `server.request_deadline`.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// First pause between polls of a waiting replica (doubles up to 1 s).
    #[serde(with = "humantime_serde")]
    pub poll: Duration,
}

impl Default for ClaimsConfig {
    fn default() -> Self {
        Self { enabled: true, ttl: Duration::from_secs(120), poll: Duration::from_millis(50) }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// Requests waiting for inference at most; beyond, 503 with `Retry-After`.
    pub queue_capacity: usize,
    /// Tiles in one forward pass at most.
    pub max_batch: usize,
    /// How long the first job of a batch waits for company.
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
    /// `Retry-After` sent with 503 when the queue is full.
    #[serde(with = "humantime_serde")]
    pub retry_after: Duration,
    /// Worker threads for the Lanczos engine; 0 means one per core.
    pub lanczos_workers: usize,
    /// What a replica does when the model an `auto` rule picks is not loaded here.
    pub auto_unavailable: AutoUnavailable,
    /// `model=auto` without a prompt: the first rule whose `max_input_pixels` covers the
    /// source's pixels names the model. Chosen from the request and this list only, so every
    /// replica with the same config picks the same model. Empty: the highest-ranked model.
    pub auto: Vec<AutoRule>,
}

/// One `model=auto` rule.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AutoRule {
    /// The rule applies to sources of at most this many pixels; absent: to every source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_input_pixels: Option<u64>,
    /// The rule applies only to sources of this kind (`imaging::content`: decided from the
    /// pixels); absent: to every source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<Content>,
    /// Model name or alias.
    pub model: String,
}

/// What a source shows, as `imaging::content::classify` decides it.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Content {
    /// Camera pictures: texture and noise nearly everywhere.
    Photo,
    /// Drawn pictures (illustrations, anime, logos): mostly flat fills and lines.
    Illustration,
}

/// See `EngineConfig::auto_unavailable`.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum AutoUnavailable {
    /// Use the next rule whose model is loaded (its result key and `X-Upres-Model` differ).
    #[default]
    Next,
    /// Answer 503 with `Retry-After`, so the balancer retries on a replica that has it.
    Refuse,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            queue_capacity: 100,
            max_batch: 8,
            max_wait: Duration::from_millis(5),
            retry_after: Duration::from_secs(2),
            lanczos_workers: 0,
            auto_unavailable: AutoUnavailable::Next,
            auto: vec![
                AutoRule { max_input_pixels: None, content: Some(Content::Illustration), model: "realesr-animevideov3".into() },
                AutoRule { max_input_pixels: None, content: Some(Content::Photo), model: "photo".into() },
                AutoRule { max_input_pixels: None, content: None, model: "realesr-animevideov3".into() },
            ],
        }
    }
}

/// `ml.device`, checked when the config is read (a typo fails there, not at model load).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceSpec {
    /// The first CUDA device when built with `cuda` and one is present, else the CPU.
    Auto,
    Cpu,
    /// An explicit CUDA device: failing to open it is an error, never a silent CPU fallback.
    Cuda(usize),
}

impl std::str::FromStr for DeviceSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "auto" => Ok(DeviceSpec::Auto),
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(|| format!("ml.device = {other:?}: expected auto, cpu, cuda or cuda:N")),
        }
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSpec::Auto => f.write_str("auto"),
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl TryFrom<String> for DeviceSpec {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<DeviceSpec> for String {
    fn from(d: DeviceSpec) -> String {
        d.to_string()
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MlConfig {
    /// Folder of model files (ncnn `.param`/`.bin`, `stable-diffusion-x4-upscaler/`).
    pub models_dir: PathBuf,
    /// Where the neural engines run: `auto`, `cpu`, `cuda` (= `cuda:0`) or `cuda:N`.
    pub device: DeviceSpec,
    /// Activation memory one forward pass of a GAN model may use, in bytes (each model, its
    /// batches included): an image needing no more runs whole in one pass (x4plus at the
    /// default: up to ~0.5 MP input), a larger one in overlapping `tile`² squares.
    pub activation_budget: u64,
    /// Tile edge in input pixels: GAN models' squares beyond the activation budget, and
    /// sd-x4's tiles.
    pub tile: u32,
    /// Overlap between GAN tiles in input pixels.
    pub tile_overlap: u32,
    /// Warm every engine up with one inference before `/readyz` says ready.
    pub warm_up: bool,
    /// The loaded model that the alias `photo` names (a URL model name).
    pub photo_model: String,
    /// The quality gate: least consistency score per model.
    pub quality: QualityConfig,
    /// A candidate model shadowing the served one on a sample of misses.
    pub shadow: ShadowConfig,
    /// A model serving a share of sources in place of `model=auto`'s pick.
    pub canary: CanaryConfig,
}

impl Default for MlConfig {
    fn default() -> Self {
        Self {
            models_dir: "models".into(),
            device: DeviceSpec::Auto,
            activation_budget: 12 << 30,
            tile: 128,
            tile_overlap: 16,
            warm_up: true,
            photo_model: "clearreality4x".into(),
            quality: QualityConfig::default(),
            shadow: ShadowConfig::default(),
            canary: CanaryConfig::default(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SdConfig {
    /// Model folder in the diffusers layout; empty means `<models_dir>/stable-diffusion-x4-upscaler`.
    pub path: Option<PathBuf>,
    /// Steps when a URL gives none (default 8, as the REST API).
    pub url_default_steps: u32,
    /// Denoising scheduler when a URL gives none, `ddim` or `dpm` (default `dpm`, as the REST API;
    /// diffusers' pipeline defaults to DDIM with 75 steps).
    pub url_default_scheduler: crate::engine::SchedulerKind,
    /// Largest input side accepted by sd-x4.
    pub max_input_side: u32,
    /// The VAE decodes latents (one per engine tile; latent side = input side) with a side longer
    /// than this in overlapping tiles of at most this side, which bounds its memory (a 256² input
    /// decoded whole peaks gigabytes higher); 0 always decodes whole. Tiling changes the result
    /// slightly (the mid-block attention sees one tile): see docs/sd-x4.md.
    pub vae_tile: u32,
    /// Least overlap between VAE tiles, in latent pixels (×4 in the output), cross-faded.
    pub vae_tile_overlap: u32,
}

impl Default for SdConfig {
    fn default() -> Self {
        Self { path: None, url_default_steps: crate::engine::DEFAULT_STEPS, url_default_scheduler: crate::engine::SchedulerKind::Dpm, max_input_side: 512, vae_tile: 128, vae_tile_overlap: 16 }
    }
}


#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OutputConfig {
    /// AVIF quality when the URL gives no `q` (libavif's scale: linear onto AV1's quantiser).
    pub avif_quality: u8,
    /// rav1e's speed preset for AVIF, 1 (slowest, smallest) ..= 10 (fastest).
    pub avif_speed: u8,
    /// `format=auto` answers AVIF to clients that list `image/avif`; off: WebP for them
    /// (cheaper encodes, larger files).
    pub auto_avif: bool,
    /// Write a wide-gamut source's ICC profile (Display P3, Adobe RGB…) into JPEG, PNG and WebP
    /// outputs instead of converting the pixels to sRGB: no colours clipped, but the model and
    /// the resize see the wide-gamut values, and the file is a few hundred bytes larger.
    pub keep_wide_gamut: bool,
    /// Keep the source's EXIF Artist/Copyright and IPTC rights fields (By-line, Credit, Source,
    /// Copyright Notice) in the output; everything else is stripped either way.
    pub keep_copyright: bool,
    /// WebP quality when the URL gives no `q`.
    pub webp_quality: u8,
    /// JPEG quality when the URL gives no `q`.
    pub jpeg_quality: u8,
    /// `Cache-Control` for transform URLs. They are not content-addressed (the source behind a
    /// URL can change), so not `immutable`: browsers keep an answer for `max-age` (they cannot be
    /// purged), CDNs for `s-maxage` (they can: `Surrogate-Key`/`Cache-Tag`), and serve it stale
    /// while they revalidate (`ETag`/`Last-Modified` make that a cheap 304).
    pub cache_control: String,
    /// `Cache-Control` for `/r/<result key>` URLs and API results: content-addressed, so
    /// immutable.
    pub stored_cache_control: String,
    /// `Cache-Control` for errors (other than 404): not stored, so a CDN retries at once.
    pub error_cache_control: String,
    /// `Cache-Control` for 404s: a short lifetime, so a CDN absorbs repeated misses for a missing
    /// source without pinning them once it appears.
    pub not_found_cache_control: String,
    /// Send `X-Upres-Cache`, `X-Upres-Model` and `Server-Timing`.
    pub debug_headers: bool,
}

impl Default for OutputConfig {
    fn default() -> Self {
        Self {
            avif_quality: crate::imaging::encode::DEFAULT_AVIF_QUALITY,
            avif_speed: crate::imaging::encode::DEFAULT_AVIF_SPEED,
            auto_avif: true,
            keep_wide_gamut: false,
            keep_copyright: false,
            webp_quality: 82,
            jpeg_quality: 85,
            cache_control: "public, max-age=3600, s-maxage=2592000, stale-while-revalidate=86400".into(),
            stored_cache_control: "public, max-age=31536000, immutable".into(),
            error_cache_control: "no-store".into(),
            not_found_cache_control: "public, max-age=60".into(),
            debug_headers: true,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServeConfig {
    /// How long a transform URL's first hit may wait. When the model's run is estimated to take
    /// longer (measured speed × the request's pixels × the queue ahead), the answer is a preview
    /// (the same transform by Lanczos) and the model's result is made in the background, stored
    /// and served afterwards. `0s`: always wait for the model.
    #[serde(with = "humantime_serde")]
    pub first_hit_budget: Duration,
    /// `Cache-Control` of a preview: short, so CDNs and browsers come back for the final image.
    pub preview_cache_control: String,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self { first_hit_budget: Duration::from_secs(2), preview_cache_control: "public, max-age=10, s-maxage=10".into() }
    }
}

#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct JobsConfig {
    /// Jobs kept at most (running and finished); a new job past it is 503.
    pub max_jobs: usize,
    /// How long a finished job's state stays readable.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// Secret for the `X-Upres-Signature` HMAC-SHA256 of callback bodies. Unset: jobs with a
    /// `callback_url` are refused (400), since the receiver could not verify them.
    pub callback_secret: Option<String>,
    /// Let callbacks reach loopback and private addresses (the SSRF guard's `allow_private`).
    pub callback_allow_private: bool,
    /// Whole-request timeout of one callback POST.
    #[serde(with = "humantime_serde")]
    pub callback_timeout: Duration,
    /// With a shared store: how long a replica's hold on a running job lasts unrenewed (its task
    /// renews it every lease/3); past it the job's owner is presumed dead and another replica
    /// takes the job over and runs it again.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// With a shared store: how often each replica looks for jobs whose lease ran out (a `GET`
    /// of such a job looks too). 0 turns the sweep off.
    #[serde(with = "humantime_serde")]
    pub sweep_interval: Duration,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            max_jobs: 10_000,
            ttl: Duration::from_secs(3600),
            callback_secret: None,
            callback_allow_private: false,
            callback_timeout: Duration::from_secs(10),
            lease: Duration::from_secs(30),
            sweep_interval: Duration::from_secs(10),
        }
    }
}

impl std::fmt::Debug for JobsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobsConfig")
            .field("max_jobs", &self.max_jobs)
            .field("ttl", &self.ttl)
            .field("callback_secret", &self.callback_secret.as_ref().map(|_| "<redacted>"))
            .field("callback_allow_private", &self.callback_allow_private)
            .field("callback_timeout", &self.callback_timeout)
            .field("lease", &self.lease)
            .field("sweep_interval", &self.sweep_interval)
            .finish()
    }
}

#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SigningConfig {
    /// Hex-encoded HMAC key; signing is on when set. Several keys: `keys`/`salts` lists.
    pub key: Option<String>,
    /// Hex-encoded salt paired with `key`.
    pub salt: Option<String>,
    /// More hex key/salt pairs accepted for rotation (same order as `salts`).
    pub keys: Vec<String>,
    pub salts: Vec<String>,
    /// Bytes of the HMAC kept in signatures, 1..=32 (imgproxy's `IMGPROXY_SIGNATURE_SIZE`).
    pub size: usize,
}

impl Default for SigningConfig {
    fn default() -> Self {
        Self { key: None, salt: None, keys: Vec::new(), salts: Vec::new(), size: 32 }
    }
}

/// imgproxy's URL syntax, served beside upres's own.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ImgproxyConfig {
    /// Recognise `/<signature>/<options>/plain/<source>@<ext>` and the base64 form.
    pub enabled: bool,
    /// Drop imgproxy options upres does not implement instead of answering 400.
    pub ignore_unsupported: bool,
}

impl Default for ImgproxyConfig {
    fn default() -> Self {
        Self { enabled: true, ignore_unsupported: false }
    }
}

impl std::fmt::Debug for SigningConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningConfig")
            .field("enabled", &(self.key.is_some() || !self.keys.is_empty()))
            .field("pairs", &(self.keys.len() + usize::from(self.key.is_some())))
            .field("size", &self.size)
            .finish()
    }
}

/// Cross-origin requests from browsers. Off (no CORS headers) while `allowed_origins` is empty.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CorsConfig {
    /// Origins (`https://shop.example`) allowed to read responses; `*` allows any.
    pub allowed_origins: Vec<String>,
    /// Methods a preflight may ask for.
    pub allowed_methods: Vec<String>,
    /// Request headers a preflight may ask for (case-insensitive).
    pub allowed_headers: Vec<String>,
    /// Response headers scripts may read besides the CORS-safelisted ones.
    pub expose_headers: Vec<String>,
    /// How long a browser may cache a preflight answer.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
}

impl Default for CorsConfig {
    fn default() -> Self {
        Self {
            allowed_origins: Vec::new(),
            allowed_methods: ["GET", "HEAD", "POST"].map(String::from).to_vec(),
            allowed_headers: ["authorization", "content-type"].map(String::from).to_vec(),
            expose_headers: ["etag", "location", "retry-after", "server-timing", "x-upres-cache", "x-upres-model"]
                .map(String::from)
                .to_vec(),
            max_age: Duration::from_secs(600),
        }
    }
}

/// Per-client-IP token buckets; over the limit, 429 with `Retry-After`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Where buckets live: "memory" (per replica) or a `redis://` URL (one limit for the fleet).
    pub backend: String,
    /// How long a Redis-backed check may take before `redis_unavailable` decides.
    #[serde(with = "humantime_serde")]
    pub redis_timeout: Duration,
    /// Without an answer from Redis: `allow` the request or `deny` it with 503.
    pub redis_unavailable: RedisUnavailable,
    /// How often idle buckets are dropped, so memory follows the active clients only.
    #[serde(with = "humantime_serde")]
    pub sweep_interval: Duration,
    /// IPv6 clients share a bucket per network of this prefix length (16–128): one subscriber
    /// gets a whole /64 (or /56, /48) and could otherwise take a new address per request.
    pub ipv6_prefix: u8,
    /// `POST /api/…` (uploads).
    pub uploads: BucketConfig,
    /// Image `GET`/`HEAD`s (transform paths and `/r/`).
    pub transforms: BucketConfig,
}

/// One token bucket per client IP.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct BucketConfig {
    /// Sustained requests per minute per client; 0 turns the limit off.
    pub per_minute: u32,
    /// Requests a client may make at once after being idle; 0 means `per_minute`.
    pub burst: u32,
}

/// What a Redis-backed rate limit does when Redis does not answer.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum RedisUnavailable {
    #[default]
    Allow,
    Deny,
}

impl RedisUnavailable {
    pub fn as_str(self) -> &'static str {
        match self {
            RedisUnavailable::Allow => "allow",
            RedisUnavailable::Deny => "deny",
        }
    }
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            backend: "memory".into(),
            redis_timeout: Duration::from_millis(250),
            redis_unavailable: RedisUnavailable::Allow,
            sweep_interval: Duration::from_secs(60),
            ipv6_prefix: 64,
            uploads: BucketConfig { per_minute: 10, burst: 0 },
            transforms: BucketConfig::default(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// `text` or `json`.
    pub log_format: String,
    /// `tracing` filter, e.g. `info,upres=debug`. `RUST_LOG` wins when set.
    pub log_filter: String,
    /// OTLP/HTTP collector base URL (`http://otel-collector:4318`): request spans are exported
    /// to `<url>/v1/traces` as protobuf. Empty: no export.
    pub otlp_endpoint: String,
    /// Share (0–1) of the traces upres starts (requests without a `traceparent`) whose spans are
    /// exported; a caller's `traceparent` decides for its own requests (its sampled flag).
    pub otlp_sample_ratio: f64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self { log_format: "text".into(), log_filter: "info".into(), otlp_endpoint: String::new(), otlp_sample_ratio: 1.0 }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct PlaygroundConfig {
    /// Who gets the playground page (`/`), `/docs` and their helper endpoints.
    pub enabled: PlaygroundAccess,
}

/// `local`: only clients connecting from a loopback address; `on`: everyone; `off`: nobody.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum PlaygroundAccess {
    #[default]
    Local,
    On,
    Off,
}

/// The CPU convolution kernels (`ml/fastconv`), fixed once at start-up before any model loads.
/// Env aliases: `UPRES_FASTCONV`, `UPRES_FASTCONV_WINOGRAD`, `UPRES_CPU_HIDE` (comma list).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KernelsConfig {
    /// `auto` (chosen per network and CPU) or the backend every convolution runs on: `portable`,
    /// `avx2`, `avx512`, `bf16`, `amx`, `amx2`, `amx3`, `amxw2`; one this CPU cannot run is a
    /// startup error. `off` leaves it `auto`; as `UPRES_FASTCONV=off` the Real-ESRGAN engine
    /// reads it as its switch to the candle reference network.
    #[serde(deserialize_with = "scalar_text")]
    pub backend: String,
    /// Winograd convolutions: `default` (each network's own: Real-ESRGAN where it pays, SD x4
    /// off), `off`, `auto` (where it pays) or `always`.
    #[serde(deserialize_with = "scalar_text")]
    pub winograd: String,
    /// CPU features the kernel selector treats as absent (`amx`, `avx512bf16`, `avx512`,
    /// `avx2`): an AMX host then runs the kernels an AMD or older Intel CPU would.
    #[serde(deserialize_with = "text_list")]
    pub hide_cpu_features: Vec<String>,
}

impl Default for KernelsConfig {
    fn default() -> Self {
        Self { backend: "auto".into(), winograd: "default".into(), hide_cpu_features: Vec::new() }
    }
}

impl KernelsConfig {
    /// The kernel choices these settings make (`ml::fastconv::set_overrides` applies them);
    /// an unknown name is an error.
    pub fn overrides(&self) -> Result<KernelOverrides, String> {
        let backend = match self.backend.trim().to_ascii_lowercase().as_str() {
            "auto" | "off" | "candle" | "0" => None,
            b => Some(b.parse::<Backend>().map_err(|e| format!("kernels.backend: {e}"))?),
        };
        let winograd = match self.winograd.trim().to_ascii_lowercase().as_str() {
            "default" => None,
            w => Some(w.parse::<Winograd>().map_err(|e| format!("kernels.winograd: {e}"))?),
        };
        let hide = self
            .hide_cpu_features
            .iter()
            .map(|f| f.parse::<CpuFeature>().map_err(|e| format!("kernels.hide_cpu_features: {e}")))
            .collect::<Result<_, _>>()?;
        Ok(KernelOverrides { backend, winograd, hide })
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// `blake3:<64 hex>` hashes of the accepted keys (`Authorization: Bearer <key>`; `upres
    /// hash-key` prints one). Empty: the API needs no key.
    pub keys: Vec<String>,
    /// Largest request body of `POST /api/v1/upscale`, and largest image in a batch (413 above).
    pub max_upload_bytes: u64,
    /// Largest request body of `POST /api/v1/batch-upscale` (413 above).
    pub max_batch_bytes: u64,
    /// Images in one batch request at most (413 above).
    pub max_batch_images: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self { keys: Vec::new(), max_upload_bytes: 10 * 1024 * 1024, max_batch_bytes: 64 * 1024 * 1024, max_batch_images: 16 }
    }
}

/// `object_store` options are strings, but the env overlay reads `…__AWS_ALLOW_HTTP=true` as a
/// bool and `…=5` as a number: take any scalar and keep its text.
fn string_map<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        Text(String),
        Flag(bool),
        Int(i64),
        Float(f64),
    }
    let raw = BTreeMap::<String, Scalar>::deserialize(d)?;
    Ok(raw
        .into_iter()
        .map(|(k, v)| {
            let text = match v {
                Scalar::Text(s) => s,
                Scalar::Flag(b) => b.to_string(),
                Scalar::Int(i) => i.to_string(),
                Scalar::Float(f) => f.to_string(),
            };
            (k, text)
        })
        .collect())
}

/// The env overlay reads `UPRES_FASTCONV_WINOGRAD=1` as a number and `=on` as text: take any
/// scalar and keep its text.
fn scalar_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        Text(String),
        Flag(bool),
        Int(i64),
    }
    Ok(match Scalar::deserialize(d)? {
        Scalar::Text(s) => s,
        Scalar::Flag(b) => b.to_string(),
        Scalar::Int(i) => i.to_string(),
    })
}

/// A list from the file (`["amx", "avx512bf16"]`) or a comma list from the environment
/// (`UPRES_CPU_HIDE=amx,avx512bf16`).
fn text_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum List {
        Many(Vec<String>),
        One(String),
    }
    Ok(match List::deserialize(d)? {
        List::Many(v) => v,
        List::One(s) => s.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect(),
    })
}

#[derive(thiserror::Error, Debug)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("configuration: {0}")]
    Invalid(String),
}

/// Values given on the command line; they win over the file and the environment.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub origin: Option<String>,
    pub store: Option<String>,
    pub models: Option<PathBuf>,
}

impl Config {
    /// Defaults → file (if any) → `UPRES_*` env → CLI overrides, then `validate`.
    pub fn load(file: Option<&std::path::Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::Invalid(format!("config file {} does not exist", path.display())));
            }
            fig = fig.merge(Toml::file(path));
        }
        let imgproxy = imgproxy_env::aliases(std::env::vars()).map_err(ConfigError::Invalid)?;
        fig = fig.merge(imgproxy).merge(env_overlay());
        let mut cfg: Config = fig.extract().map_err(|e| ConfigError::Load(Box::new(e)))?;
        if let Some(listen) = overrides.listen {
            cfg.server.listen = listen;
        }
        if let Some(origin) = &overrides.origin {
            cfg.origins.entry("default".into()).or_default().url = origin.clone();
        }
        if let Some(store) = &overrides.store {
            cfg.cache.store.url = store.clone();
        }
        if let Some(models) = &overrides.models {
            cfg.ml.models_dir = models.clone();
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// The config as logged at startup: secrets are already hidden by `SigningConfig`'s Debug,
    /// and object-store options (credentials) are reduced to their keys.
    pub fn redacted(&self) -> Config {
        let mut c = self.clone();
        for o in c.origins.values_mut() {
            for v in o.options.values_mut() {
                *v = "<redacted>".into();
            }
        }
        for v in c.cache.store.options.values_mut() {
            *v = "<redacted>".into();
        }
        c
    }

    /// Cross-field rules.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if !self.origins.contains_key("default") {
            return bad("[origins.default] is required");
        }
        if self.cache.memory.max_bytes == 0 {
            return bad("cache.memory.max_bytes must be > 0");
        }
        quality::validate(&self.ml.quality, &self.ml.shadow, &self.ml.canary).map_err(ConfigError::Invalid)?;
        if self.cache.claims.enabled && self.cache.claims.ttl < self.server.request_deadline {
            return bad("cache.claims.ttl must be at least server.request_deadline");
        }
        if !(self.limits.memory_budget_fraction > 0.0 && self.limits.memory_budget_fraction <= 1.0) {
            return bad("limits.memory_budget_fraction must be in (0, 1]");
        }
        if self.cache.store.timeout.is_zero() || self.cache.store.max_pending_writes == 0 {
            return bad("cache.store.timeout and cache.store.max_pending_writes must be > 0");
        }
        if self.cache.claims.poll.is_zero() {
            return bad("cache.claims.poll must be > 0");
        }
        if self.engine.queue_capacity == 0 || self.engine.max_batch == 0 {
            return bad("engine.queue_capacity and engine.max_batch must be > 0");
        }
        if !(0.0..=1.0).contains(&self.telemetry.otlp_sample_ratio) {
            return bad("telemetry.otlp_sample_ratio must be in [0, 1]");
        }
        // NaN fails too.
        if self.limits.max_upscale.is_nan() || self.limits.max_upscale < 1.0 {
            return bad("limits.max_upscale must be >= 1");
        }
        if self.ml.tile < 16 || self.ml.tile_overlap * 2 >= self.ml.tile {
            return bad("ml.tile must be >= 16 and ml.tile_overlap less than half of it");
        }
        for q in [self.output.avif_quality, self.output.webp_quality, self.output.jpeg_quality] {
            if !(1..=100).contains(&q) {
                return bad("output qualities must be in 1..=100");
            }
        }
        if !crate::imaging::avif::SPEEDS.contains(&self.output.avif_speed) {
            return bad("output.avif_speed must be in 1..=10");
        }
        if !(1..=200).contains(&self.sd.url_default_steps) {
            return bad("sd.url_default_steps must be in 1..=200");
        }
        if self.sd.vae_tile != 0 && (self.sd.vae_tile < 16 || self.sd.vae_tile_overlap * 2 >= self.sd.vae_tile) {
            return bad("sd.vae_tile must be 0 or >= 16, and sd.vae_tile_overlap less than half of it");
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return bad("tls.cert and tls.key must be set together");
        }
        if self.signing.keys.len() != self.signing.salts.len() || self.signing.key.is_some() != self.signing.salt.is_some() {
            return bad("signing keys and salts must come in pairs");
        }
        if !(1..=32).contains(&self.signing.size) {
            return bad("signing.size must be in 1..=32");
        }
        if self.api.max_upload_bytes == 0 || self.api.max_batch_bytes == 0 || self.api.max_batch_images == 0 {
            return bad("api.max_upload_bytes, api.max_batch_bytes and api.max_batch_images must be > 0");
        }
        if !matches!(self.telemetry.log_format.as_str(), "text" | "json") {
            return bad("telemetry.log_format must be `text` or `json`");
        }
        if self.jobs.max_jobs == 0 || self.jobs.ttl.is_zero() || self.jobs.lease.is_zero() {
            return bad("jobs.max_jobs, jobs.ttl and jobs.lease must be > 0");
        }
        if self.server.header_read_timeout.is_zero() || self.server.idle_timeout.is_zero() {
            return bad("server.header_read_timeout and server.idle_timeout must be > 0");
        }
        if self.server.max_header_bytes < 8192 {
            return bad("server.max_header_bytes must be >= 8192 (HTTP/1's smallest read buffer)");
        }
        self.kernels.overrides().map_err(ConfigError::Invalid)?;
        Ok(())
    }
}

/// The short env names and the keys they set.
pub const ENV_ALIASES: [(&str, &str); 6] = [
    ("UPRES_MODELS", "ml.models_dir"),
    ("UPRES_KEY", "signing.key"),
    ("UPRES_SALT", "signing.salt"),
    ("UPRES_FASTCONV", "kernels.backend"),
    ("UPRES_FASTCONV_WINOGRAD", "kernels.winograd"),
    ("UPRES_CPU_HIDE", "kernels.hide_cpu_features"),
];

/// The key an `UPRES_*` variable (`name` without the prefix) sets: an alias, or
/// `<SECTION>__<KEY>[__…]` with a section of the config; `None` for any other name.
fn env_key(name: &str, sections: &[String]) -> Option<String> {
    let name = name.to_ascii_lowercase();
    if let Some((_, key)) = ENV_ALIASES.iter().find(|(alias, _)| alias["UPRES_".len()..].eq_ignore_ascii_case(&name)) {
        return Some(key.to_string());
    }
    let (section, rest) = name.split_once("__")?;
    (sections.iter().any(|s| s == section) && !rest.is_empty()).then(|| name.replace("__", "."))
}

/// The config's top-level sections, from the tree itself.
fn sections() -> Vec<String> {
    match serde_json::to_value(Config::default()) {
        Ok(serde_json::Value::Object(map)) => map.keys().cloned().collect(),
        _ => unreachable!("the config serialises to a map"),
    }
}

/// `UPRES_A__B=v` → `a.b = v`, plus the short aliases; every other `UPRES_*` name is ignored.
fn env_overlay() -> Env {
    let sections = sections();
    Env::prefixed("UPRES_").filter_map(move |name| env_key(name.as_str(), &sections).map(Into::into))
}

/// The `UPRES_*` variables set in this process that the config does not read (logged at
/// start-up, so a misspelt short name does not go unnoticed).
pub fn ignored_env_vars() -> Vec<String> {
    let sections = sections();
    std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .filter(|k| k.starts_with("UPRES_") && k != "UPRES_CONFIG" && env_key(&k["UPRES_".len()..], &sections).is_none())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_config_file_equals_defaults() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/upres.toml");
        assert!(path.exists(), "config/upres.toml is missing");
        let from_file: Config = Figment::new().merge(Toml::file(&path)).extract().expect("config/upres.toml parses");
        assert_eq!(from_file, Config::default(), "config/upres.toml drifted from Config::default()");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let r: Result<Config, _> = Figment::new().merge(Toml::string("[server]\nlisten_addr = \"x\"")).extract();
        assert!(r.is_err());
    }

    #[test]
    fn env_overlay_sets_nested_keys_and_aliases() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("UPRES_SERVER__LISTEN", "127.0.0.1:9999");
            jail.set_env("UPRES_MODELS", "/opt/models");
            jail.set_env("UPRES_CACHE__MEMORY__MAX_BYTES", "1234");
            jail.set_env("UPRES_CACHE__STORE__OPTIONS__AWS_ALLOW_HTTP", "true");
            jail.set_env("UPRES_ORIGINS__DEFAULT__OPTIONS__TIMEOUT", "5");
            let cfg = Config::load(None, &Overrides::default()).expect("loads");
            assert_eq!(cfg.server.listen.port(), 9999);
            assert_eq!(cfg.ml.models_dir, PathBuf::from("/opt/models"));
            assert_eq!(cfg.cache.memory.max_bytes, 1234);
            // object_store options stay text even when the env value looks like a bool or number.
            assert_eq!(cfg.cache.store.options["aws_allow_http"], "true");
            assert_eq!(cfg.origins["default"].options["timeout"], "5");
            Ok(())
        });
    }

    #[test]
    fn env_overlay_reads_only_config_keys_and_aliases() {
        figment::Jail::expect_with(|jail| {
            // What the kubelet injects for a Service named `upres`, and other tools' variables.
            for (k, v) in [
                ("UPRES_SERVICE_HOST", "10.0.0.1"),
                ("UPRES_SERVICE_PORT", "8080"),
                ("UPRES_SERVICE_PORT_HTTP", "8080"),
                ("UPRES_PORT", "tcp://10.0.0.1:8080"),
                ("UPRES_PORT_8080_TCP", "tcp://10.0.0.1:8080"),
                ("UPRES_PORT_8080_TCP_PROTO", "tcp"),
                ("UPRES_PORT_8080_TCP_PORT", "8080"),
                ("UPRES_PORT_8080_TCP_ADDR", "10.0.0.1"),
                ("UPRES_FASTCONV_MAXNV", "2"),
                ("UPRES_NOT_A_SECTION__LISTEN", "x"),
                ("UPRES_SERVER__", "x"),
            ] {
                jail.set_env(k, v);
            }
            jail.set_env("UPRES_FASTCONV", "avx512");
            jail.set_env("UPRES_FASTCONV_WINOGRAD", "1");
            jail.set_env("UPRES_CPU_HIDE", "amx, avx512bf16");
            jail.set_env("UPRES_SERVER__MAX_CONNECTIONS", "77");
            let cfg = Config::load(None, &Overrides::default()).map_err(|e| e.to_string())?;
            assert_eq!(cfg.server.max_connections, 77);
            assert_eq!(cfg.kernels.backend, "avx512");
            assert_eq!(cfg.kernels.winograd, "1");
            assert_eq!(cfg.kernels.hide_cpu_features, ["amx", "avx512bf16"]);
            let mut ignored = ignored_env_vars();
            ignored.sort();
            assert!(ignored.contains(&"UPRES_SERVICE_HOST".to_string()) && ignored.contains(&"UPRES_PORT_8080_TCP".to_string()));
            assert!(!ignored.iter().any(|k| k == "UPRES_FASTCONV" || k == "UPRES_SERVER__MAX_CONNECTIONS"), "{ignored:?}");
            // A misspelt key inside a section is still refused, naming the key.
            jail.set_env("UPRES_SERVER__MAX_CONECTIONS", "1");
            let e = Config::load(None, &Overrides::default()).unwrap_err().to_string();
            assert!(e.contains("max_conections"), "{e}");
            Ok(())
        });
    }

    #[test]
    fn kernel_settings_become_overrides_and_bad_names_are_refused() {
        let mut k = KernelsConfig::default();
        assert_eq!(k.overrides().unwrap(), KernelOverrides::default(), "the defaults override nothing");
        k.backend = "avx512".into();
        k.winograd = "1".into();
        k.hide_cpu_features = vec!["amx".into(), "avx512bf16".into()];
        let o = k.overrides().unwrap();
        assert_eq!(o.backend, Some(Backend::Avx512));
        assert_eq!(o.winograd, Some(Winograd::Auto));
        assert_eq!(o.hide, [CpuFeature::Amx, CpuFeature::Avx512Bf16]);
        k.backend = "off".into();
        assert_eq!(k.overrides().unwrap().backend, None, "off is the Real-ESRGAN engine's switch, not a backend");
        for (backend, winograd, hide) in [("avx1024", "default", "amx"), ("auto", "sometimes", "amx"), ("auto", "default", "sse")] {
            let c = Config {
                kernels: KernelsConfig { backend: backend.into(), winograd: winograd.into(), hide_cpu_features: vec![hide.into()] },
                ..Config::default()
            };
            assert!(c.validate().is_err(), "{backend} {winograd} {hide}");
        }
    }

    #[test]
    fn unknown_keys_in_the_file_stay_errors() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("upres.toml", "[kernels]\nbackend = \"portable\"\nhide_cpu_features = [\"amx\"]\n")?;
            let cfg = Config::load(Some(std::path::Path::new("upres.toml")), &Overrides::default()).map_err(|e| e.to_string())?;
            assert_eq!(cfg.kernels.backend, "portable");
            assert_eq!(cfg.kernels.hide_cpu_features, ["amx"]);
            jail.create_file("bad.toml", "[service]\nhost = \"10.0.0.1\"\n")?;
            assert!(Config::load(Some(std::path::Path::new("bad.toml")), &Overrides::default()).is_err());
            Ok(())
        });
    }

    #[test]
    fn cli_overrides_win() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("UPRES_CACHE__STORE__URL", "file://elsewhere");
            let o = Overrides { origin: Some("file:///srv/img".into()), store: Some("".into()), ..Default::default() };
            let cfg = Config::load(None, &o).unwrap();
            assert_eq!(cfg.origins["default"].url, "file:///srv/img");
            assert_eq!(cfg.cache.store.url, "");
            Ok(())
        });
    }

    #[test]
    fn validation_catches_cross_field_mistakes() {
        let mut c = Config::default();
        c.tls.cert = Some("a.pem".into());
        assert!(c.validate().is_err());
        let mut c = Config::default();
        c.origins.clear();
        assert!(c.validate().is_err());
        let mut c = Config::default();
        c.signing.keys = vec!["00".into()];
        assert!(c.validate().is_err());
        let mut c = Config::default();
        c.cache.claims.ttl = c.server.request_deadline / 2;
        assert!(c.validate().is_err());
        for ratio in [-0.1, 1.5, f64::NAN] {
            let mut c = Config::default();
            c.telemetry.otlp_sample_ratio = ratio;
            assert!(c.validate().is_err(), "{ratio}");
        }
        assert!(Config::default().validate().is_ok());
    }

    #[test]
    fn signing_secrets_are_not_in_debug_output() {
        let mut c = Config::default();
        c.signing.key = Some("deadbeef".into());
        c.signing.salt = Some("cafe".into());
        let s = format!("{c:?}");
        assert!(!s.contains("deadbeef") && !s.contains("cafe"), "{s}");
    }
}
