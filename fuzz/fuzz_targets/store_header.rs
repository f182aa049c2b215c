#![no_main]
//! Fuzz target: `duli::fuzz_targets::store_header`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| duli::fuzz_targets::store_header(data));
