//! What the benchmark examples share: a .npy loader that holds no second copy, and the
//! process's memory figures.

use anyhow::{Context, Result};
use tch::{Device, Kind, Tensor};

/// A little-endian float32 C-order 2-D .npy file, read in row blocks straight into the
/// tensor so that loading y does not hold a second copy of it (which would show up in
/// the peak memory this benchmark reports; `Tensor::read_npy` holds one).
pub fn load_f32_matrix(path: &std::path::Path) -> Result<Tensor> {
    use std::io::Read;
    let mut f = std::io::BufReader::new(
        std::fs::File::open(path).with_context(|| format!("{}", path.display()))?,
    );
    let mut pre = [0u8; 10];
    f.read_exact(&mut pre)?;
    anyhow::ensure!(
        &pre[..6] == b"\x93NUMPY" && pre[6] == 1,
        "{}: not a version-1 .npy",
        path.display()
    );
    let mut header = vec![0u8; u16::from_le_bytes([pre[8], pre[9]]) as usize];
    f.read_exact(&mut header)?;
    let header = String::from_utf8_lossy(&header);
    anyhow::ensure!(
        header.contains("'<f4'") && header.contains("'fortran_order': False"),
        "{}: expected C-order float32, header {header}",
        path.display()
    );
    let dims: Vec<i64> = header
        .split_once("'shape': (")
        .and_then(|(_, rest)| rest.split_once(')'))
        .map(|(inner, _)| {
            inner
                .split(',')
                .filter_map(|d| d.trim().parse().ok())
                .collect()
        })
        .unwrap_or_default();
    anyhow::ensure!(
        dims.len() == 2,
        "{}: expected a 2-D array, header {header}",
        path.display()
    );
    let (n, cols) = (dims[0], dims[1]);
    let out = Tensor::empty([n, cols], (Kind::Float, Device::Cpu));
    let rows = ((1 << 24) / cols.max(1)).max(1);
    let mut buf = Vec::new();
    for start in (0..n).step_by(rows as usize) {
        let len = rows.min(n - start);
        buf.resize((len * cols * 4) as usize, 0);
        f.read_exact(&mut buf)?;
        let block = Tensor::f_from_data_size(&buf, &[len, cols], Kind::Float)?;
        out.narrow(0, start, len).copy_(&block);
    }
    Ok(out)
}

/// A memory figure of this process from /proc/self/status (VmHWM: peak resident set,
/// VmRSS: current) in MB, 0 where /proc is unavailable.
pub fn proc_status_mb(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}
