#![no_main]
//! Fuzz target: `duli::fuzz_targets::config_toml`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| duli::fuzz_targets::config_toml(data));
