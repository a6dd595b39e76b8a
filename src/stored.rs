//! `GET /r/<result key>.<ext>`: a stored result by its content-addressed name.

use std::sync::Arc;

use http::request::Parts;

use crate::app::App;
use crate::error::{ErrorClass, ProxyError};
use crate::imaging::encode::OutputFormat;
use crate::key::ResultKey;
use crate::miss::lookup_store;
use crate::pipeline::reply;
use crate::plan::Variant;
use crate::respond::{get_or_head, Answer, CacheOutcome, Timings};

/// `GET /r/<result key hex>.<ext>`: a stored result by its key.
pub async fn serve(app: &Arc<App>, head: &Parts) -> Answer {
    get_or_head(head)?;
    let not_found = || ProxyError::new(ErrorClass::NotFound, "no stored result with that key");
    let name = head.uri.path().trim_start_matches("/r/");
    let (hex, ext) = name.rsplit_once('.').ok_or_else(not_found)?;
    let key = ResultKey::from_hex(hex).ok_or_else(not_found)?;
    let format = OutputFormat::from_extension(ext).ok_or_else(not_found)?;
    let found = lookup_store(app, &key).await.ok_or_else(not_found)?;
    if found.format != format {
        return Err(not_found());
    }
    let variant = Variant::Explicit(format);
    let r = reply(app, head, &found, CacheOutcome::HitStore, &Timings::default(), variant, &app.cfg.output.stored_cache_control);
    Ok((r, CacheOutcome::HitStore))
}
