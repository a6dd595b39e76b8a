//! JPEG output through mozjpeg (the `mozjpeg` crate, the same library the decoder's
//! shrink-on-load uses, so nothing new is compiled): progressive, Huffman tables optimised per
//! image, trellis quantisation and mozjpeg's scan optimisation (its default "max compression"
//! profile, set explicitly here where the crate has a setter). 4:2:0 chroma, as before.

/// Interleaved RGB8 into a progressive JPEG; `icc` is written as APP2 markers when given.
/// The error is a message (`encode.rs` wraps it), so this module imports nothing of `encode`.
pub fn encode(px: &[u8], w: u32, h: u32, quality: u8, icc: Option<&[u8]>) -> Result<Vec<u8>, String> {
    // libjpeg reports errors by unwinding through mozjpeg's error manager; contain them here.
    let result = std::panic::catch_unwind(|| -> std::io::Result<Vec<u8>> {
        let mut c = mozjpeg::Compress::new(mozjpeg::ColorSpace::JCS_RGB);
        c.set_size(w as usize, h as usize);
        c.set_quality(quality.clamp(1, 100) as f32);
        c.set_progressive_mode();
        c.set_optimize_coding(true);
        c.set_optimize_scans(true);
        let mut started = c.start_compress(Vec::with_capacity(px.len() / 8))?;
        if let Some(icc) = icc {
            for chunk in icc_chunks(icc) {
                started.write_marker(mozjpeg::Marker::APP(2), &chunk);
            }
        }
        started.write_scanlines(px)?;
        started.finish()
    });
    match result {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) => Err(format!("jpeg: {e}")),
        Err(_) => Err("jpeg: the encoder failed".into()),
    }
}

/// An ICC profile as APP2 payloads: `ICC_PROFILE\0`, sequence number from 1, count, data (the
/// ICC spec's numbering, which readers check; the `mozjpeg` crate's own writer counts from 0).
/// Empty for an empty profile or one over 255 segments (16 MB).
fn icc_chunks(icc: &[u8]) -> Vec<Vec<u8>> {
    const DATA_PER_SEGMENT: usize = 65533 - 14;
    let count = icc.len().div_ceil(DATA_PER_SEGMENT);
    if count == 0 || count > 255 {
        return Vec::new();
    }
    icc.chunks(DATA_PER_SEGMENT)
        .enumerate()
        .map(|(i, data)| [&b"ICC_PROFILE\0"[..], &[i as u8 + 1, count as u8], data].concat())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_profile_is_split_and_read_back_whole() {
        let icc: Vec<u8> = (0..150_000u32).map(|i| (i % 251) as u8).collect();
        let px = [90u8, 120, 200].repeat(64);
        let bytes = encode(&px, 8, 8, 90, Some(&icc)).unwrap();
        assert_eq!(crate::imaging::metadata::icc(&bytes), Some(icc));
        assert!(icc_chunks(&[]).is_empty());
    }
}
