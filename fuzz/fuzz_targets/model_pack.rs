#![no_main]
//! Fuzz target: `duli::fuzz_targets::model_pack`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| duli::fuzz_targets::model_pack(data));
