//! `upres`: parse the CLI, load and validate config, start tracing, run the chosen command.


use anyhow::{bail, Context, Result};
use clap::Parser;
use tokio_util::sync::CancellationToken;

use upres::app::App;
use upres::cli::{Cli, Command};
use upres::config::{Config, Overrides};
use upres::imaging::encode::OutputFormat;
use upres::params::{self, Format};
use upres::plan::{Caller, Variant};
use upres::respond::Timings;
use upres::verify::Signer;
use upres::{miss, server, telemetry, warm};

fn main() -> Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve { config, listen, origin, store, models } => {
            let cfg = Config::load(config.as_deref(), &Overrides { listen, origin, store, models })?;
            let telemetry = telemetry::init_tracing(&cfg.telemetry).map_err(anyhow::Error::msg)?;
            tracing::info!(config = ?cfg.redacted(), "starting");
            let ignored = upres::config::ignored_env_vars();
            if !ignored.is_empty() {
                tracing::info!(?ignored, "UPRES_* variables that are not config keys are ignored");
            }
            set_kernels(&cfg)?;
            let tls = server::tls_acceptor(&cfg.tls).map_err(anyhow::Error::msg)?;
            let listener = tokio::net::TcpListener::bind(cfg.server.listen)
                .await
                .with_context(|| format!("binding {}", cfg.server.listen))?;
            let app = App::build(cfg)?;
            tracing::info!(
                addr = %listener.local_addr()?,
                tls = tls.is_some(),
                models = ?app.registry.names(),
                "listening"
            );
            // Serve at once (liveness); /readyz turns ready after warm-up.
            let warm = app.clone();
            tokio::spawn(async move {
                if let Err(e) = warm.warm_up().await {
                    tracing::error!(error = %e, "warm-up failed; /readyz stays unready");
                }
            });
            server::run(listener, tls, app, server::shutdown_signal()).await;
            // The spans of the last requests (a blocking HTTP export).
            tokio::task::spawn_blocking(move || telemetry.shutdown()).await?;
            Ok(())
        }
        Command::Upscale { input, output, options, config, models } => {
            let mut cfg = Config::load(config.as_deref(), &Overrides { models, store: Some(String::new()), ..Default::default() })?;
            cfg.origins.get_mut("default").expect("validated").url = "file://.".into();
            cfg.ml.warm_up = false;
            // One file, no requests: logs only.
            cfg.telemetry.otlp_endpoint.clear();
            let _telemetry = telemetry::init_tracing(&cfg.telemetry).map_err(anyhow::Error::msg)?;
            set_kernels(&cfg)?;
            upscale_file(cfg, &input, &output, &options).await
        }
        Command::Warm { file, server, concurrency, accept, timeout } => {
            let list = if file == "-" {
                std::io::read_to_string(std::io::stdin()).context("reading the list from stdin")?
            } else {
                std::fs::read_to_string(&file).with_context(|| format!("reading {file}"))?
            };
            let targets = warm::targets(&list);
            let opts = warm::WarmOptions { server, concurrency: concurrency.into(), accept, timeout };
            let report = warm::run(targets, &opts).await;
            for f in &report.failures {
                let status = f.status.map_or_else(|| "-".to_string(), |s| s.to_string());
                eprintln!("failed {status} {}: {}", f.target, f.message);
            }
            let secs = report.elapsed.as_secs_f64();
            eprintln!(
                "warm: {} URLs in {secs:.1}s ({:.1}/s): {} computed, {} already cached, {} failed",
                report.total(),
                report.total() as f64 / secs.max(1e-9),
                report.computed,
                report.cached,
                report.failures.len()
            );
            if !report.failures.is_empty() {
                bail!("{} of {} URLs failed", report.failures.len(), report.total());
            }
            Ok(())
        }
        Command::HashKey => {
            let mut key = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut key).context("reading the key from stdin")?;
            if key.trim().is_empty() {
                bail!("no key on stdin; e.g. `openssl rand -hex 32 | tee key.txt | upres hash-key`");
            }
            println!("keys = [\"{}\"]", upres::guard::auth::hash_key(&key));
            Ok(())
        }
        Command::Sign { path, config } => {
            let cfg = Config::load(config.as_deref(), &Overrides::default())?;
            let Some(signer) = Signer::from_config(&cfg.signing).map_err(anyhow::Error::msg)? else {
                bail!("signing is off: set UPRES_KEY and UPRES_SALT (hex) or [signing] in the config");
            };
            let path = if path.starts_with('/') { path } else { format!("/{path}") };
            println!("/{}{}", signer.sign(&path), path);
            Ok(())
        }
    }
}

/// Fixes the CPU kernel choices (`[kernels]`) for this process, before any model is built.
fn set_kernels(cfg: &Config) -> Result<()> {
    let overrides = cfg.kernels.overrides().map_err(anyhow::Error::msg)?;
    upres::ml::fastconv::set_overrides(overrides).map_err(anyhow::Error::msg)?;
    tracing::info!(kernels = %upres::ml::fastconv::kernel_summary(), "CPU kernels");
    Ok(())
}

async fn upscale_file(cfg: Config, input: &std::path::Path, output: &std::path::Path, options: &str) -> Result<()> {
    let options = options.trim_matches('/');
    let path = if options.is_empty() { "/-/input".to_string() } else { format!("/{options}/-/input") };
    let limits = params::ParamLimits::from_config(&cfg).map_err(|e| anyhow::anyhow!("presets: {e}"))?;
    let mut request = params::parse(&path, &limits).map_err(|e| anyhow::anyhow!("options: {e}"))?;
    if request.spec.format == Format::Auto {
        let ext = output.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
        request.spec.format = match OutputFormat::from_extension(&ext) {
            Some(OutputFormat::Avif) => Format::Avif,
            Some(OutputFormat::Webp) => Format::Webp,
            Some(OutputFormat::Jpeg) => Format::Jpeg,
            Some(OutputFormat::Png) => Format::Png,
            None => bail!("cannot tell the output format from {}; add format=avif|webp|jpeg|png", output.display()),
        };
    }
    let bytes = tokio::fs::read(input).await.with_context(|| format!("reading {}", input.display()))?;
    if bytes.len() as u64 > cfg.limits.max_source_bytes {
        bail!("{} is larger than limits.max_source_bytes", input.display());
    }
    let app = App::build(cfg)?;
    let variant = Variant::negotiate(request.spec.format, None, false);
    let planned = miss::plan_bytes(&app, bytes.into(), &request.spec, variant, Caller::Api).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let engine = planned.plan.model();
    let (w, h) = (planned.plan.out_w, planned.plan.out_h);
    let started = std::time::Instant::now();
    let memory = app.memory_budget.admit(upres::admission::job_bytes(&planned.plan)).map_err(|e| anyhow::anyhow!("{e}"))?;
    let never = CancellationToken::new();
    let watch = miss::Watch { cancel: &never, progress: None };
    let computed = miss::compute(&app, planned, memory, Timings::default(), watch).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    tokio::fs::write(output, &computed.result.bytes).await.with_context(|| format!("writing {}", output.display()))?;
    eprintln!(
        "{} → {} ({w}x{h}, {engine}, {:.2}s; {})",
        input.display(),
        output.display(),
        started.elapsed().as_secs_f64(),
        computed.timings.header()
    );
    Ok(())
}

