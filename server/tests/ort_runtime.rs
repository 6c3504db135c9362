//! ONNX Runtime loads from the venv's onnxruntime wheel and runs a real model.

use std::path::PathBuf;

use vcl_server::runtime::{self, DeviceChoice, Provider, Runtime};

fn wheel_model(name: &str) -> PathBuf {
    let dylib = runtime::default_dylib_path().expect("set-up installs onnxruntime into .venv");
    // .../onnxruntime/capi/libonnxruntime.so.X -> .../onnxruntime/datasets/<name>
    dylib
        .parent()
        .and_then(|capi| capi.parent())
        .map(|ort| ort.join("datasets").join(name))
        .expect("wheel layout")
}

#[test]
fn runs_the_wheels_mul_model_on_cpu() {
    let rt = Runtime::load(&runtime::default_dylib_path().unwrap()).unwrap();
    let (mut session, provider) = rt
        .session(&wheel_model("mul_1.onnx"), DeviceChoice::Cpu, 1)
        .unwrap();
    assert_eq!(provider, Provider::Cpu);
    assert_eq!(session.inputs()[0].name(), "X");
    let (shape, y) = runtime::run_f32(&mut session, &[3, 2], vec![1., 2., 3., 4., 5., 6.]).unwrap();
    assert_eq!(shape, vec![3, 2]);
    // Y = X * W with W = [[1, 2], [3, 4], [5, 6]] stored in the model.
    assert_eq!(y, vec![1., 4., 9., 16., 25., 36.]);

    // Without a GPU (or without onnxruntime-gpu), auto falls back to CPU and cuda refuses.
    let (_, auto) = rt
        .session(&wheel_model("mul_1.onnx"), DeviceChoice::Auto, 1)
        .unwrap();
    if auto == Provider::Cpu {
        let err = rt
            .session(&wheel_model("mul_1.onnx"), DeviceChoice::Cuda, 1)
            .map(|_| ())
            .expect_err("cuda must be refused when it cannot register");
        assert!(err.to_string().contains("CUDA"), "{err}");
    }

    let err = rt
        .session(&wheel_model("no_such_model.onnx"), DeviceChoice::Cpu, 1)
        .map(|_| ())
        .expect_err("a missing model is an error");
    assert!(err.to_string().contains("no_such_model.onnx"), "{err}");
}
