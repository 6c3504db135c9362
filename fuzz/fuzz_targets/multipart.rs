//! multipart/form-data bodies: the boundary is the first line of the input.
#![no_main]
use actix_web::http::header::{HeaderMap, HeaderValue, CONTENT_TYPE};

static QUIET: std::sync::Once = std::sync::Once::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // libfuzzer-sys aborts in its panic hook, even on a panic that is caught: the
    // server catches actix-multipart 0.7.2's panic on short boundaries (a 400, see
    // parse_form_now). Without the hook, caught panics pass and any panic that
    // escapes parse_form_now still fails the target (libfuzzer-sys aborts on it).
    QUIET.call_once(|| std::panic::set_hook(Box::new(|_| {})));
    let split = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let Ok(boundary) = std::str::from_utf8(&data[..split]) else {
        return;
    };
    let Ok(value) = HeaderValue::from_str(&format!("multipart/form-data; boundary={boundary}"))
    else {
        return;
    };
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, value);
    let body = actix_web::web::Bytes::copy_from_slice(data.get(split + 1..).unwrap_or(&[]));
    let _ = vcl_server::http::input::parse_form_now(&headers, body);
});
