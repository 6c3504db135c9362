//! A closed-loop HTTP load generator with no dependencies beyond std: `--concurrency`
//! keep-alive connections, each sending the same POST and waiting for its answer, for
//! `--seconds`. Prints one JSON line with the fields `scripts/bench_serve.sh` reads from
//! wrk (requests, seconds, p50_ms, p99_ms, non_2xx, socket_errors), so the device check
//! measures serving where wrk is not installed (the lent GPU machine).
//!
//! cargo run --release -p vcl-server --example load -- --url http://127.0.0.1:8080/v1/models/M/predict \
//!   --body one.npy --content-type application/x-npy --concurrency 8 --seconds 10

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;

#[derive(Parser, Debug)]
struct Args {
    /// http://HOST:PORT/PATH (plain HTTP/1.1).
    #[arg(long)]
    url: String,
    /// The request body, sent as is.
    #[arg(long)]
    body: std::path::PathBuf,
    #[arg(long, default_value = "application/x-npy")]
    content_type: String,
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
}

#[derive(Default)]
struct Tally {
    latencies_us: Vec<u64>,
    non_2xx: u64,
    socket_errors: u64,
}

/// (host:port, path) of a plain http:// URL.
fn split_url(url: &str) -> Result<(String, String)> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("--url {url}: only http:// URLs are supported"))?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    Ok((host.to_string(), format!("/{path}")))
}

/// Reads one response; returns its status code. The body is read by Content-Length
/// (vcl-serve always sends one) and dropped.
fn read_response(reader: &mut BufReader<TcpStream>) -> Result<u16> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {line:?}"))?;
    let mut length = 0usize;
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            bail!("connection closed in the headers");
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().context("bad content-length")?;
            }
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body)?;
    Ok(status)
}

fn worker(host: &str, request: &[u8], deadline: Instant) -> Tally {
    let mut tally = Tally::default();
    let mut conn: Option<(TcpStream, BufReader<TcpStream>)> = None;
    while Instant::now() < deadline {
        if conn.is_none() {
            match TcpStream::connect(host).and_then(|s| {
                s.set_nodelay(true)?;
                s.set_read_timeout(Some(Duration::from_secs(30)))?;
                let r = BufReader::new(s.try_clone()?);
                Ok((s, r))
            }) {
                Ok(c) => conn = Some(c),
                Err(_) => {
                    tally.socket_errors += 1;
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            }
        }
        let Some((stream, reader)) = conn.as_mut() else {
            continue;
        };
        let t0 = Instant::now();
        let outcome = stream
            .write_all(request)
            .map_err(anyhow::Error::from)
            .and_then(|()| read_response(reader));
        match outcome {
            Ok(status) => {
                tally.latencies_us.push(t0.elapsed().as_micros() as u64);
                if !(200..300).contains(&status) {
                    tally.non_2xx += 1;
                }
            }
            Err(_) => {
                tally.socket_errors += 1;
                conn = None;
            }
        }
    }
    tally
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1e3
}

fn main() -> Result<()> {
    let a = Args::parse();
    let (host, path) = split_url(&a.url)?;
    let body = std::fs::read(&a.body).with_context(|| format!("{}", a.body.display()))?;
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: {}\r\naccept: application/x-npy\r\ncontent-length: {}\r\n\r\n",
        a.content_type,
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(a.seconds);
    let tallies: Vec<Tally> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..a.concurrency.max(1))
            .map(|_| s.spawn(|| worker(&host, &request, deadline)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let seconds = started.elapsed().as_secs_f64();
    let mut lat: Vec<u64> = tallies
        .iter()
        .flat_map(|t| t.latencies_us.iter().copied())
        .collect();
    lat.sort_unstable();
    println!(
        "{}",
        serde_json::json!({
            "requests": lat.len(),
            "seconds": seconds,
            "p50_ms": percentile(&lat, 50.0),
            "p99_ms": percentile(&lat, 99.0),
            "non_2xx": tallies.iter().map(|t| t.non_2xx).sum::<u64>(),
            "socket_errors": tallies.iter().map(|t| t.socket_errors).sum::<u64>(),
        })
    );
    Ok(())
}
