//! Fault injection, on a model repository on disk served by fake backends that the
//! stand-in `model.onnx` bytes steer (`corrupt`, `fail`, `panic`, `flaky`, `short`):
//! for each fault, the status clients get and what readiness says.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use actix_web::{test, web, App};
use serde_json::{json, Value};
use vcl_server::http::{configure, AppState};
use vcl_server::repository::Live;
use vcl_server::{testing, Config};

const SIZE: u32 = 8;
const ROIS: &[(&str, usize)] = &[("R", 1), ("G", 1), ("B", 1)];

fn render() -> Arc<dyn Fn() -> String + Send + Sync> {
    static H: OnceLock<metrics_exporter_prometheus::PrometheusHandle> = OnceLock::new();
    let h = H.get_or_init(|| {
        let h = vcl_server::metrics::prometheus_builder()
            .install_recorder()
            .unwrap();
        vcl_server::metrics::describe();
        h
    });
    Arc::new(move || h.render())
}

fn serve(root: &std::path::Path) -> (Arc<Live>, web::Data<AppState>) {
    let mut cfg = Config::defaults();
    cfg.model_repository = root.to_path_buf();
    let live = Arc::new(Live::load(&cfg, testing::fake_opener()).unwrap());
    let state = web::Data::new(AppState::new(live.clone(), Arc::new(cfg), render()));
    (live, state)
}

macro_rules! send {
    ($app:expr, $req:expr) => {{
        let resp = test::call_service($app, $req.to_request()).await;
        let status = resp.status().as_u16();
        let body = test::read_body(resp).await;
        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        (status, v)
    }};
}

fn predict(model: &str) -> test::TestRequest {
    let body = vcl_server::decode::write_npy(&[1, 3, 8, 8], &[0.5; 192]);
    test::TestRequest::post()
        .uri(&format!("/v1/models/{model}/predict"))
        .insert_header(("content-type", "application/x-npy"))
        .set_payload(body)
}

fn get(uri: &str) -> test::TestRequest {
    test::TestRequest::get().uri(uri)
}

/// A restart used to refuse a model whose newest version was corrupt while readiness
/// said ready; it now serves the newest version that loads, as a reload does, and
/// readiness names what failed.
#[actix_web::test]
async fn start_up_serves_the_newest_version_that_loads_and_readiness_names_failures() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    testing::write_version(root, "a", 1, (SIZE, ROIS), b"v1");
    testing::write_version(root, "a", 2, (SIZE, ROIS), b"v2");
    testing::write_version(root, "a", 3, (SIZE, ROIS), b"corrupt");
    // A version whose model file changed after export: the checksum refuses it.
    let v4 = testing::write_version(root, "a", 4, (SIZE, ROIS), b"v4");
    std::fs::write(v4.join("model.onnx"), b"v4, edited").unwrap();
    testing::write_version(root, "warm-fails", 1, (SIZE, ROIS), b"fail");
    let (_live, state) = serve(root);
    let app = test::init_service(App::new().configure(configure(state))).await;
    let (s, v) = send!(&app, get("/v1/models/a"));
    assert_eq!((s, v["version"].clone()), (200, json!(2)), "{v}");
    assert_eq!(send!(&app, predict("a")).0, 200);
    let (s, ready) = send!(&app, get("/readyz"));
    eprintln!("readiness: {ready}");
    assert_eq!(s, 503, "warm-fails serves nothing: {ready}");
    let a = ready["failed"]["a"].as_str().unwrap();
    assert!(a.contains("version 4") && a.contains("SHA-256"), "{a}");
    assert!(
        a.contains("version 3") && a.contains("not an ONNX model"),
        "{a}"
    );
    assert!(
        ready["failed"]["warm-fails"]
            .as_str()
            .unwrap()
            .contains("warm-up"),
        "{ready}"
    );
    assert_eq!(ready["unserved"], json!(["warm-fails"]));
    let (s, kserve) = send!(&app, get("/v2/health/ready"));
    assert_eq!(
        (s, kserve["unserved"].clone()),
        (503, json!(["warm-fails"]))
    );
    assert_eq!(send!(&app, predict("warm-fails")).0, 404);

    // Lenient readiness: ready while some model serves, failures still listed.
    let mut cfg = Config::defaults();
    cfg.model_repository = root.to_path_buf();
    cfg.strict_readiness = false;
    let live = Arc::new(Live::load(&cfg, testing::fake_opener()).unwrap());
    let state = web::Data::new(AppState::new(live, Arc::new(cfg), render()));
    let app = test::init_service(App::new().configure(configure(state))).await;
    let (s, ready) = send!(&app, get("/readyz"));
    assert_eq!(s, 200, "{ready}");
    assert!(ready["failed"]["warm-fails"].is_string(), "{ready}");
}

#[actix_web::test]
async fn deleted_models_and_a_deleted_repository() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("repo");
    testing::write_version(&root, "a", 1, (SIZE, ROIS), b"v1");
    testing::write_version(&root, "b", 1, (SIZE, ROIS), b"v1");
    let (live, state) = serve(&root);
    let app = test::init_service(App::new().configure(configure(state))).await;

    std::fs::remove_dir_all(root.join("b")).unwrap();
    let (s, report) = send!(&app, test::TestRequest::post().uri("/v1/repository/reload"));
    assert_eq!(
        (s, report["removed"].clone()),
        (200, json!(["b"])),
        "{report}"
    );
    assert_eq!(send!(&app, predict("b")).0, 404);

    // The whole repository folder gone: reload is 503 (not 500), and what served
    // before serves on.
    std::fs::remove_dir_all(&root).unwrap();
    let (s, e) = send!(&app, test::TestRequest::post().uri("/v1/repository/reload"));
    assert_eq!(
        (s, e["kind"].clone()),
        (503, json!("repository_unavailable")),
        "{e}"
    );
    assert!(e["error"].as_str().unwrap().contains("repo"), "{e}");
    assert_eq!(send!(&app, predict("a")).0, 200);
    assert!(live.reload().is_err());
    assert_eq!(send!(&app, get("/readyz")).0, 200);
}

/// A backend that panics, one whose session keeps failing and one that returns too
/// few values: clients get 500 (never a hang), the batcher survives, readiness turns
/// 503 naming the model and why, and a reload (what the watcher does every few
/// seconds) reopens it.
#[actix_web::test]
async fn failing_backends_are_reported_and_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    testing::write_version(root, "ok", 1, (SIZE, ROIS), b"v1");
    testing::write_version(root, "panics", 1, (SIZE, ROIS), b"panic");
    testing::write_version(root, "flaky", 1, (SIZE, ROIS), b"flaky");
    testing::write_version(root, "short", 1, (SIZE, ROIS), b"short");
    let (live, state) = serve(root);
    let app = test::init_service(App::new().configure(configure(state))).await;
    assert_eq!(send!(&app, get("/readyz")).0, 200);

    let (s, e) = send!(&app, predict("panics"));
    assert_eq!((s, e["kind"].clone()), (500, json!("inference")), "{e}");
    assert!(e["error"].as_str().unwrap().contains("panicked"), "{e}");
    // Marked failed: later requests are 503 at once, not queued behind a dead thread.
    let (s, e) = send!(&app, predict("panics"));
    assert_eq!((s, e["kind"].clone()), (503, json!("not_ready")), "{e}");

    for _ in 0..vcl_server::backend::MAX_CONSECUTIVE_FAILURES {
        assert_eq!(send!(&app, predict("flaky")).0, 500);
    }
    assert_eq!(send!(&app, predict("flaky")).0, 503);

    let (s, e) = send!(&app, predict("short"));
    assert_eq!(s, 500, "{e}");
    assert!(e["error"].as_str().unwrap().contains("expected"), "{e}");
    assert_eq!(send!(&app, predict("ok")).0, 200, "other models unaffected");

    let (s, ready) = send!(&app, get("/readyz"));
    eprintln!("readiness with broken backends: {ready}");
    assert_eq!(s, 503);
    assert_eq!(ready["models"]["panics"], false);
    assert!(ready["failed"]["panics"]
        .as_str()
        .unwrap()
        .contains("panicked"));
    assert!(ready["failed"]["flaky"]
        .as_str()
        .unwrap()
        .contains("in a row"));
    assert!(live.has_failed_model());
    let text = (render())();
    assert!(
        text.lines()
            .any(|l| l.starts_with("vcl_backend_failures_total")
                && l.contains("model=\"panics\"")
                && l.contains("reason=\"panic\"")),
        "{text}"
    );

    // Every queued image was answered, the failed ones too: the queue gauges are 0.
    for m in ["ok", "panics", "flaky", "short"] {
        assert!(
            text.lines()
                .any(|l| l == format!("vcl_queue_depth{{model=\"{m}\"}} 0")),
            "{m}: {text}"
        );
    }

    let report = live.reload().unwrap();
    assert_eq!(report.reopened, ["flaky", "panics"], "{report:?}");
    assert_eq!(report.updated.len(), 0, "{report:?}");
    assert!(
        report.kept.contains(&"ok".to_string()) && report.added.is_empty(),
        "{report:?}"
    );
    assert!(!live.has_failed_model());
    let (s, ready) = send!(&app, get("/readyz"));
    assert_eq!(s, 200, "reopened: {ready}");
    // The reopened panicking backend serves its warm-up, then panics again: the
    // watcher would reopen it again, never leaving it silently dead.
    assert_eq!(send!(&app, predict("panics")).0, 500);
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(live.has_failed_model());
}
