#![no_main]
//! Fuzz target: `duli::fuzz_targets::model_manifest`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| duli::fuzz_targets::model_manifest(data));
