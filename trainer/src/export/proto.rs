//! ONNX's protobuf messages, generated at build time by prost from ONNX's own schema
//! (trainer/proto/onnx.proto; see build.rs).

#![allow(clippy::all, missing_docs, rustdoc::all)]

include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
