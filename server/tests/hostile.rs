//! Hostile clients against a real server on a TCP port (fake backend): the
//! decompression bomb, a request whose decoding outlives its deadline, 2,000 unknown
//! model names, slow and lying bodies, and a server-wide body budget. Each prints its
//! figures (`--nocapture`). One test, so that the memory figures of this process are
//! its alone.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vcl_server::http::{start_background, AppState};
use vcl_server::repository::Live;
use vcl_server::{testing, Config};

/// kB fields of /proc/self/status (VmRSS, VmSize, ...).
fn status_kb(field: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/self/status").unwrap();
    text.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

/// One request on its own connection (`Connection: close`): (status, body).
fn http(addr: SocketAddr, head: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let req = format!(
        "{head}\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let status = std::str::from_utf8(&out[9..12]).unwrap().parse().unwrap();
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(out.len(), |i| i + 4);
    (status, out[split..].to_vec())
}

/// Requests on one kept-alive connection: (status, body) each.
struct KeepAlive(std::io::BufReader<TcpStream>);

impl KeepAlive {
    fn new(addr: SocketAddr) -> Self {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        KeepAlive(std::io::BufReader::new(s))
    }

    fn send(&mut self, head: &str, body: &[u8]) -> (u16, Vec<u8>) {
        use std::io::BufRead;
        let req = format!(
            "{head}\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let s = self.0.get_mut();
        s.write_all(req.as_bytes()).unwrap();
        s.write_all(body).unwrap();
        let mut line = String::new();
        self.0.read_line(&mut line).unwrap();
        let status = line[9..12].parse().unwrap();
        let mut len = 0;
        loop {
            line.clear();
            self.0.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
        }
        let mut out = vec![0; len];
        self.0.read_exact(&mut out).unwrap();
        (status, out)
    }
}

const BOUNDARY: &str = "hostile-boundary";

fn multipart(files: &[&[u8]]) -> Vec<u8> {
    let mut body = Vec::new();
    for f in files {
        body.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\ncontent-disposition: form-data; name=\"images\"; \
                 filename=\"x.png\"\r\ncontent-type: image/png\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(f);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

fn post_files(addr: SocketAddr, files: &[&[u8]]) -> (u16, Vec<u8>) {
    http(
        addr,
        &format!(
            "POST /v1/models/m/predict HTTP/1.1\r\nContent-Type: multipart/form-data; \
             boundary={BOUNDARY}"
        ),
        &multipart(files),
    )
}

fn kind(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .map(|v| v["kind"].as_str().unwrap_or("").to_string())
        .unwrap_or_else(|_| String::from_utf8_lossy(body).into_owned())
}

fn server(tweak: impl FnOnce(&mut Config)) -> (SocketAddr, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    testing::write_version(
        dir.path(),
        "m",
        1,
        (8, &[("R", 1), ("G", 1), ("B", 1)]),
        b"v1",
    );
    let mut cfg = Config::defaults();
    cfg.model_repository = dir.path().to_path_buf();
    tweak(&mut cfg);
    let live = Arc::new(Live::load(&cfg, testing::fake_opener()).unwrap());
    let handle = metrics_handle();
    let state = AppState::new(live, Arc::new(cfg), Arc::new(move || handle.render()));
    let (addr, _server) = start_background(state, "127.0.0.1", 0).unwrap();
    (addr, dir)
}

fn metrics_handle() -> &'static metrics_exporter_prometheus::PrometheusHandle {
    static H: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    H.get_or_init(|| {
        let h = vcl_server::metrics::prometheus_builder()
            .install_recorder()
            .unwrap();
        vcl_server::metrics::describe();
        h
    })
}

/// Samples this process's RSS every 5 ms while `work` runs: (result, peak MB).
fn peak_rss<T>(work: impl FnOnce() -> T) -> (T, f64) {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s = stop.clone();
    let sampler = std::thread::spawn(move || {
        let mut peak = 0;
        while !s.load(std::sync::atomic::Ordering::Relaxed) {
            peak = peak.max(status_kb("VmRSS:"));
            std::thread::sleep(Duration::from_millis(5));
        }
        peak
    });
    let out = work();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    (out, mb(sampler.join().unwrap()))
}

#[test]
fn hostile_clients_get_bounded_answers() {
    let (addr, _dir) = server(|c| {
        c.client_timeout_ms = 500;
        c.body_timeout_ms = 3_000;
        c.decode_threads = 2;
    });
    // The deadline section's server: requests have 400 ms.
    let (hurried, _dir2) = server(|c| {
        c.request_timeout_ms = 400;
        c.decode_threads = 2;
    });

    // 1. Six decompression bombs at once: 422 from the header, no 512 MiB decodes.
    let bomb = testing::png_bomb(8192);
    let before = mb(status_kb("VmRSS:"));
    let t = Instant::now();
    let (answers, peak) = peak_rss(|| {
        let threads: Vec<_> = (0..6)
            .map(|_| {
                let bomb = bomb.clone();
                std::thread::spawn(move || post_files(addr, &[&bomb]))
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect::<Vec<_>>()
    });
    eprintln!(
        "bombs: 6 x {} KB PNG of 8192x8192 RGBA16 -> {:?} in {:.0} ms; RSS {before:.0} -> peak {peak:.0} MB",
        bomb.len() / 1024,
        answers.iter().map(|(s, b)| (*s, kind(b))).collect::<Vec<_>>(),
        t.elapsed().as_secs_f64() * 1e3,
    );
    for (s, b) in &answers {
        assert_eq!((*s, kind(b).as_str()), (422, "image_too_large"));
    }
    assert!(peak - before < 150.0, "RSS grew {:.0} MB", peak - before);

    // 2. Decoding counts against the deadline: 32 large (legal) images take longer to
    //    decode than the 400 ms the request has; the answer is 503 at the deadline.
    let big = {
        let img = image::RgbImage::new(3000, 3000);
        let mut b = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut b), image::ImageFormat::Png)
            .unwrap();
        b
    };
    // What one such image costs to decode, measured here (a served request of one
    // could itself pass 400 ms on a loaded machine).
    let t = Instant::now();
    let pre = vcl_server::decode::Preprocess::of(&vcl_contract::manifest::InputSpec::rgb_square(8));
    let limits = vcl_server::decode::ImageLimits {
        max_side: 8192,
        max_pixels: 4096 * 4096,
    };
    vcl_server::decode::files_to_pixels(&[&big], &pre, limits, None).unwrap();
    let one = t.elapsed();
    let files: Vec<&[u8]> = (0..32).map(|_| &big[..]).collect();
    let t = Instant::now();
    let (s, b) = post_files(hurried, &files);
    let took = t.elapsed();
    eprintln!(
        "deadline: one 3000x3000 image {:.0} ms; 32 of them with a 400 ms deadline -> {s} {} after {:.0} ms",
        one.as_secs_f64() * 1e3,
        kind(&b),
        took.as_secs_f64() * 1e3
    );
    assert_eq!((s, kind(&b).as_str()), (503, "timeout"));
    assert!(took < one * 16, "{took:?} vs one image {one:?}");

    // 3. 2,000 unknown model names: the metrics stay the same size.
    let metrics_len = || http(addr, "GET /metrics HTTP/1.1", b"").1.len();
    let (_, _) = http(addr, "POST /v1/models/nope-0/predict HTTP/1.1", b"{}");
    let before = metrics_len();
    let mut conn = KeepAlive::new(addr);
    for i in 0..2000 {
        let (s, _) = conn.send(
            &format!("POST /v1/models/nope-{i}/predict HTTP/1.1\r\nContent-Type: application/json"),
            // No body: a 404 answered before a body is read closes the connection.
            b"",
        );
        assert_eq!(s, 404);
    }
    let after = metrics_len();
    eprintln!("unknown names: 2000 requests, /metrics {before} -> {after} bytes");
    assert!(
        after < before + 2048,
        "/metrics grew from {before} to {after} bytes"
    );

    // 4. A slow body: 10 of 1000 announced bytes, then silence. 408, then closed.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let t = Instant::now();
    s.write_all(
        b"POST /v1/models/m/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
          Content-Length: 1000\r\n\r\n{\"images\":",
    )
    .unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let closed = t.elapsed();
    let text = String::from_utf8_lossy(&out).to_string();
    eprintln!(
        "slow body: answered {:?} and closed after {:.2} s",
        text.lines().next(),
        closed.as_secs_f64()
    );
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("body_timeout"), "{text}");
    assert!(closed < Duration::from_secs(3), "{closed:?}");

    // 5. Fifty liars announce 256 MiB each and send ten bytes: nothing is reserved on
    //    their word (this once reserved 12.5 GB of address space), and all are closed.
    let (rss0, vm0) = (status_kb("VmRSS:"), status_kb("VmSize:"));
    let liars: Vec<TcpStream> = (0..50)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            s.write_all(
                b"POST /v1/models/m/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-npy\r\n\
                  Content-Length: 268435456\r\n\r\n\x93NUMPY\x01\x00\x76\x00",
            )
            .unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let (rss1, vm1) = (status_kb("VmRSS:"), status_kb("VmSize:"));
    eprintln!(
        "liars: 50 x 256 MiB announced: RSS {:.0} -> {:.0} MB, address space {:.0} -> {:.0} MB",
        mb(rss0),
        mb(rss1),
        mb(vm0),
        mb(vm1)
    );
    assert!(
        vm1 < vm0 + 1024 * 1024,
        "address space grew {} kB",
        vm1 - vm0
    );
    assert!(rss1 < rss0 + 64 * 1024, "RSS grew {} kB", rss1 - rss0);
    let t = Instant::now();
    for mut s in liars {
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        assert!(
            out.starts_with(b"HTTP/1.1 408"),
            "{}",
            String::from_utf8_lossy(&out)
        );
    }
    eprintln!(
        "liars: all 50 answered 408 and closed within {:.2} s",
        t.elapsed().as_secs_f64()
    );
    // 6. A Content-Length that is no number: actix's HTTP parser answers it before any
    //    handler runs, with a 400 that has no body, and closes the connection (the
    //    one error not in JSON; a value that reaches the handlers gets a JSON 400,
    //    tests/http_fake.rs).
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"POST /v1/models/m/predict HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n")
        .unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    eprintln!("Content-Length: abc -> {:?}", text.lines().next());
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");

    // The server still serves.
    let px = vcl_server::decode::write_npy(&[1, 3, 8, 8], &[0.5; 192]);
    let (s, _) = http(
        addr,
        "POST /v1/models/m/predict HTTP/1.1\r\nContent-Type: application/x-npy",
        &px,
    );
    assert_eq!(s, 200);
}

/// Bodies held at once are bounded server-wide: while one client holds most of the
/// budget, another's bytes get 429 (retry later), counted as they arrive.
#[test]
fn the_body_budget_is_server_wide() {
    let (addr, _dir) = server(|c| {
        c.max_body_bytes = 1 << 20;
        c.max_inflight_body_bytes = 1 << 20;
        c.client_timeout_ms = 2_000;
    });
    let mut hog = TcpStream::connect(addr).unwrap();
    hog.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    hog.write_all(
        b"POST /v1/models/m/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
          Content-Length: 1000000\r\n\r\n",
    )
    .unwrap();
    hog.write_all(&vec![b' '; 900_000]).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let (s, b) = http(
        addr,
        "POST /v1/models/m/predict HTTP/1.1\r\nContent-Type: application/json",
        &vec![b' '; 200_000],
    );
    eprintln!(
        "budget: a second body while 900 KB of 1 MiB are held -> {s} {}",
        kind(&b)
    );
    assert_eq!((s, kind(&b).as_str()), (429, "busy"));
    drop(hog);
    std::thread::sleep(Duration::from_millis(200));
    let (s, b) = http(
        addr,
        "POST /v1/models/m/predict HTTP/1.1\r\nContent-Type: application/json",
        br#"{"images": []}"#,
    );
    assert_eq!(
        (s, kind(&b).as_str()),
        (400, "empty_batch"),
        "budget released"
    );
}
