//! CLIP byte-level BPE tokenizer built from a diffusers `tokenizer/` folder (`vocab.json`,
//! `merges.txt`), reproducing transformers' `CLIPTokenizer` (the tokenizers-backed one of
//! transformers 5, the same pipeline as a CLIP `tokenizer.json`).
//!
//! Steps per text: special tokens (`<|startoftext|>`, `<|endoftext|>` and the pad token, `!` for
//! SD-2, which is therefore never merged with neighbouring punctuation) are split out first, on the
//! raw text, and map to their ids; every other segment is NFC-normalised, whitespace runs become one
//! space, lower-cased, split by CLIP's regex, byte-encoded to printable code points, and merged by
//! BPE (last symbol of a word carries `</w>`). The encoded prompt is
//! `[BOS, ≤ max_len-2 tokens, EOS]`, then padded with the pad token (`!` = id 0 for SD-2) to
//! `max_len` (77).

use std::collections::HashMap;
use std::path::Path;

use regex::Regex;
use unicode_normalization::UnicodeNormalization;

const BOS: &str = "<|startoftext|>";
const EOS: &str = "<|endoftext|>";

/// Why a tokenizer could not be built.
#[derive(thiserror::Error, Debug)]
pub enum TokenizerError {
    #[error("{file}: {source}")]
    Read { file: &'static str, source: std::io::Error },
    #[error("{file}: {source}")]
    Json { file: &'static str, source: serde_json::Error },
    #[error("vocabulary lacks {0:?}")]
    MissingToken(String),
    #[error("CLIP's split pattern: {0}")]
    Pattern(#[from] regex::Error),
}

/// A loaded CLIP tokenizer.
pub struct ClipTokenizer {
    vocab: HashMap<String, u32>,
    ranks: HashMap<(String, String), usize>,
    byte_enc: [char; 256],
    pat: Regex,
    bos: u32,
    eos: u32,
    pad: u32,
    /// Special tokens matched on the raw text, with their ids.
    specials: Vec<(String, u32)>,
    max_len: usize,
}

#[derive(serde::Deserialize, Default)]
struct TokConfig {
    model_max_length: Option<usize>,
    pad_token: Option<serde_json::Value>,
}

/// GPT-2/CLIP byte → printable-char table.
fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let printable = |b: u32| (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
    let mut n = 0;
    for b in 0..256u32 {
        table[b as usize] = if printable(b) {
            char::from_u32(b).unwrap_or('?')
        } else {
            n += 1;
            char::from_u32(255 + n).unwrap_or('?')
        };
    }
    table
}

fn token_text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content").and_then(|c| c.as_str()).map(String::from),
        _ => None,
    }
}

impl ClipTokenizer {
    /// Loads `vocab.json` and `merges.txt` (and `tokenizer_config.json` / `special_tokens_map.json`
    /// when present) from `dir`.
    pub fn from_dir(dir: &Path) -> Result<Self, TokenizerError> {
        let read = |file: &'static str| std::fs::read_to_string(dir.join(file)).map_err(|source| TokenizerError::Read { file, source });
        let vocab: HashMap<String, u32> =
            serde_json::from_str(&read("vocab.json")?).map_err(|source| TokenizerError::Json { file: "vocab.json", source })?;
        let merges = read("merges.txt")?;
        let cfg: TokConfig = read("tokenizer_config.json").ok().and_then(|s| serde_json::from_str(&s).ok()).unwrap_or_default();
        let special: serde_json::Value =
            read("special_tokens_map.json").ok().and_then(|s| serde_json::from_str(&s).ok()).unwrap_or_default();
        let pad_text = special
            .get("pad_token")
            .and_then(token_text)
            .or_else(|| cfg.pad_token.as_ref().and_then(token_text))
            .unwrap_or_else(|| EOS.to_string());
        Self::new(vocab, &merges, &pad_text, cfg.model_max_length.unwrap_or(77).min(77))
    }

    /// Builds a tokenizer from a vocabulary and the text of `merges.txt`.
    pub fn new(vocab: HashMap<String, u32>, merges: &str, pad: &str, max_len: usize) -> Result<Self, TokenizerError> {
        let mut ranks = HashMap::new();
        for line in merges.lines().filter(|l| !l.starts_with("#version") && !l.trim().is_empty()) {
            let mut it = line.split(' ');
            if let (Some(a), Some(b)) = (it.next(), it.next()) {
                let r = ranks.len();
                ranks.entry((a.to_string(), b.to_string())).or_insert(r);
            }
        }
        let id = |t: &str| vocab.get(t).copied().ok_or_else(|| TokenizerError::MissingToken(t.to_string()));
        let (bos, eos) = (id(BOS)?, id(EOS)?);
        let pad_id = vocab.get(pad).copied().unwrap_or(eos);
        let mut specials = vec![(BOS.to_string(), bos), (EOS.to_string(), eos)];
        if !pad.is_empty() && pad != BOS && pad != EOS && vocab.contains_key(pad) {
            specials.push((pad.to_string(), pad_id));
        }
        let pad = pad_id;
        let pat = Regex::new(r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+")
?;
        Ok(Self { vocab, ranks, byte_enc: bytes_to_unicode(), pat, bos, eos, pad, specials, max_len })
    }

    /// The fixed sequence length (77).
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Token ids without BOS/EOS/padding.
    pub fn tokenize(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            let next = self
                .specials
                .iter()
                .filter_map(|(s, id)| rest.find(s.as_str()).map(|p| (p, std::cmp::Reverse(s.len()), s.as_str(), *id)))
                .min();
            match next {
                Some((p, _, s, id)) => {
                    self.encode_plain(&rest[..p], &mut ids);
                    ids.push(id);
                    rest = &rest[p + s.len()..];
                }
                None => {
                    self.encode_plain(rest, &mut ids);
                    break;
                }
            }
        }
        ids
    }

    /// `[BOS, tokens (truncated), EOS, pad…]`, exactly `max_len` ids.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut toks = self.tokenize(text);
        toks.truncate(self.max_len - 2);
        let mut ids = Vec::with_capacity(self.max_len);
        ids.push(self.bos);
        ids.extend(toks);
        ids.push(self.eos);
        ids.resize(self.max_len, self.pad);
        ids
    }

    /// Normalisation (NFC, whitespace runs → " ", lower case), CLIP's split regex and BPE.
    fn encode_plain(&self, text: &str, out: &mut Vec<u32>) {
        let nfc: String = text.nfc().collect();
        let text = nfc.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase();
        for m in self.pat.find_iter(&text) {
            let word: String = m.as_str().bytes().map(|b| self.byte_enc[b as usize]).collect();
            for piece in self.bpe(&word) {
                out.push(self.vocab.get(&piece).copied().unwrap_or(self.eos));
            }
        }
    }

    fn bpe(&self, word: &str) -> Vec<String> {
        let chars: Vec<char> = word.chars().collect();
        let mut parts: Vec<String> = chars.iter().map(|c| c.to_string()).collect();
        if let Some(last) = parts.last_mut() {
            last.push_str("</w>");
        }
        loop {
            let best = parts
                .windows(2)
                .enumerate()
                .filter_map(|(i, w)| self.ranks.get(&(w[0].clone(), w[1].clone())).map(|r| (*r, i)))
                .min();
            let Some((_, i)) = best else { break };
            let (a, b) = (parts[i].clone(), parts[i + 1].clone());
            let mut merged = Vec::with_capacity(parts.len());
            let mut j = 0;
            while j < parts.len() {
                if j + 1 < parts.len() && parts[j] == a && parts[j + 1] == b {
                    merged.push(format!("{a}{b}"));
                    j += 2;
                } else {
                    merged.push(parts[j].clone());
                    j += 1;
                }
            }
            parts = merged;
        }
        parts
    }
}

/// The CLIP vocabulary as open_clip builds it from the merges alone: bytes, bytes + `</w>`,
/// one token per merge, then `<|startoftext|>` and `<|endoftext|>`.
pub fn vocab_from_merges(merges: &str) -> HashMap<String, u32> {
    // byte tokens in GPT-2 order: the printable bytes first, then the rest
    let table = bytes_to_unicode();
    let (mut bytes, rest): (Vec<char>, Vec<char>) = table.iter().partition(|c| (**c as u32) < 256);
    bytes.extend(rest);
    let mut toks: Vec<String> = bytes.iter().map(|c| c.to_string()).collect();
    toks.extend(bytes.iter().map(|c| format!("{c}</w>")));
    for l in merges.lines().filter(|l| !l.starts_with("#version") && !l.trim().is_empty()) {
        toks.push(l.replace(' ', ""));
    }
    toks.push(BOS.into());
    toks.push(EOS.into());
    toks.into_iter().enumerate().map(|(i, t)| (t, i as u32)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/sd-tiny");

    #[test]
    fn full_clip_bpe_matches_transformers_clip_tokenizer() {
        let merges = std::fs::read_to_string(format!("{FIX}/clip-bpe/merges.txt")).unwrap();
        let vocab = vocab_from_merges(&merges);
        assert_eq!(vocab.len(), 49408);
        let tok = ClipTokenizer::new(vocab, &merges, "!", 77).unwrap();
        let cases: Vec<serde_json::Value> =
            serde_json::from_str(&std::fs::read_to_string(format!("{FIX}/clip-bpe/cases.json")).unwrap()).unwrap();
        assert!(cases.len() >= 8);
        for case in cases {
            let text = case["text"].as_str().unwrap();
            let want: Vec<u32> = case["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
            assert_eq!(tok.encode(text), want, "text {text:?}");
        }
    }

    #[test]
    fn load_errors_name_the_file_and_keep_the_cause() {
        let missing = ClipTokenizer::from_dir(Path::new("/nonexistent/tokenizer")).err().expect("no such folder");
        assert!(
            matches!(&missing, TokenizerError::Read { file: "vocab.json", source } if source.kind() == std::io::ErrorKind::NotFound),
            "{missing:?}"
        );
        let no_bos = ClipTokenizer::new(HashMap::from([(EOS.to_string(), 1)]), "", EOS, 77).err().expect("no BOS");
        assert!(matches!(&no_bos, TokenizerError::MissingToken(t) if t == BOS), "{no_bos:?}");
    }

    #[test]
    fn tiny_tokenizer_matches_reference_ids() {
        let tok = ClipTokenizer::from_dir(Path::new(&format!("{FIX}/model/tokenizer"))).unwrap();
        let refs = candle_core::safetensors::load(format!("{FIX}/ref.safetensors"), &candle_core::Device::Cpu).unwrap();
        let ids = refs["ids"].to_vec2::<i64>().unwrap();
        let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(format!("{FIX}/ref.json")).unwrap()).unwrap();
        let u: Vec<i64> = tok.encode(meta["negative_prompt"].as_str().unwrap()).iter().map(|&x| x as i64).collect();
        let c: Vec<i64> = tok.encode(meta["prompt"].as_str().unwrap()).iter().map(|&x| x as i64).collect();
        assert_eq!(u, ids[0]);
        assert_eq!(c, ids[1]);
    }
}
