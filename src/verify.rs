//! URL signatures, compatible with imgproxy's scheme so its signing libraries sign upres URLs.
//!
//! When signing is on, the first path segment is
//! `base64url_nopad(HMAC-SHA256(key, salt ‖ rest_of_path))`, where `rest_of_path` starts with
//! `/` and is the path exactly as sent after that segment. Keys and salts are hex in the config;
//! several pairs are accepted so keys can be rotated. `signing.size` keeps only the first bytes
//! of the MAC (imgproxy's `IMGPROXY_SIGNATURE_SIZE`). The signature is not part of any cache key.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::SigningConfig;
use crate::error::{Classify, ErrorClass};

type HmacSha256 = Hmac<Sha256>;

/// The accepted key/salt pairs.
#[derive(Clone)]
pub struct Signer {
    pairs: Vec<(Vec<u8>, Vec<u8>)>,
    /// Bytes of the MAC a signature carries (1..=32).
    size: usize,
}

#[derive(thiserror::Error, Debug, PartialEq)]
pub enum SignatureError {
    #[error("this server requires signed URLs: the first path segment must be the signature")]
    Missing,
    #[error("the URL signature is not valid")]
    Invalid,
}

impl Classify for SignatureError {
    fn class(&self) -> ErrorClass {
        ErrorClass::Forbidden
    }
}

impl Signer {
    /// `None` when signing is off.
    pub fn from_config(cfg: &SigningConfig) -> Result<Option<Signer>, String> {
        let mut pairs = Vec::new();
        let first = cfg.key.iter().zip(cfg.salt.iter());
        for (k, s) in first.chain(cfg.keys.iter().zip(cfg.salts.iter())) {
            let key = hex::decode(k.trim()).map_err(|_| "signing key is not hex".to_string())?;
            let salt = hex::decode(s.trim()).map_err(|_| "signing salt is not hex".to_string())?;
            if key.is_empty() {
                return Err("signing key is empty".into());
            }
            pairs.push((key, salt));
        }
        if !(1..=32).contains(&cfg.size) {
            return Err("signing.size must be in 1..=32".into());
        }
        Ok((!pairs.is_empty()).then_some(Signer { pairs, size: cfg.size }))
    }

    pub fn from_hex(key: &str, salt: &str) -> Result<Signer, String> {
        let cfg = SigningConfig { key: Some(key.into()), salt: Some(salt.into()), ..Default::default() };
        Self::from_config(&cfg)?.ok_or_else(|| "no key".to_string())
    }

    /// The signature for `path` (which starts with `/`) under the first (current) pair.
    pub fn sign(&self, path: &str) -> String {
        let (key, salt) = &self.pairs[0];
        URL_SAFE_NO_PAD.encode(&mac(key, salt, path).finalize().into_bytes()[..self.size])
    }

    /// Checks the first segment of `full_path` and returns the rest (starting with `/`).
    pub fn verify<'a>(&self, full_path: &'a str) -> Result<&'a str, SignatureError> {
        let trimmed = full_path.strip_prefix('/').unwrap_or(full_path);
        let (sig, rest) = match trimmed.find('/') {
            Some(i) => (&trimmed[..i], &trimmed[i..]),
            None => return Err(SignatureError::Missing),
        };
        let sig = URL_SAFE_NO_PAD.decode(sig).map_err(|_| SignatureError::Invalid)?;
        if sig.len() != self.size {
            return Err(SignatureError::Invalid);
        }
        // Constant-time comparison through the MAC's own verify.
        let ok = self.pairs.iter().any(|(key, salt)| mac(key, salt, rest).verify_truncated_left(&sig).is_ok());
        if ok {
            Ok(rest)
        } else {
            Err(SignatureError::Invalid)
        }
    }
}

fn mac(key: &[u8], salt: &[u8], path: &str) -> HmacSha256 {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    m.update(salt);
    m.update(path.as_bytes());
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    // imgproxy's documented example: key "secret", salt "hello" (hex below), path
    // "/rs:fill:300:400:0/g:sm/aHR0cDovL2V4YW1w/bGUuY29tL2ltYWdl/cy9jdXJpb3NpdHku/anBn.png"
    // signs to "oKfUtW34Dvo2BGQehJFR4Nr0_rIjOtdtzJ3QFsUcXH8".
    const KEY: &str = "736563726574";
    const SALT: &str = "68656C6C6F";
    const PATH: &str = "/rs:fill:300:400:0/g:sm/aHR0cDovL2V4YW1w/bGUuY29tL2ltYWdl/cy9jdXJpb3NpdHku/anBn.png";

    #[test]
    fn matches_imgproxy_documented_signature() {
        let s = Signer::from_hex(KEY, SALT).unwrap();
        assert_eq!(s.sign(PATH), "oKfUtW34Dvo2BGQehJFR4Nr0_rIjOtdtzJ3QFsUcXH8");
        let full = format!("/oKfUtW34Dvo2BGQehJFR4Nr0_rIjOtdtzJ3QFsUcXH8{PATH}");
        assert_eq!(s.verify(&full), Ok(PATH));
    }

    #[test]
    fn rejects_missing_wrong_and_tampered() {
        let s = Signer::from_hex(KEY, SALT).unwrap();
        let sig = s.sign("/x4/cat.jpg");
        assert_eq!(s.verify(&format!("/{sig}/x4/cat.jpg")), Ok("/x4/cat.jpg"));
        assert_eq!(s.verify(&format!("/{sig}/x2/cat.jpg")), Err(SignatureError::Invalid));
        assert_eq!(s.verify("/x4/cat.jpg"), Err(SignatureError::Invalid));
        assert_eq!(s.verify("/justone"), Err(SignatureError::Missing));
        assert_eq!(s.verify("/!!!/x4/cat.jpg"), Err(SignatureError::Invalid));
    }

    #[test]
    fn truncated_signatures_keep_the_first_bytes() {
        let full = Signer::from_hex(KEY, SALT).unwrap();
        let cfg = SigningConfig { key: Some(KEY.into()), salt: Some(SALT.into()), size: 8, ..Default::default() };
        let short = Signer::from_config(&cfg).unwrap().unwrap();
        let sig = short.sign(PATH);
        let full_bytes = URL_SAFE_NO_PAD.decode(full.sign(PATH)).unwrap();
        assert_eq!(URL_SAFE_NO_PAD.decode(&sig).unwrap(), full_bytes[..8]);
        assert_eq!(short.verify(&format!("/{sig}{PATH}")), Ok(PATH));
        // The full signature, or a shorter prefix, is not accepted in place of the configured size.
        assert_eq!(short.verify(&format!("/{}{PATH}", full.sign(PATH))), Err(SignatureError::Invalid));
        let four = URL_SAFE_NO_PAD.encode(&full_bytes[..4]);
        assert_eq!(short.verify(&format!("/{four}{PATH}")), Err(SignatureError::Invalid));
        assert!(Signer::from_config(&SigningConfig { size: 33, ..cfg }).is_err());
    }

    #[test]
    fn rotation_accepts_every_configured_pair() {
        let old = Signer::from_hex("aa", "bb").unwrap();
        let cfg = SigningConfig {
            key: Some("cc".into()),
            salt: Some("dd".into()),
            keys: vec!["aa".into()],
            salts: vec!["bb".into()],
            ..Default::default()
        };
        let both = Signer::from_config(&cfg).unwrap().unwrap();
        let path = "/x4/cat.jpg";
        assert!(both.verify(&format!("/{}{path}", old.sign(path))).is_ok());
        assert!(both.verify(&format!("/{}{path}", both.sign(path))).is_ok());
        assert!(old.verify(&format!("/{}{path}", both.sign(path))).is_err());
    }
}
