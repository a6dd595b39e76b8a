//! The fuzz targets on the stable toolchain, in every `cargo test`: each target's property (the
//! same file cargo-fuzz builds, `fuzz/targets/*.rs`) runs on its committed corpus, then on
//! mutations of it (bit flips, interesting integers over length and size fields, inserts,
//! deletes, duplicated and spliced runs) for a bounded number of cases and seconds. libFuzzer's
//! coverage guidance needs nightly (`fuzz/`, README "Fuzzing"); this keeps every change
//! exercised against the targets and their corpus. A new seed per run explores new mutations;
//! a failure prints the corpus file and the mutations that break it.

use std::path::Path;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

#[path = "../../fuzz/targets/image_decode.rs"]
mod image_decode;
#[path = "../../fuzz/targets/url_parse.rs"]
mod url_parse;

/// Wall-clock budget of each target's mutation run (the replay always runs in full).
const BUDGET: Duration = Duration::from_secs(5);

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "the {target} corpus lost its seeds");
    files
}

/// One edit of an input. Positions are taken modulo the input's length.
#[derive(Clone, Debug)]
enum Mutation {
    FlipBit(usize, u8),
    SetByte(usize, u8),
    /// A big-endian integer over 1, 2 or 4 bytes: lengths, widths, heights, counts.
    SetInt(usize, u8, u32),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    /// Copies `len` bytes from one position to another (repeated markers, chunks, segments).
    Duplicate(usize, usize, usize),
    /// Splices a run from another corpus file in.
    Splice(usize, usize, usize, usize),
    Truncate(usize),
}

fn interesting_u32() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0u32),
        Just(1),
        Just(0x7f),
        Just(0xff),
        Just(0x100),
        Just(0x7fff),
        Just(0xffff),
        Just(0x10000),
        Just(0x7fff_ffff),
        Just(u32::MAX),
        any::<u32>(),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, v)| Mutation::SetByte(i, v)),
        (any::<usize>(), prop_oneof![Just(1u8), Just(2), Just(4)], interesting_u32()).prop_map(|(i, w, v)| Mutation::SetInt(i, w, v)),
        (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..32)).prop_map(|(i, b)| Mutation::Insert(i, b)),
        (any::<usize>(), 1usize..256).prop_map(|(i, n)| Mutation::Delete(i, n)),
        (any::<usize>(), any::<usize>(), 1usize..512).prop_map(|(from, to, n)| Mutation::Duplicate(from, to, n)),
        (any::<usize>(), any::<usize>(), any::<usize>(), 1usize..512).prop_map(|(f, from, to, n)| Mutation::Splice(f, from, to, n)),
        any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn apply(input: &[u8], edits: &[Mutation], corpus: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut d = input.to_vec();
    for m in edits {
        let at = |i: usize, len: usize| if len == 0 { 0 } else { i % len };
        match m {
            Mutation::FlipBit(i, b) if !d.is_empty() => {
                let i = at(*i, d.len());
                d[i] ^= 1 << b;
            }
            Mutation::SetByte(i, v) if !d.is_empty() => {
                let i = at(*i, d.len());
                d[i] = *v;
            }
            Mutation::SetInt(i, width, v) => {
                let w = usize::from(*width);
                if d.len() >= w {
                    let i = at(*i, d.len() - w + 1);
                    d[i..i + w].copy_from_slice(&v.to_be_bytes()[4 - w..]);
                }
            }
            Mutation::Insert(i, bytes) => {
                let i = at(*i, d.len() + 1);
                d.splice(i..i, bytes.iter().copied());
            }
            Mutation::Delete(i, n) if !d.is_empty() => {
                let i = at(*i, d.len());
                let end = (i + n).min(d.len());
                d.drain(i..end);
            }
            Mutation::Duplicate(from, to, n) if !d.is_empty() => {
                let from = at(*from, d.len());
                let run: Vec<u8> = d[from..(from + n).min(d.len())].to_vec();
                let to = at(*to, d.len() + 1);
                d.splice(to..to, run);
            }
            Mutation::Splice(f, from, to, n) => {
                let other = &corpus[f % corpus.len()].1;
                if !other.is_empty() {
                    let from = at(*from, other.len());
                    let run = &other[from..(from + n).min(other.len())];
                    let to = at(*to, d.len() + 1);
                    let end = (to + run.len()).min(d.len());
                    d.splice(to..end, run.iter().copied());
                }
            }
            Mutation::Truncate(i) => {
                let i = at(*i, d.len() + 1);
                d.truncate(i);
            }
            _ => {}
        }
    }
    d
}

/// Replays `target`'s corpus through `check`, then mutates it for at most `cases` cases and
/// `BUDGET`. Returns how many mutated inputs ran.
fn replay_and_mutate(target: &str, cases: u32, check: fn(&[u8])) -> u32 {
    let files = corpus(target);
    for (name, bytes) in &files {
        if let Err(panic) = std::panic::catch_unwind(|| check(bytes)) {
            std::panic::resume_unwind(Box::new(format!("{target}: corpus file {name} fails: {panic:?}")));
        }
    }
    // PROPTEST_CASES, when set, wins (a longer local run).
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(cases);
    let config = Config { cases, failure_persistence: None, max_shrink_iters: 2000, ..Config::default() };
    let started = Instant::now();
    let ran = std::cell::Cell::new(0u32);
    let strategy = (0..files.len(), proptest::collection::vec(mutation(), 1..6));
    let result = TestRunner::new(config).run(&strategy, |(file, edits)| {
        if started.elapsed() > BUDGET {
            return Ok(());
        }
        ran.set(ran.get() + 1);
        let input = apply(&files[file].1, &edits, &files);
        let outcome = std::panic::catch_unwind(|| check(&input));
        prop_assert!(outcome.is_ok(), "{target}: {} with {edits:?} ({} bytes) panics", files[file].0, input.len());
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    eprintln!("fuzz {target}: {} corpus files, {} mutated inputs in {:.1?}", files.len(), ran.get(), started.elapsed());
    ran.get()
}

#[test]
fn url_parse_target_on_its_corpus_and_mutations() {
    let ran = replay_and_mutate("url_parse", 20_000, url_parse::check);
    assert!(ran > 0);
}

#[test]
fn image_decode_target_on_its_corpus_and_mutations() {
    let ran = replay_and_mutate("image_decode", 3_000, image_decode::check);
    assert!(ran > 0);
    // The corpus carries the PNG metadata bombs (each inflates to 60 MiB).
    let names: Vec<String> = corpus("image_decode").into_iter().map(|(n, _)| n).collect();
    for bomb in ["bomb-png-iccp-60m.png", "bomb-png-ztxt-60m.png", "bomb-png-itxt-60m.png"] {
        assert!(names.iter().any(|n| n == bomb), "{bomb} is in fuzz/corpus/image_decode");
    }
}

/// The mutator itself does what it says (a broken mutator would make the runs above vacuous).
#[test]
fn mutations_edit_the_input() {
    let corpus = vec![("a".to_string(), b"0123456789".to_vec()), ("b".to_string(), b"abcdef".to_vec())];
    let base = &corpus[0].1;
    assert_eq!(apply(base, &[Mutation::FlipBit(0, 0)], &corpus), b"1123456789");
    assert_eq!(apply(base, &[Mutation::SetInt(12, 2, 0x4142)], &corpus), b"012AB56789");
    assert_eq!(apply(base, &[Mutation::Insert(10, b"xy".to_vec())], &corpus), b"0123456789xy");
    assert_eq!(apply(base, &[Mutation::Delete(8, 5)], &corpus), b"01234567");
    assert_eq!(apply(base, &[Mutation::Duplicate(0, 2, 2)], &corpus), b"010123456789");
    assert_eq!(apply(base, &[Mutation::Splice(1, 2, 0, 3)], &corpus), b"cde3456789");
    assert_eq!(apply(base, &[Mutation::Truncate(3)], &corpus), b"012");
    assert_eq!(apply(b"", &[Mutation::FlipBit(3, 1), Mutation::Delete(0, 3)], &corpus), b"");
}
