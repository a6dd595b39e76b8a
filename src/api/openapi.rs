//! `GET /api/v1/openapi.json`: the OpenAPI 3.1 document of every route, compiled in.
//!
//! `openapi.json` is edited by hand beside the code. A test reads `pipeline::handle`'s route
//! match and fails when a route is missing from the document or the document lists a route the
//! server does not have, so the two cannot drift.

use bytes::Bytes;
use http::request::Parts;
use http::StatusCode;

use crate::pipeline::Answer;
use crate::respond::{self, CacheOutcome};

pub const DOCUMENT: &str = include_str!("openapi.json");

pub fn serve(head: &Parts) -> Answer {
    crate::pipeline::get_or_head(head)?;
    Ok((respond::text(StatusCode::OK, "application/json", Bytes::from_static(DOCUMENT.as_bytes())), CacheOutcome::None))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The routes of `pipeline::handle`'s match: exact paths (`"/x" =>`) and prefixes
    /// (`p if p.starts_with("/x/")`), read from the source so a new arm cannot be forgotten.
    fn routes() -> (Vec<String>, Vec<String>) {
        let source = include_str!("../pipeline.rs");
        let start = source.find("pub async fn handle").expect("handle exists");
        let body = &source[start..];
        let body = &body[..body.find("\n}\n").expect("handle ends")];
        let arms = &body[body.find("match path {").expect("the route match")..];
        let arms = &arms[..arms.find("\n    };").expect("the match ends")];
        let (mut exact, mut prefixes) = (Vec::new(), Vec::new());
        for line in arms.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix('"') {
                if let Some((path, _)) = rest.split_once("\" =>") {
                    exact.push(path.to_string());
                }
            }
            if let Some((_, rest)) = line.split_once(".starts_with(\"") {
                prefixes.push(rest.split('"').next().unwrap().to_string());
            }
        }
        (exact, prefixes)
    }

    #[test]
    fn document_and_route_match_list_the_same_routes() {
        let doc: serde_json::Value = serde_json::from_str(DOCUMENT).expect("openapi.json parses");
        assert_eq!(doc["openapi"], "3.1.0");
        let paths = doc["paths"].as_object().expect("paths");
        let (exact, prefixes) = routes();
        assert!(exact.len() >= 8 && !prefixes.is_empty(), "the route scan found too little: {exact:?} {prefixes:?}");
        for route in &exact {
            assert!(paths.contains_key(route), "route {route} of pipeline::handle is missing from openapi.json");
        }
        for prefix in &prefixes {
            assert!(paths.keys().any(|p| p.starts_with(prefix.as_str())), "no path under {prefix} in openapi.json");
        }
        let fallbacks: Vec<&String> = paths.iter().filter(|(_, v)| v["x-upres-fallback"] == true).map(|(k, _)| k).collect();
        assert_eq!(fallbacks.len(), 1, "exactly one path documents the transform fallback");
        for path in paths.keys() {
            let known = exact.contains(path) || prefixes.iter().any(|p| path.starts_with(p.as_str())) || fallbacks.contains(&path);
            assert!(known, "openapi.json documents {path}, which pipeline::handle does not route");
        }
    }

    #[test]
    fn every_reference_resolves_and_every_operation_has_responses() {
        let doc: serde_json::Value = serde_json::from_str(DOCUMENT).unwrap();
        fn walk(v: &serde_json::Value, doc: &serde_json::Value) {
            match v {
                serde_json::Value::Object(map) => {
                    if let Some(r) = map.get("$ref").and_then(|r| r.as_str()) {
                        let pointer = r.strip_prefix('#').expect("local reference");
                        assert!(doc.pointer(pointer).is_some(), "dangling $ref {r}");
                    }
                    map.values().for_each(|v| walk(v, doc));
                }
                serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, doc)),
                _ => {}
            }
        }
        walk(&doc, &doc);
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap().iter().filter(|(k, _)| !k.starts_with("x-")) {
                assert!(op["responses"].as_object().is_some_and(|r| !r.is_empty()), "{method} {path} has no responses");
            }
        }
    }

    #[test]
    fn upload_fields_match_the_field_table() {
        let doc: serde_json::Value = serde_json::from_str(DOCUMENT).unwrap();
        let form = doc["components"]["schemas"]["UpscaleForm"]["properties"].as_object().unwrap();
        let mut documented: Vec<&str> = form.keys().map(String::as_str).filter(|k| *k != "image").collect();
        let mut fields: Vec<&str> = super::super::fields::FIELDS.iter().map(|(f, _)| *f).collect();
        documented.sort();
        fields.sort();
        assert_eq!(documented, fields);
    }
}
