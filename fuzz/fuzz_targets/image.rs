//! PNG/JPEG uploads through the pixel limits, the manifest's preprocessing, and base64.
#![no_main]
use vcl_contract::manifest::InputSpec;
use vcl_server::decode::{self, ImageLimits, Preprocess};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let limits = ImageLimits {
        max_side: 1024,
        max_pixels: 512 * 512,
    };
    let mut input = InputSpec::rgb_square(8);
    // The first byte picks crop and filter, so that every preprocessing path runs.
    if let Some(&b) = data.first() {
        input.resize.crop = b & 1 == 1;
        input.resize.filter = ["nearest", "triangle", "catmull_rom", "gaussian", "lanczos3"]
            [(b as usize >> 1) % 5]
            .into();
    }
    let pre = Preprocess::of(&input);
    if let Ok(px) = decode::files_to_pixels(&[data], &pre, limits, None) {
        assert_eq!(px.len(), 3 * 64);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = decode::base64_files(&[text.to_string()]);
    }
});
