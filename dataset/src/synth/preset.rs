//! Sizes of the named presets.

use serde::{Deserialize, Serialize};

use crate::algonauts::layout::Hemisphere;

/// Named dataset sizes, from a seconds-long unit-test set to full NSD scale.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    Tiny,
    Demo,
    Nsd,
}

impl Preset {
    pub fn name(self) -> &'static str {
        match self {
            Preset::Tiny => "tiny",
            Preset::Demo => "demo",
            Preset::Nsd => "nsd",
        }
    }

    pub fn params(self) -> PresetParams {
        PresetParams::of(self)
    }
}

/// NSD's stimulus pool: ids run 1..=73000.
pub const NSD_IDS: usize = 73_000;
/// fsaverage's vertices per hemisphere.
pub const FSAVERAGE_VERTICES: usize = 163_842;

// Algonauts 2023 per-subject counts (subj01..subj08).
const NSD_TRAIN: [usize; 8] = [9841, 9841, 9082, 8779, 9841, 9082, 9841, 8779];
const NSD_TEST: [usize; 8] = [159, 159, 293, 395, 159, 293, 159, 395];
const NSD_LH: [usize; 8] = [19004, 19004, 19004, 19004, 19004, 18978, 19004, 18981];
const NSD_RH: [usize; 8] = [20544, 20544, 20544, 20544, 20544, 20220, 20544, 20530];
// NSD scan sessions completed per subject (40 planned); fewer sessions leave more
// images with fewer than three repeats.
const NSD_SESSIONS: [usize; 8] = [40, 40, 32, 30, 40, 32, 40, 30];

/// Everything about a preset's size; the generator's rules do not depend on it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PresetParams {
    pub preset: Preset,
    pub image_size: u32,
    pub default_subjects: u32,
    /// Most subjects the preset allows (NSD has 8).
    pub max_subjects: u32,
    /// Images every subject sees (NSD's shared1000), for a subject with the most images.
    pub shared_images: usize,
    /// Trials per scan session (NSD: 750); each vertex is z-scored within a session.
    pub session_trials: usize,
    /// Smallest vertex count of an early (prf-visualrois) ROI.
    pub min_early_roi: usize,
    /// Smallest vertex count of a non-empty floc or streams ROI.
    pub min_higher_roi: usize,
    train: Vec<usize>,
    test: Vec<usize>,
    lh: Vec<usize>,
    rh: Vec<usize>,
    /// fsaverage length; 0 means 4x the subject's vertex count.
    fsaverage: usize,
    sessions_done: Vec<usize>,
}

impl PresetParams {
    pub fn of(preset: Preset) -> Self {
        match preset {
            Preset::Tiny => PresetParams {
                preset,
                image_size: 64,
                default_subjects: 1,
                max_subjects: 99,
                shared_images: 6,
                session_trials: 75,
                min_early_roi: 8,
                min_higher_roi: 3,
                train: vec![48],
                test: vec![12],
                lh: vec![240],
                rh: vec![260],
                fsaverage: 0,
                sessions_done: vec![40],
            },
            Preset::Demo => PresetParams {
                preset,
                image_size: 128,
                default_subjects: 2,
                max_subjects: 80,
                shared_images: 90,
                session_trials: 750,
                min_early_roi: 20,
                min_higher_roi: 5,
                train: vec![800],
                test: vec![100],
                lh: vec![2400],
                rh: vec![2600],
                fsaverage: 0,
                sessions_done: vec![40],
            },
            Preset::Nsd => PresetParams {
                preset,
                image_size: 425,
                default_subjects: 8,
                max_subjects: 8,
                shared_images: 1000,
                session_trials: 750,
                min_early_roi: 100,
                min_higher_roi: 20,
                train: NSD_TRAIN.to_vec(),
                test: NSD_TEST.to_vec(),
                lh: NSD_LH.to_vec(),
                rh: NSD_RH.to_vec(),
                fsaverage: FSAVERAGE_VERTICES,
                sessions_done: NSD_SESSIONS.to_vec(),
            },
        }
    }

    /// Per-subject tables cycle for presets that list one value for all subjects.
    fn pick(v: &[usize], subject: u32) -> usize {
        v[(subject as usize - 1) % v.len()]
    }

    pub fn n_train(&self, subject: u32) -> usize {
        Self::pick(&self.train, subject)
    }
    pub fn n_test(&self, subject: u32) -> usize {
        Self::pick(&self.test, subject)
    }
    pub fn n_images(&self, subject: u32) -> usize {
        self.n_train(subject) + self.n_test(subject)
    }
    pub fn n_vertices(&self, subject: u32, h: Hemisphere) -> usize {
        match h {
            Hemisphere::Left => Self::pick(&self.lh, subject),
            Hemisphere::Right => Self::pick(&self.rh, subject),
        }
    }
    pub fn fsaverage_len(&self, subject: u32, h: Hemisphere) -> usize {
        if self.fsaverage == 0 {
            4 * self.n_vertices(subject, h)
        } else {
            self.fsaverage
        }
    }
    /// Fractions of training images shown 3, 2 and 1 times.
    pub fn repeat_fractions(&self, subject: u32) -> [f64; 3] {
        // Approximates NSD: subjects who completed all 40 sessions saw nearly every
        // image three times; those who stopped at 30-32 sessions lost later repeats.
        match Self::pick(&self.sessions_done, subject) {
            s if s >= 40 => [0.90, 0.07, 0.03],
            s if s >= 32 => [0.72, 0.18, 0.10],
            _ => [0.66, 0.21, 0.13],
        }
    }
    /// The most images any subject of this preset sees.
    pub fn max_images(&self) -> usize {
        (1..=self.train.len().max(self.test.len()) as u32)
            .map(|s| self.n_images(s))
            .max()
            .unwrap_or(0)
    }

    /// A smaller or larger variant for tests: same rules, other sizes.
    #[cfg(test)]
    pub(crate) fn with_sizes(mut self, train: usize, test: usize, lh: usize, rh: usize) -> Self {
        self.train = vec![train];
        self.test = vec![test];
        self.lh = vec![lh];
        self.rh = vec![rh];
        self.shared_images = self.shared_images.min((train + test) / 4);
        self
    }
}
