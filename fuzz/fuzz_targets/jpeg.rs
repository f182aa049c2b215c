#![no_main]
//! Fuzz target: `duli::fuzz_targets::jpeg`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| duli::fuzz_targets::jpeg(data));
