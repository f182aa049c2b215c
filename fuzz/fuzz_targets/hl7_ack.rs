#![no_main]
//! Fuzz target: `duli::fuzz_targets::hl7_ack`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| duli::fuzz_targets::hl7_ack(data));
