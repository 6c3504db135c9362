//! Test helpers: a small valid manifest, and model repositories on disk served by
//! [`crate::backend::FakeBackend`]s.

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

/// Publishes `<root>/<name>/<version>/` with a stand-in `model.onnx` holding `model`
/// (see [`fake_opener`]) and a manifest whose checksum matches it.
pub fn write_version(
    root: &std::path::Path,
    name: &str,
    version: u32,
    size: u32,
    rois: &[(&str, usize)],
    model: &[u8],
) -> std::path::PathBuf {
    let dir = root.join(name).join(version.to_string());
    std::fs::create_dir_all(&dir).expect("creating a version folder");
    let file = dir.join(MODEL_FILE);
    std::fs::write(&file, model).expect("writing model.onnx");
    let mut m = manifest(name, size, rois);
    m.model.version = version;
    m.model_sha256 = sha256_file(&file).expect("hashing model.onnx");
    m.write(&dir).expect("writing manifest.json");
    dir
}

/// Opens version folders as [`FakeBackend`]s. The stand-in `model.onnx` steers it:
/// `corrupt` fails to open, `fail` opens but fails every inference (its warm-up too),
/// anything else serves.
pub fn fake_opener() -> std::sync::Arc<crate::repository::Opener> {
    std::sync::Arc::new(|dir: &std::path::Path, manifest: &Manifest| {
        let bytes = std::fs::read(dir.join(MODEL_FILE))
            .map_err(|e| crate::ServerError::Repository(format!("{}: {e}", dir.display())))?;
        if bytes.starts_with(b"corrupt") {
            return Err(crate::ServerError::Repository(format!(
                "{}: not an ONNX model",
                dir.display()
            )));
        }
        let mut fake = crate::backend::FakeBackend::new(manifest);
        fake.fail = bytes.starts_with(b"fail");
        Ok((
            Box::new(fake) as Box<dyn crate::backend::Backend>,
            vcl_contract::runtime::Provider::Cpu,
        ))
    })
}
