//! ROI masks of the six Algonauts families, and selection of vertices by ROI name.
//!
//! Names: a plain ROI name (`V1v`, `FFA-1`, `PPA`); `early`, the union of all
//! prf-visualrois ROIs (METHOD.md's "early ROIs"); `V1`, `V2`, `V3`, the union of the
//! ventral and dorsal parts; a whole family (`floc-faces`); `family:name` for a name
//! in one family only (`streams:early`, the streams ROI that plain `early` is not);
//! and unions of any of these joined by `+` (`V1v+V1d`).

use std::collections::BTreeMap;

use ndarray::Array1;
use serde::Serialize;

use super::layout::{Hemisphere, SubjectLayout, FAMILIES};
use crate::error::{DataError, Result};
use crate::npy;

#[derive(Debug, Clone)]
pub struct FamilyMask {
    pub family: String,
    /// One label per challenge-space vertex; 0 = outside every ROI of the family.
    pub labels: Array1<i64>,
    /// label -> ROI name, from `mapping_<family>.npy`.
    pub names: BTreeMap<i64, String>,
}

#[derive(Debug, Clone)]
pub struct RoiAtlas {
    pub hemisphere: Hemisphere,
    pub n_vertices: usize,
    pub families: Vec<FamilyMask>,
    /// fsaverage index of each challenge-space vertex, where the fsaverage map exists.
    pub fsaverage: Option<Vec<usize>>,
}

/// Vertex count of one ROI, for summaries.
#[derive(Debug, Clone, Serialize)]
pub struct RoiCount {
    pub family: String,
    pub roi: String,
    pub vertices: usize,
}

impl RoiAtlas {
    /// Loads every family's mask and mapping; each mask must have `n_vertices` labels,
    /// and each non-zero label must be named in the mapping.
    pub fn load(
        layout: &SubjectLayout,
        h: Hemisphere,
        n_vertices: usize,
        subject: &str,
    ) -> Result<Self> {
        let mut families = Vec::with_capacity(FAMILIES.len());
        for family in FAMILIES {
            let path = layout.roi_mask(h, family);
            let labels = npy::read_labels(&path)?;
            if labels.len() != n_vertices {
                return Err(DataError::LengthMismatch {
                    path,
                    len: labels.len(),
                    expected: n_vertices,
                    why: format!("one label per {h} vertex of {subject}'s fMRI"),
                });
            }
            let map_path = layout.mapping(family);
            let mut names = npy::read_mapping(&map_path)?;
            // The release's mappings name label 0 ("Unknown"): it marks vertices outside
            // every ROI of the family, not an ROI.
            names.remove(&0);
            if let Some(bad) = labels.iter().find(|&&l| l != 0 && !names.contains_key(&l)) {
                return Err(DataError::Mapping {
                    path: map_path,
                    reason: format!("label {bad} used in {} has no name", path.display()),
                });
            }
            families.push(FamilyMask {
                family: family.to_string(),
                labels,
                names,
            });
        }
        let fsaverage = Self::load_fsaverage(layout, h, n_vertices)?;
        Ok(RoiAtlas {
            hemisphere: h,
            n_vertices,
            families,
            fsaverage,
        })
    }

    fn load_fsaverage(
        layout: &SubjectLayout,
        h: Hemisphere,
        n_vertices: usize,
    ) -> Result<Option<Vec<usize>>> {
        let path = layout.all_vertices_fsaverage(h);
        if !path.exists() {
            return Ok(None);
        }
        let mask = npy::read_labels(&path)?;
        let idx: Vec<usize> = mask
            .iter()
            .enumerate()
            .filter(|(_, &v)| v != 0)
            .map(|(i, _)| i)
            .collect();
        if idx.len() != n_vertices {
            return Err(DataError::LengthMismatch {
                path,
                len: idx.len(),
                expected: n_vertices,
                why: "the number of vertices this fsaverage mask selects must equal the fMRI's vertex count".into(),
            });
        }
        Ok(Some(idx))
    }

    /// Every name `select` accepts besides unions, for error messages and summaries.
    pub fn known_rois(&self) -> Vec<String> {
        let mut names = vec!["early".to_string(), "V1".into(), "V2".into(), "V3".into()];
        for f in &self.families {
            names.push(f.family.clone());
            for n in f.names.values() {
                if !names.contains(n) {
                    names.push(n.clone());
                }
            }
        }
        names.push("streams:early".into());
        names
    }

    /// Sorted, de-duplicated challenge-space vertex indices of `roi` (see module docs).
    pub fn select(&self, roi: &str, subject: &str) -> Result<Vec<usize>> {
        let mut keep = vec![false; self.n_vertices];
        for part in roi.split('+').map(str::trim) {
            self.mark(part, &mut keep)?;
        }
        let idx: Vec<usize> = (0..self.n_vertices).filter(|&i| keep[i]).collect();
        if idx.is_empty() {
            return Err(DataError::EmptyRoi {
                roi: roi.to_string(),
                hemisphere: self.hemisphere.to_string(),
                subject: subject.to_string(),
            });
        }
        Ok(idx)
    }

    fn mark(&self, name: &str, keep: &mut [bool]) -> Result<()> {
        let unknown = || DataError::UnknownRoi {
            roi: name.to_string(),
            known: self.known_rois(),
        };
        let (family_filter, roi) = match name.split_once(':') {
            Some((f, r)) => (Some(f), r),
            None => (None, name),
        };
        if family_filter.is_none() {
            if let Some(f) = self.families.iter().find(|f| f.family == roi) {
                for (k, &l) in keep.iter_mut().zip(f.labels.iter()) {
                    *k |= l != 0;
                }
                return Ok(());
            }
            if let Some(parts) = super::layout::roi_alias(roi) {
                for p in parts {
                    self.mark(&format!("prf-visualrois:{p}"), keep)?;
                }
                return Ok(());
            }
        }
        let mut found = false;
        for f in &self.families {
            if family_filter.is_some_and(|ff| ff != f.family) {
                continue;
            }
            for (&label, n) in &f.names {
                if n == roi {
                    found = true;
                    for (k, &l) in keep.iter_mut().zip(f.labels.iter()) {
                        *k |= l == label;
                    }
                }
            }
        }
        if found {
            Ok(())
        } else {
            Err(unknown())
        }
    }

    /// Vertex counts of every named ROI, family by family.
    pub fn counts(&self) -> Vec<RoiCount> {
        let mut out = Vec::new();
        for f in &self.families {
            for (&label, name) in &f.names {
                out.push(RoiCount {
                    family: f.family.clone(),
                    roi: name.clone(),
                    vertices: f.labels.iter().filter(|&&l| l == label).count(),
                });
            }
        }
        out
    }
}
