//! Command-line interface (clap derive). The only module that imports clap; it hands plain
//! values to the rest of the crate.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "upres", version, about = "Image super-resolution proxy")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the HTTP server.
    Serve {
        /// TOML config file (every key is optional; see config/upres.toml).
        #[arg(long, short, env = "UPRES_CONFIG")]
        config: Option<PathBuf>,
        /// Listen address, e.g. 0.0.0.0:8080.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Default origin URL (file://dir, s3://bucket/prefix, https://host/prefix…).
        #[arg(long)]
        origin: Option<String>,
        /// Result store URL (file://dir, s3://bucket/prefix…); empty disables it.
        #[arg(long)]
        store: Option<String>,
        /// Models folder.
        #[arg(long)]
        models: Option<PathBuf>,
    },
    /// Upscale one file offline, with the same transform options as a URL.
    Upscale {
        /// Input image.
        input: PathBuf,
        /// Output file; the format follows its extension unless `format=` is given.
        #[arg(short, long)]
        output: PathBuf,
        /// Transform options as in a URL path, e.g. `x4/w=800` or `x4/model=lanczos`.
        #[arg(default_value = "x4")]
        options: String,
        #[arg(long, short, env = "UPRES_CONFIG")]
        config: Option<PathBuf>,
        #[arg(long)]
        models: Option<PathBuf>,
    },
    /// Warm the cache: request every URL or path listed in FILE from a running upres.
    Warm {
        /// One transform URL or path per line (`#` starts a comment); `-` reads stdin.
        file: String,
        /// The upres to warm (a replica or its Service), http:// only.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        server: String,
        /// Requests in flight at most.
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=1024))]
        concurrency: u16,
        /// `Accept` header sent (results of `format=auto` URLs vary on it).
        #[arg(long, default_value = "image/webp,image/*,*/*;q=0.8")]
        accept: String,
        /// Per-request timeout, e.g. `90s`.
        #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Read a REST API key from stdin and print its `[api] keys` config line (only the hash).
    HashKey,
    /// Print a signed URL path for PATH (with UPRES_KEY/UPRES_SALT or the config's keys).
    Sign {
        /// The path to sign, e.g. /x4/w=800/shop/cat.jpg
        path: String,
        #[arg(long, short, env = "UPRES_CONFIG")]
        config: Option<PathBuf>,
    },
}
