#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| mailmunge_fuzz::control::run(data));
