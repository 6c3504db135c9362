//! Property tests of every decoder of untrusted bytes (the same functions the fuzz
//! targets of fuzz/ drive, here in the ordinary test run): .npy, PNG/JPEG through the
//! pixel limits, multipart forms, KServe JSON and binary requests, manifest JSON.
//! Arbitrary and mutated inputs never panic; valid ones decode to what was encoded.

use std::io::Cursor;
use std::path::Path;

use proptest::prelude::*;
use vcl_contract::manifest::{InputSpec, Manifest};
use vcl_server::decode::{self, ImageLimits, Preprocess};
use vcl_server::http::{input, kserve};
use vcl_server::testing;

const LIMITS: ImageLimits = ImageLimits {
    max_side: 256,
    max_pixels: 256 * 256,
};

fn manifest() -> Manifest {
    testing::manifest("m", 4, &[("R", 1), ("G", 2)])
}

fn png(w: u32, h: u32, seed: u8) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([seed.wrapping_add(x as u8), y as u8, seed ^ 0x5a])
    });
    let mut b = Vec::new();
    img.write_to(&mut Cursor::new(&mut b), image::ImageFormat::Png)
        .unwrap();
    b
}

fn jpeg(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 7]));
    let mut b = Vec::new();
    img.write_to(&mut Cursor::new(&mut b), image::ImageFormat::Jpeg)
        .unwrap();
    b
}

/// `bytes` with up to `flips` bytes replaced.
fn mutate(mut bytes: Vec<u8>, flips: &[(usize, u8)]) -> Vec<u8> {
    if bytes.is_empty() {
        return bytes;
    }
    for &(i, b) in flips {
        let n = bytes.len();
        bytes[i % n] = b;
    }
    bytes
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
        .block_on(f)
}

fn form_headers(boundary: &str) -> actix_web::http::header::HeaderMap {
    let mut h = actix_web::http::header::HeaderMap::new();
    h.insert(
        actix_web::http::header::CONTENT_TYPE,
        format!("multipart/form-data; boundary={boundary}")
            .parse()
            .unwrap(),
    );
    h
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn npy_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = decode::read_npy(&bytes);
        let mut with_magic = b"\x93NUMPY\x01\x00".to_vec();
        with_magic.extend(&bytes);
        let _ = decode::read_npy(&with_magic);
    }

    #[test]
    fn npy_round_trips(shape in proptest::collection::vec(0usize..5, 1..5), seed in any::<u32>()) {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = (0..n).map(|i| (i as u32 ^ seed) as f32 / 7.0).collect();
        let bytes = decode::write_npy(&shape, &values);
        let (s, v) = decode::read_npy(&bytes).unwrap();
        prop_assert_eq!(s, shape);
        prop_assert_eq!(v, values);
    }

    #[test]
    fn npy_mutations_never_panic(flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6)) {
        let bytes = decode::write_npy(&[2, 3, 4, 4], &[0.5; 96]);
        let _ = decode::read_npy(&mutate(bytes, &flips));
    }

    #[test]
    fn images_decode_to_the_model_size(w in 1u32..40, h in 1u32..40, seed in any::<u8>(), side in 1u32..9) {
        let pre = Preprocess::of(&InputSpec::rgb_square(side));
        for bytes in [png(w, h, seed), jpeg(w, h)] {
            let px = decode::files_to_pixels(&[&bytes], &pre, LIMITS, None).unwrap();
            prop_assert_eq!(px.len(), (3 * side * side) as usize);
            prop_assert!(px.iter().all(|v| (0.0..=1.0).contains(v)));
        }
    }

    #[test]
    fn image_bytes_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..400),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
    ) {
        let pre = Preprocess::of(&InputSpec::rgb_square(4));
        let _ = decode::files_to_pixels(&[&bytes], &pre, LIMITS, None);
        for valid in [png(9, 7, 3), jpeg(9, 7)] {
            if let Ok(px) = decode::files_to_pixels(&[mutate(valid, &flips)], &pre, LIMITS, None) {
                prop_assert_eq!(px.len(), 48);
            }
        }
        let _ = decode::base64_files(&[String::from_utf8_lossy(&bytes).into_owned()]);
    }

    #[test]
    fn multipart_never_panics(body in proptest::collection::vec(any::<u8>(), 0..400)) {
        let mut framed = b"--b\r\ncontent-disposition: form-data; name=\"images\"; filename=\"x\"\r\n\r\n".to_vec();
        framed.extend(&body);
        for b in [body.clone(), framed] {
            let _ = block_on(input::read_form(&form_headers("b"), b.into()));
        }
    }

    #[test]
    fn multipart_forms_round_trip(
        files in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..50), 0..4),
        field in "[a-z]{1,8}",
        text in "[ -~]{0,20}",
    ) {
        let mut body = Vec::new();
        for f in &files {
            body.extend(b"--XyZ\r\ncontent-disposition: form-data; name=\"images\"; filename=\"a.png\"\r\n\r\n");
            body.extend(f);
            body.extend(b"\r\n");
        }
        body.extend(format!("--XyZ\r\ncontent-disposition: form-data; name=\"{field}x\"\r\n\r\n{text}\r\n--XyZ--\r\n").as_bytes());
        let form = block_on(input::read_form(&form_headers("XyZ"), body.into())).unwrap();
        let got: Vec<Vec<u8>> = form.files.iter().map(|b| b.to_vec()).collect();
        prop_assert_eq!(got, files);
        prop_assert_eq!(form.fields.get(&format!("{field}x")), Some(&text));
    }

    #[test]
    fn kserve_requests_never_panic(
        json in proptest::collection::vec(any::<u8>(), 0..300),
        binary in proptest::collection::vec(any::<u8>(), 0..64),
        shape in proptest::collection::vec(-3i64..1_000_000_000_000, 0..6),
        size in -10i64..100,
    ) {
        let mf = manifest();
        let _ = kserve::parse_infer(&mf, 8, &json, &binary);
        let doc = serde_json::json!({"inputs": [{"name": "images", "shape": shape, "datatype": "FP32",
            "parameters": {"binary_data_size": size}}]});
        let _ = kserve::parse_infer(&mf, 8, doc.to_string().as_bytes(), &binary);
        let doc = serde_json::json!({"inputs": [{"name": "images", "shape": shape, "datatype": "FP32",
            "data": binary}]});
        let _ = kserve::parse_infer(&mf, 8, doc.to_string().as_bytes(), &[]);
    }

    #[test]
    fn kserve_requests_round_trip(n in 1usize..4, seed in any::<u16>(), binary in any::<bool>()) {
        let mf = manifest();
        let values: Vec<f32> = (0..n * 48).map(|i| ((i as u32 + seed as u32) % 100) as f32 / 100.0).collect();
        let r = if binary {
            let doc = serde_json::json!({"inputs": [{"name": "images", "shape": [n, 3, 4, 4], "datatype": "FP32",
                "parameters": {"binary_data_size": values.len() * 4}}]}).to_string();
            let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            kserve::parse_infer(&mf, 8, doc.as_bytes(), &bytes).unwrap()
        } else {
            let doc = serde_json::json!({"inputs": [{"name": "images", "shape": [n, 3, 4, 4], "datatype": "FP32",
                "data": values}]}).to_string();
            kserve::parse_infer(&mf, 8, doc.as_bytes(), &[]).unwrap()
        };
        prop_assert_eq!(r.n, n);
        prop_assert_eq!(r.data, values);
        prop_assert_eq!(r.outputs.len(), 2);
    }

    #[test]
    fn manifests_never_panic(
        text in ".{0,200}",
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
    ) {
        let path = Path::new("manifest.json");
        let _ = Manifest::parse(&text, path);
        let good = manifest().to_json().into_bytes();
        let bad = mutate(good, &flips);
        if let Ok(s) = std::str::from_utf8(&bad) {
            let _ = Manifest::parse(s, path);
        }
    }
}

#[test]
fn a_valid_manifest_parses() {
    let m = manifest();
    assert_eq!(
        Manifest::parse(&m.to_json(), Path::new("manifest.json")).unwrap(),
        m
    );
}

/// A form whose last part never reaches its closing boundary: actix-multipart 0.7.2
/// never completes on it (found by fuzz/fuzz_targets/multipart.rs); read_form answers
/// 400 at once.
#[test]
fn an_unterminated_form_is_refused_at_once() {
    let hang = b"--XyZ\r\ncontent-disposition: form-data; name=\"imagesbgggggggggXyZ\"; filename=\"a.png\"\r\n\r\n\x89P-position: form-data; name=\"reduce\"\r\n\r\nroi\r\n-\xfe-XyZ--\r\n";
    for (ct, body) in [
        ("multipart/form-data; boundary=XyZ", &hang[..]),
        ("multipart/form-data; boundary=", &b""[..]),
        ("multipart/form-data", b"x"),
    ] {
        let mut h = actix_web::http::header::HeaderMap::new();
        h.insert(actix_web::http::header::CONTENT_TYPE, ct.parse().unwrap());
        let t = std::time::Instant::now();
        let got = block_on(async {
            tokio::time::timeout(
                std::time::Duration::from_secs(5),
                input::read_form(&h, body.to_vec().into()),
            )
            .await
        });
        let e = got.expect("read_form returned").unwrap_err();
        assert!(e.to_string().contains("multipart"), "{ct}: {e}");
        assert!(t.elapsed().as_secs() < 1);
    }
}
