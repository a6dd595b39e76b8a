#!/bin/sh
# RUSTC_WRAPPER for a quick fuzz build on a machine that already built upres's dependencies
# (see README "Fuzzing"): libFuzzer's coverage instrumentation (the flags cargo-fuzz passes) is
# added only to upres, the fuzz targets and the image decoders, so nothing else is rebuilt.
rustc="$1"
shift
case " $* " in
*" --crate-name upres "* | *" --crate-name url_parse "* | *" --crate-name image_decode "* | \
*" --crate-name image "* | *" --crate-name png "* | *" --crate-name zune_jpeg "* | \
*" --crate-name image_webp "* | *" --crate-name gif "* | *" --crate-name fdeflate "* | *" --crate-name weezl "*)
    exec "$rustc" "$@" --cfg fuzzing -Cpasses=sancov-module \
        -Cllvm-args=-sanitizer-coverage-level=4 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
        -Cllvm-args=-sanitizer-coverage-pc-table -Cllvm-args=-sanitizer-coverage-trace-compares \
        -Cdebug-assertions -Coverflow-checks
    ;;
esac
exec "$rustc" "$@"
