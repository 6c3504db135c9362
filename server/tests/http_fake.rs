//! The HTTP API over the fake backend: answers (JSON, .npy and multipart uploads),
//! every bad-input status with its JSON error, overload (429), deadlines (503), auth,
//! batching and metrics, and reloads of a repository on disk that swap versions whole.

use std::io::Cursor;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{test, web, App};
use base64::Engine;
use serde_json::{json, Value};
use vcl_server::decode;
use vcl_server::http::{configure, AppState};
use vcl_server::infer::{Model, Origin};
use vcl_server::repository::{Live, Repository};
use vcl_server::runtime::Provider;
use vcl_server::testing::FakeBackend;
use vcl_server::{testing, Config};

const SIZE: u32 = 8;
/// ROIs R, G, B read one voxel each (channel means); "all" reads three.
const ROIS: &[(&str, usize)] = &[("R", 1), ("G", 1), ("B", 1), ("all", 3)];

fn metrics_handle() -> &'static metrics_exporter_prometheus::PrometheusHandle {
    static H: OnceLock<metrics_exporter_prometheus::PrometheusHandle> = OnceLock::new();
    H.get_or_init(|| {
        let h = vcl_server::metrics::prometheus_builder()
            .install_recorder()
            .unwrap();
        vcl_server::metrics::describe();
        h
    })
}

struct Fixture {
    state: web::Data<AppState>,
    batches: Arc<std::sync::Mutex<Vec<usize>>>,
    fake: FakeBackend,
}

fn fixture(cfg: Config, tweak: impl FnOnce(&mut FakeBackend)) -> Fixture {
    let handle = metrics_handle();
    let manifest = testing::manifest("fake-model", SIZE, ROIS);
    let mut fake = FakeBackend::new(&manifest);
    tweak(&mut fake);
    let batches = fake.batches.clone();
    let expect = FakeBackend::new(&manifest);
    let origin = Origin {
        provider: Provider::Cpu,
        versions: vec![1],
        dir: "/nowhere".into(),
    };
    let model = Model::spawn(manifest, origin, Box::new(fake), &cfg).unwrap();
    let mut repo = Repository::default();
    repo.models.insert("fake-model".into(), Arc::new(model));
    for _ in 0..200 {
        if repo.all_ready() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(repo.all_ready());
    Fixture {
        state: web::Data::new(AppState::new(
            Arc::new(Live::new(repo, cfg.clone(), testing::fake_opener())),
            Arc::new(cfg),
            Arc::new(|| handle.render()),
        )),
        batches,
        fake: expect,
    }
}

fn png_bytes(w: u32, h: u32, rgb: [u8; 3]) -> Vec<u8> {
    let img = image::RgbImage::from_pixel(w, h, image::Rgb(rgb));
    let mut buf = Vec::new();
    img.write_to(&mut Cursor::new(&mut buf), image::ImageFormat::Png)
        .unwrap();
    buf
}

fn png(w: u32, h: u32, rgb: [u8; 3]) -> String {
    base64::engine::general_purpose::STANDARD.encode(png_bytes(w, h, rgb))
}

const BOUNDARY: &str = "vcl-test-boundary-7f3a";

/// A multipart/form-data request: (field name, file name, bytes) per part.
fn multipart(path: &str, parts: &[(&str, Option<&str>, &[u8])]) -> test::TestRequest {
    let mut body = Vec::new();
    for (name, file, bytes) in parts {
        body.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
        let disposition = match file {
            Some(f) => {
                format!("form-data; name=\"{name}\"; filename=\"{f}\"\r\ncontent-type: image/png")
            }
            None => format!("form-data; name=\"{name}\""),
        };
        body.extend_from_slice(format!("content-disposition: {disposition}\r\n\r\n").as_bytes());
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    test::TestRequest::post()
        .uri(path)
        .insert_header((
            "content-type",
            format!("multipart/form-data; boundary={BOUNDARY}"),
        ))
        .set_payload(body)
}

macro_rules! app {
    ($f:expr) => {
        test::init_service(App::new().configure(configure($f.state.clone()))).await
    };
}

macro_rules! send {
    ($app:expr, $req:expr) => {{
        let resp = test::call_service($app, $req.to_request()).await;
        let status = resp.status();
        let body = test::read_body(resp).await;
        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        (status, v)
    }};
}

fn post_json(path: &str, body: Value) -> test::TestRequest {
    test::TestRequest::post().uri(path).set_json(body)
}

/// An error answer: its status and a JSON body naming it.
fn assert_error(got: &(StatusCode, Value), status: u16, kind: &str) {
    assert_eq!(got.0.as_u16(), status, "{}", got.1);
    assert_eq!(got.1["status"], status, "{}", got.1);
    assert_eq!(got.1["kind"], kind, "{}", got.1);
    assert!(
        got.1["error"].as_str().is_some_and(|s| !s.is_empty()),
        "{}",
        got.1
    );
}

#[actix_web::test]
async fn predicts_voxels_and_rois_in_json_and_npy() {
    let f = fixture(Config::defaults(), |_| {});
    let app = app!(f);
    let imgs = vec![png(20, 12, [255, 0, 0]), png(8, 8, [0, 51, 255])];
    let (s, v) = send!(
        &app,
        post_json("/v1/models/fake-model/predict", json!({"images": imgs}))
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["model"], "fake-model");
    assert_eq!(v["version"], 1);
    assert_eq!(v["rois"][3], json!({"name": "all", "start": 3, "end": 6}));
    let preds = v["predictions"].as_array().unwrap();
    assert_eq!(preds.len(), 2);
    assert_eq!(preds[0].as_array().unwrap().len(), 6);
    let red = f
        .fake
        .expected(&[vec![1.0; 64], vec![0.0; 64], vec![0.0; 64]].concat())
        .0;
    for (a, b) in preds[0].as_array().unwrap().iter().zip(&red) {
        assert!((a.as_f64().unwrap() as f32 - b).abs() < 1e-5);
    }
    // reduce=roi, in the body or the query.
    let (s, v) = send!(
        &app,
        post_json(
            "/v1/models/fake-model/predict",
            json!({"images": [png(4, 4, [0, 0, 255])], "reduce": "roi"})
        )
    );
    assert_eq!(s, 200);
    let roi = v["predictions"][0].as_array().unwrap();
    assert_eq!(roi.len(), 4);
    assert!((roi[2].as_f64().unwrap() - 1.002).abs() < 1e-5, "{v}");

    // .npy in and out.
    let pixels: Vec<f32> = (0..2 * 3 * 64).map(|i| (i % 7) as f32 / 7.0).collect();
    let body = decode::write_npy(&[2, 3, 8, 8], &pixels);
    let req = test::TestRequest::post()
        .uri("/v1/models/fake-model/predict?reduce=roi")
        .insert_header(("content-type", "application/x-npy"))
        .insert_header(("accept", "application/x-npy"))
        .set_payload(body);
    let resp = test::call_service(&app, req.to_request()).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers().get("content-type").unwrap(),
        "application/x-npy"
    );
    let bytes = test::read_body(resp).await;
    let (shape, values) = decode::read_npy(&bytes).unwrap();
    assert_eq!(shape, vec![2, 4]);
    assert_eq!(values[..4], f.fake.expected(&pixels[..192]).1[..]);
}

#[actix_web::test]
async fn bad_input_gets_the_documented_status() {
    let mut cfg = Config::defaults();
    cfg.max_request_images = 3;
    cfg.max_body_bytes = 100_000;
    cfg.max_image_side = 1000;
    let f = fixture(cfg, |_| {});
    let app = app!(f);
    let p = "/v1/models/fake-model/predict";
    let ok = png(4, 4, [1, 2, 3]);
    let junk = base64::engine::general_purpose::STANDARD.encode(b"GIF89a? no, just text");
    assert_error(
        &send!(&app, post_json(p, json!({"images": ["@@not base64@@"]}))),
        400,
        "bad_base64",
    );
    assert_error(
        &send!(&app, post_json(p, json!({"images": [ok, junk]}))),
        422,
        "not_an_image",
    );
    assert_error(
        &send!(&app, post_json(p, json!({"images": []}))),
        400,
        "empty_batch",
    );
    assert_error(
        &send!(
            &app,
            post_json(p, json!({"images": vec![png(4, 4, [0; 3]); 4]}))
        ),
        413,
        "batch_too_large",
    );
    assert_error(
        &send!(&app, post_json(p, json!({"pictures": []}))),
        400,
        "invalid_json",
    );
    assert_error(
        &send!(
            &app,
            test::TestRequest::post()
                .uri(p)
                .insert_header(("content-type", "application/json"))
                .set_payload("{not json")
        ),
        400,
        "invalid_json",
    );
    assert_error(
        &send!(
            &app,
            post_json(p, json!({"images": [png(5000, 4, [0; 3])]}))
        ),
        422,
        "image_too_large",
    );
    let big = "A".repeat(200_000);
    assert_error(
        &send!(&app, post_json(p, json!({"images": [big]}))),
        413,
        "body_too_large",
    );
    assert_error(
        &send!(
            &app,
            test::TestRequest::post()
                .uri(p)
                .insert_header(("content-type", "text/plain"))
                .set_payload("hi")
        ),
        415,
        "unsupported_media_type",
    );
    assert_error(
        &send!(&app, test::TestRequest::post().uri(p).set_payload("hi")),
        415,
        "unsupported_media_type",
    );
    let npy = |shape: &[usize]| {
        let n: usize = shape.iter().product();
        test::TestRequest::post()
            .uri(p)
            .insert_header(("content-type", "application/x-npy"))
            .set_payload(decode::write_npy(shape, &vec![0.5; n]))
    };
    assert_error(&send!(&app, npy(&[1, 3, 8, 9])), 422, "bad_tensor");
    assert_error(&send!(&app, npy(&[3, 8, 8])), 422, "bad_tensor");
    assert_error(&send!(&app, npy(&[0, 3, 8, 8])), 400, "empty_batch");
    // The dtype edited in place (the bytes are not UTF-8: the magic is \x93).
    let mut f64_body = decode::write_npy(&[1, 3, 8, 8], &[0.0; 192]);
    let at = f64_body.windows(3).position(|w| w == b"<f4").unwrap();
    f64_body[at + 2] = b'8';
    let got = send!(
        &app,
        test::TestRequest::post()
            .uri(p)
            .insert_header(("content-type", "application/x-npy"))
            .set_payload(f64_body)
    );
    assert_error(&got, 422, "bad_tensor");
    assert!(
        got.1["error"].as_str().unwrap().contains("'<f8'"),
        "{}",
        got.1
    );
    assert_error(
        &send!(
            &app,
            post_json("/v1/models/nope/predict", json!({"images": []}))
        ),
        404,
        "model_not_found",
    );
    assert_error(
        &send!(
            &app,
            test::TestRequest::get().uri("/v1/models/..%2F..%2Fetc")
        ),
        400,
        "invalid_model_name",
    );
    assert_error(
        &send!(
            &app,
            post_json("/v1/models/..%2Ffake-model/predict", json!({"images": []}))
        ),
        400,
        "invalid_model_name",
    );
    assert_error(
        &send!(&app, test::TestRequest::get().uri("/v1/nothing")),
        404,
        "route_not_found",
    );
    // None of it disturbed the model.
    let (s, _) = send!(&app, post_json(p, json!({"images": [png(4, 4, [9; 3])]})));
    assert_eq!(s, 200);
}

#[actix_web::test]
async fn overload_is_429_with_retry_after_and_deadline_is_503() {
    let mut cfg = Config::defaults();
    cfg.max_queue_length = 2;
    cfg.max_request_images = 2;
    cfg.request_timeout_ms = 150;
    let f = fixture(cfg, |b| b.delay = Duration::from_millis(400));
    let app = app!(f);
    let req = || {
        post_json(
            "/v1/models/fake-model/predict",
            json!({"images": [png(4, 4, [1; 3]), png(4, 4, [2; 3])]}),
        )
        .to_request()
    };
    let (a, b) = tokio::join!(test::call_service(&app, req()), async {
        tokio::time::sleep(Duration::from_millis(30)).await;
        test::call_service(&app, req()).await
    });
    let mut statuses = vec![a.status().as_u16(), b.status().as_u16()];
    statuses.sort();
    // The first waits past its deadline (503); the second finds the queue full (429).
    assert_eq!(statuses, vec![429, 503]);
    for r in [a, b] {
        assert_eq!(r.headers().get("retry-after").unwrap(), "1");
        let v: Value = serde_json::from_slice(&test::read_body(r).await).unwrap();
        assert!(v["kind"] == "overloaded" || v["kind"] == "timeout", "{v}");
    }
}

#[actix_web::test]
async fn backend_failure_is_500() {
    let f = fixture(Config::defaults(), |_| {});
    drop(f);
    // Warm-up fails too, so the model never becomes ready: 503 not_ready.
    let manifest = testing::manifest("broken", SIZE, ROIS);
    let mut fake = FakeBackend::new(&manifest);
    fake.fail = true;
    let origin = Origin {
        provider: Provider::Cpu,
        versions: vec![1],
        dir: "/x".into(),
    };
    let model = Model::spawn(manifest, origin, Box::new(fake), &Config::defaults()).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let e = model.predict(1, vec![0.0; 192]).await.unwrap_err();
    assert_eq!(e.status(), 503, "{e}");
}

#[actix_web::test]
async fn ranks_candidates_by_objective() {
    let f = fixture(Config::defaults(), |_| {});
    let app = app!(f);
    let imgs = vec![
        png(4, 4, [0, 255, 0]),
        png(4, 4, [255, 0, 0]),
        png(4, 4, [0, 0, 255]),
    ];
    let rank = |objective: Value, k: usize| {
        post_json(
            "/v1/models/fake-model/rank",
            json!({"images": imgs, "objective": objective, "top_k": k}),
        )
    };
    let (s, v) = send!(&app, rank(json!({"maximize_roi": "R"}), 2));
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["top"].as_array().unwrap().len(), 2);
    assert_eq!(v["top"][0]["index"], 1);
    assert_eq!(v["top"][0]["roi_means"].as_array().unwrap().len(), 4);
    let (_, v) = send!(&app, rank(json!({"minimize_roi": "B"}), 3));
    assert_eq!(v["top"][2]["index"], 2, "{v}");
    let (_, v) = send!(&app, rank(json!({"match_pattern": [0, 0, 1, 0, 0, 1]}), 1));
    assert_eq!(v["top"][0]["index"], 2, "{v}");
    let (_, v) = send!(
        &app,
        rank(json!({"contrast": {"high": "G", "low": "R"}}), 1)
    );
    assert_eq!(v["top"][0]["index"], 0, "{v}");
    assert_error(
        &send!(&app, rank(json!({"maximize_roi": "V9"}), 1)),
        422,
        "invalid",
    );
    assert_error(
        &send!(&app, rank(json!({"match_pattern": [1, 2]}), 1)),
        422,
        "invalid",
    );
    assert_error(
        &send!(&app, rank(json!({"maximize_roi": "R"}), 0)),
        422,
        "invalid",
    );
    assert_error(
        &send!(&app, rank(json!({"explode": 1}), 1)),
        400,
        "invalid_json",
    );
}

#[actix_web::test]
async fn kserve_v2_json_tensors() {
    let f = fixture(Config::defaults(), |_| {});
    let app = app!(f);
    assert_eq!(
        send!(&app, test::TestRequest::get().uri("/v2/health/live")).0,
        200
    );
    assert_eq!(
        send!(&app, test::TestRequest::get().uri("/v2/health/ready")).0,
        200
    );
    assert_eq!(
        send!(
            &app,
            test::TestRequest::get().uri("/v2/models/fake-model/ready")
        )
        .0,
        200
    );
    let (s, meta) = send!(&app, test::TestRequest::get().uri("/v2/models/fake-model"));
    assert_eq!(s, 200);
    assert_eq!(
        meta["inputs"][0],
        json!({"name": "images", "datatype": "FP32", "shape": [-1, 3, 8, 8]})
    );
    let data: Vec<f32> = (0..192).map(|i| (i / 64) as f32 / 2.0).collect();
    let body = json!({"id": "x1", "inputs": [{"name": "images", "shape": [1, 3, 8, 8], "datatype": "FP32", "data": data}],
                      "outputs": [{"name": "roi_means"}]});
    let (s, v) = send!(
        &app,
        test::TestRequest::post()
            .uri("/v2/models/fake-model/infer")
            .set_json(body)
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["id"], "x1");
    assert_eq!(v["outputs"].as_array().unwrap().len(), 1);
    assert_eq!(v["outputs"][0]["shape"], json!([1, 4]));
    assert!(
        (v["outputs"][0]["data"][1].as_f64().unwrap() - 0.501).abs() < 1e-5,
        "{v}"
    );
    let bad = json!({"inputs": [{"name": "images", "shape": [1, 3, 8, 8], "datatype": "FP64", "data": data}]});
    assert_error(
        &send!(
            &app,
            test::TestRequest::post()
                .uri("/v2/models/fake-model/infer")
                .set_json(bad)
        ),
        422,
        "bad_tensor",
    );
    let bad = json!({"inputs": [{"name": "images", "shape": [2, 3, 8, 8], "datatype": "FP32", "data": data}]});
    assert_error(
        &send!(
            &app,
            test::TestRequest::post()
                .uri("/v2/models/fake-model/infer")
                .set_json(bad)
        ),
        422,
        "bad_tensor",
    );
}

#[actix_web::test]
async fn bearer_token_guards_all_but_health_and_metrics() {
    let mut cfg = Config::defaults();
    cfg.api_key = Some("s3cret".into());
    let f = fixture(cfg, |_| {});
    let app = app!(f);
    assert_error(
        &send!(&app, test::TestRequest::get().uri("/v1/models")),
        401,
        "unauthorized",
    );
    assert_error(
        &send!(
            &app,
            test::TestRequest::get()
                .uri("/v1/models")
                .insert_header(("authorization", "Bearer s3cre7"))
        ),
        401,
        "unauthorized",
    );
    let (s, v) = send!(
        &app,
        test::TestRequest::get()
            .uri("/v1/models")
            .insert_header(("authorization", "Bearer s3cret"))
    );
    assert_eq!(s, 200);
    assert_eq!(v["models"][0]["name"], "fake-model");
    assert_eq!(v["models"][0]["provider"], "cpu");
    for open in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/v2/health/ready",
        "/openapi.json",
    ] {
        let resp = test::call_service(&app, test::TestRequest::get().uri(open).to_request()).await;
        assert_eq!(resp.status(), 200, "{open}");
    }
}

#[actix_web::test]
async fn concurrent_requests_are_batched_and_measured() {
    let mut cfg = Config::defaults();
    cfg.max_queue_delay_ms = 20;
    let f = fixture(cfg, |b| b.delay = Duration::from_millis(20));
    let app = app!(f);
    let reqs = (0..16u8).map(|i| {
        let r = post_json(
            "/v1/models/fake-model/predict",
            json!({"images": [png(4, 4, [i * 10, 0, 0])], "reduce": "roi"}),
        )
        .to_request();
        test::call_service(&app, r)
    });
    let resps = futures_util::future::join_all(reqs).await;
    for (i, r) in resps.into_iter().enumerate() {
        assert_eq!(r.status(), 200);
        let v: Value = serde_json::from_slice(&test::read_body(r).await).unwrap();
        let want = (i as f32 * 10.0 / 255.0) as f64;
        assert!(
            (v["predictions"][0][0].as_f64().unwrap() - want).abs() < 1e-5,
            "request {i} got another's answer: {v}"
        );
    }
    let batches = f.batches.lock().unwrap().clone();
    assert!(
        batches.iter().any(|&n| n > 1),
        "no batch over 1: {batches:?}"
    );
    let text = (f.state.render_metrics)();
    for name in [
        "vcl_batch_size",
        "vcl_requests_total",
        "vcl_queue_duration_seconds",
        "vcl_inference_duration_seconds",
        "vcl_model_info",
        "vcl_images_total",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics");
    }
    assert!(text.contains("provider=\"cpu\""));
}

#[actix_web::test]
async fn entries_whose_client_left_are_skipped_and_counted() {
    let mut cfg = Config::defaults();
    cfg.max_queue_delay_ms = 0;
    let f = fixture(cfg, |b| b.delay = Duration::from_millis(150));
    let model = f.state.live.snapshot().get("fake-model").unwrap().clone();
    let px = |n: usize| vec![0.25f32; n * 3 * 64];
    let busy = model.predict(1, px(1));
    let gone = async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        tokio::time::timeout(Duration::from_millis(30), model.predict(2, px(2))).await
    };
    let (a, b) = tokio::join!(busy, gone);
    assert!(a.is_ok());
    assert!(b.is_err(), "the client gave up first");
    tokio::time::sleep(Duration::from_millis(250)).await;
    // The warm-up and the first request ran; the abandoned entry never did.
    assert_eq!(*f.batches.lock().unwrap(), vec![1, 1]);
    let text = (f.state.render_metrics)();
    assert!(
        text.lines()
            .any(|l| l.starts_with("vcl_dropped_total") && l.contains("reason=\"client_gone\"")),
        "{text}"
    );
}

#[actix_web::test]
async fn multipart_uploads_predict_and_rank() {
    let mut cfg = Config::defaults();
    cfg.max_request_images = 3;
    cfg.max_body_bytes = 50_000;
    let f = fixture(cfg, |_| {});
    let app = app!(f);
    let (red, blue) = (
        png_bytes(20, 12, [255, 0, 0]),
        png_bytes(8, 8, [0, 51, 255]),
    );
    let path = "/v1/models/fake-model/predict";
    let (s, v) = send!(
        &app,
        multipart(
            path,
            &[
                ("images", Some("a.png"), &red),
                ("file", Some("b.png"), &blue)
            ]
        )
    );
    assert_eq!(s, 200, "{v}");
    let json_answer = send!(
        &app,
        post_json(
            path,
            json!({"images": [png(20, 12, [255, 0, 0]), png(8, 8, [0, 51, 255])]})
        )
    );
    assert_eq!(
        v["predictions"], json_answer.1["predictions"],
        "multipart and base64 differ"
    );
    let (s, v) = send!(
        &app,
        multipart(path, &[("image", None, &blue), ("reduce", None, b"roi")])
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["predictions"][0].as_array().unwrap().len(), 4, "{v}");

    // Rank: the objective as a JSON text field, the candidates as files.
    let green = png_bytes(4, 4, [0, 255, 0]);
    let (s, v) = send!(
        &app,
        multipart(
            "/v1/models/fake-model/rank",
            &[
                ("images", Some("g.png"), &green),
                ("images", Some("r.png"), &red),
                ("objective", None, br#"{"maximize_roi": "R"}"#),
                ("top_k", None, b"1"),
            ]
        )
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["top"][0]["index"], 1, "{v}");
    assert_eq!(v["candidates"], 2);

    // Each bad form gets its status, and names what is wrong.
    let bad = |parts: Vec<(&'static str, Option<&'static str>, Vec<u8>)>| {
        let parts: Vec<(&str, Option<&str>, &[u8])> = parts
            .iter()
            .map(|(n, f, b)| (*n, *f, b.as_slice()))
            .collect();
        multipart(path, &parts)
    };
    assert_error(
        &send!(&app, bad(vec![("reduce", None, b"roi".to_vec())])),
        400,
        "empty_batch",
    );
    assert_error(
        &send!(
            &app,
            bad(vec![("images", Some("x.png"), b"not a png".to_vec())])
        ),
        422,
        "not_an_image",
    );
    assert_error(
        &send!(
            &app,
            bad(vec![
                ("images", Some("a.png"), red.clone()),
                ("colour", None, b"red".to_vec())
            ])
        ),
        400,
        "bad_multipart",
    );
    assert_error(
        &send!(
            &app,
            bad(vec![
                ("images", Some("a.png"), red.clone()),
                ("reduce", None, b"pixel".to_vec())
            ])
        ),
        422,
        "invalid",
    );
    let four = (0..4)
        .map(|_| ("images", Some("a.png"), red.clone()))
        .collect();
    assert_error(&send!(&app, bad(four)), 413, "batch_too_large");
    let huge = vec![("images", Some("big.png"), vec![0u8; 60_000])];
    assert_error(&send!(&app, bad(huge)), 413, "body_too_large");
    // A body cut short (no closing boundary) is a 400, not a hang or a 500.
    let cut = test::TestRequest::post()
        .uri(path)
        .insert_header(("content-type", format!("multipart/form-data; boundary={BOUNDARY}")))
        .set_payload(format!("--{BOUNDARY}\r\ncontent-disposition: form-data; name=\"images\"; filename=\"a\"\r\n\r\nxx"));
    assert_error(&send!(&app, cut), 400, "bad_multipart");
    let no_boundary = test::TestRequest::post()
        .uri(path)
        .insert_header(("content-type", "multipart/form-data"))
        .set_payload("x");
    assert_error(&send!(&app, no_boundary), 400, "bad_multipart");
}

/// Reads `name`'s served version and a prediction through `app`.
macro_rules! version_of {
    ($app:expr, $name:expr) => {{
        let (s, v) = send!(
            $app,
            post_json(
                &format!("/v1/models/{}/predict", $name),
                json!({"images": [png(4, 4, [9, 9, 9])], "reduce": "roi"})
            )
        );
        assert_eq!(s, 200, "{v}");
        (
            v["version"].as_u64().unwrap(),
            v["predictions"][0].as_array().unwrap().len(),
        )
    }};
}

#[actix_web::test]
async fn reload_swaps_new_versions_whole_and_keeps_old_ones_on_failure() {
    let handle = metrics_handle();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    testing::write_version(root, "a", 1, (SIZE, ROIS), b"v1");
    testing::write_version(root, "b", 1, (SIZE, ROIS), b"v1");
    let mut cfg = Config::defaults();
    cfg.model_repository = root.to_path_buf();
    let live = Arc::new(Live::load(&cfg, testing::fake_opener()).unwrap());
    let state = web::Data::new(AppState::new(
        live.clone(),
        Arc::new(cfg),
        Arc::new(|| handle.render()),
    ));
    let app = test::init_service(App::new().configure(configure(state))).await;
    for _ in 0..400 {
        if live.snapshot().all_ready() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(version_of!(&app, "a"), (1, 4));
    let old = live.snapshot();

    // a: version 2 with two ROIs; b: version 2 that fails its warm-up; c: new; and an
    // unfinished version folder that must be ignored.
    testing::write_version(root, "a", 2, (SIZE, &[("R", 1), ("G", 1)]), b"v2");
    testing::write_version(root, "b", 2, (SIZE, ROIS), b"fail");
    testing::write_version(root, "c", 1, (SIZE, ROIS), b"v1");
    testing::write_version(root, "d", 1, (SIZE, ROIS), b"corrupt");
    std::fs::create_dir_all(root.join("a/.partial-3")).unwrap();
    let (s, report) = send!(&app, test::TestRequest::post().uri("/v1/repository/reload"));
    assert_eq!(s, 200, "{report}");
    assert_eq!(report["added"], json!(["c"]), "{report}");
    assert_eq!(report["updated"], json!(["a: 1 -> 2"]), "{report}");
    assert_eq!(
        report["kept"],
        json!(["b"]),
        "b's version 1 serves on: {report}"
    );
    let failed = report["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 2, "{report}");
    assert!(
        failed[0].as_str().unwrap().starts_with("b: ")
            && failed[0].as_str().unwrap().contains("warm-up"),
        "{report}"
    );
    assert!(failed[1].as_str().unwrap().starts_with("d: "), "{report}");

    assert_eq!(version_of!(&app, "a"), (2, 2));
    assert_eq!(version_of!(&app, "b"), (1, 4), "b keeps serving version 1");
    assert_eq!(version_of!(&app, "c"), (1, 4));
    assert_error(
        &send!(&app, test::TestRequest::get().uri("/v1/models/d")),
        404,
        "model_not_found",
    );
    // Whoever held the old snapshot (a request in flight) still has version 1 whole.
    assert_eq!(old.get("a").unwrap().manifest.model.version, 1);
    assert!(old.get("c").is_none());
    // Readiness names what failed; d serves nothing, so (strict) the server is not ready.
    let (s, ready) = send!(&app, test::TestRequest::get().uri("/readyz"));
    assert_eq!(s, 503, "{ready}");
    assert_eq!(ready["unserved"], json!(["d"]), "{ready}");
    assert!(
        ready["failed"]["b"].as_str().unwrap().contains("version 2"),
        "{ready}"
    );
    assert!(
        ready["failed"]["d"].as_str().unwrap().contains("version 1"),
        "{ready}"
    );
    assert_eq!(ready["models"]["b"], true, "{ready}");
    std::fs::remove_dir_all(root.join("d")).unwrap();

    // Nothing changed: everything kept, nothing reopened. Then a model removed.
    let again = live.reload().unwrap();
    assert_eq!(again.kept, ["a", "b", "c"], "{again:?}");
    let (s, ready) = send!(&app, test::TestRequest::get().uri("/readyz"));
    assert_eq!(s, 200, "b serves its older version: {ready}");
    assert!(!again.changed());
    std::fs::remove_dir_all(root.join("c")).unwrap();
    let gone = live.reload().unwrap();
    assert_eq!(gone.removed, ["c"], "{gone:?}");
    assert_error(
        &send!(
            &app,
            post_json(
                "/v1/models/c/predict",
                json!({"images": [png(4, 4, [0, 0, 0])]})
            )
        ),
        404,
        "model_not_found",
    );
    let text = handle.render();
    assert!(
        text.lines().any(|l| l.starts_with("vcl_model_info{")
            && l.contains("model=\"a\"")
            && l.contains("version=\"1\"")
            && l.ends_with(" 0")),
        "{text}"
    );
    assert!(text.contains("vcl_repository_reloads_total"), "{text}");
}

#[actix_web::test]
async fn predictions_keep_flowing_while_a_reload_swaps_versions() {
    let handle = metrics_handle();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    testing::write_version(root, "m", 1, (SIZE, ROIS), b"v1");
    let mut cfg = Config::defaults();
    cfg.model_repository = root.to_path_buf();
    let live = Arc::new(Live::load(&cfg, testing::fake_opener()).unwrap());
    let state = AppState::new(live.clone(), Arc::new(cfg), Arc::new(|| handle.render()));
    let (addr, server) = vcl_server::http::start_background(state, "127.0.0.1", 0).unwrap();
    for _ in 0..400 {
        if live.snapshot().all_ready() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // Four clients post without pause while versions 2..=6 swap in one after another;
    // each has had an answer from version 1 before the first swap.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let started = Arc::new(std::sync::Barrier::new(5));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let stop = stop.clone();
            let started = started.clone();
            std::thread::spawn(move || {
                let mut seen = vec![blocking_predict(addr)];
                started.wait();
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let v = blocking_predict(addr);
                    seen.push(v);
                }
                seen
            })
        })
        .collect();
    started.wait();
    for version in 2..=6 {
        testing::write_version(root, "m", version, (SIZE, ROIS), b"v");
        let r = live.reload().unwrap();
        assert_eq!(r.updated.len(), 1, "{r:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut all = Vec::new();
    for c in clients {
        let seen = c.join().expect("a client failed");
        // Each client sees versions only go up: no answer from a retired version after
        // a newer one answered.
        assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
        all.extend(seen);
    }
    assert!(all.contains(&1) && all.contains(&6), "{all:?}");
    server.stop(true).await;
}

/// One predict over a plain TCP connection (HTTP/1.1, closed after): the version that
/// answered; panics on anything but 200.
fn blocking_predict(addr: std::net::SocketAddr) -> u64 {
    use std::io::{Read, Write};
    let body = json!({"images": [png(4, 4, [1, 2, 3])]}).to_string();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST /v1/models/m/predict HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let json_start = out.find("\r\n\r\n").unwrap() + 4;
    let v: Value = serde_json::from_str(&out[json_start..]).unwrap();
    v["version"].as_u64().unwrap()
}

fn npy_req(path: &str, shape: &[usize], values: &[f32]) -> test::TestRequest {
    test::TestRequest::post()
        .uri(path)
        .insert_header(("content-type", "application/x-npy"))
        .set_payload(decode::write_npy(shape, values))
}

#[actix_web::test]
async fn wrong_methods_bad_headers_and_token_schemes() {
    let mut cfg = Config::defaults();
    cfg.api_key = Some("s3cret".into());
    let f = fixture(cfg, |_| {});
    let app = app!(f);
    // A wrong method is 405 with Allow, not 404.
    for (req, allow) in [
        (test::TestRequest::post().uri("/healthz"), "GET"),
        (test::TestRequest::delete().uri("/metrics"), "GET"),
        (
            test::TestRequest::get()
                .uri("/v1/models/fake-model/predict")
                .insert_header(("authorization", "Bearer s3cret")),
            "POST",
        ),
    ] {
        let resp = test::call_service(&app, req.to_request()).await;
        assert_eq!(resp.status(), 405);
        assert_eq!(resp.headers().get("allow").unwrap(), allow);
        let v: Value = serde_json::from_slice(&test::read_body(resp).await).unwrap();
        assert_eq!(v["kind"], "method_not_allowed", "{v}");
    }
    // The scheme is case-insensitive; the token is not.
    for (auth, status) in [
        ("bearer s3cret", 200),
        ("BEARER  s3cret ", 200),
        ("Bearer S3CRET", 401),
        ("Basic s3cret", 401),
        ("s3cret", 401),
    ] {
        let (s, _) = send!(
            &app,
            test::TestRequest::get()
                .uri("/v1/models")
                .insert_header(("authorization", auth))
        );
        assert_eq!(s, status, "{auth}");
    }
    // A Content-Length that is no number is a JSON 400.
    assert_error(
        &send!(
            &app,
            post_json("/v1/models/fake-model/predict", json!({"images": []}))
                .insert_header(("authorization", "Bearer s3cret"))
                .insert_header(("content-length", "abc"))
        ),
        400,
        "bad_header",
    );
    // The inference key does not administer: with no admin key, reload is refused.
    let reload = |auth: &'static str| {
        test::TestRequest::post()
            .uri("/v1/repository/reload")
            .insert_header(("authorization", auth))
    };
    assert_error(&send!(&app, reload("Bearer s3cret")), 403, "forbidden");
}

#[actix_web::test]
async fn administration_has_its_own_key_or_none() {
    let mut cfg = Config::defaults();
    cfg.api_key = Some("infer".into());
    cfg.admin_api_key = Some("admin".into());
    let f = fixture(cfg.clone(), |_| {});
    let app = app!(f);
    let reload = |auth: &'static str| {
        test::TestRequest::post()
            .uri("/v1/repository/reload")
            .insert_header(("authorization", auth))
    };
    assert_error(&send!(&app, reload("Bearer infer")), 401, "unauthorized");
    // The fixture's repository has no folder on disk: past auth, that is a 503.
    assert_error(
        &send!(&app, reload("Bearer admin")),
        503,
        "repository_unavailable",
    );
    cfg.disable_admin = true;
    let f = fixture(cfg, |_| {});
    let app = app!(f);
    assert_error(&send!(&app, reload("Bearer admin")), 403, "forbidden");
}

/// NaN, infinities and values outside the manifest's [0, 1] (an image normalized by
/// the client, say) once came back 200 with null predictions; they are 422 now, on
/// every route that takes numbers.
#[actix_web::test]
async fn non_finite_and_out_of_range_inputs_are_422() {
    let f = fixture(Config::defaults(), |_| {});
    let app = app!(f);
    let p = "/v1/models/fake-model/predict";
    for bad in [f32::NAN, f32::INFINITY, -2.1] {
        let mut px = vec![0.5; 192];
        px[7] = bad;
        let got = send!(&app, npy_req(p, &[1, 3, 8, 8], &px));
        assert_error(&got, 422, "out_of_range");
        assert!(
            got.1["error"].as_str().unwrap().contains("value 7"),
            "{}",
            got.1
        );
    }
    let all_nan = vec![f32::NAN; 192];
    assert_error(
        &send!(&app, npy_req(p, &[1, 3, 8, 8], &all_nan)),
        422,
        "out_of_range",
    );
    let infer = "/v2/models/fake-model/infer";
    let mut data = vec![json!(0.5); 192];
    data[3] = json!(1e39);
    let body = json!({"inputs": [{"name": "images", "shape": [1, 3, 8, 8], "datatype": "FP32", "data": data}]});
    assert_error(
        &send!(&app, test::TestRequest::post().uri(infer).set_json(body)),
        422,
        "out_of_range",
    );
    let (req, _) = kserve_binary(&[f32::INFINITY; 192], 192 * 4, 0);
    assert_error(&send!(&app, req), 422, "out_of_range");
}

/// A KServe binary-extension request: JSON header part, then the float32 bytes (and
/// `extra` bytes more), announcing `size` bytes.
fn kserve_binary(values: &[f32], size: i64, extra: usize) -> (test::TestRequest, usize) {
    let head = json!({"inputs": [{"name": "images", "shape": [values.len() / 192, 3, 8, 8], "datatype": "FP32",
                      "parameters": {"binary_data_size": size}}],
                      "outputs": [{"name": "roi_means", "parameters": {"binary_data": true}},
                                  {"name": "voxels", "parameters": {"binary_data": false}}]})
    .to_string();
    let mut body = head.clone().into_bytes();
    body.extend(values.iter().flat_map(|v| v.to_le_bytes()));
    body.extend(std::iter::repeat_n(0u8, extra));
    let req = test::TestRequest::post()
        .uri("/v2/models/fake-model/infer")
        .insert_header(("content-type", "application/octet-stream"))
        .insert_header(("inference-header-content-length", head.len().to_string()))
        .set_payload(body);
    (req, head.len())
}

#[actix_web::test]
async fn kserve_binary_tensor_extension() {
    let f = fixture(Config::defaults(), |_| {});
    let app = app!(f);
    let px: Vec<f32> = (0..2 * 192).map(|i| (i % 5) as f32 / 5.0).collect();
    let (req, _) = kserve_binary(&px, px.len() as i64 * 4, 0);
    let resp = test::call_service(&app, req.to_request()).await;
    assert_eq!(resp.status(), 200);
    let json_len: usize = resp
        .headers()
        .get("inference-header-content-length")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body = test::read_body(resp).await;
    let head: Value = serde_json::from_slice(&body[..json_len]).unwrap();
    let outs = head["outputs"].as_array().unwrap();
    assert_eq!(outs[0]["name"], "roi_means");
    assert_eq!(outs[0]["parameters"]["binary_data_size"], 2 * 4 * 4);
    assert_eq!(outs[1]["data"].as_array().unwrap().len(), 2 * 6);
    let blob: Vec<f32> = body[json_len..]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let want: Vec<f32> = [f.fake.expected(&px[..192]).1, f.fake.expected(&px[192..]).1].concat();
    assert_eq!(blob, want);

    // Bytes past binary_data_size were once ignored; a negative size got a misleading
    // message. Both are refused, saying what is wrong.
    let (req, _) = kserve_binary(&px, px.len() as i64 * 4, 8);
    let got = send!(&app, req);
    assert_error(&got, 422, "bad_tensor");
    assert!(
        got.1["error"].as_str().unwrap().contains("follow the JSON"),
        "{}",
        got.1
    );
    let (req, _) = kserve_binary(&px, -4, 0);
    let got = send!(&app, req);
    assert_error(&got, 422, "bad_tensor");
    assert!(
        got.1["error"].as_str().unwrap().contains("non-negative"),
        "{}",
        got.1
    );
    let (req, _) = kserve_binary(&px, 12, 0);
    assert_error(&send!(&app, req), 422, "bad_tensor");
    let over = test::TestRequest::post()
        .uri("/v2/models/fake-model/infer")
        .insert_header(("content-type", "application/octet-stream"))
        .insert_header(("inference-header-content-length", "9999"))
        .set_payload("{}");
    assert_error(&send!(&app, over), 400, "bad_header");
    let nan = test::TestRequest::post()
        .uri("/v2/models/fake-model/infer")
        .insert_header(("inference-header-content-length", "many"))
        .set_payload("{}");
    assert_error(&send!(&app, nan), 400, "bad_header");
}

#[actix_web::test]
async fn unknown_model_names_share_one_metrics_label() {
    let f = fixture(Config::defaults(), |_| {});
    let app = app!(f);
    for i in 0..50 {
        let (s, _) = send!(
            &app,
            post_json(
                &format!("/v1/models/ghost-{i}/predict"),
                json!({"images": []})
            )
        );
        assert_eq!(s, 404);
    }
    let text = (f.state.render_metrics)();
    assert!(!text.contains("ghost-"), "client names leaked into labels");
    assert!(
        text.lines().any(|l| l.starts_with("vcl_requests_total")
            && l.contains("model=\".unknown\"")
            && l.contains("status=\"404\"")),
        "{text}"
    );
}

/// actix-multipart 0.7.2 panics on this body (a one-character boundary, a lone
/// newline); the server answers 400 and keeps serving.
#[actix_web::test]
async fn a_form_that_panics_the_multipart_parser_is_a_400() {
    let f = fixture(Config::defaults(), |_| {});
    let app = app!(f);
    let req = test::TestRequest::post()
        .uri("/v1/models/fake-model/predict")
        .insert_header(("content-type", "multipart/form-data; boundary=b"))
        .set_payload("\n");
    assert_error(&send!(&app, req), 400, "bad_multipart");
    let (s, _) = send!(
        &app,
        post_json(
            "/v1/models/fake-model/predict",
            json!({"images": [png(4, 4, [1, 2, 3])]})
        )
    );
    assert_eq!(s, 200);
}
