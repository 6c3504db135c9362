//! .npy request bodies (application/x-npy) and the range check that follows them.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok((shape, values)) = vcl_server::decode::read_npy(data) {
        assert_eq!(shape.iter().product::<usize>(), values.len());
        let _ = vcl_server::decode::check_values(&values, [0.0, 1.0]);
    }
});
