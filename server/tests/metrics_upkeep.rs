//! The Prometheus exporter holds every histogram sample until it is drained: a server
//! nobody scrapes grew with every request (found by scripts/soak.sh). With the upkeep
//! thread, recording millions of samples leaves memory flat. Its own test binary, so
//! that the RSS figures are this test's alone.

use std::time::Duration;

fn rss_kb() -> u64 {
    let text = std::fs::read_to_string("/proc/self/status").unwrap();
    text.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn histogram_samples_do_not_accumulate() {
    let handle = vcl_server::metrics::prometheus_builder()
        .install_recorder()
        .unwrap();
    vcl_server::metrics::spawn_upkeep(handle.clone(), Duration::from_millis(20)).unwrap();
    // Warm the allocator and the label sets up first.
    for _ in 0..100_000 {
        vcl_server::metrics::request("m", "predict", 200, Duration::from_micros(3));
    }
    std::thread::sleep(Duration::from_millis(100));
    let before = rss_kb();
    // 4 million samples: 32 MB of raw f64s at the least, were they kept.
    for i in 0..2_000_000u64 {
        vcl_server::metrics::request("m", "predict", 200, Duration::from_micros(i % 5000));
        vcl_server::metrics::queue_time("m", Duration::from_micros(i % 700));
    }
    std::thread::sleep(Duration::from_millis(100));
    let grew = rss_kb().saturating_sub(before);
    eprintln!("4M histogram samples with upkeep: RSS grew {grew} kB");
    assert!(grew < 8 * 1024, "RSS grew {grew} kB");
    assert!(handle
        .render()
        .contains("vcl_request_duration_seconds_bucket"));
}
