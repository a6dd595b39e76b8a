//! Cache keys: fixed-size blake3 digests with domain separation.
//!
//! Two keyspaces (design "Caching"):
//! - `RequestKey` = H(canonical transform ‖ negotiated format ‖ origin ‖ source key): what the URL
//!   asks for. It finds a memory-tier entry without touching the origin.
//! - `ResultKey` = H(source bytes hash ‖ resolved plan ‖ engine id with weights digest ‖
//!   ENGINE_VERSION): what was computed. It names objects in the store tier, is the `ETag`, and is
//!   the same on every replica for the same bytes, so a shared store dedupes across a fleet.
//!
//! Keys are typed; cache APIs never take `&str`.

use std::fmt;

/// Bump when encoder settings or pixel maths change, so old results are never served.
pub const ENGINE_VERSION: &str = "upres-pixels-1";

macro_rules! digest_key {
    ($name:ident, $domain:literal) => {
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name([u8; 32]);

        impl $name {
            /// Hashes length-prefixed parts under this keyspace's domain.
            pub fn derive(parts: &[&[u8]]) -> Self {
                let mut h = blake3::Hasher::new_derive_key($domain);
                for part in parts {
                    h.update(&(part.len() as u64).to_le_bytes());
                    h.update(part);
                }
                Self(*h.finalize().as_bytes())
            }

            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }

            pub fn hex(&self) -> String {
                hex::encode(self.0)
            }

            /// First 12 hex chars, for log lines.
            pub fn short(&self) -> String {
                hex::encode(&self.0[..6])
            }

            pub fn from_hex(s: &str) -> Option<Self> {
                let mut out = [0u8; 32];
                hex::decode_to_slice(s, &mut out).ok()?;
                Some(Self(out))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }
    };
}

digest_key!(RequestKey, "upres 2026 request key v1");
digest_key!(ResultKey, "upres 2026 result key v1");

/// blake3 of the source bytes: the content half of a `ResultKey`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SourceHash(pub [u8; 32]);

impl SourceHash {
    pub fn of(bytes: &[u8]) -> Self {
        Self(*blake3::hash(bytes).as_bytes())
    }
}

/// A short hash of (origin, source key): the CDN purge tag (`Surrogate-Key`, `Cache-Tag`) shared
/// by every variant of one source, and what `POST /api/v1/purge` drops from the memory tier.
/// Hashed so it is header-safe whatever the key's characters, and does not reveal the key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SourceTag([u8; 8]);

impl SourceTag {
    pub fn of(origin: &str, source: &str) -> Self {
        let full = RequestKey::derive(&[b"source tag", origin.as_bytes(), source.as_bytes()]);
        let mut short = [0u8; 8];
        short.copy_from_slice(&full.as_bytes()[..8]);
        Self(short)
    }

    /// 16 hex chars, with a prefix so a CDN's tag list stays readable next to other tags.
    pub fn header(&self) -> String {
        format!("upres-{}", hex::encode(self.0))
    }
}

impl fmt::Debug for SourceTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SourceTag({})", self.header())
    }
}

impl RequestKey {
    pub fn for_request(canonical_spec: &str, format: &str, origin: &str, source: &str) -> Self {
        Self::derive(&[canonical_spec.as_bytes(), format.as_bytes(), origin.as_bytes(), source.as_bytes()])
    }
}

impl RequestKey {
    /// The memory-tier key of an upload: uploads have no URL, so the result key stands in for it
    /// (in its own domain, so it never collides with a URL's request key).
    pub fn for_upload(result: &ResultKey) -> Self {
        Self::derive(&[b"upload", result.as_bytes()])
    }
}

impl ResultKey {
    pub fn for_result(source: &SourceHash, canonical_plan: &str, engine_id: &str) -> Self {
        Self::derive(&[&source.0, canonical_plan.as_bytes(), engine_id.as_bytes(), ENGINE_VERSION.as_bytes()])
    }

    /// The strong validator for this result: quoted hex.
    pub fn etag(&self) -> String {
        format!("\"{}\"", self.hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_length_prefixed() {
        // "ab" + "c" must not collide with "a" + "bc".
        assert_ne!(RequestKey::derive(&[b"ab", b"c"]), RequestKey::derive(&[b"a", b"bc"]));
    }

    #[test]
    fn keyspaces_are_separated() {
        assert_ne!(RequestKey::derive(&[b"x"]).as_bytes(), ResultKey::derive(&[b"x"]).as_bytes());
    }

    #[test]
    fn result_key_depends_on_every_input() {
        let s = SourceHash::of(b"pixels");
        let k = ResultKey::for_result(&s, "scale=4", "lanczos@1");
        assert_ne!(k, ResultKey::for_result(&SourceHash::of(b"other"), "scale=4", "lanczos@1"));
        assert_ne!(k, ResultKey::for_result(&s, "scale=2", "lanczos@1"));
        assert_ne!(k, ResultKey::for_result(&s, "scale=4", "lanczos@2"));
        assert_eq!(k, ResultKey::for_result(&s, "scale=4", "lanczos@1"));
    }

    #[test]
    fn source_tags_depend_on_origin_and_key_only() {
        let t = SourceTag::of("default", "shop/cat.jpg");
        assert_eq!(t, SourceTag::of("default", "shop/cat.jpg"));
        assert_ne!(t, SourceTag::of("other", "shop/cat.jpg"));
        assert_ne!(t, SourceTag::of("default", "shop/dog.jpg"));
        assert_eq!(t.header().len(), "upres-".len() + 16);
    }

    #[test]
    fn hex_round_trips_and_etag_is_quoted() {
        let k = ResultKey::derive(&[b"x"]);
        assert_eq!(ResultKey::from_hex(&k.hex()), Some(k));
        assert_eq!(ResultKey::from_hex("zz"), None);
        assert!(k.etag().starts_with('"') && k.etag().ends_with('"') && k.etag().len() == 66);
    }
}
