#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vcodr_fuzz_targets::frame_edge(data));
