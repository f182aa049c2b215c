#![no_main]
//! Fuzz target: `duli::fuzz_targets::guard_parser`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| duli::fuzz_targets::guard_parser(data));
