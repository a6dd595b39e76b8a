//! `GET /api/v1/openapi.json`: the OpenAPI 3.1 document of every route, compiled in.
//!
//! `openapi.json` is edited by hand beside the code. A test reads the route table
//! (`routes::ROUTES`) and fails when a route or one of its methods is missing from the document,
//! or the document lists a route the server does not have, so the two cannot drift.

use bytes::Bytes;
use http::request::Parts;
use http::StatusCode;

use crate::respond::Answer;
use crate::respond::{self, CacheOutcome};

pub const DOCUMENT: &str = include_str!("openapi.json");

pub fn serve(head: &Parts) -> Answer {
    crate::respond::get_or_head(head)?;
    Ok((respond::text(StatusCode::OK, "application/json", Bytes::from_static(DOCUMENT.as_bytes())), CacheOutcome::None))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::routes::{Pattern, ROUTES};

    /// The path the document uses for a route: the exact path, or a documented path under the prefix.
    fn documented(paths: &serde_json::Map<String, serde_json::Value>, pattern: Pattern) -> Option<&String> {
        match pattern {
            Pattern::Exact(p) => paths.keys().find(|k| k.as_str() == p),
            Pattern::Prefix(p) => paths.keys().find(|k| k.starts_with(p)),
        }
    }

    #[test]
    fn document_and_route_table_list_the_same_routes_and_methods() {
        let doc: serde_json::Value = serde_json::from_str(DOCUMENT).expect("openapi.json parses");
        assert_eq!(doc["openapi"], "3.1.0");
        let paths = doc["paths"].as_object().expect("paths");
        for def in ROUTES {
            let path = documented(paths, def.pattern).unwrap_or_else(|| panic!("route {:?} is missing from openapi.json", def.pattern));
            for method in def.methods.iter().filter(|m| **m != "HEAD") {
                let op = &paths[path][method.to_ascii_lowercase()];
                assert!(op.is_object(), "openapi.json has no {method} operation for {path}");
            }
        }
        let fallbacks: Vec<&String> = paths.iter().filter(|(_, v)| v["x-upres-fallback"] == true).map(|(k, _)| k).collect();
        assert_eq!(fallbacks.len(), 1, "exactly one path documents the transform fallback");
        for path in paths.keys() {
            let known = ROUTES.iter().any(|d| documented(paths, d.pattern) == Some(path)) || fallbacks.contains(&path);
            assert!(known, "openapi.json documents {path}, which no route in routes::ROUTES serves");
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
