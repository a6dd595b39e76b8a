//! What a source carries besides pixels, read by bounded walks over its container: the ICC
//! profile (JPEG APP2 `ICC_PROFILE` chunks, PNG `iCCP`, WebP `ICCP`), EXIF (JPEG APP1, PNG
//! `eXIf`, WebP `EXIF`) and IPTC (JPEG APP13). Nothing here decodes pixels; every walk steps by
//! the length fields and stops at the first one that does not fit, and every result is capped,
//! so a hostile file costs at most one pass over its bytes and `MAX_PROFILE_BYTES` of memory.
//!
//! Own walks rather than the decoders' metadata calls: the `image` crate's JPEG decoder does not
//! return APP2 profiles, and none of them returns IPTC.

use super::colour::MAX_PROFILE_BYTES;

/// What the source embeds (each part absent when missing, malformed or over its cap).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Embedded {
    pub icc: Option<Vec<u8>>,
    /// The TIFF structure of the EXIF block (without JPEG's `Exif\0\0` prefix).
    pub exif: Option<Vec<u8>>,
    /// The Photoshop image resources of a JPEG's APP13 (without the `Photoshop 3.0\0` prefix).
    pub iptc: Option<Vec<u8>>,
}

/// EXIF and IPTC blocks larger than this are ignored (one JPEG segment holds at most 64 KiB).
const MAX_BLOCK_BYTES: usize = 1 << 20;

/// Reads what `bytes` embeds, by their signature; nothing for other formats.
pub fn read(bytes: &[u8]) -> Embedded {
    if bytes.starts_with(&[0xFF, 0xD8]) {
        read_jpeg(bytes)
    } else if bytes.starts_with(PNG_SIGNATURE) {
        read_png(bytes)
    } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        read_webp(bytes)
    } else {
        Embedded::default()
    }
}

/// The embedded ICC profile alone.
pub fn icc(bytes: &[u8]) -> Option<Vec<u8>> {
    read(bytes).icc
}

/// A JPEG's marker segments before the first scan: (marker, payload). Standalone markers are
/// skipped; the walk ends at SOS, EOI, or the first segment that does not fit.
fn jpeg_segments(bytes: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    let mut pos = 2;
    std::iter::from_fn(move || loop {
        // Fill bytes (0xFF runs) may precede a marker.
        while bytes.get(pos) == Some(&0xFF) && bytes.get(pos + 1) == Some(&0xFF) {
            pos += 1;
        }
        if bytes.get(pos) != Some(&0xFF) {
            return None;
        }
        let marker = *bytes.get(pos + 1)?;
        match marker {
            0xD9 | 0xDA => return None,
            0x01 | 0xD0..=0xD7 => {
                pos += 2;
                continue;
            }
            _ => {}
        }
        let len = u16::from_be_bytes([*bytes.get(pos + 2)?, *bytes.get(pos + 3)?]) as usize;
        let payload = bytes.get(pos + 4..(pos + 2).checked_add(len)?).filter(|_| len >= 2)?;
        pos += 2 + len;
        return Some((marker, payload));
    })
}

const ICC_TAG: &[u8] = b"ICC_PROFILE\0";
const EXIF_TAG: &[u8] = b"Exif\0\0";
const PHOTOSHOP_TAG: &[u8] = b"Photoshop 3.0\0";

fn read_jpeg(bytes: &[u8]) -> Embedded {
    let mut chunks: Vec<(u8, u8, &[u8])> = Vec::new();
    let (mut exif, mut iptc) = (None, None);
    for (marker, payload) in jpeg_segments(bytes) {
        match marker {
            0xE2 if payload.starts_with(ICC_TAG) && payload.len() >= ICC_TAG.len() + 2 => {
                let at = ICC_TAG.len();
                chunks.push((payload[at], payload[at + 1], &payload[at + 2..]));
            }
            0xE1 if exif.is_none() && payload.starts_with(EXIF_TAG) => exif = Some(payload[EXIF_TAG.len()..].to_vec()),
            0xED if iptc.is_none() && payload.starts_with(PHOTOSHOP_TAG) => iptc = Some(payload[PHOTOSHOP_TAG.len()..].to_vec()),
            _ => {}
        }
    }
    Embedded { icc: join_icc_chunks(chunks), exif, iptc }
}

/// APP2 chunks (sequence number from 1, count, data) joined in sequence order; `None` unless
/// every chunk 1..=count is there exactly once with the same count, and the whole fits the cap.
fn join_icc_chunks(mut chunks: Vec<(u8, u8, &[u8])>) -> Option<Vec<u8>> {
    let count = chunks.first()?.1;
    chunks.sort_by_key(|c| c.0);
    let in_order = chunks.len() == count as usize && chunks.iter().enumerate().all(|(i, c)| c.0 as usize == i + 1 && c.1 == count);
    let size: usize = chunks.iter().map(|c| c.2.len()).sum();
    if !in_order || size == 0 || size > MAX_PROFILE_BYTES {
        return None;
    }
    Some(chunks.iter().flat_map(|c| c.2.iter().copied()).collect())
}

pub(crate) const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

/// PNG chunks before the image data: (type, body). The walk ends at IDAT, IEND or the first
/// chunk that does not fit.
fn png_chunks(bytes: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    let mut pos = PNG_SIGNATURE.len();
    std::iter::from_fn(move || {
        let head = bytes.get(pos..pos + 8)?;
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let body = bytes.get(pos + 8..(pos + 8).checked_add(len)?)?;
        let kind = &head[4..8];
        if kind == b"IDAT" || kind == b"IEND" {
            return None;
        }
        pos += len + 12;
        Some((kind, body))
    })
}

fn read_png(bytes: &[u8]) -> Embedded {
    let mut found = Embedded::default();
    for (kind, body) in png_chunks(bytes) {
        match kind {
            b"iCCP" if found.icc.is_none() => found.icc = inflate_iccp(body),
            b"eXIf" if found.exif.is_none() && body.len() <= MAX_BLOCK_BYTES => found.exif = Some(body.to_vec()),
            _ => {}
        }
    }
    found
}

/// An `iCCP` body (name, NUL, method 0, zlib data) inflated to at most `MAX_PROFILE_BYTES`.
fn inflate_iccp(body: &[u8]) -> Option<Vec<u8>> {
    let name_end = body.iter().take(80).position(|&b| b == 0)?;
    let zlib = body.get(name_end + 2..).filter(|_| body.get(name_end + 1) == Some(&0))?;
    miniz_oxide::inflate::decompress_to_vec_zlib_with_limit(zlib, MAX_PROFILE_BYTES).ok()
}

/// RIFF chunks of a WebP: (fourcc, body).
fn webp_chunks(bytes: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    let mut pos = 12;
    std::iter::from_fn(move || {
        let head = bytes.get(pos..pos + 8)?;
        let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
        let body = bytes.get(pos + 8..(pos + 8).checked_add(len)?)?;
        pos += 8 + len + (len & 1);
        Some((&head[..4], body))
    })
}

fn read_webp(bytes: &[u8]) -> Embedded {
    let mut found = Embedded::default();
    for (kind, body) in webp_chunks(bytes) {
        match kind {
            b"ICCP" if found.icc.is_none() && body.len() <= MAX_PROFILE_BYTES => found.icc = Some(body.to_vec()),
            b"EXIF" if found.exif.is_none() && body.len() <= MAX_BLOCK_BYTES => {
                found.exif = Some(body.strip_prefix(EXIF_TAG).unwrap_or(body).to_vec())
            }
            _ => {}
        }
    }
    found
}

/// What an output keeps of its source besides pixels (`[output]` `keep_wide_gamut`,
/// `keep_copyright`); part of the result key through the plan.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Keep {
    /// A wide-gamut RGB source's profile is written into the output instead of converting the
    /// pixels to sRGB.
    pub profile: bool,
    /// EXIF Artist/Copyright and the IPTC rights fields go into the output.
    pub copyright: bool,
}

/// What is written into an output besides pixels. Empty: a plain sRGB output (PNG still gets its
/// one-byte `sRGB` chunk, AVIF its `nclx` box).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tags {
    /// The profile the pixels are in (kept wide-gamut).
    pub icc: Option<Vec<u8>>,
    /// A TIFF structure with IFD0 Artist and Copyright only.
    pub exif: Option<Vec<u8>>,
    /// Photoshop resources with one IPTC block of rights fields only.
    pub iptc: Option<Vec<u8>>,
}

/// What the source embeds, sorted by what happens to it: the profile the decoder must convert
/// the pixels from (`None`: no profile, an sRGB one, or one kept), and the output's tags.
pub struct ForOutput {
    pub convert_from: Option<Vec<u8>>,
    pub tags: Tags,
}

/// Reads `bytes`' metadata and applies `keep`: by default every piece is dropped and the
/// profile converted from.
pub fn for_output(bytes: &[u8], keep: Keep) -> ForOutput {
    let e = read(bytes);
    let (convert_from, icc) = match e.icc {
        Some(icc) if keep.profile && super::colour::is_wide_rgb(&icc) => (None, Some(icc)),
        other => (other, None),
    };
    let exif = e.exif.as_deref().filter(|_| keep.copyright).and_then(copyright_exif);
    let iptc = e.iptc.as_deref().filter(|_| keep.copyright).and_then(copyright_iptc);
    ForOutput { convert_from, tags: Tags { icc, exif, iptc } }
}

const ARTIST: u16 = 0x013B;
const COPYRIGHT: u16 = 0x8298;
/// ASCII values longer than this are not copied.
const MAX_TEXT: usize = 4096;

/// A new TIFF (same byte order) holding only IFD0's Artist and Copyright strings of `tiff`;
/// `None` when it has neither or is malformed. Everything else (camera, GPS, dates, thumbnails)
/// stays behind.
pub fn copyright_exif(tiff: &[u8]) -> Option<Vec<u8>> {
    let le = match tiff.get(..4)? {
        b"II*\0" => true,
        b"MM\0*" => false,
        _ => return None,
    };
    let u16_at = |p: usize| tiff.get(p..p.checked_add(2)?).map(|b| if le { u16::from_le_bytes([b[0], b[1]]) } else { u16::from_be_bytes([b[0], b[1]]) });
    let u32_at = |p: usize| {
        tiff.get(p..p.checked_add(4)?).map(|b| if le { u32::from_le_bytes([b[0], b[1], b[2], b[3]]) } else { u32::from_be_bytes([b[0], b[1], b[2], b[3]]) })
    };
    let ifd = u32_at(4)? as usize;
    let entries = u16_at(ifd)? as usize;
    let mut kept: Vec<(u16, &[u8])> = Vec::new();
    for i in 0..entries {
        let e = ifd + 2 + 12 * i;
        let (tag, kind, count) = (u16_at(e)?, u16_at(e + 2)?, u32_at(e + 4)? as usize);
        if !matches!(tag, ARTIST | COPYRIGHT) || kind != 2 || count == 0 || count > MAX_TEXT {
            continue;
        }
        let at = if count <= 4 { e + 8 } else { u32_at(e + 8)? as usize };
        kept.push((tag, tiff.get(at..at.checked_add(count)?)?));
    }
    if kept.is_empty() {
        return None;
    }
    kept.sort_by_key(|k| k.0);
    let put16 = |out: &mut Vec<u8>, v: u16| out.extend_from_slice(&if le { v.to_le_bytes() } else { v.to_be_bytes() });
    let put32 = |out: &mut Vec<u8>, v: u32| out.extend_from_slice(&if le { v.to_le_bytes() } else { v.to_be_bytes() });
    let mut out = tiff[..4].to_vec();
    put32(&mut out, 8);
    put16(&mut out, kept.len() as u16);
    let mut data_at = 8 + 2 + 12 * kept.len() + 4;
    let mut data = Vec::new();
    for (tag, value) in &kept {
        put16(&mut out, *tag);
        put16(&mut out, 2);
        put32(&mut out, value.len() as u32);
        if value.len() <= 4 {
            let mut inline = value.to_vec();
            inline.resize(4, 0);
            out.extend_from_slice(&inline);
        } else {
            put32(&mut out, data_at as u32);
            data.extend_from_slice(value);
            if value.len() % 2 == 1 {
                data.push(0);
            }
            data_at = 8 + 2 + 12 * kept.len() + 4 + data.len();
        }
    }
    put32(&mut out, 0);
    out.extend_from_slice(&data);
    Some(out)
}

/// IPTC datasets kept by `copyright_iptc`: record version and character set, and the rights
/// fields (By-line, By-line Title, Credit, Source, Copyright Notice). Captions, keywords and
/// places stay behind.
const IPTC_RIGHTS: [(u8, u8); 7] = [(1, 90), (2, 0), (2, 80), (2, 85), (2, 110), (2, 115), (2, 116)];

/// Photoshop resources holding one IPTC-NAA block (resource 0x0404) with only the
/// `IPTC_RIGHTS` datasets of `resources`' block; `None` when there are no rights fields.
pub fn copyright_iptc(resources: &[u8]) -> Option<Vec<u8>> {
    let iim = photoshop_resource(resources, 0x0404)?;
    let mut kept = Vec::new();
    let mut rights = false;
    let mut pos = 0;
    while let Some(head) = iim.get(pos..pos + 5) {
        let (record, dataset, len) = (head[1], head[2], u16::from_be_bytes([head[3], head[4]]) as usize);
        // 0x1C starts every dataset; a set high bit is the extended length form, not used for text.
        if head[0] != 0x1C || len & 0x8000 != 0 {
            break;
        }
        let Some(data) = iim.get(pos + 5..pos + 5 + len) else { break };
        if IPTC_RIGHTS.contains(&(record, dataset)) {
            rights |= record == 2 && dataset != 0;
            kept.extend_from_slice(&head[..5]);
            kept.extend_from_slice(data);
        }
        pos += 5 + len;
    }
    if !rights {
        return None;
    }
    let mut out = b"8BIM\x04\x04\0\0".to_vec();
    out.extend_from_slice(&(kept.len() as u32).to_be_bytes());
    out.extend_from_slice(&kept);
    if kept.len() % 2 == 1 {
        out.push(0);
    }
    Some(out)
}

/// The data of the first Photoshop image resource `id` ("8BIM", id, even-padded Pascal name,
/// size, even-padded data).
fn photoshop_resource(r: &[u8], id: u16) -> Option<&[u8]> {
    let mut pos = 0;
    while r.get(pos..pos + 4)? == b"8BIM" {
        let this = u16::from_be_bytes([*r.get(pos + 4)?, *r.get(pos + 5)?]);
        let name = (1 + *r.get(pos + 6)? as usize + 1) & !1;
        let at = pos + 6 + name;
        let size = u32::from_be_bytes(r.get(at..at + 4)?.try_into().ok()?) as usize;
        let data = r.get(at + 4..(at + 4).checked_add(size)?)?;
        if this == id {
            return Some(data);
        }
        pos = at + 4 + size + (size & 1);
    }
    None
}

/// `out` (an encoder's file: PNG, WebP or JPEG; AVIF is tagged by its encoder and returned
/// as it is) with `tags` written into its container. `w`/`h` are the image's size (a WebP
/// needs them for its extended header).
pub fn attach(out: Vec<u8>, w: u32, h: u32, tags: &Tags) -> Vec<u8> {
    if out.starts_with(&[0xFF, 0xD8]) {
        attach_jpeg(out, tags)
    } else if out.starts_with(PNG_SIGNATURE) {
        attach_png(out, tags)
    } else if out.len() >= 20 && &out[..4] == b"RIFF" && &out[8..12] == b"WEBP" {
        attach_webp(out, w, h, tags)
    } else {
        out
    }
}

/// EXIF (APP1) and IPTC (APP13) after the JFIF header; the profile is written by the encoder.
fn attach_jpeg(out: Vec<u8>, tags: &Tags) -> Vec<u8> {
    let mut segments = Vec::new();
    for (marker, prefix, body) in [(0xE1, EXIF_TAG, &tags.exif), (0xED, PHOTOSHOP_TAG, &tags.iptc)] {
        let Some(body) = body else { continue };
        let len = 2 + prefix.len() + body.len();
        if len > u16::MAX as usize {
            continue;
        }
        segments.extend_from_slice(&[0xFF, marker]);
        segments.extend_from_slice(&(len as u16).to_be_bytes());
        segments.extend_from_slice(prefix);
        segments.extend_from_slice(body);
    }
    if segments.is_empty() {
        return out;
    }
    let at = match jpeg_segments(&out).next() {
        // SOI, then APP0's marker, length and payload.
        Some((0xE0, jfif)) => 2 + 4 + jfif.len(),
        _ => 2,
    };
    [&out[..at], &segments, &out[at..]].concat()
}

fn png_chunk(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
    let mut c = (body.len() as u32).to_be_bytes().to_vec();
    c.extend_from_slice(kind);
    c.extend_from_slice(body);
    let mut crc = crc32fast::Hasher::new();
    crc.update(kind);
    crc.update(body);
    c.extend_from_slice(&crc.finalize().to_be_bytes());
    c
}

/// After IHDR: `iCCP` with the kept profile, else `sRGB` (perceptual), and `eXIf`.
fn attach_png(out: Vec<u8>, tags: &Tags) -> Vec<u8> {
    const AFTER_IHDR: usize = 8 + 25;
    if out.len() < AFTER_IHDR {
        return out;
    }
    let mut extra = match &tags.icc {
        Some(icc) => {
            let mut body = b"ICC profile\0\0".to_vec();
            body.extend_from_slice(&miniz_oxide::deflate::compress_to_vec_zlib(icc, 9));
            png_chunk(b"iCCP", &body)
        }
        None => png_chunk(b"sRGB", &[0]),
    };
    if let Some(exif) = &tags.exif {
        extra.extend_from_slice(&png_chunk(b"eXIf", exif));
    }
    [&out[..AFTER_IHDR], &extra, &out[AFTER_IHDR..]].concat()
}

fn riff_chunk(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
    let mut c = kind.to_vec();
    c.extend_from_slice(&(body.len() as u32).to_le_bytes());
    c.extend_from_slice(body);
    if body.len() % 2 == 1 {
        c.push(0);
    }
    c
}

/// The extended format: `VP8X` (its ICC and EXIF flags set), `ICCP`, the image, `EXIF`.
fn attach_webp(out: Vec<u8>, w: u32, h: u32, tags: &Tags) -> Vec<u8> {
    if tags.icc.is_none() && tags.exif.is_none() {
        return out;
    }
    let first = &out[12..16];
    let (mut vp8x, image) = if first == b"VP8X" && out.len() >= 30 {
        (out[12..30].to_vec(), &out[30..])
    } else {
        // A simple file (`VP8 ` or `VP8L`): its alpha bit is in the lossless header.
        let alpha = first == b"VP8L" && out.get(24).is_some_and(|b| b & 0x10 != 0);
        let mut body = vec![if alpha { 0x10 } else { 0 }, 0, 0, 0];
        body.extend_from_slice(&(w - 1).to_le_bytes()[..3]);
        body.extend_from_slice(&(h - 1).to_le_bytes()[..3]);
        (riff_chunk(b"VP8X", &body), &out[12..])
    };
    if tags.icc.is_some() {
        vp8x[8] |= 0x20;
    }
    if tags.exif.is_some() {
        vp8x[8] |= 0x08;
    }
    let mut body = b"WEBP".to_vec();
    body.extend_from_slice(&vp8x);
    if let Some(icc) = &tags.icc {
        body.extend_from_slice(&riff_chunk(b"ICCP", icc));
    }
    body.extend_from_slice(image);
    if let Some(exif) = &tags.exif {
        body.extend_from_slice(&riff_chunk(b"EXIF", exif));
    }
    let mut file = b"RIFF".to_vec();
    file.extend_from_slice(&(body.len() as u32).to_le_bytes());
    file.extend_from_slice(&body);
    file
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A JPEG header with these APPn segments, then SOS and junk "scan data".
    fn jpeg_with(segments: &[(u8, Vec<u8>)]) -> Vec<u8> {
        let mut out = vec![0xFF, 0xD8];
        for (marker, payload) in segments {
            out.extend_from_slice(&[0xFF, *marker]);
            out.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
            out.extend_from_slice(payload);
        }
        out.extend_from_slice(&[0xFF, 0xDA, 0x00, 0x02, 0xFF, 0xE2, 0x12]);
        out
    }

    fn icc_chunk(seq: u8, count: u8, data: &[u8]) -> (u8, Vec<u8>) {
        (0xE2, [ICC_TAG, &[seq, count], data].concat())
    }

    #[test]
    fn jpeg_icc_chunks_are_joined_in_sequence_order() {
        let j = jpeg_with(&[(0xE0, b"JFIF\0".to_vec()), icc_chunk(2, 2, b"world"), icc_chunk(1, 2, b"hello ")]);
        assert_eq!(icc(&j).as_deref(), Some(&b"hello world"[..]));
        // A missing, repeated or inconsistent chunk: no profile rather than a wrong one.
        for bad in [
            vec![icc_chunk(1, 2, b"a")],
            vec![icc_chunk(1, 2, b"a"), icc_chunk(1, 2, b"b")],
            vec![icc_chunk(1, 2, b"a"), icc_chunk(2, 3, b"b")],
            vec![icc_chunk(0, 1, b"a")],
            vec![icc_chunk(1, 1, b"")],
        ] {
            assert_eq!(icc(&jpeg_with(&bad)), None, "{bad:?}");
        }
    }

    #[test]
    fn jpeg_walk_stops_at_what_does_not_fit() {
        let j = jpeg_with(&[icc_chunk(1, 1, b"profile"), (0xE1, [EXIF_TAG, b"II*\0"].concat()), (0xED, [PHOTOSHOP_TAG, b"8BIM"].concat())]);
        let e = read(&j);
        assert_eq!((e.icc.as_deref(), e.exif.as_deref(), e.iptc.as_deref()), (Some(&b"profile"[..]), Some(&b"II*\0"[..]), Some(&b"8BIM"[..])));
        // Every truncation and a length running past the end: no panic, a prefix's findings.
        for n in 0..j.len() {
            let _ = read(&j[..n]);
        }
        let mut runaway = j[..2].to_vec();
        runaway.extend_from_slice(&[0xFF, 0xE2, 0xFF, 0xFF, b'I', b'C', b'C']);
        assert_eq!(read(&runaway), Embedded::default());
        assert_eq!(read(&[0xFF, 0xD8, 0xFF, 0xE2, 0x00, 0x01]), Embedded::default(), "length below 2");
    }

    #[test]
    fn webp_iccp_and_exif_chunks_are_read() {
        let chunk = |kind: &[u8], body: &[u8]| {
            let mut c = kind.to_vec();
            c.extend_from_slice(&(body.len() as u32).to_le_bytes());
            c.extend_from_slice(body);
            if body.len() % 2 == 1 {
                c.push(0);
            }
            c
        };
        let body = [chunk(b"VP8X", &[0x28, 0, 0, 0, 0, 0, 0, 0, 0, 0]), chunk(b"ICCP", b"odd"), chunk(b"EXIF", b"Exif\0\0MM\0*")].concat();
        let mut w = b"RIFF".to_vec();
        w.extend_from_slice(&(body.len() as u32 + 4).to_le_bytes());
        w.extend_from_slice(b"WEBP");
        w.extend_from_slice(&body);
        let e = read(&w);
        assert_eq!((e.icc.as_deref(), e.exif.as_deref()), (Some(&b"odd"[..]), Some(&b"MM\0*"[..])));
        for n in 0..w.len() {
            let _ = read(&w[..n]);
        }
    }

    /// A little-endian TIFF whose IFD0 has a description, Artist (inline), Copyright and a GPS
    /// pointer (to a GPS IFD with a latitude reference).
    pub(crate) fn exif_with_everything() -> Vec<u8> {
        let mut t = b"II*\0".to_vec();
        t.extend_from_slice(&8u32.to_le_bytes());
        let entry = |t: &mut Vec<u8>, tag: u16, kind: u16, count: u32, value: [u8; 4]| {
            t.extend_from_slice(&tag.to_le_bytes());
            t.extend_from_slice(&kind.to_le_bytes());
            t.extend_from_slice(&count.to_le_bytes());
            t.extend_from_slice(&value);
        };
        // IFD0 at 8: 4 entries, so its data starts at 8 + 2 + 48 + 4 = 62.
        t.extend_from_slice(&4u16.to_le_bytes());
        entry(&mut t, 0x010E, 2, 15, 62u32.to_le_bytes());
        entry(&mut t, ARTIST, 2, 4, *b"Ann\0");
        entry(&mut t, COPYRIGHT, 2, 13, 78u32.to_le_bytes());
        entry(&mut t, 0x8825, 4, 1, 92u32.to_le_bytes());
        t.extend_from_slice(&0u32.to_le_bytes());
        t.extend_from_slice(b"secret caption\0\0");
        t.extend_from_slice(b"(c) Ann 2026\0\0");
        t.extend_from_slice(&1u16.to_le_bytes());
        entry(&mut t, 0x0001, 2, 2, *b"N\0\0\0");
        t.extend_from_slice(&0u32.to_le_bytes());
        t
    }

    /// Photoshop resources: a thumbnail resource, then IPTC with rights and private fields.
    pub(crate) fn iptc_with_everything() -> Vec<u8> {
        let dataset = |r: u8, d: u8, v: &[u8]| [&[0x1C, r, d][..], &(v.len() as u16).to_be_bytes(), v].concat();
        let iim = [dataset(2, 0, &[0, 4]), dataset(2, 120, b"private caption"), dataset(2, 116, b"(c) Ann"), dataset(2, 90, b"Paris")].concat();
        let resource = |id: u16, data: &[u8]| {
            let mut r = b"8BIM".to_vec();
            r.extend_from_slice(&id.to_be_bytes());
            r.extend_from_slice(&[3, b'a', b'b', b'c']);
            r.extend_from_slice(&(data.len() as u32).to_be_bytes());
            r.extend_from_slice(data);
            if data.len() % 2 == 1 {
                r.push(0);
            }
            r
        };
        [resource(0x040C, b"thumbnail"), resource(0x0404, &iim)].concat()
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn only_artist_and_copyright_stay_of_exif() {
        let full = exif_with_everything();
        let kept = copyright_exif(&full).unwrap();
        assert!(contains(&kept, b"Ann\0") && contains(&kept, b"(c) Ann 2026"));
        assert!(!contains(&kept, b"secret") && !contains(&kept, b"N\0\0\0"), "{kept:?}");
        // The result is well-formed: filtering it again gives it back.
        assert_eq!(copyright_exif(&kept).as_deref(), Some(&kept[..]));
        // Big-endian, malformed and rights-free TIFFs.
        let be = [&b"MM\0*"[..], &[0, 0, 0, 8, 0, 1, 0x82, 0x98, 0, 2, 0, 0, 0, 3, b'A', b'B', 0, 0, 0, 0, 0, 0]].concat();
        assert!(contains(&copyright_exif(&be).unwrap(), b"AB\0"));
        for n in 0..full.len() {
            let _ = copyright_exif(&full[..n]);
        }
        assert_eq!(copyright_exif(b"II*\0\xff\xff\xff\xff"), None);
        assert_eq!(copyright_exif(&full[..8]), None);
    }

    #[test]
    fn only_rights_fields_stay_of_iptc() {
        let full = iptc_with_everything();
        let kept = copyright_iptc(&full).unwrap();
        assert!(contains(&kept, b"(c) Ann"));
        assert!(!contains(&kept, b"private") && !contains(&kept, b"Paris") && !contains(&kept, b"thumbnail"));
        assert_eq!(copyright_iptc(&kept).as_deref(), Some(&kept[..]));
        for n in 0..full.len() {
            let _ = copyright_iptc(&full[..n]);
        }
    }

    #[test]
    fn tags_are_written_into_each_container_and_read_back() {
        use crate::engine::Tile;
        use crate::imaging::encode::{encode_tagged, Encoding, OutputFormat};
        let p3 = moxcms::ColorProfile::new_display_p3().encode().unwrap();
        let exif = copyright_exif(&exif_with_everything()).unwrap();
        let iptc = copyright_iptc(&iptc_with_everything()).unwrap();
        let tags = Tags { icc: Some(p3.clone()), exif: Some(exif.clone()), iptc: Some(iptc.clone()) };
        let rgb = Tile::new(6, 4, vec![0.5; 72]);
        let alpha = [1.0, 0.0].repeat(12);
        for (format, alpha) in [(OutputFormat::Jpeg, None), (OutputFormat::Png, None), (OutputFormat::Webp, None), (OutputFormat::Webp, Some(&alpha[..])), (OutputFormat::Png, Some(&alpha[..]))] {
            let plain = encode_tagged(&rgb, alpha, &Encoding::new(format, 90), &Tags::default()).unwrap();
            assert_eq!(read(&plain), Embedded::default(), "{format:?}: nothing by default");
            let tagged = encode_tagged(&rgb, alpha, &Encoding::new(format, 90), &tags).unwrap();
            let back = read(&tagged);
            assert_eq!(back.icc.as_deref(), Some(&p3[..]), "{format:?}");
            assert_eq!(back.exif.as_deref(), Some(&exif[..]), "{format:?}");
            let want_iptc = (format == OutputFormat::Jpeg).then_some(&iptc[..]);
            assert_eq!(back.iptc.as_deref(), want_iptc, "{format:?}");
            // Still a valid file of the same size and pixels.
            let img = image::load_from_memory(&tagged).unwrap().to_rgba8();
            assert_eq!(img.dimensions(), (6, 4), "{format:?}");
            assert_eq!(img.get_pixel(1, 0).0[3], if alpha.is_some() { 0 } else { 255 }, "{format:?}");
        }
        // PNG carries its one-byte sRGB chunk when untagged.
        let png = encode_tagged(&rgb, None, &Encoding::new(OutputFormat::Png, 90), &Tags::default()).unwrap();
        assert!(contains(&png, b"sRGB\0"));
    }
}
