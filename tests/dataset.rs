//! The data layer end to end: what `vcl synth` writes, the loader and numpy both read,
//! and every kind of bad input gets an error naming the file, field or value.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ndarray::Array2;
use vcl_dataset::algonauts::{Dataset, Hemisphere};
use vcl_dataset::npy;
use vcl_tests::{run_python, vcl};
use vcl_trainer::features::images::PixelCache;

/// One tiny in-silico dataset per test process (synthesized by the library).
fn tiny() -> &'static Path {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &DIR.get_or_init(|| vcl_tests::tiny_dataset(3, 2)).1
}

/// A private copy of the tiny dataset that a test may damage.
fn damaged_copy() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let dst = dir.path().join("data");
    copy_dir(tiny(), &dst);
    (dir, dst)
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap().flatten() {
        let to = dst.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), &to).unwrap();
        }
    }
}

#[test]
fn loader_reads_what_synth_writes() {
    let ds = Dataset::open(tiny()).unwrap();
    assert_eq!(ds.subjects, vec!["subj01", "subj02"]);
    assert!(ds.in_silico_params().unwrap().is_some());
    for name in ["subj01", "2"] {
        let s = ds.subject(name).unwrap();
        assert!(!s.train_images.is_empty() && !s.test_images.is_empty());
        for h in Hemisphere::BOTH {
            let fmri = s.fmri(h).unwrap();
            assert_eq!(fmri.nrows(), s.train_images.len());
            let atlas = s.rois(h).unwrap();
            assert_eq!(atlas.n_vertices, fmri.ncols());
            let early = atlas.select("early", &s.name).unwrap();
            let v1 = atlas.select("V1v+V1d", &s.name).unwrap();
            assert!(v1.len() < early.len() && v1.iter().all(|i| early.contains(i)));
            assert_eq!(atlas.select("V1", &s.name).unwrap(), v1);
            let nc = s
                .noise_ceiling(h)
                .unwrap()
                .expect("synth writes the noise ceiling");
            assert!(nc.iter().all(|&x| (0.0..=1.0).contains(&x)));
            let truth = s
                .ground_truth_train(h)
                .unwrap()
                .expect("synth writes the truth");
            assert_eq!(truth.dim(), fmri.dim());
            assert_eq!(
                atlas.fsaverage.as_ref().map(|f| f.len()),
                Some(fmri.ncols())
            );
        }
    }
}

#[test]
fn numpy_reads_every_file() {
    // The checks run in the venv's numpy, which nobody here wrote.
    let code = r#"
import sys, pathlib, numpy as np
from PIL import Image
root = pathlib.Path(sys.argv[1])
subs = sorted(p for p in root.iterdir() if p.name.startswith("subj"))
assert subs, "no subjects"
n_npy = 0
for s in subs:
    imgs = sorted((s / "training_split/training_images").glob("*.png"))
    for h in ("lh", "rh"):
        f = np.load(s / f"training_split/training_fmri/{h}_training_fmri.npy")
        assert f.dtype == np.float32 and f.shape[0] == len(imgs), (f.dtype, f.shape, len(imgs))
        V = f.shape[1]
        for fam in ("prf-visualrois", "floc-bodies", "floc-faces", "floc-places", "floc-words", "streams"):
            m = np.load(s / f"roi_masks/{h}.{fam}_challenge_space.npy")
            assert m.shape == (V,), (fam, m.shape, V)
            names = np.load(s / f"roi_masks/mapping_{fam}.npy", allow_pickle=True).item()
            assert isinstance(names, dict) and all(isinstance(k, int) and isinstance(v, str) for k, v in names.items())
            assert names.get(0) == "Unknown", (fam, names)
            assert set(np.unique(m[m != 0]).astype(int)) <= set(names), fam
            fs = np.load(s / f"roi_masks/{h}.{fam}_fsaverage_space.npy")
            allv = np.load(s / f"roi_masks/{h}.all-vertices_fsaverage_space.npy")
            assert fs.shape == allv.shape and int(allv.sum()) == V
            assert (fs[allv.astype(bool)] == m).all(), fam
            n_npy += 3
        prf = np.load(s / "roi_masks/mapping_prf-visualrois.npy", allow_pickle=True).item()
        assert prf == {0: "Unknown", 1: "V1v", 2: "V1d", 3: "V2v", 4: "V2d", 5: "V3v", 6: "V3d", 7: "hV4"}, prf
        nc = np.load(s / f"noise_ceiling/{h}_noise_ceiling.npy")
        assert nc.shape == (V,) and (nc >= 0).all() and (nc <= 1).all()
        gt = np.load(s / f"ground_truth/{h}_training_fmri_noiseless.npy")
        assert gt.shape == f.shape
        n_npy += 3
    for p in imgs[:5]:
        im = Image.open(p); im.load(); assert im.mode == "RGB" and im.size[0] == im.size[1]
print(n_npy)
"#;
    let out = run_python(code, &[tiny()]);
    assert!(out.trim().parse::<usize>().unwrap() > 40, "{out}");
}

#[test]
fn inspect_prints_a_summary() {
    let out = vcl(&["inspect", tiny().to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in ["subj01", "subj02", "V1v", "hV4", "FFA-1", "NC "] {
        assert!(stdout.contains(needle), "missing {needle} in:\n{stdout}");
    }
    let json = vcl(&["inspect", "--json", tiny().to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["subjects"].as_array().unwrap().len(), 2);
}

fn err_text<T: std::fmt::Debug>(r: Result<T, vcl_dataset::DataError>) -> String {
    r.expect_err("bad input must be an error").to_string()
}

#[test]
fn a_missing_file_names_its_path() {
    let (_d, root) = damaged_copy();
    let fmri = root.join("subj01/training_split/training_fmri/rh_training_fmri.npy");
    std::fs::remove_file(&fmri).unwrap();
    let s = Dataset::open(&root).unwrap().subject("subj01").unwrap();
    let e = err_text(s.fmri(Hemisphere::Right));
    assert!(
        e.contains(fmri.to_str().unwrap()) && e.contains("does not exist"),
        "{e}"
    );

    // The CLI says the same and fails.
    let out = vcl(&["inspect", root.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("rh_training_fmri.npy"), "{stderr}");
}

#[test]
fn fmri_rows_must_match_the_images() {
    let (_d, root) = damaged_copy();
    let s = Dataset::open(&root).unwrap().subject("subj01").unwrap();
    let path = s.layout.fmri(Hemisphere::Left);
    let fmri = npy::read_f32_2d(&path).unwrap();
    let short: Array2<f32> = fmri.slice(ndarray::s![1.., ..]).to_owned();
    npy::write(&path, &short).unwrap();
    let e = err_text(s.fmri(Hemisphere::Left));
    assert!(
        e.contains("lh_training_fmri.npy")
            && e.contains(&format!("{} rows", fmri.nrows() - 1))
            && e.contains(&format!("{} training images", fmri.nrows())),
        "{e}"
    );
}

#[test]
fn an_unknown_roi_lists_the_known_ones() {
    let s = Dataset::open(tiny()).unwrap().subject("subj01").unwrap();
    let atlas = s.rois(Hemisphere::Left).unwrap();
    let e = err_text(atlas.select("V9", &s.name));
    assert!(
        e.contains("unknown ROI 'V9'") && e.contains("V1v") && e.contains("PPA"),
        "{e}"
    );
    let e = err_text(atlas.select("V1v+nope", &s.name));
    assert!(e.contains("'nope'"), "{e}");
    // Named in the mapping but empty in every subject, as on real data.
    let e = err_text(atlas.select("aTL-faces", &s.name));
    assert!(e.contains("no vertices"), "{e}");
}

#[test]
fn a_mask_of_the_wrong_length_is_refused() {
    let (_d, root) = damaged_copy();
    let s = Dataset::open(&root).unwrap().subject("subj01").unwrap();
    let path = s.layout.roi_mask(Hemisphere::Left, "floc-faces");
    let labels = npy::read_labels(&path).unwrap();
    npy::write(
        &path,
        &labels.slice(ndarray::s![..labels.len() - 3]).to_owned(),
    )
    .unwrap();
    let e = err_text(s.rois(Hemisphere::Left));
    assert!(
        e.contains("lh.floc-faces_challenge_space.npy")
            && e.contains(&format!("{} entries", labels.len() - 3))
            && e.contains(&format!("{} were expected", labels.len())),
        "{e}"
    );
}

#[test]
fn corrupt_npy_and_corrupt_images_name_the_file() {
    let (_d, root) = damaged_copy();
    let s = Dataset::open(&root).unwrap().subject("subj01").unwrap();
    let path = s.layout.roi_mask(Hemisphere::Right, "streams");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let e = err_text(s.rois(Hemisphere::Right));
    assert!(e.contains("rh.streams_challenge_space.npy"), "{e}");

    let map = s.layout.mapping("floc-words");
    std::fs::write(&map, b"\x93NUMPY\x01\x00garbage").unwrap();
    let e = err_text(s.rois(Hemisphere::Left));
    assert!(e.contains("mapping_floc-words.npy"), "{e}");

    let img = &s.train_images[2].path;
    std::fs::write(img, b"\x89PNG\r\n\x1a\n truncated").unwrap();
    let e = PixelCache::build_or_load(&s.train_images, 32, &root.join("cache"))
        .err()
        .expect("a corrupt image must fail")
        .to_string();
    assert!(
        e.contains(img.file_name().unwrap().to_str().unwrap()),
        "{e}"
    );
}

#[test]
fn label_zero_named_unknown_is_not_an_roi() {
    // The Algonauts release names label 0 in its mappings; it marks unlabeled vertices.
    let (_d, root) = damaged_copy();
    let s = Dataset::open(&root).unwrap().subject("subj01").unwrap();
    let path = s.layout.mapping("floc-places");
    let mut names = npy::read_mapping(&path).unwrap();
    names.insert(0, "Unknown".into());
    npy::write_mapping(&path, &names).unwrap();
    let atlas = s.rois(Hemisphere::Left).unwrap();
    assert!(!atlas.known_rois().contains(&"Unknown".to_string()));
    let e = err_text(atlas.select("Unknown", &s.name));
    assert!(e.contains("unknown ROI 'Unknown'"), "{e}");
    assert!(atlas.counts().iter().all(|c| c.roi != "Unknown"));
}

/// The wide photo set of `scripts/setup_photos.sh` is exactly the files its list pins
/// (scikit-image's photos plus `scripts/photos_wide.tsv`), every one a usable photo,
/// and a brain synthesized from it records all of them.
#[test]
fn the_wide_photo_set_is_what_its_list_pins() {
    use std::collections::BTreeMap;
    use vcl_dataset::paths;
    use vcl_dataset::synth::{self, stimuli::PhotoSet};

    let dir = paths::wide_photos_dir();
    assert!(
        dir.is_dir(),
        "{} is missing: scripts/setup_photos.sh (make photos) builds it",
        dir.display()
    );
    let wide = PhotoSet::load(&dir).unwrap();
    assert!(
        wide.skipped.is_empty(),
        "not usable photos: {:?}",
        wide.skipped
    );

    let base = PhotoSet::load(&paths::photos_dir()).unwrap();
    let mut want: BTreeMap<String, String> = base
        .names
        .iter()
        .cloned()
        .zip(base.sha256.iter().cloned())
        .collect();
    let list_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/photos_wide.tsv");
    let list = std::fs::read_to_string(&list_path).unwrap();
    for line in list
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let fields: Vec<&str> = line.split('\t').collect();
        assert_eq!(fields.len(), 6, "{}: {line}", list_path.display());
        assert!(
            fields[4..].iter().all(|f| !f.trim().is_empty()),
            "every photo names its licence and author: {line}"
        );
        assert!(
            want.insert(fields[0].to_string(), fields[3].to_string())
                .is_none(),
            "{} is listed twice",
            fields[0]
        );
    }
    let got: BTreeMap<String, String> = wide
        .names
        .iter()
        .cloned()
        .zip(wide.sha256.iter().cloned())
        .collect();
    assert_eq!(got, want);
    assert!(
        wide.photos.len() >= 2 * base.photos.len(),
        "{} photos",
        wide.photos.len()
    );

    let out = tempfile::tempdir().unwrap();
    synth::synthesize(&synth::SynthConfig {
        preset: synth::Preset::Tiny,
        out: out.path().join("data"),
        seed: 0,
        subjects: Some(1),
        photos_dir: dir.clone(),
    })
    .unwrap();
    let desc: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("data/in_silico.json")).unwrap(),
    )
    .unwrap();
    let recorded: Vec<&str> = desc["stimuli"]["photos"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(
        recorded,
        wide.names.iter().map(String::as_str).collect::<Vec<_>>()
    );
}
