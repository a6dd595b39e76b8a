//! The hostile-file corpus (tests/fixtures/hostile/, made by scripts/make_hostile_corpus.py):
//! every file through a transform URL gets the status EXPECTED lists for it, within a bounded
//! time, and the server stays healthy with bounded memory.

use std::time::{Duration, Instant};

use crate::process::ChildServer;
use crate::support::*;

/// Per file, generous for an unoptimised debug build on a loaded 2-core machine.
const PER_FILE: Duration = Duration::from_secs(20);

fn corpus() -> Vec<(String, u16, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hostile");
    let list = std::fs::read_to_string(dir.join("EXPECTED")).expect("tests/fixtures/hostile/EXPECTED");
    list.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let mut parts = l.splitn(3, ' ');
            let name = parts.next().unwrap().to_string();
            let status = parts.next().unwrap().parse().expect("status");
            (name, status, parts.next().unwrap_or("").to_string())
        })
        .collect()
}

/// Resident memory of this process (the server runs in it), in MiB.
fn rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    kb / 1024
}

#[tokio::test]
async fn every_hostile_file_gets_its_status_quickly_and_the_server_survives() {
    let s = TestServer::start().await;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hostile");
    let files = corpus();
    assert!(files.len() >= 30, "the corpus lost files");
    for (name, _, _) in &files {
        s.put_source(&format!("hostile/{name}"), &std::fs::read(dir.join(name)).unwrap());
    }
    let before = rss_mib();
    let mut failures = Vec::new();
    for (name, want, why) in &files {
        let started = Instant::now();
        let r = client().get(s.url(&format!("/x2/model=lanczos/format=png/hostile/{name}"))).send().await.unwrap();
        let status = r.status().as_u16();
        let json = r.headers().get("content-type").is_some_and(|v| v == "application/json");
        let took = started.elapsed();
        if status != *want || took > PER_FILE || (status >= 400 && !json) {
            let body: String = r.text().await.unwrap_or_default().chars().take(200).collect();
            failures.push(format!("{name} ({why}): got {status} in {took:?}, json={json}; want {want}: {body}"));
        }
    }
    assert!(failures.is_empty(), "hostile files:\n{}", failures.join("\n"));
    let grown = rss_mib().saturating_sub(before);
    // Bombs are refused from their headers; nothing here may make the process balloon.
    assert!(grown < 512, "RSS grew by {grown} MiB over the corpus");
    assert_eq!(client().get(s.url("/healthz")).send().await.unwrap().status(), 200);
    s.put_source("ok.png", &png(4, 4));
    assert_eq!(client().get(s.url("/x2/ok.png")).send().await.unwrap().status(), 200);
    s.stop().await;
}

/// A zlib stream of `mib` MiB of zeros at deflate's best ratio (~1000:1): one self-contained
/// 1 MiB segment (a full flush resets the dictionary) repeated, an empty final block, and the
/// Adler-32 of the zeros. Built in memory: 3 GiB of it is a 3 MB file, not committed.
fn zlib_zeros(mib: usize) -> Vec<u8> {
    let mut c = flate2::Compress::new(flate2::Compression::best(), false);
    let mut segment = Vec::with_capacity(64 << 10);
    c.compress_vec(&vec![0u8; 1 << 20], &mut segment, flate2::FlushCompress::Full).unwrap();
    assert_eq!(c.total_in(), 1 << 20, "one call compressed the whole segment");
    let n = (mib as u64) << 20;
    let adler = (((n % 65521) as u32) << 16) | 1;
    let mut z = vec![0x78, 0xda];
    for _ in 0..mib {
        z.extend_from_slice(&segment);
    }
    z.extend_from_slice(&[0x03, 0x00]);
    z.extend_from_slice(&adler.to_be_bytes());
    z
}

/// `png` with one more chunk after its signature and IHDR.
fn with_chunk(png: &[u8], kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
    let mut crc = crc32fast::Hasher::new();
    crc.update(kind);
    crc.update(body);
    let mut out = png[..33].to_vec();
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(body);
    out.extend_from_slice(&crc.finalize().to_be_bytes());
    out.extend_from_slice(&png[33..]);
    out
}

/// PNG metadata bombs at full size: a 3 MB file whose iCCP profile (or zTXt / iTXt text)
/// inflates to 3 GiB. Each is answered with its pixels, fast, and the server process (the real
/// binary, so its memory is its own) peaks far below what inflating one would take.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn png_metadata_bombs_of_3_gib_are_answered_with_bounded_memory() {
    use std::io::Read;
    // The construction inflates to exactly what it claims (checked at a small size).
    let mut inflated = 0u64;
    let small = zlib_zeros(8);
    let mut z = flate2::read::ZlibDecoder::new(&small[..]);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = z.read(&mut buf).expect("a valid zlib stream");
        if n == 0 {
            break;
        }
        inflated += n as u64;
    }
    assert_eq!(inflated, 8 << 20);

    let bomb = zlib_zeros(3 << 10);
    let base = png(8, 8);
    let files = [
        ("iccp-3g.png", with_chunk(&base, b"iCCP", &[b"bomb\0\0".as_slice(), &bomb].concat())),
        ("ztxt-3g.png", with_chunk(&base, b"zTXt", &[b"Comment\0\0".as_slice(), &bomb].concat())),
        ("itxt-3g.png", with_chunk(&base, b"iTXt", &[b"XML:com.adobe.xmp\0\x01\0\0\0".as_slice(), &bomb].concat())),
    ];
    let origin = tempfile::tempdir().unwrap();
    for (name, bytes) in &files {
        assert!(bytes.len() > 3_000_000 && bytes.len() < 4_000_000, "{name} is {} bytes", bytes.len());
        std::fs::write(origin.path().join(name), bytes).unwrap();
    }
    let server = tokio::task::spawn_blocking({
        let dir = origin.path().to_path_buf();
        move || ChildServer::start(&dir, &[])
    })
    .await
    .unwrap()
    .unwrap_or_else(|f| panic!("the server did not start: {f:?}"));
    let at_start = server.peak_rss_mib();
    for (name, _) in &files {
        let started = Instant::now();
        let r = client().get(server.url(&format!("/x2/model=lanczos/format=png/{name}"))).send().await.unwrap();
        let status = r.status();
        let body = r.bytes().await.unwrap();
        let took = started.elapsed();
        assert_eq!(status, 200, "{name}: {}", String::from_utf8_lossy(&body[..body.len().min(300)]));
        assert_eq!(dimensions(&body), (16, 16), "{name}: the pixels, upscaled");
        // Generous for a loaded 2-core machine; inflating 3 GiB alone takes longer than the
        // copy that drops the chunk, and the memory bound below is the sharp check.
        assert!(took < Duration::from_secs(10), "{name} took {took:?}");
    }
    // Inflating one bomb needs 3 GiB; the three files together are 10 MB of source bytes.
    let peak = server.peak_rss_mib();
    assert!(peak < 512 && peak - at_start < 256, "peak RSS {peak} MiB (at start {at_start} MiB)\n{}", server.log());
}
