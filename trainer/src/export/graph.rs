//! A small builder over ONNX's protobuf messages: named values, float32
//! initializers stored as little-endian raw bytes, one method per operator the
//! exporter uses, and the model wrapper (opset, IR version, typed inputs/outputs).

use std::collections::{BTreeMap, BTreeSet};

use super::proto::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto, type_proto,
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};

/// Opset of the default domain: 17 has every operator used here in its current form
/// (Clip with min/max inputs, Gemm, AveragePool with count_include_pad).
pub const OPSET: i64 = 17;
/// IR version 8 (ONNX 1.12, the release of opset 17): the oldest that can carry
/// opset 17, so every ONNX Runtime since 1.12 (1.31 included) reads the file.
pub const IR_VERSION: i64 = 8;

/// A dimension of a graph input or output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GraphDim {
    Fixed(i64),
    Named(&'static str),
}

/// Graph under construction. Value names are unique: every op gets a fresh output
/// name derived from a readable stem (`features.3.conv.1.0/conv`, ...).
#[derive(Default)]
pub struct GraphBuilder {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
    used: BTreeMap<String, usize>,
    ops: BTreeSet<String>,
}

fn attr_int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Int as i32),
        i: Some(v),
        ..Default::default()
    }
}

fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Ints as i32),
        ints: v.to_vec(),
        ..Default::default()
    }
}

fn attr_float(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Float as i32),
        f: Some(v),
        ..Default::default()
    }
}

fn value_info(name: &str, dims: &[GraphDim]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| tensor_shape_proto::Dimension {
            value: Some(match d {
                GraphDim::Fixed(n) => tensor_shape_proto::dimension::Value::DimValue(*n),
                GraphDim::Named(s) => tensor_shape_proto::dimension::Value::DimParam(s.to_string()),
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(DataType::Float as i32),
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

impl GraphBuilder {
    pub fn new() -> Self {
        GraphBuilder::default()
    }

    /// A unique value name starting with `stem`.
    fn fresh(&mut self, stem: &str) -> String {
        let n = self.used.entry(stem.to_string()).or_insert(0);
        *n += 1;
        if *n == 1 {
            stem.to_string()
        } else {
            format!("{stem}_{}", *n - 1)
        }
    }

    /// Operator types used so far (for reports).
    pub fn op_types(&self) -> Vec<String> {
        self.ops.iter().cloned().collect()
    }

    pub fn input(&mut self, name: &str, dims: &[GraphDim]) -> String {
        let name = self.fresh(name);
        self.inputs.push(value_info(&name, dims));
        name
    }

    /// Marks `value` as a graph output called exactly `name` (through Identity, so the
    /// output keeps its contract name whatever produced it); returns `name`.
    pub fn output(&mut self, value: &str, name: &str, dims: &[GraphDim]) -> String {
        let out = self.node("Identity", &[value], name, vec![]);
        debug_assert_eq!(out, name, "output names are reserved for outputs");
        self.outputs.push(value_info(&out, dims));
        out
    }

    /// A float32 initializer with `dims` holding `values` (row-major), raw little-endian.
    pub fn constant(&mut self, stem: &str, dims: &[i64], values: &[f32]) -> String {
        let name = self.fresh(stem);
        let mut raw = Vec::with_capacity(values.len() * 4);
        for v in values {
            raw.extend_from_slice(&v.to_le_bytes());
        }
        self.initializers.push(TensorProto {
            name: Some(name.clone()),
            dims: dims.to_vec(),
            data_type: Some(DataType::Float as i32),
            raw_data: Some(raw),
            ..Default::default()
        });
        name
    }

    /// An int64 initializer (indices for Gather).
    pub fn constant_i64(&mut self, stem: &str, dims: &[i64], values: &[i64]) -> String {
        let name = self.fresh(stem);
        let mut raw = Vec::with_capacity(values.len() * 8);
        for v in values {
            raw.extend_from_slice(&v.to_le_bytes());
        }
        self.initializers.push(TensorProto {
            name: Some(name.clone()),
            dims: dims.to_vec(),
            data_type: Some(DataType::Int64 as i32),
            raw_data: Some(raw),
            ..Default::default()
        });
        name
    }

    /// Appends a node and returns its (single) output's name, made unique from `stem`.
    pub fn node(
        &mut self,
        op: &str,
        inputs: &[&str],
        stem: &str,
        attribute: Vec<AttributeProto>,
    ) -> String {
        let out = self.fresh(stem);
        self.ops.insert(op.to_string());
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.clone()],
            name: Some(out.clone()),
            op_type: Some(op.into()),
            attribute,
            ..Default::default()
        });
        out
    }

    /// `inputs`: x, w and optionally the bias, as ONNX's Conv takes them.
    pub fn conv(&mut self, inputs: &[&str], cfg: ConvAttrs, stem: &str) -> String {
        let Window {
            kernel,
            stride,
            padding: p,
        } = cfg.window;
        self.node(
            "Conv",
            inputs,
            stem,
            vec![
                attr_ints("kernel_shape", &[kernel, kernel]),
                attr_ints("strides", &[stride, stride]),
                attr_ints("pads", &[p, p, p, p]),
                attr_ints("dilations", &[1, 1]),
                attr_int("group", cfg.groups),
            ],
        )
    }

    pub fn relu(&mut self, x: &str, stem: &str) -> String {
        self.node("Relu", &[x], stem, vec![])
    }

    /// ReLU6 as Clip(x, 0, 6) (min/max are inputs since opset 11).
    pub fn relu6(&mut self, x: &str, stem: &str) -> String {
        let lo = self.constant("clip_min", &[], &[0.0]);
        let hi = self.constant("clip_max", &[], &[6.0]);
        self.node("Clip", &[x, &lo, &hi], stem, vec![])
    }

    /// torchvision's MaxPool2d(k, stride, padding) with floor rounding; ONNX ignores
    /// padded positions in the max, as PyTorch does.
    pub fn max_pool(&mut self, x: &str, window: Window, stem: &str) -> String {
        let Window {
            kernel: k,
            stride,
            padding: p,
        } = window;
        self.node(
            "MaxPool",
            &[x],
            stem,
            vec![
                attr_ints("kernel_shape", &[k, k]),
                attr_ints("strides", &[stride, stride]),
                attr_ints("pads", &[p, p, p, p]),
                attr_int("ceil_mode", 0),
            ],
        )
    }

    /// Average over non-overlapping kh x kw windows (no padding).
    pub fn avg_pool(&mut self, x: &str, kh: i64, kw: i64, stem: &str) -> String {
        self.node(
            "AveragePool",
            &[x],
            stem,
            vec![
                attr_ints("kernel_shape", &[kh, kw]),
                attr_ints("strides", &[kh, kw]),
                attr_ints("pads", &[0, 0, 0, 0]),
                attr_int("ceil_mode", 0),
                attr_int("count_include_pad", 0),
            ],
        )
    }

    pub fn global_avg_pool(&mut self, x: &str, stem: &str) -> String {
        self.node("GlobalAveragePool", &[x], stem, vec![])
    }

    /// [N, d1, d2, ...] -> [N, d1*d2*...].
    pub fn flatten(&mut self, x: &str, stem: &str) -> String {
        self.node("Flatten", &[x], stem, vec![attr_int("axis", 1)])
    }

    /// x [N, in] -> x W^T + b with W [out, in] (torch's Linear layout).
    pub fn linear(&mut self, x: &str, w: &str, b: &str, stem: &str) -> String {
        self.node(
            "Gemm",
            &[x, w, b],
            stem,
            vec![
                attr_float("alpha", 1.0),
                attr_float("beta", 1.0),
                attr_int("transA", 0),
                attr_int("transB", 1),
            ],
        )
    }

    pub fn matmul(&mut self, a: &str, b: &str, stem: &str) -> String {
        self.node("MatMul", &[a, b], stem, vec![])
    }

    pub fn add(&mut self, a: &str, b: &str, stem: &str) -> String {
        self.node("Add", &[a, b], stem, vec![])
    }

    pub fn sub(&mut self, a: &str, b: &str, stem: &str) -> String {
        self.node("Sub", &[a, b], stem, vec![])
    }

    pub fn mul(&mut self, a: &str, b: &str, stem: &str) -> String {
        self.node("Mul", &[a, b], stem, vec![])
    }

    /// x reshaped to `shape` (an int64 constant; 0 keeps that dimension, the batch).
    pub fn reshape(&mut self, x: &str, shape: &str, stem: &str) -> String {
        self.node("Reshape", &[x, shape], stem, vec![])
    }

    /// The sum over `axis`, which is dropped (opset 13's ReduceSum, axes as an input).
    pub fn reduce_sum(&mut self, x: &str, axis: i64, stem: &str) -> String {
        let axes = self.constant_i64("reduce_axes", &[1], &[axis]);
        self.node(
            "ReduceSum",
            &[x, &axes],
            stem,
            vec![attr_int("keepdims", 0)],
        )
    }

    pub fn div(&mut self, a: &str, b: &str, stem: &str) -> String {
        self.node("Div", &[a, b], stem, vec![])
    }

    pub fn concat(&mut self, xs: &[&str], axis: i64, stem: &str) -> String {
        self.node("Concat", xs, stem, vec![attr_int("axis", axis)])
    }

    /// Columns `indices` of x [N, V] in that order.
    pub fn gather_columns(&mut self, x: &str, indices: &[i64], stem: &str) -> String {
        let idx = self.constant_i64("column_order", &[indices.len() as i64], indices);
        self.node("Gather", &[x, &idx], stem, vec![attr_int("axis", 1)])
    }

    /// The finished model.
    pub fn finish(self, doc: &str) -> ModelProto {
        ModelProto {
            ir_version: Some(IR_VERSION),
            opset_import: vec![OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(OPSET),
            }],
            producer_name: Some("vcl".into()),
            producer_version: Some(env!("CARGO_PKG_VERSION").into()),
            doc_string: Some(doc.into()),
            graph: Some(GraphProto {
                node: self.nodes,
                name: Some("vcl_encoder".into()),
                initializer: self.initializers,
                input: self.inputs,
                output: self.outputs,
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

/// A square convolution's hyper-parameters, named so they cannot be swapped.
#[derive(Clone, Copy, Debug)]
pub struct ConvAttrs {
    pub window: Window,
    pub groups: i64,
}

/// A square kernel's size, stride and symmetric padding (torchvision's k, s, p).
#[derive(Clone, Copy, Debug)]
pub struct Window {
    pub kernel: i64,
    pub stride: i64,
    pub padding: i64,
}
