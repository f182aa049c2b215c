#![no_main]
//! Fuzz target: `duli::fuzz_targets::firmware_bundle`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| duli::fuzz_targets::firmware_bundle(data));
