//! What an uploaded ONNX model is, decided from its protobuf before anything runs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use veil_onnx::pb::{self, ModelProto};
use veil_onnx::{Attributes, ClassLabels, domain, dtype};

use crate::{Limits, ModelError};

/// Operators a model may use: arithmetic, activations, shape plumbing and the scikit-learn
/// ONNX-ML family. No control flow (Loop, If, Scan), no custom domains: a validation run must
/// be a fixed, bounded computation.
const ALLOWED: &[(&str, &[&str])] = &[
    (
        "ai.onnx",
        &[
            "Abs",
            "Add",
            "ArgMax",
            "BatchNormalization",
            "Cast",
            "Clip",
            "Concat",
            "Constant",
            "Div",
            "Equal",
            "Erf",
            "Exp",
            "Flatten",
            "Gather",
            "Gemm",
            "Greater",
            "Identity",
            "LeakyRelu",
            "Less",
            "Log",
            "LogSoftmax",
            "MatMul",
            "Max",
            "Min",
            "Mul",
            "Neg",
            "Not",
            "Pow",
            "ReduceMax",
            "ReduceMean",
            "ReduceSum",
            "Relu",
            "Reshape",
            "Shape",
            "Sigmoid",
            "Slice",
            "Softmax",
            "Softplus",
            "Sqrt",
            "Squeeze",
            "Sub",
            "Tanh",
            "Transpose",
            "Unsqueeze",
            "Where",
        ],
    ),
    (
        "ai.onnx.ml",
        &[
            "ArrayFeatureExtractor",
            "LinearClassifier",
            "LinearRegressor",
            "Normalizer",
            "Scaler",
            "TreeEnsembleClassifier",
            "ZipMap",
        ],
    ),
];

/// The allow-list as `domain:Op` strings, for error messages and documentation.
pub fn allowed_operators() -> Vec<String> {
    ALLOWED
        .iter()
        .flat_map(|(d, ops)| ops.iter().map(move |o| format!("{d}:{o}")))
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoInfo {
    pub name: String,
    /// `float`, `double`, `int64`, `int32`, `string` or `other`.
    pub dtype: String,
    /// Dimensions; `None` for symbolic ones (the batch).
    pub shape: Vec<Option<i64>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ModelKind {
    /// Emits a label tensor (int64 or string), possibly with scores.
    Classifier {
        label_output: String,
        classes: Option<ClassLabels>,
    },
    /// Emits a score per class (probabilities or logits); the prediction is the argmax.
    ScoreClassifier {
        scores_output: String,
        classes: usize,
    },
    /// Emits one number per row.
    Regressor { output: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelSummary {
    pub input: IoInfo,
    /// Outputs used (ZipMap outputs are replaced by the tensors they wrap).
    pub outputs: Vec<IoInfo>,
    pub n_features: usize,
    pub kind: ModelKind,
    /// Operator counts, `domain:Op` → n.
    pub operators: BTreeMap<String, usize>,
    pub producer: String,
    pub opset: i64,
    pub size_bytes: usize,
}

fn io_info(v: &pb::ValueInfoProto) -> IoInfo {
    let (dtype, shape) =
        veil_onnx::tensor_type(v).map_or(("other", Vec::new()), |(t, dims)| (dtype::name(t), dims));
    IoInfo {
        name: v.name.clone(),
        dtype: dtype.to_string(),
        shape,
    }
}

/// Decodes the protobuf (the decoder's panics become errors).
pub(crate) fn decode(bytes: &[u8]) -> Result<ModelProto, ModelError> {
    veil_onnx::decode(bytes).map_err(|e| ModelError::Corrupt(e.to_string()))
}

/// An integer-list attribute, `None` when missing or empty.
pub(crate) fn attr_ints(n: &pb::NodeProto, name: &str) -> Option<Vec<i64>> {
    Some(n.ints(name)).filter(|v| !v.is_empty())
}

/// Inspects and type-checks an uploaded model. Succeeds only if the model is in the
/// supported subset, its input is one feature vector of known width, its outputs say what it
/// predicts, and tract can plan and run it.
pub fn inspect(bytes: &[u8], limits: Limits) -> Result<ModelSummary, ModelError> {
    if bytes.len() > limits.max_bytes {
        return Err(ModelError::TooLarge {
            limit: limits.max_bytes,
        });
    }
    let proto = decode(bytes)?;
    let graph = proto
        .graph
        .as_ref()
        .ok_or_else(|| ModelError::Corrupt("the file has no graph".into()))?;
    if graph.node.is_empty() {
        return Err(ModelError::Corrupt("the graph has no operators".into()));
    }
    if graph.node.len() > limits.max_operators {
        return Err(ModelError::Unsupported(format!(
            "the graph has {} operators; this node allows {}",
            graph.node.len(),
            limits.max_operators
        )));
    }

    let mut operators = BTreeMap::new();
    for n in &graph.node {
        let d = domain(&n.domain);
        let allowed = ALLOWED
            .iter()
            .any(|(ad, ops)| *ad == d && ops.contains(&n.op_type.as_str()));
        if !allowed {
            return Err(ModelError::Unsupported(format!(
                "operator {d}:{} is not allowed on this node (no control flow or custom operators); allowed: {}",
                n.op_type,
                allowed_operators().join(", ")
            )));
        }
        *operators.entry(format!("{d}:{}", n.op_type)).or_insert(0) += 1;
    }

    // The one input: a feature vector or a batch of them.
    let inputs = veil_onnx::fed_inputs(graph);
    let [input] = inputs.as_slice() else {
        return Err(ModelError::Unsupported(format!(
            "the model must take one input (a vector of features); it takes {}",
            inputs.len()
        )));
    };
    let input = io_info(input);
    if !matches!(input.dtype.as_str(), "float" | "double" | "int64" | "int32") {
        return Err(ModelError::Unsupported(format!(
            "the input {} must be a float or integer tensor, not {}",
            input.name, input.dtype
        )));
    }
    let n_features = match input.shape.as_slice() {
        [_, Some(f)] | [Some(f)] => usize::try_from(*f).unwrap_or(0),
        [_, None] | [None] => {
            return Err(ModelError::Unsupported(
                "the model's number of input features is not fixed".into(),
            ));
        }
        other => {
            return Err(ModelError::Unsupported(format!(
                "the input must be a vector of features ([batch, features]); its shape has {} dimensions",
                other.len()
            )));
        }
    };
    if n_features == 0 || n_features > limits.max_features {
        return Err(ModelError::Unsupported(format!(
            "the model takes {n_features} features; 1 to {} are supported",
            limits.max_features
        )));
    }

    // Outputs, with ZipMap (a sequence of maps, which no tensor runtime has) replaced by the
    // probability tensor it wraps.
    let zipmaps: Vec<&pb::NodeProto> = graph
        .node
        .iter()
        .filter(|n| n.op_type == "ZipMap")
        .collect();
    let mut outputs: Vec<IoInfo> = Vec::new();
    for o in &graph.output {
        if let Some(z) = zipmaps.iter().find(|z| z.output.contains(&o.name)) {
            if let Some(inner) = z.input.first() {
                outputs.push(IoInfo {
                    name: inner.clone(),
                    dtype: "float".into(),
                    shape: vec![None, None],
                });
            }
        } else {
            outputs.push(io_info(o));
        }
    }

    let classes = graph.node.iter().find_map(|n| {
        if !matches!(
            n.op_type.as_str(),
            "LinearClassifier" | "TreeEnsembleClassifier"
        ) {
            return None;
        }
        veil_onnx::class_labels(n)
    });
    let label = outputs
        .iter()
        .find(|o| matches!(o.dtype.as_str(), "int64" | "int32" | "string"));
    let floats: Vec<&IoInfo> = outputs
        .iter()
        .filter(|o| o.dtype == "float" || o.dtype == "double")
        .collect();
    let regressor_op = graph.node.iter().any(|n| n.op_type == "LinearRegressor");
    let kind = if let Some(l) = label {
        ModelKind::Classifier {
            label_output: l.name.clone(),
            classes,
        }
    } else {
        match floats.as_slice() {
            [f] => match f.shape.last().copied().flatten() {
                Some(c) if c >= 2 && !regressor_op => ModelKind::ScoreClassifier {
                    scores_output: f.name.clone(),
                    classes: usize::try_from(c).unwrap_or(2),
                },
                Some(1) | None if f.shape.len() <= 2 => ModelKind::Regressor {
                    output: f.name.clone(),
                },
                _ => {
                    return Err(ModelError::Unsupported(format!(
                        "cannot tell what the output {} predicts (shape {:?})",
                        f.name, f.shape
                    )));
                }
            },
            [] => {
                return Err(ModelError::Unsupported(
                    "the model has no label, score or value output".into(),
                ));
            }
            _ => {
                return Err(ModelError::Unsupported(
                    "the model has several numeric outputs and no label output; export it with one"
                        .into(),
                ));
            }
        }
    };

    let summary = ModelSummary {
        input,
        outputs,
        n_features,
        kind,
        operators,
        producer: proto.producer_name.clone(),
        opset: proto
            .opset_import
            .iter()
            .find(|o| domain(&o.domain) == "ai.onnx")
            .map_or(0, |o| o.version),
        size_bytes: bytes.len(),
    };
    // Can it be planned, within the node's bounds on one row's work and memory (checked on
    // the static shapes, before anything runs), and run? (Unsupported attribute modes fail
    // when planning.)
    let model = crate::runtime::Model::from_proto(&proto, &summary)?;
    check_cost(model.cost(), limits)?;
    model.predict(&vec![0.0; summary.n_features], 1)?;
    Ok(summary)
}

/// Refuses a planned model whose one row would take more work or memory than `limits` allow.
pub fn check_cost(cost: crate::ModelCost, limits: Limits) -> Result<(), ModelError> {
    if cost.largest_tensor > limits.max_tensor_elements {
        return Err(ModelError::Unsupported(format!(
            "the model builds a tensor of {} elements for one row; this node allows {}",
            cost.largest_tensor, limits.max_tensor_elements
        )));
    }
    if cost.work_per_row > limits.max_work_per_row {
        return Err(ModelError::Unsupported(format!(
            "the model does about {} operations per row; this node allows {}",
            cost.work_per_row, limits.max_work_per_row
        )));
    }
    Ok(())
}
