# Sourced by scripts/fuzz.sh and scripts/fuzz-minimize.sh, from fuzz/, after their own
# arguments were taken: sets `targets` (the arguments left, else every fuzz target of
# fuzz/Cargo.toml) and `flags` (the build flags of every fuzz build), checks for cargo fuzz
# and a nightly toolchain, and builds the targets.
# The OpenVINO runtime is loaded at run time only by inference; no target needs it.
# Memory-safety checks: AddressSanitizer on our code and the Rust decoders. The C and C++
# codecs (CharLS, OpenJPEG) are compiled by their build scripts without it, see
# docs/security.md for how they are contained.
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v '^duli-fuzz$')
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "cargo fuzz and a nightly toolchain are needed: rustup toolchain install nightly;" \
        "cargo install cargo-fuzz" >&2
    exit 2
fi
flags=(--release --debug-assertions)
echo "== building ${#targets[@]} fuzz targets (nightly, AddressSanitizer)"
cargo +nightly fuzz build "${flags[@]}"
