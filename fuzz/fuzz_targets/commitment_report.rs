#![no_main]
//! Fuzz target: `duli::fuzz_targets::commitment_report`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| duli::fuzz_targets::commitment_report(data));
