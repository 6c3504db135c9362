include!("../build-support/libtorch_link.rs");

/// Generates the ONNX protobuf messages (`onnx.rs` in OUT_DIR) for `onnx_export` from
/// ONNX's own schema, vendored as proto/onnx.proto (onnx 1.23.2, Apache-2.0), with
/// protox as the compiler so that no protoc binary is needed.
fn onnx_proto() {
    println!("cargo:rerun-if-changed=proto/onnx.proto");
    let fds = match protox::compile(["onnx.proto"], ["proto"]) {
        Ok(fds) => fds,
        Err(e) => panic!("compiling proto/onnx.proto: {e}"),
    };
    if let Err(e) = prost_build::Config::new().compile_fds(fds) {
        panic!("generating Rust for proto/onnx.proto: {e}");
    }
}

fn main() {
    libtorch_link();
    onnx_proto();
}
