//! manifest.json as the server reads it from a model repository.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(m) = vcl_contract::Manifest::parse(text, std::path::Path::new("manifest.json")) {
            // What parses validates, and writes back to what parses again.
            let again = vcl_contract::Manifest::parse(&m.to_json(), std::path::Path::new("m"));
            assert_eq!(again.ok().as_ref(), Some(&m));
        }
    }
});
