//! Early visual cortex (V1v..hV4): population receptive fields over Gabor energy.
//!
//! Per image, a luminance pyramid (64, 32, 16, 8 px) is filtered once by quadrature
//! Gabor pairs at four orientations (first-order energy: complex cells), and the
//! rectified energy maps are filtered again by the same bank one level down
//! (second-order energy, "energy of energy": texture-like, as V2 and beyond). Every
//! vertex then only pools those shared maps inside its pRF, so the per-vertex cost is
//! a short weighted sum.

use image::imageops::{self, FilterType};
use image::RgbImage;
use serde::{Deserialize, Serialize};

/// Side of the luminance grid the early model sees.
pub const GRID: usize = 64;
/// Pyramid levels: 64, 32, 16 and 8 px.
pub const LEVELS: usize = 4;
/// Gabor orientations, evenly spaced over 180 degrees.
pub const N_ORI: usize = 4;
/// Visual angle the image subtends (NSD: 8.4 degrees), fixation at its centre.
pub const FIELD_DEG: f64 = 8.4;
/// Gabor carrier wavelength and envelope sd, in pixels of the level they act on.
pub const GABOR_WAVELENGTH: f64 = 4.0;
pub const GABOR_SIGMA: f64 = 1.7;
const GABOR_RADIUS: usize = 4;
const N_ORI2: usize = N_ORI * N_ORI;

/// Early visual areas; the v/d split is a matter of visual field, not of computation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Area {
    V1,
    V2,
    V3,
    #[serde(rename = "hV4")]
    HV4,
}

/// The generator's rules for one early area.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct AreaRule {
    pub area: Area,
    /// pRF size (Gaussian sd, degrees) = intercept + slope * eccentricity.
    pub sigma_intercept: f64,
    pub sigma_slope: f64,
    /// Compressive spatial summation exponent (CSS model, Kay et al. 2013).
    pub exponent: f64,
    /// Share of first-order energy in the drive; the rest is second-order.
    pub first_order_share: f64,
    /// Von Mises concentration of orientation tuning (on doubled angles).
    pub orientation_kappa: f64,
    /// Spatial-frequency tuning width, in octaves (pyramid levels).
    pub sf_bandwidth: f64,
}

pub const AREA_RULES: [AreaRule; 4] = [
    AreaRule {
        area: Area::V1,
        sigma_intercept: 0.20,
        sigma_slope: 0.10,
        exponent: 0.50,
        first_order_share: 1.0,
        orientation_kappa: 1.5,
        sf_bandwidth: 0.5,
    },
    AreaRule {
        area: Area::V2,
        sigma_intercept: 0.30,
        sigma_slope: 0.15,
        exponent: 0.42,
        first_order_share: 0.5,
        orientation_kappa: 1.0,
        sf_bandwidth: 0.7,
    },
    AreaRule {
        area: Area::V3,
        sigma_intercept: 0.40,
        sigma_slope: 0.22,
        exponent: 0.36,
        first_order_share: 0.3,
        orientation_kappa: 0.7,
        sf_bandwidth: 0.8,
    },
    AreaRule {
        area: Area::HV4,
        sigma_intercept: 0.60,
        sigma_slope: 0.35,
        exponent: 0.30,
        first_order_share: 0.15,
        orientation_kappa: 0.5,
        sf_bandwidth: 1.0,
    },
];

impl Area {
    pub fn rule(self) -> &'static AreaRule {
        match self {
            Area::V1 => &AREA_RULES[0],
            Area::V2 => &AREA_RULES[1],
            Area::V3 => &AREA_RULES[2],
            Area::HV4 => &AREA_RULES[3],
        }
    }
}

/// A vertex's population receptive field and its feature preferences.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Prf {
    pub area: Area,
    /// Centre in degrees of visual angle from fixation: x rightwards, y upwards.
    pub x_deg: f32,
    pub y_deg: f32,
    /// Gaussian sd in degrees.
    pub sigma_deg: f32,
    /// Preferred orientation: angle of the Gabor's wave vector in image coordinates
    /// (x rightwards, y downwards), radians in [0, pi). 0 = vertical stripes.
    pub orientation: f32,
    /// Preferred pyramid level of the first-order carrier (0 = finest, 64 px grid);
    /// the carrier's wavelength is 4 * 2^level pixels of the 64 px grid.
    pub sf_level: f32,
    /// Preferred orientation of the second-order (envelope) stage.
    pub orientation2: f32,
    /// Compressive exponent.
    pub exponent: f32,
}

impl Prf {
    /// Centre in normalized image coordinates: (column, row) in [0, 1], row 0 at the top.
    pub fn centre_norm(&self) -> (f32, f32) {
        let f = FIELD_DEG as f32;
        (self.x_deg / f + 0.5, 0.5 - self.y_deg / f)
    }
    /// sd as a fraction of the image side.
    pub fn sigma_norm(&self) -> f32 {
        self.sigma_deg / FIELD_DEG as f32
    }
    pub fn eccentricity(&self) -> f32 {
        self.x_deg.hypot(self.y_deg)
    }
    /// Preferred spatial frequency of the first-order carrier, cycles per degree.
    pub fn sf_cpd(&self) -> f32 {
        let px_per_deg = GRID as f64 / FIELD_DEG;
        (px_per_deg / (GABOR_WAVELENGTH * 2f64.powf(self.sf_level as f64))) as f32
    }
}

/// Side of pyramid level `l`.
pub fn level_side(l: usize) -> usize {
    GRID >> l
}

/// Pixel offset of level `l` inside the concatenated first-order maps.
fn e1_offset(l: usize) -> usize {
    (0..l).map(|k| level_side(k) * level_side(k)).sum()
}

/// Pixel offset of level `m` (1..LEVELS) inside the concatenated second-order maps.
fn e2_offset(m: usize) -> usize {
    (1..m).map(|k| level_side(k) * level_side(k)).sum()
}

/// One image's energy maps, channel-interleaved so that a pRF tap reads adjacent floats.
pub struct EnergyMaps {
    /// Levels 0..LEVELS, [pixel][orientation].
    pub e1: Vec<f32>,
    /// Levels 1..LEVELS, [pixel][first orientation * N_ORI + second orientation].
    pub e2: Vec<f32>,
}

/// The fixed filter bank and the normalization constants of its maps.
pub struct EarlyBank {
    even: [Vec<f32>; N_ORI],
    odd: [Vec<f32>; N_ORI],
    c1: [f32; LEVELS],
    c2: [f32; LEVELS],
}

fn gabor_pair(theta: f64, wavelength: f64, sigma: f64, radius: usize) -> (Vec<f32>, Vec<f32>) {
    let k = 2 * radius + 1;
    let (c, s) = (theta.cos(), theta.sin());
    let w = 2.0 * std::f64::consts::PI / wavelength;
    let mut env = vec![0f64; k * k];
    let mut ev = vec![0f64; k * k];
    let mut od = vec![0f64; k * k];
    for y in 0..k {
        for x in 0..k {
            let (dx, dy) = (x as f64 - radius as f64, y as f64 - radius as f64);
            let g = (-(dx * dx + dy * dy) / (2.0 * sigma * sigma)).exp();
            let arg = w * (dx * c + dy * s);
            env[y * k + x] = g;
            ev[y * k + x] = g * arg.cos();
            od[y * k + x] = g * arg.sin();
        }
    }
    let env_sum: f64 = env.iter().sum();
    // A Gabor's even part has a DC response; remove it so that uniform luminance
    // gives no energy (complex cells ignore mean light).
    let dc = ev.iter().sum::<f64>() / env_sum;
    // Unit energy for a unit-amplitude grating at the preferred orientation.
    let gain = 2.0 / env_sum;
    let even = ev
        .iter()
        .zip(&env)
        .map(|(e, g)| ((e - dc * g) * gain) as f32)
        .collect();
    let odd = od.iter().map(|o| (o * gain) as f32).collect();
    (even, odd)
}

/// Replicates edge pixels, so that the image border is not an edge.
fn pad_clamp(img: &[f32], n: usize, r: usize) -> Vec<f32> {
    let m = n + 2 * r;
    let mut out = vec![0f32; m * m];
    for y in 0..m {
        let sy = (y as isize - r as isize).clamp(0, n as isize - 1) as usize;
        for x in 0..m {
            let sx = (x as isize - r as isize).clamp(0, n as isize - 1) as usize;
            out[y * m + x] = img[sy * n + sx];
        }
    }
    out
}

/// sqrt(even^2 + odd^2) of an n x n map.
fn quad_energy(img: &[f32], n: usize, even: &[f32], odd: &[f32]) -> Vec<f32> {
    let r = GABOR_RADIUS;
    let k = 2 * r + 1;
    let m = n + 2 * r;
    let p = pad_clamp(img, n, r);
    let mut ev = vec![0f32; n * n];
    let mut od = vec![0f32; n * n];
    for ky in 0..k {
        for kx in 0..k {
            let (we, wo) = (even[ky * k + kx], odd[ky * k + kx]);
            for y in 0..n {
                let src = &p[(y + ky) * m + kx..(y + ky) * m + kx + n];
                let de = &mut ev[y * n..(y + 1) * n];
                for (d, s) in de.iter_mut().zip(src) {
                    *d += we * s;
                }
                let dd = &mut od[y * n..(y + 1) * n];
                for (d, s) in dd.iter_mut().zip(src) {
                    *d += wo * s;
                }
            }
        }
    }
    ev.iter()
        .zip(&od)
        .map(|(e, o)| (e * e + o * o).sqrt())
        .collect()
}

/// Binomial blur and decimation by 2 (one pyramid step).
pub(crate) fn reduce(img: &[f32], n: usize) -> Vec<f32> {
    const B: [f32; 5] = [1.0 / 16.0, 4.0 / 16.0, 6.0 / 16.0, 4.0 / 16.0, 1.0 / 16.0];
    let h = n / 2;
    let at = |i: isize| i.clamp(0, n as isize - 1) as usize;
    let mut rows = vec![0f32; n * h];
    for y in 0..n {
        for x in 0..h {
            let mut s = 0.0;
            for (i, b) in B.iter().enumerate() {
                s += b * img[y * n + at(2 * x as isize + i as isize - 2)];
            }
            rows[y * h + x] = s;
        }
    }
    let mut out = vec![0f32; h * h];
    for y in 0..h {
        for x in 0..h {
            let mut s = 0.0;
            for (i, b) in B.iter().enumerate() {
                s += b * rows[at(2 * y as isize + i as isize - 2) * h + x];
            }
            out[y * h + x] = s;
        }
    }
    out
}

/// An image at the model's grid: resized (Triangle filter) unless it is already GRID px.
pub fn to_grid(img: &RgbImage) -> RgbImage {
    if img.dimensions() == (GRID as u32, GRID as u32) {
        img.clone()
    } else {
        imageops::resize(img, GRID as u32, GRID as u32, FilterType::Triangle)
    }
}

/// Luminance in [0, 1] of a GRID x GRID image.
pub fn luminance(img: &RgbImage) -> Vec<f32> {
    img.pixels()
        .map(|p| (0.299 * p[0] as f32 + 0.587 * p[1] as f32 + 0.114 * p[2] as f32) / 255.0)
        .collect()
}

impl EarlyBank {
    /// The filter bank, with map normalizations measured on `calibration` luminance
    /// grids (natural-like images), so that pRF drives of all levels are commensurate.
    pub fn new(calibration: &[Vec<f32>]) -> Self {
        let mut even: [Vec<f32>; N_ORI] = Default::default();
        let mut odd: [Vec<f32>; N_ORI] = Default::default();
        for o in 0..N_ORI {
            let theta = o as f64 * std::f64::consts::PI / N_ORI as f64;
            let (e, d) = gabor_pair(theta, GABOR_WAVELENGTH, GABOR_SIGMA, GABOR_RADIUS);
            even[o] = e;
            odd[o] = d;
        }
        let mut bank = EarlyBank {
            even,
            odd,
            c1: [1.0; LEVELS],
            c2: [1.0; LEVELS],
        };
        let mut s1 = [0f64; LEVELS];
        let mut s2 = [0f64; LEVELS];
        for lum in calibration {
            let maps = bank.raw_maps(lum);
            for (l, s) in s1.iter_mut().enumerate() {
                let (a, n) = (e1_offset(l) * N_ORI, level_side(l) * level_side(l) * N_ORI);
                *s += maps.e1[a..a + n].iter().map(|&v| v as f64).sum::<f64>() / n as f64;
            }
            for (m, s) in s2.iter_mut().enumerate().skip(1) {
                let (a, n) = (
                    e2_offset(m) * N_ORI2,
                    level_side(m) * level_side(m) * N_ORI2,
                );
                *s += maps.e2[a..a + n].iter().map(|&v| v as f64).sum::<f64>() / n as f64;
            }
        }
        if !calibration.is_empty() {
            let k = calibration.len() as f64;
            for l in 0..LEVELS {
                bank.c1[l] = ((s1[l] / k) as f32).max(1e-6);
                bank.c2[l] = ((s2[l] / k) as f32).max(1e-6);
            }
        }
        bank
    }

    /// Unnormalized first- and second-order energy of a GRID x GRID luminance image.
    fn raw_maps(&self, lum: &[f32]) -> EnergyMaps {
        let mut e1 = vec![0f32; e1_offset(LEVELS) * N_ORI];
        let mut e2 = vec![0f32; e2_offset(LEVELS) * N_ORI2];
        let mut level = lum.to_vec();
        for l in 0..LEVELS {
            let n = level_side(l);
            let base1 = e1_offset(l);
            for o in 0..N_ORI {
                let energy = quad_energy(&level, n, &self.even[o], &self.odd[o]);
                for (p, &v) in energy.iter().enumerate() {
                    e1[(base1 + p) * N_ORI + o] = v;
                }
                if l + 1 < LEVELS {
                    // Second stage: the energy map, one level coarser, filtered again.
                    let m = l + 1;
                    let coarse = reduce(&energy, n);
                    let base2 = e2_offset(m);
                    for o2 in 0..N_ORI {
                        let e = quad_energy(&coarse, n / 2, &self.even[o2], &self.odd[o2]);
                        for (p, &v) in e.iter().enumerate() {
                            e2[(base2 + p) * N_ORI2 + o * N_ORI + o2] = v;
                        }
                    }
                }
            }
            if l + 1 < LEVELS {
                level = reduce(&level, n);
            }
        }
        EnergyMaps { e1, e2 }
    }

    /// Energy maps after divisive normalization: each level is divided by
    /// (NORM_SIGMA * typical energy + this image's mean energy at that level), a
    /// contrast gain control with a normalization pool spanning the whole field
    /// (Heeger 1992). Without it, all pRFs share the image's overall contrast and the
    /// responses of distant vertices would be nearly identical.
    pub fn maps(&self, lum: &[f32]) -> EnergyMaps {
        let mut maps = self.raw_maps(lum);
        for l in 0..LEVELS {
            let (a, n) = (e1_offset(l) * N_ORI, level_side(l) * level_side(l) * N_ORI);
            normalize(&mut maps.e1[a..a + n], self.c1[l]);
        }
        for m in 1..LEVELS {
            let (a, n) = (
                e2_offset(m) * N_ORI2,
                level_side(m) * level_side(m) * N_ORI2,
            );
            normalize(&mut maps.e2[a..a + n], self.c2[m]);
        }
        maps
    }
}

/// Semi-saturation of the contrast gain control, relative to the typical energy of a
/// natural image.
pub const NORM_SIGMA: f32 = 0.3;

fn normalize(block: &mut [f32], typical: f32) {
    let pool = block.iter().map(|&v| v as f64).sum::<f64>() / block.len().max(1) as f64;
    let k = 1.0 / (NORM_SIGMA * typical + pool as f32);
    block.iter_mut().for_each(|v| *v *= k);
}

/// A vertex's pooling weights over the shared energy maps.
#[derive(Clone, Debug)]
pub struct EarlyModel {
    taps1: Vec<(u32, f32)>,
    ori1: [f32; N_ORI],
    taps2: Vec<(u32, f32)>,
    ori2: [f32; N_ORI2],
    exponent: f32,
}

fn orientation_weights(pref: f64, kappa: f64) -> [f32; N_ORI] {
    let mut w = [0f64; N_ORI];
    for (o, v) in w.iter_mut().enumerate() {
        let theta = o as f64 * std::f64::consts::PI / N_ORI as f64;
        *v = (kappa * ((2.0 * (theta - pref)).cos() - 1.0)).exp();
    }
    let s: f64 = w.iter().sum();
    w.map(|v| (v / s) as f32)
}

/// Weights of pyramid levels lo..=hi around a preferred level: the two strongest,
/// normalized to sum 1 (a third would add taps and almost no drive).
fn level_weights(pref: f64, bandwidth: f64, lo: usize, hi: usize) -> Vec<(usize, f64)> {
    let pref = pref.clamp(lo as f64, hi as f64);
    let mut w: Vec<(usize, f64)> = (lo..=hi)
        .map(|l| {
            let d = l as f64 - pref;
            (l, (-d * d / (2.0 * bandwidth * bandwidth)).exp())
        })
        .collect();
    w.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    w.truncate(2);
    let s: f64 = w.iter().map(|x| x.1).sum();
    w.iter().map(|&(l, v)| (l, v / s)).collect()
}

/// Gaussian pRF taps on level `l`, scaled by `gain`. The Gaussian is normalized over
/// the whole plane, so a pRF partly off the image gets proportionally less drive.
fn prf_taps(prf: &Prf, l: usize, offset: usize, gain: f64, out: &mut Vec<(u32, f32)>) {
    let n = level_side(l);
    let f = n as f64 / FIELD_DEG;
    let cx = (prf.x_deg as f64 / FIELD_DEG + 0.5) * n as f64 - 0.5;
    let cy = (0.5 - prf.y_deg as f64 / FIELD_DEG) * n as f64 - 0.5;
    // Half a pixel of blur keeps a pRF smaller than a pixel from aliasing.
    let s = ((prf.sigma_deg as f64 * f).powi(2) + 0.25).sqrt();
    let norm = gain / (2.0 * std::f64::consts::PI * s * s);
    let reach = 3.0 * s;
    if cy + reach < 0.0 || cx + reach < 0.0 || cy - reach > n as f64 || cx - reach > n as f64 {
        return;
    }
    let y0 = (cy - reach).floor().max(0.0) as usize;
    let y1 = ((cy + reach).ceil() as usize).min(n - 1);
    let x0 = (cx - reach).floor().max(0.0) as usize;
    let x1 = ((cx + reach).ceil() as usize).min(n - 1);
    for y in y0..=y1 {
        for x in x0..=x1 {
            let d2 = (x as f64 - cx).powi(2) + (y as f64 - cy).powi(2);
            if d2 <= reach * reach {
                let w = norm * (-d2 / (2.0 * s * s)).exp();
                out.push(((offset + y * n + x) as u32, w as f32));
            }
        }
    }
}

impl EarlyModel {
    pub fn new(prf: &Prf) -> Self {
        let rule = prf.area.rule();
        let share1 = rule.first_order_share;
        let mut taps1 = Vec::new();
        for (l, w) in level_weights(prf.sf_level as f64, rule.sf_bandwidth, 0, LEVELS - 1) {
            prf_taps(prf, l, e1_offset(l), w * share1, &mut taps1);
        }
        let mut taps2 = Vec::new();
        if share1 < 1.0 {
            // Second-order maps at level m carry a first-order carrier of level m - 1.
            let pref2 = prf.sf_level as f64 + 1.0;
            for (m, w) in level_weights(pref2, rule.sf_bandwidth, 1, LEVELS - 1) {
                prf_taps(prf, m, e2_offset(m), w * (1.0 - share1), &mut taps2);
            }
        }
        let ori1 = orientation_weights(prf.orientation as f64, rule.orientation_kappa);
        let oa = orientation_weights(prf.orientation as f64, rule.orientation_kappa);
        let ob = orientation_weights(prf.orientation2 as f64, rule.orientation_kappa);
        let mut ori2 = [0f32; N_ORI2];
        for i in 0..N_ORI {
            for j in 0..N_ORI {
                ori2[i * N_ORI + j] = oa[i] * ob[j];
            }
        }
        EarlyModel {
            taps1,
            ori1,
            taps2,
            ori2,
            exponent: prf.exponent,
        }
    }

    /// Compressive spatial summation: (pooled energy)^exponent.
    pub fn response(&self, maps: &EnergyMaps) -> f32 {
        let mut acc1 = [0f32; N_ORI];
        for &(p, w) in &self.taps1 {
            let e = &maps.e1[p as usize * N_ORI..(p as usize + 1) * N_ORI];
            for (a, v) in acc1.iter_mut().zip(e) {
                *a += w * v;
            }
        }
        let mut drive: f32 = acc1.iter().zip(&self.ori1).map(|(a, b)| a * b).sum();
        if !self.taps2.is_empty() {
            let mut acc2 = [0f32; N_ORI2];
            for &(p, w) in &self.taps2 {
                let e = &maps.e2[p as usize * N_ORI2..(p as usize + 1) * N_ORI2];
                for (a, v) in acc2.iter_mut().zip(e) {
                    *a += w * v;
                }
            }
            drive += acc2.iter().zip(&self.ori2).map(|(a, b)| a * b).sum::<f32>();
        }
        drive.max(0.0).powf(self.exponent)
    }

    pub fn n_taps(&self) -> usize {
        self.taps1.len() + self.taps2.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gabor_energy_is_tuned_and_blind_to_uniform_light() {
        let bank = EarlyBank::new(&[]);
        let grey = vec![0.5f32; GRID * GRID];
        let m = bank.raw_maps(&grey);
        assert!(m.e1.iter().all(|&v| v.abs() < 1e-4));
        // Vertical stripes (wave vector along x) of the level-0 wavelength.
        let mut grating = vec![0f32; GRID * GRID];
        for y in 0..GRID {
            for x in 0..GRID {
                let ph = 2.0 * std::f64::consts::PI * x as f64 / GABOR_WAVELENGTH;
                grating[y * GRID + x] = (0.5 + 0.5 * ph.cos()) as f32;
            }
        }
        let m = bank.raw_maps(&grating);
        let centre = (GRID / 2 * GRID + GRID / 2) * N_ORI;
        let e = &m.e1[centre..centre + N_ORI];
        // Unit gain: a grating of amplitude 0.5 gives energy 0.5 at the preferred
        // orientation and much less orthogonally.
        assert!((e[0] - 0.5).abs() < 0.05, "{e:?}");
        assert!(e[2] < 0.1 * e[0], "{e:?}");
    }
}
