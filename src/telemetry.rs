//! Logs, traces and metrics: the tracing subscriber (with optional OTLP span export), and the
//! Prometheus registry every stage reports to. W3C trace context lives in `trace_context.rs`.
//!
//! Metric label values are closed sets (`CacheOutcome::as_str`, stage names, status codes, model
//! ids), so cardinality stays bounded. Log lines carry keys and sizes, never image bytes or
//! prompt text.

use prometheus::core::Collector;
use prometheus::proto::MetricType;
use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::config::TelemetryConfig;
use crate::quality::metrics::QualityMetrics;

/// Installs the global tracing subscriber (text or JSON logs, and with `otlp_endpoint` set the
/// OpenTelemetry layer exporting spans over OTLP/HTTP). `RUST_LOG` overrides the filter. Keep
/// the returned `Telemetry` and call `shutdown` at exit, so the last spans are sent.
pub fn init_tracing(cfg: &TelemetryConfig) -> Result<Telemetry, String> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cfg.log_filter));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let fmt = tracing_subscriber::fmt::layer().with_target(false).with_ansi(ansi);
    let fmt = if cfg.log_format == "json" { fmt.json().boxed() } else { fmt.boxed() };
    let provider = match cfg.otlp_endpoint.as_str() {
        "" => None,
        endpoint => Some(otlp_provider(endpoint, cfg.otlp_sample_ratio)?),
    };
    let otel = provider.as_ref().map(|p| {
        use opentelemetry::trace::TracerProvider;
        tracing_opentelemetry::layer().with_tracer(p.tracer("upres"))
    });
    // A second init (tests) is harmless: keep the first subscriber.
    let _ = tracing_subscriber::registry().with(filter).with(fmt).with(otel).try_init();
    Ok(Telemetry { provider })
}

/// OTLP/HTTP (protobuf) span export to `<endpoint>/v1/traces`, batched on the SDK's own thread;
/// a caller's sampled flag decides for its request, `ratio` (by trace id) for traces started here.
fn otlp_provider(endpoint: &str, ratio: f64) -> Result<opentelemetry_sdk::trace::SdkTracerProvider, String> {
    use opentelemetry_sdk::trace::Sampler;
    use opentelemetry_otlp::{Protocol, WithExportConfig};
    let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(url)
        .build()
        .map_err(|e| format!("telemetry.otlp_endpoint: {e}"))?;
    let resource = opentelemetry_sdk::Resource::builder().with_service_name("upres").build();
    Ok(opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio))))
        .with_resource(resource)
        .build())
}

/// What `init_tracing` started that needs an orderly end.
pub struct Telemetry {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Telemetry {
    /// Sends the spans still batched and stops the exporter. Blocks (the export is a blocking
    /// HTTP call): call it outside async code or in `spawn_blocking`.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            if let Err(e) = provider.shutdown() {
                tracing::warn!(error = %e, "OTLP exporter shutdown");
            }
        }
    }
}

/// Every metric upres exports. One instance per server (tests run several in one process).
pub struct Metrics {
    pub registry: Registry,
    /// Consistency scores, the quality gate and shadow runs (`quality::metrics`).
    pub quality: QualityMetrics,
    /// Requests by status code and cache outcome.
    pub requests: IntCounterVec,
    /// Seconds per request-path stage (fetch, decode, infer, encode, store, total).
    pub stage_seconds: HistogramVec,
    /// Forward passes per engine (one per batch).
    pub engine_runs: IntCounterVec,
    /// Tiles per forward pass.
    pub batch_size: HistogramVec,
    /// Jobs waiting for or in inference, and the most the queue takes (`engine.queue_capacity`).
    pub queue_depth: IntGauge,
    pub queue_capacity: IntGauge,
    /// Cache tier events: tier × (hit, miss, corrupt, error, write).
    pub cache_events: IntCounterVec,
    /// Whole-request latency by route, cache outcome and model (the `X-Upres-Model` answered;
    /// `none` when no image was served), so hits and misses never share a histogram.
    pub request_seconds: HistogramVec,
    /// Sources dropped from the memory tier by `POST /api/v1/purge`.
    pub purged_sources: IntCounter,
    /// First hits answered with a preview (`serve.first_hit_budget`).
    pub previews: IntCounter,
    /// The requested model's runs behind a preview, by outcome (done, failed, dropped).
    pub background_runs: IntCounterVec,
    /// Jobs (`/api/v1/jobs`) by how they ended (done, failed), and callbacks by outcome.
    pub jobs: IntCounterVec,
    pub callbacks: IntCounterVec,
    /// Jobs this replica took over from one whose lease ran out.
    pub job_takeovers: IntCounter,
    /// Connections closed for saying nothing: `header_timeout` (no request head in time after
    /// opening) or `idle` (no request after the last one).
    pub connections_dropped: IntCounterVec,
    /// Result-store writes in flight (they run after the response).
    pub store_writes_pending: IntGauge,
    /// Bytes the running jobs hold from the memory budget (`admission.rs`), and the budget.
    pub memory_admitted_bytes: IntGauge,
    pub memory_budget_bytes: IntGauge,
    /// Jobs refused because the memory budget was in use.
    pub memory_refused: IntCounter,
    /// Requests whose rate limit was decided without Redis, by policy (allow, deny).
    pub rate_limit_fallbacks: IntCounterVec,
    /// Every series name the registry can export (histograms as `_bucket`/`_sum`/`_count`),
    /// empty label sets included: the list the dashboard and alert rules are checked against.
    series: Vec<String>,
}

/// `upres_rate_limit_fallbacks_total{policy}` (unregistered; `Metrics::new` registers its own).
pub fn rate_limit_fallbacks() -> IntCounterVec {
    IntCounterVec::new(
        Opts::new("upres_rate_limit_fallbacks_total", "Rate-limit checks decided by the fallback policy because Redis was unreachable"),
        &["policy"],
    )
    .expect("valid metric")
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("upres_requests_total", "HTTP requests by status and cache outcome"),
            &["status", "cache"],
        )
        .expect("valid metric");
        let stage_seconds = HistogramVec::new(
            HistogramOpts::new("upres_stage_seconds", "Time spent per request-path stage")
                .buckets(vec![0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]),
            &["stage"],
        )
        .expect("valid metric");
        let engine_runs = IntCounterVec::new(
            Opts::new("upres_engine_runs_total", "Engine forward passes (one per batch)"),
            &["model"],
        )
        .expect("valid metric");
        let batch_size = HistogramVec::new(
            HistogramOpts::new("upres_engine_batch_size", "Tiles per forward pass")
                .buckets(vec![1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 32.0]),
            &["model"],
        )
        .expect("valid metric");
        let queue_depth =
            IntGauge::new("upres_engine_queue_depth", "Jobs waiting for or in inference").expect("valid metric");
        let cache_events = IntCounterVec::new(
            Opts::new("upres_cache_events_total", "Cache tier events"),
            &["tier", "event"],
        )
        .expect("valid metric");
        let request_seconds = HistogramVec::new(
            HistogramOpts::new("upres_request_seconds", "Whole-request latency by route, cache outcome and model")
                .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]),
            &["route", "cache", "model"],
        )
        .expect("valid metric");
        let queue_capacity = IntGauge::new("upres_engine_queue_capacity", "Jobs the inference queue takes before answering 503")
            .expect("valid metric");
        let build_info = IntGaugeVec::new(
            Opts::new("upres_build_info", "Always 1; the labels name the build"),
            &["version", "cuda"],
        )
        .expect("valid metric");
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION"), if cfg!(feature = "cuda") { "true" } else { "false" }]).set(1);
        // process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, … (Linux).
        let process = prometheus::process_collector::ProcessCollector::for_self();
        let purged_sources =
            IntCounter::new("upres_purged_sources_total", "Sources purged from the memory tier").expect("valid metric");
        let previews = IntCounter::new("upres_previews_total", "First hits answered with a preview").expect("valid metric");
        let background_runs = IntCounterVec::new(
            Opts::new("upres_background_runs_total", "Model runs behind a preview, by outcome"),
            &["outcome"],
        )
        .expect("valid metric");
        let jobs = IntCounterVec::new(Opts::new("upres_jobs_total", "Jobs by how they ended"), &["state"]).expect("valid metric");
        let callbacks =
            IntCounterVec::new(Opts::new("upres_job_callbacks_total", "Job callbacks by outcome"), &["outcome"]).expect("valid metric");
        let job_takeovers = IntCounter::new("upres_job_takeovers_total", "Jobs taken over from a replica whose lease ran out")
            .expect("valid metric");
        let connections_dropped = IntCounterVec::new(
            Opts::new("upres_connections_dropped_total", "Connections closed for saying nothing, by reason"),
            &["reason"],
        )
        .expect("valid metric");
        let store_writes_pending = IntGauge::new("upres_store_writes_pending", "Result-store writes in flight")
            .expect("valid metric");
        let memory_admitted_bytes =
            IntGauge::new("upres_memory_admitted_bytes", "Bytes running jobs hold from the memory budget").expect("valid metric");
        let memory_budget_bytes =
            IntGauge::new("upres_memory_budget_bytes", "The memory budget for running jobs").expect("valid metric");
        let memory_refused =
            IntCounter::new("upres_memory_refused_total", "Jobs refused (503) because the memory budget was in use")
                .expect("valid metric");
        let rate_limit_fallbacks = rate_limit_fallbacks();
        let quality = QualityMetrics::new();
        let mut series = Vec::new();
        for c in quality.collectors().into_iter().chain([
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(stage_seconds.clone()),
            Box::new(engine_runs.clone()),
            Box::new(batch_size.clone()),
            Box::new(queue_depth.clone()),
            Box::new(cache_events.clone()),
            Box::new(request_seconds.clone()),
            Box::new(purged_sources.clone()),
            Box::new(previews.clone()),
            Box::new(background_runs.clone()),
            Box::new(jobs.clone()),
            Box::new(callbacks.clone()),
            Box::new(job_takeovers.clone()),
            Box::new(connections_dropped.clone()),
            Box::new(store_writes_pending.clone()),
            Box::new(memory_admitted_bytes.clone()),
            Box::new(memory_budget_bytes.clone()),
            Box::new(memory_refused.clone()),
            Box::new(rate_limit_fallbacks.clone()),
            Box::new(queue_capacity.clone()),
            Box::new(build_info),
            Box::new(process),
        ]) {
            series.extend(series_names(c.as_ref()));
            registry.register(c).expect("metric names are unique");
        }
        series.sort();
        Self {
            registry,
            requests,
            stage_seconds,
            engine_runs,
            batch_size,
            queue_depth,
            cache_events,
            request_seconds,
            purged_sources,
            previews,
            background_runs,
            jobs,
            callbacks,
            job_takeovers,
            connections_dropped,
            store_writes_pending,
            memory_admitted_bytes,
            memory_budget_bytes,
            memory_refused,
            rate_limit_fallbacks,
            queue_capacity,
            quality,
            series,
        }
    }

    /// Every series name `/metrics` can show (see `series`).
    pub fn series_names(&self) -> &[String] {
        &self.series
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf).expect("text encoding never fails");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }

    pub fn cache_event(&self, tier: &str, event: &str) {
        self.cache_events.with_label_values(&[tier, event]).inc();
    }
}

/// The series names a collector exports, from its families' types (a labelled family with no
/// children yet still has its name and type).
fn series_names(c: &dyn Collector) -> Vec<String> {
    c.collect()
        .iter()
        .flat_map(|f| {
            let name = f.name().to_string();
            match f.get_field_type() {
                MetricType::HISTOGRAM => vec![format!("{name}_bucket"), format!("{name}_sum"), format!("{name}_count")],
                MetricType::SUMMARY => vec![name.clone(), format!("{name}_sum"), format!("{name}_count")],
                _ => vec![name],
            }
        })
        .collect()
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_engine_runs_with_model_label() {
        let m = Metrics::new();
        m.engine_runs.with_label_values(&["lanczos-x4@v1"]).inc();
        let text = m.render();
        assert!(text.contains("upres_engine_runs_total{model=\"lanczos-x4@v1\"} 1"), "{text}");
    }
}
