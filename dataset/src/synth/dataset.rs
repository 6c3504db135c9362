//! Writes a synthesized dataset in the Algonauts 2023 layout, one subject at a time.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use image::RgbImage;
use indicatif::{ProgressBar, ProgressStyle};
use ndarray::{s, Array1, Array2, ArrayView2, Axis};
use rand::seq::SliceRandom;
use serde::Serialize;

use super::anatomy::{self, NcsnrRule, FLOC_ROIS, NCSNR_RULES};
use super::brain::{self, HigherRule, SharedModel, SubjectBrain, HIGHER_RULE};
use super::early::{self, AreaRule, AREA_RULES};
use super::measure::{column_stats, measure, noise_ceiling, Measured, RepeatCounts, TrialDesign};
use super::preset::{PresetParams, NSD_IDS};
use super::rng::{key, stream, TAG_DESIGN, TAG_FSAVERAGE, TAG_IDS, TAG_NOISE, TAG_SUBJECT_IDS};
use super::stimuli::{self, make_image, PhotoSet};
use super::{par, teacher, SubjectSummary, SynthConfig, SynthError, SynthSummary};
use crate::algonauts::layout::{
    family_index, subject_dir_name, test_image_name, train_image_name, Hemisphere, SubjectLayout,
    FAMILIES, IN_SILICO_PARAMS, ROI_NAMES,
};
use crate::npy;

/// Synthesizes the dataset `cfg` asks for.
pub fn synthesize(cfg: &SynthConfig) -> Result<SynthSummary, SynthError> {
    synthesize_with(cfg, &cfg.preset.params(), &mut |_, _, _, _| {}, false)
}

/// Called once per (subject, hemisphere) with the trial design and the measurement,
/// so that tests can look at trial-level data the dataset does not keep.
pub(crate) type MeasurementTap<'a> = dyn FnMut(u32, Hemisphere, &TrialDesign, &Measured) + 'a;

pub(crate) fn synthesize_with(
    cfg: &SynthConfig,
    params: &PresetParams,
    tap: &mut MeasurementTap<'_>,
    keep_trials: bool,
) -> Result<SynthSummary, SynthError> {
    let n_subjects = cfg.subjects.unwrap_or(params.default_subjects);
    if n_subjects == 0 || n_subjects > params.max_subjects {
        return Err(SynthError::Invalid(format!(
            "the {} preset takes 1 to {} subjects, not {n_subjects}",
            params.preset.name(),
            params.max_subjects
        )));
    }
    let ids = IdPlan::new(params, cfg.seed, n_subjects)?;

    if !cfg.photos_dir.is_dir() {
        return Err(SynthError::Photos {
            path: cfg.photos_dir.clone(),
            reason: "does not exist or is not a folder".into(),
        });
    }
    let photos = PhotoSet::load(&cfg.photos_dir)?;
    prepare_out(&cfg.out)?;

    let shared = Arc::new(SharedModel::new(cfg.seed));
    let total: usize = (1..=n_subjects).map(|s| params.n_images(s)).sum();
    let bar = ProgressBar::new(total as u64);
    if let Ok(style) =
        ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} images, {elapsed} (eta {eta})")
    {
        bar.set_style(style.progress_chars("=> "));
    }

    let mut records = Vec::new();
    let mut summaries = Vec::new();
    for subject in 1..=n_subjects {
        bar.set_message(subject_dir_name(subject));
        let run = Synthesis {
            cfg,
            params,
            photos: &photos,
            shared: &shared,
            ids: &ids,
            bar: &bar,
            keep_trials,
        };
        let (record, summary) = write_subject(&run, subject, tap)?;
        tracing::info!(
            "{}: {} + {} images, {} / {} vertices",
            summary.name,
            summary.n_train,
            summary.n_test,
            summary.n_vertices[0],
            summary.n_vertices[1]
        );
        records.push(record);
        summaries.push(summary);
    }
    bar.finish_and_clear();

    let description = Description::new(cfg, params, &photos, records);
    let path = cfg.out.join(IN_SILICO_PARAMS);
    let json = serde_json::to_string_pretty(&description).map_err(|e| SynthError::WriteParams {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    std::fs::write(&path, json + "\n").map_err(|e| SynthError::WriteParams {
        path: path.clone(),
        reason: e.to_string(),
    })?;

    Ok(SynthSummary {
        out: cfg.out.clone(),
        preset: params.preset,
        seed: cfg.seed,
        image_size: params.image_size,
        photos: photos.photos.len(),
        subjects: summaries,
    })
}

/// An empty or new folder is used as is. A previous synthesis (it has the parameter
/// file) is replaced whole, so no stale image or subject of another seed or preset
/// survives to contradict the new fMRI rows. Any other non-empty folder is refused:
/// it may hold real data.
fn prepare_out(out: &Path) -> Result<(), SynthError> {
    let err = |reason: String| SynthError::OutDir {
        path: out.to_path_buf(),
        reason,
    };
    if out.exists() {
        if !out.is_dir() {
            return Err(err("exists and is not a folder".into()));
        }
        let entries: Vec<std::fs::DirEntry> = std::fs::read_dir(out)
            .map_err(|e| err(format!("cannot list: {e}")))?
            .collect::<Result<_, _>>()
            .map_err(|e| err(format!("cannot list: {e}")))?;
        if !entries.is_empty() {
            if !out.join(IN_SILICO_PARAMS).is_file() {
                return Err(err(format!(
                    "not empty and holds no {IN_SILICO_PARAMS}; refusing to write a synthesized dataset over other files (choose a new or empty folder)"
                )));
            }
            for e in entries {
                let name = e.file_name().to_string_lossy().into_owned();
                let path = e.path();
                let is_subject = name.len() > 4
                    && name.starts_with("subj")
                    && name[4..].bytes().all(|b| b.is_ascii_digit());
                if is_subject && path.is_dir() {
                    std::fs::remove_dir_all(&path)
                        .map_err(|e| err(format!("cannot remove the previous {name}: {e}")))?;
                } else if name == IN_SILICO_PARAMS {
                    std::fs::remove_file(&path)
                        .map_err(|e| err(format!("cannot remove the previous {name}: {e}")))?;
                }
            }
        }
    }
    create_dir(out)
}

fn create_dir(path: &Path) -> Result<(), SynthError> {
    std::fs::create_dir_all(path).map_err(|source| SynthError::Create {
        path: path.to_path_buf(),
        source,
    })
}

/// NSD ids as NSD assigned them: a shared pool every subject sees (shared1000), and
/// disjoint blocks of subject-specific ids, all distinct within 1..=73000.
struct IdPlan {
    shared: Vec<usize>,
    unique: Vec<usize>,
    block: usize,
    max_images: usize,
    seed: u64,
}

impl IdPlan {
    fn new(params: &PresetParams, seed: u64, n_subjects: u32) -> Result<Self, SynthError> {
        let max_images = params.max_images();
        let n_shared = params.shared_images.min(max_images);
        let block = max_images - n_shared;
        let need = n_shared + n_subjects as usize * block;
        if need > NSD_IDS {
            return Err(SynthError::Invalid(format!(
                "{n_subjects} subjects of the {} preset need {need} distinct NSD ids, but NSD has {NSD_IDS}",
                params.preset.name()
            )));
        }
        let mut all: Vec<usize> = (1..=NSD_IDS).collect();
        all.shuffle(&mut stream(seed, &[TAG_IDS]));
        let shared = all[..n_shared].to_vec();
        let unique = all[n_shared..need].to_vec();
        Ok(IdPlan {
            shared,
            unique,
            block,
            max_images,
            seed,
        })
    }

    /// (training ids, test ids), each ascending, and how many are shared.
    fn subject(&self, params: &PresetParams, subject: u32) -> (Vec<usize>, Vec<usize>, usize) {
        let n = params.n_images(subject);
        // Subjects with fewer sessions saw proportionally fewer of the shared images.
        let n_shared = (self.shared.len() * n)
            .div_ceil(self.max_images.max(1))
            .min(n);
        let mut shared = self.shared.clone();
        shared.shuffle(&mut stream(
            self.seed,
            &[TAG_SUBJECT_IDS, subject as u64, 0],
        ));
        let start = (subject as usize - 1) * self.block;
        let mut ids: Vec<usize> = shared[..n_shared].to_vec();
        ids.extend_from_slice(&self.unique[start..start + (n - n_shared)]);
        ids.shuffle(&mut stream(
            self.seed,
            &[TAG_SUBJECT_IDS, subject as u64, 1],
        ));
        let n_test = params.n_test(subject);
        let mut test = ids[..n_test].to_vec();
        let mut train = ids[n_test..].to_vec();
        // Algonauts numbers images in NSD-id order.
        test.sort_unstable();
        train.sort_unstable();
        (train, test, n_shared)
    }
}

/// What every subject of one synthesis shares.
#[derive(Clone, Copy)]
struct Synthesis<'a> {
    cfg: &'a SynthConfig,
    params: &'a PresetParams,
    photos: &'a PhotoSet,
    shared: &'a Arc<SharedModel>,
    ids: &'a IdPlan,
    bar: &'a ProgressBar,
    /// Keep every trial's response (tests), not only the averages.
    keep_trials: bool,
}

/// One subject's parts its hemispheres are written from.
#[derive(Clone, Copy)]
struct SubjectParts<'a> {
    brain: &'a SubjectBrain,
    layout: &'a SubjectLayout,
    subject: u32,
    n_train: usize,
    design: &'a TrialDesign,
}

fn write_subject(
    run: &Synthesis,
    subject: u32,
    tap: &mut MeasurementTap<'_>,
) -> Result<(SubjectRecord, SubjectSummary), SynthError> {
    let Synthesis {
        cfg,
        params,
        photos,
        shared,
        ids,
        bar,
        keep_trials: _,
    } = *run;
    let name = subject_dir_name(subject);
    let layout = SubjectLayout::new(&cfg.out, &name);
    let brain = SubjectBrain::build(shared.clone(), params, cfg.seed, subject);
    let (train, test, n_shared) = ids.subject(params, subject);
    let (n_train, n_test) = (train.len(), test.len());

    for h in Hemisphere::BOTH {
        for p in [
            layout.fmri(h),
            layout.noise_ceiling(h),
            layout.ground_truth_train(h),
        ] {
            if let Some(parent) = p.parent() {
                create_dir(parent)?;
            }
        }
    }
    create_dir(&layout.training_images())?;
    create_dir(&layout.test_images())?;
    create_dir(&layout.roi_masks())?;

    // Noiseless responses of both hemispheres side by side, one row per image
    // (training images first), so each image is made and analysed once.
    let v_lh = brain.n_vertices(Hemisphere::Left);
    let v_rh = brain.n_vertices(Hemisphere::Right);
    let width = v_lh + v_rh;
    let mut raw = Array2::<f32>::zeros((n_train + n_test, width));
    let train_dir = layout.training_images();
    let test_dir = layout.test_images();
    let data = raw
        .as_slice_mut()
        .ok_or_else(|| SynthError::Invalid("response buffer is not contiguous".into()))?;
    par::for_rows::<SynthError, _>(data, width, |i, row| {
        let (id, path) = if i < n_train {
            (train[i], train_dir.join(train_image_name(i, train[i])))
        } else {
            let k = i - n_train;
            (test[k], test_dir.join(test_image_name(k, test[k])))
        };
        let img = make_image(photos, cfg.seed, id, params.image_size);
        save_png(&img, &path)?;
        let feats = shared.features(&img);
        let (lh, rh) = row.split_at_mut(v_lh);
        brain.respond_into(Hemisphere::Left, &feats, lh);
        brain.respond_into(Hemisphere::Right, &feats, rh);
        bar.inc(1);
        Ok(())
    })?;

    let design = TrialDesign::new(
        n_train,
        params.repeat_fractions(subject),
        params.session_trials,
        &mut stream(cfg.seed, &[TAG_DESIGN, subject as u64]),
    );
    let counts = design.counts();

    let mut hemis = BTreeMap::new();
    let mut mean_nc = [0f32; 2];
    for (hi, h) in Hemisphere::BOTH.into_iter().enumerate() {
        let cols = if hi == 0 { 0..v_lh } else { v_lh..width };
        let view = raw.slice(s![.., cols]);
        let parts = SubjectParts {
            brain: &brain,
            layout: &layout,
            subject,
            n_train,
            design: &design,
        };
        let record = write_hemisphere(run, &parts, h, view, tap)?;
        mean_nc[hi] = record.mean_nc;
        hemis.insert(h.prefix().to_string(), record);
    }
    for family in FAMILIES {
        let f = family_index(family).unwrap_or(0);
        // As the release does: label 0 is named "Unknown" (vertices outside every ROI
        // of the family), so a reader written against the real data reads ours alike.
        let mapping: BTreeMap<i64, String> = std::iter::once((0, "Unknown".to_string()))
            .chain(
                ROI_NAMES[f]
                    .iter()
                    .enumerate()
                    .map(|(i, n)| (i as i64 + 1, n.to_string())),
            )
            .collect();
        npy::write_mapping(&layout.mapping(family), &mapping)?;
    }

    let summary = SubjectSummary {
        name: name.clone(),
        n_train,
        n_test,
        n_vertices: [v_lh, v_rh],
        mean_nc,
    };
    let record = SubjectRecord {
        subject: name,
        n_train,
        n_test,
        n_shared_images: n_shared,
        repeats: counts,
        noise_factor: counts.noise_factor(),
        n_trials: design.n_trials(),
        n_sessions: design.n_sessions(),
        hemispheres: hemis,
    };
    Ok((record, summary))
}

fn save_png(img: &RgbImage, path: &Path) -> Result<(), SynthError> {
    img.save_with_format(path, image::ImageFormat::Png)
        .map_err(|e| SynthError::WriteImage {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
}

fn write_hemisphere(
    run: &Synthesis,
    parts: &SubjectParts,
    h: Hemisphere,
    raw: ArrayView2<f32>,
    tap: &mut MeasurementTap<'_>,
) -> Result<HemisphereRecord, SynthError> {
    let Synthesis {
        cfg,
        params,
        keep_trials,
        ..
    } = *run;
    let SubjectParts {
        brain,
        layout,
        subject,
        n_train,
        design,
    } = *parts;
    let vertices = brain.vertices(h);
    let ncsnr: Vec<f32> = vertices.iter().map(|v| v.ncsnr).collect();

    // Signal in units of its own sd over the training images: ncsnr is then exactly
    // signal sd / noise sd.
    let (mean, sd) = column_stats(raw.slice(s![..n_train, ..]));
    let standardize = |x: ArrayView2<f32>| -> Array2<f32> {
        let mut out = x.to_owned();
        for mut row in out.axis_iter_mut(Axis(0)) {
            for ((v, m), s) in row.iter_mut().zip(&mean).zip(&sd) {
                // A vertex with no image-driven variance carries no signal at all.
                *v = if *s > 1e-9 {
                    ((*v as f64 - m) / s) as f32
                } else {
                    0.0
                };
            }
        }
        out
    };
    let signal_train = standardize(raw.slice(s![..n_train, ..]));
    let signal_test = standardize(raw.slice(s![n_train.., ..]));

    let noise_seed = key(cfg.seed, &[TAG_NOISE, subject as u64, h as u64]);
    let measured = measure(signal_train.view(), &ncsnr, design, noise_seed, keep_trials);
    npy::write(&layout.fmri(h), &measured.averaged)?;

    // Ground truth on the measured scale: the noiseless beta (ncsnr * signal), put
    // through the vertex's z-scoring (trial-weighted mean over sessions).
    let to_measured = |mut x: Array2<f32>| -> Array2<f32> {
        for mut row in x.axis_iter_mut(Axis(0)) {
            for (j, v) in row.iter_mut().enumerate() {
                *v = (ncsnr[j] * *v - measured.offset[j]) / measured.scale[j];
            }
        }
        x
    };
    npy::write(&layout.ground_truth_train(h), &to_measured(signal_train))?;
    npy::write(&layout.ground_truth_test(h), &to_measured(signal_test))?;

    let counts = design.counts();
    let nc: Array1<f32> = ncsnr.iter().map(|&s| noise_ceiling(s, &counts)).collect();
    npy::write(&layout.noise_ceiling(h), &nc)?;
    npy::write(&layout.ncsnr(h), &Array1::from(ncsnr.clone()))?;
    tap(subject, h, design, &measured);

    // Challenge-space vertices sit at sorted random positions of the fsaverage mesh.
    let n = vertices.len();
    let fs_len = params.fsaverage_len(subject, h);
    let mut positions: Vec<usize> = (0..fs_len).collect();
    let mut rng = stream(cfg.seed, &[TAG_FSAVERAGE, subject as u64, h as u64]);
    let (chosen, _) = positions.partial_shuffle(&mut rng, n);
    let mut chosen = chosen.to_vec();
    chosen.sort_unstable();
    let mut all = Array1::<i32>::zeros(fs_len);
    for &p in &chosen {
        all[p] = 1;
    }
    npy::write(&layout.all_vertices_fsaverage(h), &all)?;

    let mut roi_counts = BTreeMap::new();
    for (f, family) in FAMILIES.iter().enumerate() {
        let labels = Array1::from(brain.labels(h, f));
        npy::write(&layout.roi_mask(h, family), &labels)?;
        let mut fs = Array1::<i32>::zeros(fs_len);
        for (&p, &l) in chosen.iter().zip(labels.iter()) {
            fs[p] = l;
        }
        npy::write(&layout.roi_mask_fsaverage(h, family), &fs)?;
        let counts: BTreeMap<String, usize> = ROI_NAMES[f]
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let c = labels.iter().filter(|&&l| l == i as i32 + 1).count();
                (name.to_string(), c)
            })
            .collect();
        roi_counts.insert(family.to_string(), counts);
    }

    let mean_nc = nc.iter().map(|&v| v as f64).sum::<f64>() / n.max(1) as f64;
    let mut sorted = ncsnr.clone();
    sorted.sort_by(f32::total_cmp);
    Ok(HemisphereRecord {
        n_vertices: n,
        fsaverage_len: fs_len,
        mean_nc: mean_nc as f32,
        median_ncsnr: sorted.get(n / 2).copied().unwrap_or(0.0),
        roi_counts,
    })
}

#[derive(Serialize)]
struct HemisphereRecord {
    n_vertices: usize,
    fsaverage_len: usize,
    mean_nc: f32,
    median_ncsnr: f32,
    roi_counts: BTreeMap<String, BTreeMap<String, usize>>,
}

#[derive(Serialize)]
struct SubjectRecord {
    subject: String,
    n_train: usize,
    n_test: usize,
    n_shared_images: usize,
    repeats: RepeatCounts,
    noise_factor: f64,
    n_trials: usize,
    n_sessions: usize,
    hemispheres: BTreeMap<String, HemisphereRecord>,
}

#[derive(Serialize)]
struct StimulusRules {
    image_size: u32,
    field_of_view_deg: f64,
    photos: Vec<String>,
    photos_sha256: Vec<String>,
    skipped_files: Vec<String>,
    min_photo_short_side_px: u32,
    crop_scale_of_short_side: (f64, f64),
    mirror_probability: f64,
    resize_filter: &'static str,
    dead_leaves_fraction: f64,
    dead_leaves: &'static str,
    nsd_ids: (usize, usize),
    shared_images_max: usize,
    image_order: &'static str,
}

#[derive(Serialize)]
struct EarlyRules {
    grid_px: usize,
    pyramid_levels: usize,
    orientations: usize,
    gabor_wavelength_px: f64,
    gabor_sigma_px: f64,
    eccentricity_e2_deg: f64,
    eccentricity_max_deg: f64,
    eccentricity_sampling: &'static str,
    retinotopy: &'static str,
    response: &'static str,
    areas: Vec<AreaRule>,
    roi_fractions: BTreeMap<String, f64>,
    extra_early_fraction: f64,
}

#[derive(Serialize)]
struct HigherRules {
    teacher: &'static str,
    teacher_feature_dim: usize,
    calibration_images: usize,
    readout: &'static str,
    rule: HigherRule,
    stream_fractions: BTreeMap<String, f64>,
    no_stream_fraction: f64,
    floc_rois: Vec<(String, String, String, f64)>,
    roi_size_jitter_log_sd: f64,
}

#[derive(Serialize)]
struct NoiseRules {
    model: &'static str,
    ncsnr: Vec<NcsnrRule>,
    ncsnr_range: (f64, f64),
    session_trials: usize,
    noise_ceiling: &'static str,
    ground_truth: &'static str,
}

#[derive(Serialize)]
struct Description {
    generator: &'static str,
    format_version: u32,
    preset: &'static str,
    seed: u64,
    n_subjects: usize,
    preset_params: PresetParams,
    stimuli: StimulusRules,
    early: EarlyRules,
    higher: HigherRules,
    noise: NoiseRules,
    subjects: Vec<SubjectRecord>,
}

impl Description {
    fn new(
        cfg: &SynthConfig,
        params: &PresetParams,
        photos: &PhotoSet,
        subjects: Vec<SubjectRecord>,
    ) -> Self {
        let stream_name = |l: u8| ROI_NAMES[5][l as usize - 1].to_string();
        Description {
            generator: "vcl in-silico brain",
            format_version: 1,
            preset: params.preset.name(),
            seed: cfg.seed,
            n_subjects: subjects.len(),
            preset_params: params.clone(),
            stimuli: StimulusRules {
                image_size: params.image_size,
                field_of_view_deg: early::FIELD_DEG,
                photos: photos.names.clone(),
                photos_sha256: photos.sha256.clone(),
                skipped_files: photos.skipped.iter().map(|(n, _)| n.clone()).collect(),
                min_photo_short_side_px: stimuli::MIN_PHOTO_SIDE,
                crop_scale_of_short_side: stimuli::CROP_SCALE,
                mirror_probability: 0.5,
                resize_filter: "triangle (antialiased when shrinking)",
                dead_leaves_fraction: stimuli::DEAD_LEAVES_FRACTION,
                dead_leaves: "opaque disks, radius density ~ r^-3 in [0.01, 0.4] x image side, random colours around a random luminance, about 5x coverage",
                nsd_ids: (1, NSD_IDS),
                shared_images_max: params.shared_images,
                image_order: "train/test rows in ascending NSD id; an NSD id always shows the same image",
            },
            early: EarlyRules {
                grid_px: early::GRID,
                pyramid_levels: early::LEVELS,
                orientations: early::N_ORI,
                gabor_wavelength_px: early::GABOR_WAVELENGTH,
                gabor_sigma_px: early::GABOR_SIGMA,
                eccentricity_e2_deg: anatomy::ECC_E2_DEG,
                eccentricity_max_deg: anatomy::max_eccentricity(),
                eccentricity_sampling: "uniform in cortical distance for magnification 1/(E + E2), centres inside the image",
                retinotopy: "lh: right half of the image, rh: left half; V1v/V2v/V3v upper quarter field, V1d/V2d/V3d lower, hV4 full contralateral hemifield",
                response: "(sum over pRF taps and pyramid levels of orientation-weighted Gabor energy [V1], mixed with second-order energy of energy [V2+])^exponent; preferred pyramid level = log2(pRF sd px / 1.5) + N(0, 0.25)",
                areas: AREA_RULES.to_vec(),
                roi_fractions: ROI_NAMES[0]
                    .iter()
                    .zip(anatomy::EARLY_FRACTIONS)
                    .map(|(n, f)| (n.to_string(), f))
                    .collect(),
                extra_early_fraction: anatomy::EXTRA_EARLY_FRACTION,
            },
            higher: HigherRules {
                teacher: "fixed stage 1 (7x7: 4 orientations x 2 phases of Gabor at wavelength 4 px, 2 coarse Gabors at 8 px, +-DoG on luminance, +-DoG at half gain on red-green and blue-yellow) -> ReLU, 2x2 mean pool, divisive normalization -> random 3x3 conv 16->32 (He normal) -> same -> random 3x3 conv 32->128 -> same; features: stage-2 global means (32), stage-3 left-half and right-half means (128 + 128)",
                teacher_feature_dim: teacher::FEATURE_DIM,
                calibration_images: brain::CALIBRATION_IMAGES,
                readout: "softplus(gain * w.f + bias), w a unit-variance mix of family, ROI and stream latents (random projections of standardized teacher features), ipsilateral-half features down-weighted",
                rule: HIGHER_RULE,
                stream_fractions: anatomy::STREAM_FRACTIONS
                    .iter()
                    .map(|&(l, f)| (stream_name(l), f))
                    .collect(),
                no_stream_fraction: anatomy::NO_STREAM_FRACTION,
                floc_rois: FLOC_ROIS
                    .iter()
                    .map(|&(f, l, host, frac)| {
                        (
                            FAMILIES[f].to_string(),
                            ROI_NAMES[f][l as usize - 1].to_string(),
                            stream_name(host),
                            frac,
                        )
                    })
                    .collect(),
                roi_size_jitter_log_sd: anatomy::ROI_SIZE_JITTER,
            },
            noise: NoiseRules {
                model: "trial beta = ncsnr * signal + N(0, 1), signal standardized over the training images; trials shuffled into sessions, z-scored per vertex within each session, averaged over each image's repeats",
                ncsnr: NCSNR_RULES.to_vec(),
                ncsnr_range: anatomy::NCSNR_RANGE,
                session_trials: params.session_trials,
                noise_ceiling: "NC = ncsnr^2 / (ncsnr^2 + (A/3 + B/2 + C) / (A + B + C)), a fraction",
                ground_truth: "(ncsnr * signal - m) / s per vertex, m and s the trial-weighted means of the session means and sds",
            },
            subjects,
        }
    }
}
