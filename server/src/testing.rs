//! A small valid manifest for tests that run a [`crate::backend::FakeBackend`].

use vcl_contract::manifest::*;

/// A manifest of a model `name` with `size` px input and ROIs of the given names and
/// voxel counts, in order.
pub fn manifest(name: &str, size: u32, rois: &[(&str, usize)]) -> Manifest {
    let mut start = 0;
    let rois: Vec<RoiSpec> = rois
        .iter()
        .map(|(roi, n)| {
            let slice = VoxelSlice {
                start,
                end: start + n,
            };
            start += n;
            RoiSpec {
                name: roi.to_string(),
                slice,
                vertices: (slice.start as u32..slice.end as u32).collect(),
                fsaverage: None,
                tap: "features.6".into(),
                pooling: Pooling::None,
                feature_dim: 8,
                pca_components: 4,
                alpha: AlphaSummary {
                    mode: AlphaMode::Voxel,
                    min: 1.0,
                    median: 1.0,
                    max: 1.0,
                },
                cv_score: 0.1,
                evaluation: None,
            }
        })
        .collect();
    let tensor = TensorSpec::float32;
    Manifest {
        schema_version: SCHEMA_VERSION,
        model: ModelInfo {
            name: name.into(),
            version: 1,
            opset: 17,
            ir_version: 8,
        },
        subject: "subj01".into(),
        hemisphere: Hemisphere::Left,
        input: InputSpec::rgb_square(size),
        outputs: OutputsSpec {
            voxels: tensor(VOXELS_OUTPUT, vec![Dim::batch(), Dim::Fixed(start as u64)]),
            roi_means: tensor(
                ROI_MEANS_OUTPUT,
                vec![Dim::batch(), Dim::Fixed(rois.len() as u64)],
            ),
        },
        rois,
        backbone: BackboneSpec {
            arch: "mobilenet_v2".into(),
            weights_hash: "0".repeat(64),
            weights_file: "mobilenet_v2.safetensors".into(),
            batchnorm_folded: true,
        },
        training: TrainingSpec {
            method: Method::Untuned,
            method_label: "untuned".into(),
            heldout_fraction: 0.25,
            split_seed: 0,
            n_train_images: 10,
            config: serde_json::json!({}),
        },
        provenance: Provenance {
            git_commit: None,
            dataset_fingerprint: "0".repeat(64),
            seed: 0,
            run: "runs/fake".into(),
            exporter: "test".into(),
            exported_at_unix: 0,
        },
        verification: Verification {
            images: 0,
            max_abs_diff: 0.0,
            max_rel_diff: 0.0,
            tolerance: 1e-3,
            runtime: "none".into(),
        },
        model_sha256: "0".repeat(64),
    }
}
