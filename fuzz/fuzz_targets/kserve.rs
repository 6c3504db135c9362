//! KServe v2 inference requests: JSON, then binary tensor data after the first NUL.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let manifest = vcl_server::testing::manifest("m", 4, &[("R", 1), ("G", 2)]);
    let split = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let binary = data.get(split + 1..).unwrap_or(&[]);
    if let Ok(r) = vcl_server::http::kserve::parse_infer(&manifest, 8, &data[..split], binary) {
        assert_eq!(r.data.len(), r.n * 48);
    }
});
