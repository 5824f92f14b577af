//! What a model computes, read from its ONNX graph as plain floating-point maths.
//!
//! Only three shapes of model are accepted, because only they have an efficient exact circuit:
//! a chain of dense layers with Relu/Sigmoid/Tanh between them (linear and logistic regression
//! are the one-layer case, read from Gemm/MatMul/Add, scikit-learn's `Scaler`, `LinearClassifier`
//! and `LinearRegressor`), and tree ensembles (`TreeEnsembleClassifier`/`Regressor`). The
//! post-processing exporters append (sigmoid or softmax probabilities, argmax, label lookup,
//! ZipMap) is recognised and dropped: the client derives labels from the final scores.
//! Anything else is refused with the name of the node that does not fit.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use tract_onnx::pb::{self, ModelProto, NodeProto, TensorProto};
use tract_onnx::prelude::Framework;

use crate::FheError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    Relu,
    Sigmoid,
    Tanh,
}

impl Activation {
    pub fn apply(self, x: f64) -> f64 {
        match self {
            Activation::Relu => x.max(0.0),
            Activation::Sigmoid => 1.0 / (1.0 + (-x).exp()),
            Activation::Tanh => x.tanh(),
        }
    }
}

/// `y = W·x + b`, with `w[out][in]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dense {
    pub w: Vec<Vec<f64>>,
    pub b: Vec<f64>,
}

impl Dense {
    pub fn n_in(&self) -> usize {
        self.w.first().map_or(0, Vec::len)
    }
    pub fn n_out(&self) -> usize {
        self.w.len()
    }
    pub fn apply(&self, x: &[f64]) -> Vec<f64> {
        self.w
            .iter()
            .zip(&self.b)
            .map(|(row, b)| row.iter().zip(x).map(|(w, x)| w * x).sum::<f64>() + b)
            .collect()
    }
    /// `other ∘ self`.
    fn then(&self, other: &Dense) -> Dense {
        let w = other
            .w
            .iter()
            .map(|orow| {
                (0..self.n_in())
                    .map(|i| orow.iter().zip(&self.w).map(|(o, srow)| o * srow[i]).sum())
                    .collect()
            })
            .collect();
        let b = other.apply(&self.b);
        Dense { w, b }
    }
    fn identity(n: usize) -> Dense {
        Dense {
            w: (0..n)
                .map(|i| (0..n).map(|j| if i == j { 1.0 } else { 0.0 }).collect())
                .collect(),
            b: vec![0.0; n],
        }
    }
}

/// How final scores become a prediction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Head {
    /// One score; the label is `classes[1]` when it is positive.
    Binary { classes: [String; 2] },
    /// One score per class; the label is the argmax.
    Argmax { classes: Vec<String> },
    /// One number.
    Regression,
}

impl Head {
    /// The class labels (none for a regression).
    pub fn classes(&self) -> Vec<String> {
        match self {
            Head::Binary { classes } => classes.to_vec(),
            Head::Argmax { classes } => classes.clone(),
            Head::Regression => Vec::new(),
        }
    }

    pub fn n_scores(&self) -> usize {
        match self {
            Head::Binary { .. } | Head::Regression => 1,
            Head::Argmax { classes } => classes.len(),
        }
    }
    pub fn label(&self, scores: &[f64]) -> Option<String> {
        match self {
            Head::Binary { classes } => Some(classes[usize::from(scores[0] > 0.0)].clone()),
            Head::Argmax { classes } => {
                let mut best = 0;
                for (i, s) in scores.iter().enumerate() {
                    if *s > scores[best] {
                        best = i;
                    }
                }
                classes.get(best).cloned()
            }
            Head::Regression => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Network {
    /// Dense layers; an activation follows every layer but the last.
    pub layers: Vec<Dense>,
    pub activations: Vec<Activation>,
    pub head: Head,
}

impl Network {
    pub fn scores(&self, x: &[f64]) -> Vec<f64> {
        let mut v = x.to_vec();
        for (i, l) in self.layers.iter().enumerate() {
            v = l.apply(&v);
            if let Some(a) = self.activations.get(i) {
                v.iter_mut().for_each(|x| *x = a.apply(*x));
            }
        }
        v
    }
}

/// One binary tree. Node `i` is internal when `leaf[i]` is `None`: it sends `x` to
/// `right[i]` when `x[feature[i]] > threshold[i]`, else to `left[i]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tree {
    pub feature: Vec<usize>,
    pub threshold: Vec<f64>,
    pub left: Vec<usize>,
    pub right: Vec<usize>,
    /// Leaf contributions, one per score.
    pub leaf: Vec<Option<Vec<f64>>>,
}

impl Tree {
    pub fn eval(&self, x: &[f64]) -> &[f64] {
        let mut i = 0;
        loop {
            if let Some(v) = &self.leaf[i] {
                return v;
            }
            i = if x[self.feature[i]] > self.threshold[i] {
                self.right[i]
            } else {
                self.left[i]
            };
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Forest {
    pub trees: Vec<Tree>,
    /// Added to the sum of the leaves (already includes averaging).
    pub base: Vec<f64>,
    pub n_features: usize,
    pub head: Head,
}

impl Forest {
    pub fn scores(&self, x: &[f64]) -> Vec<f64> {
        let mut s = self.base.clone();
        for t in &self.trees {
            for (a, v) in s.iter_mut().zip(t.eval(x)) {
                *a += v;
            }
        }
        s
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FloatModel {
    Network(Network),
    Forest(Forest),
}

impl FloatModel {
    pub fn n_features(&self) -> usize {
        match self {
            FloatModel::Network(n) => n.layers[0].n_in(),
            FloatModel::Forest(f) => f.n_features,
        }
    }
    pub fn head(&self) -> &Head {
        match self {
            FloatModel::Network(n) => &n.head,
            FloatModel::Forest(f) => &f.head,
        }
    }
    pub fn scores(&self, x: &[f64]) -> Vec<f64> {
        match self {
            FloatModel::Network(n) => n.scores(x),
            FloatModel::Forest(f) => f.scores(x),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reading the graph.

fn unsupported(msg: impl Into<String>) -> FheError {
    FheError::Unsupported(msg.into())
}

fn decode(bytes: &[u8]) -> Result<ModelProto, FheError> {
    std::panic::catch_unwind(|| tract_onnx::onnx().proto_model_for_read(&mut &bytes[..]))
        .map_err(|_| FheError::Corrupt("the ONNX decoder failed on a malformed model".into()))?
        .map_err(|e| FheError::Corrupt(e.to_string()))
}

fn attr<'a>(n: &'a NodeProto, name: &str) -> Option<&'a pb::AttributeProto> {
    n.attribute.iter().find(|a| a.name == name)
}
fn attr_floats(n: &NodeProto, name: &str) -> Vec<f64> {
    attr(n, name)
        .map(|a| a.floats.iter().map(|&f| f as f64).collect())
        .unwrap_or_default()
}
fn attr_ints(n: &NodeProto, name: &str) -> Vec<i64> {
    attr(n, name).map(|a| a.ints.clone()).unwrap_or_default()
}
fn attr_int(n: &NodeProto, name: &str, default: i64) -> i64 {
    attr(n, name).map_or(default, |a| a.i)
}
fn attr_float(n: &NodeProto, name: &str, default: f64) -> f64 {
    attr(n, name).map_or(default, |a| a.f as f64)
}
fn attr_string(n: &NodeProto, name: &str) -> Option<String> {
    attr(n, name).map(|a| String::from_utf8_lossy(&a.s).into_owned())
}
fn attr_strings(n: &NodeProto, name: &str) -> Vec<String> {
    attr(n, name)
        .map(|a| {
            a.strings
                .iter()
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A constant tensor as (dims, values in row-major order). Only numeric types.
#[derive(Debug, Clone)]
struct Const {
    dims: Vec<usize>,
    data: Vec<f64>,
}

fn tensor(t: &TensorProto) -> Result<Const, FheError> {
    let dims: Vec<usize> = t
        .dims
        .iter()
        .map(|&d| usize::try_from(d).unwrap_or(usize::MAX))
        .collect();
    let n: usize = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| unsupported("tensor too large"))?;
    let raw = &t.raw_data;
    let data: Vec<f64> = match t.data_type {
        1 if !raw.is_empty() => raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
            .collect(),
        1 => t.float_data.iter().map(|&f| f as f64).collect(),
        11 if !raw.is_empty() => raw
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect(),
        11 => t.double_data.clone(),
        7 if !raw.is_empty() => raw
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f64)
            .collect(),
        7 => t.int64_data.iter().map(|&v| v as f64).collect(),
        6 if !raw.is_empty() => raw
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
            .collect(),
        6 => t.int32_data.iter().map(|&v| v as f64).collect(),
        other => {
            return Err(unsupported(format!(
                "constant '{}' has element type {other}, not a number",
                t.name
            )));
        }
    };
    if data.len() != n {
        return Err(FheError::Corrupt(format!(
            "constant '{}' holds {} values for shape {:?}",
            t.name,
            data.len(),
            dims
        )));
    }
    Ok(Const { dims, data })
}

fn string_tensor(t: &TensorProto) -> Option<Vec<String>> {
    (t.data_type == 8).then(|| {
        t.string_data
            .iter()
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect()
    })
}

/// What a tensor name stands for while walking the graph.
#[derive(Debug, Clone)]
enum Sym {
    /// The running feature vector: `act(affine(previous))`.
    Main,
    /// Final scores went through a sigmoid/softmax: a probability of the scores.
    Probabilities,
    /// The running vector went through a sigmoid: a hidden activation if a dense layer reads
    /// it next, otherwise the logistic link of the head.
    SigmoidOut,
    /// Derived from the scores for presentation (argmax, labels, concatenations); ignored.
    Post,
    Const(Const),
    Strings(Vec<String>),
    /// A constant of a type the reader does not interpret (bool, …); an error if used as an
    /// operand of a layer.
    Opaque,
}

struct Builder {
    /// Finished layers and the activation after each.
    layers: Vec<(Dense, Option<Activation>)>,
    /// The affine map accumulated since the last activation (None = identity on the input).
    pending: Option<Dense>,
    width: usize,
    classes: Option<Vec<String>>,
    forest: Option<Forest>,
    /// A sigmoid or softmax was applied to the final scores.
    link: bool,
}

impl Builder {
    fn push_affine(&mut self, d: Dense) -> Result<(), FheError> {
        if d.n_in() != self.width {
            return Err(unsupported(format!(
                "a layer expects {} inputs but receives {}",
                d.n_in(),
                self.width
            )));
        }
        self.width = d.n_out();
        self.pending = Some(match self.pending.take() {
            None => d,
            Some(p) => p.then(&d),
        });
        Ok(())
    }
    fn push_activation(&mut self, a: Activation) -> Result<(), FheError> {
        let d = self
            .pending
            .take()
            .ok_or_else(|| unsupported("an activation directly on the input is not supported"))?;
        self.layers.push((d, Some(a)));
        Ok(())
    }
}

fn class_names(n: &NodeProto) -> Option<Vec<String>> {
    let ints = attr_ints(n, "classlabels_ints");
    let ints = if ints.is_empty() {
        attr_ints(n, "classlabels_int64s")
    } else {
        ints
    };
    if !ints.is_empty() {
        return Some(ints.iter().map(i64::to_string).collect());
    }
    let s = attr_strings(n, "classlabels_strings");
    (!s.is_empty()).then_some(s)
}

/// Reads the model. `max_features` bounds the input width before anything is allocated.
pub fn read_onnx(bytes: &[u8], max_features: usize) -> Result<FloatModel, FheError> {
    let proto = decode(bytes)?;
    let graph = proto
        .graph
        .as_ref()
        .ok_or_else(|| FheError::Corrupt("no graph".into()))?;
    let mut syms: HashMap<String, Sym> = HashMap::new();
    for init in &graph.initializer {
        let s = match string_tensor(init) {
            Some(v) => Sym::Strings(v),
            None => match tensor(init) {
                Ok(c) => Sym::Const(c),
                Err(FheError::Unsupported(_)) => Sym::Opaque,
                Err(e) => return Err(e),
            },
        };
        syms.insert(init.name.clone(), s);
    }
    let inputs: Vec<&pb::ValueInfoProto> = graph
        .input
        .iter()
        .filter(|i| !syms.contains_key(&i.name))
        .collect();
    let [input] = inputs.as_slice() else {
        return Err(unsupported("the model must have exactly one input"));
    };
    let width = input_width(input).ok_or_else(|| {
        unsupported("the input must be a [batch, features] tensor of known width")
    })?;
    if width == 0 || width > max_features {
        return Err(unsupported(format!(
            "the input has {width} features; between 1 and {max_features} are supported"
        )));
    }
    syms.insert(input.name.clone(), Sym::Main);
    let mut b = Builder {
        layers: vec![],
        pending: None,
        width,
        classes: None,
        forest: None,
        link: false,
    };

    for node in &graph.node {
        let get = |i: usize| node.input.get(i).and_then(|n| syms.get(n)).cloned();
        let out = step(node, &get, &mut b)?;
        for o in &node.output {
            syms.insert(o.clone(), out.clone());
        }
    }

    if let Some(f) = b.forest {
        if !b.layers.is_empty() || b.pending.is_some() {
            return Err(unsupported("trees must read the raw input"));
        }
        return Ok(FloatModel::Forest(f));
    }
    let last = b.pending.take().ok_or_else(|| {
        unsupported("the model must end in a dense layer (Gemm, MatMul+Add or a linear model)")
    })?;
    let mut layers: Vec<Dense> = b.layers.iter().map(|(d, _)| d.clone()).collect();
    let activations = b.layers.iter().filter_map(|(_, a)| *a).collect();
    // A two-score classifier is decided by the difference of its scores.
    let (last, head) = match (last.n_out(), b.classes) {
        (1, Some(c)) if c.len() == 2 => (
            last,
            Head::Binary {
                classes: [c[0].clone(), c[1].clone()],
            },
        ),
        (1, None) => (last, Head::Regression),
        (2, c) => {
            let c = c.unwrap_or_else(|| vec!["0".into(), "1".into()]);
            if c.len() != 2 {
                return Err(unsupported("2 scores but a different number of classes"));
            }
            let diff = Dense {
                w: vec![
                    last.w[1]
                        .iter()
                        .zip(&last.w[0])
                        .map(|(a, b)| a - b)
                        .collect(),
                ],
                b: vec![last.b[1] - last.b[0]],
            };
            (
                diff,
                Head::Binary {
                    classes: [c[0].clone(), c[1].clone()],
                },
            )
        }
        (k, c) => {
            let c = c.unwrap_or_else(|| (0..k).map(|i| i.to_string()).collect());
            if c.len() != k {
                return Err(unsupported(format!("{k} scores but {} classes", c.len())));
            }
            (last, Head::Argmax { classes: c })
        }
    };
    if head == Head::Regression && b.link {
        return Err(unsupported(
            "a regressor whose output goes through a sigmoid or softmax is not supported",
        ));
    }
    layers.push(last);
    Ok(FloatModel::Network(Network {
        layers,
        activations,
        head,
    }))
}

fn input_width(v: &pb::ValueInfoProto) -> Option<usize> {
    let Some(pb::type_proto::Value::TensorType(tt)) = v.r#type.as_ref()?.value.as_ref() else {
        return None;
    };
    let dims = &tt.shape.as_ref()?.dim;
    let last = dims.last()?;
    match &last.value {
        Some(pb::tensor_shape_proto::dimension::Value::DimValue(w))
            if dims.len() == 2 && *w > 0 =>
        {
            usize::try_from(*w).ok()
        }
        _ => None,
    }
}

fn step(
    node: &NodeProto,
    get: &dyn Fn(usize) -> Option<Sym>,
    b: &mut Builder,
) -> Result<Sym, FheError> {
    let op = node.op_type.as_str();
    let here = || format!("node '{}' ({op})", node.name);
    if matches!(op, "MatMul" | "Gemm") && matches!(get(0), Some(Sym::SigmoidOut)) {
        b.push_activation(Activation::Sigmoid)?;
        let main0 = |i: usize| if i == 0 { Some(Sym::Main) } else { get(i) };
        return step(node, &main0, b);
    }
    let main_in = |i: usize| matches!(get(i), Some(Sym::Main));
    let any_main = (0..node.input.len()).any(main_in);
    let any_probs = (0..node.input.len()).any(|i| {
        matches!(
            get(i),
            Some(Sym::Probabilities | Sym::Post | Sym::SigmoidOut)
        )
    });
    if !any_main {
        if op == "ArrayFeatureExtractor" && any_probs {
            // Label lookup after an argmax: its table names the classes.
            match get(0) {
                Some(Sym::Strings(s)) => b.classes = Some(s),
                Some(Sym::Const(c)) => {
                    b.classes = Some(c.data.iter().map(|v| format!("{}", *v as i64)).collect())
                }
                _ => {}
            }
        }
        if any_probs {
            // Presentation of the final scores: label lookup, 1 - p, concatenation, argmax.
            return Ok(Sym::Post);
        }
        if op == "Constant"
            && let Some(t) = attr(node, "value").and_then(|a| a.t.as_ref())
        {
            return Ok(match string_tensor(t) {
                Some(s) => Sym::Strings(s),
                None => match tensor(t) {
                    Ok(c) => Sym::Const(c),
                    Err(FheError::Unsupported(_)) => Sym::Opaque,
                    Err(e) => return Err(e),
                },
            });
        }
        return Ok(Sym::Post);
    }
    let cst = |i: usize| match get(i) {
        Some(Sym::Const(c)) => Ok(c),
        _ => Err(unsupported(format!(
            "{}: operand {i} must be a constant",
            here()
        ))),
    };
    let w = b.width;
    match (node.domain.as_str(), op) {
        ("" | "ai.onnx", "Cast" | "Identity" | "Flatten" | "Reshape" | "Dropout") => Ok(Sym::Main),
        ("" | "ai.onnx", "MatMul") if main_in(0) => {
            let m = cst(1)?;
            let [rows, cols] = m.dims[..] else {
                return Err(unsupported(format!("{}: weights must be 2-D", here())));
            };
            if rows != w {
                return Err(unsupported(format!(
                    "{}: {rows} weight rows for {w} features",
                    here()
                )));
            }
            let d = Dense {
                w: (0..cols)
                    .map(|j| (0..rows).map(|i| m.data[i * cols + j]).collect())
                    .collect(),
                b: vec![0.0; cols],
            };
            b.push_affine(d)?;
            Ok(Sym::Main)
        }
        ("" | "ai.onnx", "Gemm") if main_in(0) => {
            if attr_int(node, "transA", 0) != 0 {
                return Err(unsupported(format!("{}: transA is not supported", here())));
            }
            let (alpha, beta) = (
                attr_float(node, "alpha", 1.0),
                attr_float(node, "beta", 1.0),
            );
            let m = cst(1)?;
            let [r, c] = m.dims[..] else {
                return Err(unsupported(format!("{}: weights must be 2-D", here())));
            };
            let trans = attr_int(node, "transB", 0) != 0;
            let (n_in, n_out) = if trans { (c, r) } else { (r, c) };
            if n_in != w {
                return Err(unsupported(format!(
                    "{}: weights for {n_in} inputs, {w} given",
                    here()
                )));
            }
            let at = |i: usize, o: usize| {
                if trans {
                    m.data[o * c + i]
                } else {
                    m.data[i * c + o]
                }
            };
            let mut bias = vec![0.0; n_out];
            if node.input.len() > 2 && !node.input[2].is_empty() {
                let cb = cst(2)?;
                bias = broadcast(&cb, n_out)
                    .ok_or_else(|| unsupported(format!("{}: bias shape", here())))?;
            }
            let d = Dense {
                w: (0..n_out)
                    .map(|o| (0..n_in).map(|i| alpha * at(i, o)).collect())
                    .collect(),
                b: bias.iter().map(|v| beta * v).collect(),
            };
            b.push_affine(d)?;
            Ok(Sym::Main)
        }
        ("" | "ai.onnx", "Add" | "Sub" | "Mul" | "Div") => {
            let (ci, main_first) = if main_in(0) { (1, true) } else { (0, false) };
            let c = broadcast(&cst(ci)?, w)
                .ok_or_else(|| unsupported(format!("{}: operand shape", here())))?;
            let mut d = Dense::identity(w);
            match (op, main_first) {
                ("Add", _) => d.b = c,
                ("Sub", true) => d.b = c.iter().map(|v| -v).collect(),
                ("Sub", false) => {
                    d.w.iter_mut().enumerate().for_each(|(i, r)| r[i] = -1.0);
                    d.b = c;
                }
                ("Mul", _) => d.w.iter_mut().enumerate().for_each(|(i, r)| r[i] = c[i]),
                ("Div", true) if c.iter().all(|v| *v != 0.0) => {
                    d.w.iter_mut()
                        .enumerate()
                        .for_each(|(i, r)| r[i] = 1.0 / c[i])
                }
                _ => {
                    return Err(unsupported(format!(
                        "{}: not an affine operation on the features",
                        here()
                    )));
                }
            }
            b.push_affine(d)?;
            Ok(Sym::Main)
        }
        ("ai.onnx.ml", "Scaler") => {
            let (off, sc) = (attr_floats(node, "offset"), attr_floats(node, "scale"));
            let off = if off.len() == 1 { vec![off[0]; w] } else { off };
            let sc = if sc.len() == 1 { vec![sc[0]; w] } else { sc };
            if off.len() != w || sc.len() != w {
                return Err(unsupported(format!("{}: offset/scale width", here())));
            }
            let mut d = Dense::identity(w);
            for i in 0..w {
                d.w[i][i] = sc[i];
                d.b[i] = -off[i] * sc[i];
            }
            b.push_affine(d)?;
            Ok(Sym::Main)
        }
        ("" | "ai.onnx", "Relu" | "Tanh") => {
            b.push_activation(if op == "Relu" {
                Activation::Relu
            } else {
                Activation::Tanh
            })?;
            Ok(Sym::Main)
        }
        // Decided by what reads it (see `Sym::SigmoidOut`).
        ("" | "ai.onnx", "Sigmoid") => {
            b.link = true;
            Ok(Sym::SigmoidOut)
        }
        ("" | "ai.onnx", "Softmax" | "LogSoftmax") => {
            // The link of a multi-class head: argmax is unchanged by it.
            b.link = true;
            Ok(Sym::Probabilities)
        }
        ("ai.onnx.ml", "LinearClassifier" | "LinearRegressor") => {
            let coef = attr_floats(node, "coefficients");
            let icpt = attr_floats(node, "intercepts");
            let k = coef.len().checked_div(w).unwrap_or(0);
            if k == 0 || coef.len() != k * w || (icpt.len() != k && !icpt.is_empty()) {
                return Err(unsupported(format!(
                    "{}: coefficients do not match {w} features",
                    here()
                )));
            }
            let d = Dense {
                w: coef.chunks(w).map(<[f64]>::to_vec).collect(),
                b: if icpt.is_empty() { vec![0.0; k] } else { icpt },
            };
            b.push_affine(d)?;
            if op == "LinearClassifier" {
                let classes = class_names(node)
                    .ok_or_else(|| unsupported(format!("{}: no class labels", here())))?;
                // Binary models may list one score for two classes (score of the second).
                if !(classes.len() == k || (classes.len() == 2 && k == 1)) {
                    return Err(unsupported(format!(
                        "{}: {k} scores for {} classes",
                        here(),
                        classes.len()
                    )));
                }
                b.classes = Some(classes);
            }
            Ok(Sym::Probabilities)
        }
        ("ai.onnx.ml", "Normalizer" | "ZipMap") | ("" | "ai.onnx", "ArgMax") => Ok(Sym::Post),
        ("ai.onnx.ml", "TreeEnsembleClassifier" | "TreeEnsembleRegressor") => {
            if b.pending.is_some() || !b.layers.is_empty() {
                return Err(unsupported(format!(
                    "{}: trees must read the raw input",
                    here()
                )));
            }
            b.forest = Some(read_forest(node, w)?);
            Ok(Sym::Probabilities)
        }
        _ => Err(unsupported(format!(
            "{} is not supported for encrypted inference (supported: dense layers with Relu/Sigmoid/Tanh, \
             linear models, tree ensembles)",
            here()
        ))),
    }
}

fn broadcast(c: &Const, n: usize) -> Option<Vec<f64>> {
    match c.data.len() {
        1 => Some(vec![c.data[0]; n]),
        l if l == n => Some(c.data.clone()),
        _ => None,
    }
}

fn read_forest(node: &NodeProto, n_features: usize) -> Result<Forest, FheError> {
    let classifier = node.op_type == "TreeEnsembleClassifier";
    let here = format!("node '{}' ({})", node.name, node.op_type);
    let tree_ids = attr_ints(node, "nodes_treeids");
    let node_ids = attr_ints(node, "nodes_nodeids");
    let features = attr_ints(node, "nodes_featureids");
    let values = {
        let v = attr_floats(node, "nodes_values");
        if v.is_empty() {
            attr(node, "nodes_values_as_tensor")
                .and_then(|a| a.t.as_ref())
                .map(tensor)
                .transpose()?
                .map(|c| c.data)
                .unwrap_or_default()
        } else {
            v
        }
    };
    let modes = attr_strings(node, "nodes_modes");
    let trues = attr_ints(node, "nodes_truenodeids");
    let falses = attr_ints(node, "nodes_falsenodeids");
    let n = tree_ids.len();
    if [
        node_ids.len(),
        features.len(),
        values.len(),
        modes.len(),
        trues.len(),
        falses.len(),
    ]
    .iter()
    .any(|&l| l != n)
        || n == 0
    {
        return Err(FheError::Corrupt(format!(
            "{here}: node attributes have different lengths"
        )));
    }
    let (w_tree, w_node, w_target, w_value) = if classifier {
        (
            "class_treeids",
            "class_nodeids",
            "class_ids",
            "class_weights",
        )
    } else {
        (
            "target_treeids",
            "target_nodeids",
            "target_ids",
            "target_weights",
        )
    };
    let (lt, ln, lc, lv) = (
        attr_ints(node, w_tree),
        attr_ints(node, w_node),
        attr_ints(node, w_target),
        attr_floats(node, w_value),
    );
    if lt.len() != ln.len() || ln.len() != lc.len() || lc.len() != lv.len() {
        return Err(FheError::Corrupt(format!(
            "{here}: leaf attributes have different lengths"
        )));
    }
    let (head, n_scores, binary_single) = if classifier {
        let classes =
            class_names(node).ok_or_else(|| unsupported(format!("{here}: no class labels")))?;
        let distinct: std::collections::BTreeSet<i64> = lc.iter().copied().collect();
        if classes.len() == 2 && distinct.len() <= 1 {
            // One weight per leaf: the score of the second class.
            (
                Head::Binary {
                    classes: [classes[0].clone(), classes[1].clone()],
                },
                1,
                true,
            )
        } else if classes.len() == 2 {
            (
                Head::Binary {
                    classes: [classes[0].clone(), classes[1].clone()],
                },
                2,
                false,
            )
        } else {
            let k = classes.len();
            (Head::Argmax { classes }, k, false)
        }
    } else {
        if attr_int(node, "n_targets", 1) != 1 {
            return Err(unsupported(format!(
                "{here}: only one regression target is supported"
            )));
        }
        (Head::Regression, 1, false)
    };
    let post = attr_string(node, "post_transform").unwrap_or_else(|| "NONE".into());
    if !matches!(
        post.as_str(),
        "NONE" | "LOGISTIC" | "SOFTMAX" | "PROBIT" | "SOFTMAX_ZERO"
    ) {
        return Err(unsupported(format!("{here}: post_transform {post}")));
    }
    let agg = attr_string(node, "aggregate_function").unwrap_or_else(|| "SUM".into());

    // Group nodes per tree and index them by id.
    let mut by_tree: std::collections::BTreeMap<i64, HashMap<i64, usize>> = Default::default();
    for i in 0..n {
        by_tree
            .entry(tree_ids[i])
            .or_default()
            .insert(node_ids[i], i);
    }
    let mut leaf_values: HashMap<(i64, i64), Vec<f64>> = HashMap::new();
    for j in 0..lt.len() {
        let v = leaf_values
            .entry((lt[j], ln[j]))
            .or_insert_with(|| vec![0.0; n_scores]);
        let k = if binary_single {
            0
        } else {
            usize::try_from(lc[j])
                .ok()
                .filter(|&k| k < n_scores)
                .ok_or_else(|| FheError::Corrupt(format!("{here}: class id out of range")))?
        };
        v[k] += lv[j];
    }
    let n_trees = by_tree.len();
    let mut trees = Vec::with_capacity(n_trees);
    for (tid, ids) in &by_tree {
        // Renumber from the root (node id 0 or the smallest id).
        let root = *ids.keys().min().unwrap_or(&0);
        let mut order: Vec<i64> = vec![root];
        let mut index: HashMap<i64, usize> = HashMap::from([(root, 0)]);
        let mut t = Tree {
            feature: vec![],
            threshold: vec![],
            left: vec![],
            right: vec![],
            leaf: vec![],
        };
        let mut k = 0;
        while k < order.len() {
            if order.len() > ids.len() {
                return Err(FheError::Corrupt(format!(
                    "{here}: tree {tid} is not a tree"
                )));
            }
            let id = order[k];
            let &i = ids.get(&id).ok_or_else(|| {
                FheError::Corrupt(format!("{here}: tree {tid} refers to missing node {id}"))
            })?;
            let mode = modes[i].as_str();
            if mode == "LEAF" {
                let v = leaf_values
                    .get(&(*tid, id))
                    .cloned()
                    .unwrap_or_else(|| vec![0.0; n_scores]);
                t.feature.push(0);
                t.threshold.push(0.0);
                t.left.push(0);
                t.right.push(0);
                t.leaf.push(Some(v));
            } else {
                let f = usize::try_from(features[i])
                    .ok()
                    .filter(|&f| f < n_features)
                    .ok_or_else(|| FheError::Corrupt(format!("{here}: feature id out of range")))?;
                let mut child = |cid: i64| -> usize {
                    *index.entry(cid).or_insert_with(|| {
                        order.push(cid);
                        order.len() - 1
                    })
                };
                let (tn, fn_) = (child(trues[i]), child(falses[i]));
                // Normalise every comparison to `x > threshold → right`.
                let thr = values[i];
                let (left, right, thr) = match mode {
                    "BRANCH_LEQ" => (tn, fn_, thr),
                    "BRANCH_GT" => (fn_, tn, thr),
                    // x < t  ⇔ not (x ≥ t); on f32 inputs x ≥ t ⇔ x > prev(t).
                    "BRANCH_LT" => (tn, fn_, prev_f32(thr)),
                    "BRANCH_GTE" => (fn_, tn, prev_f32(thr)),
                    other => {
                        return Err(unsupported(format!(
                            "{here}: comparison {other} is not supported"
                        )));
                    }
                };
                t.feature.push(f);
                t.threshold.push(thr);
                t.left.push(left);
                t.right.push(right);
                t.leaf.push(None);
            }
            k += 1;
        }
        trees.push(t);
    }
    let mut base = attr_floats(node, "base_values");
    if base.is_empty() {
        base = vec![0.0; n_scores];
    }
    if base.len() != n_scores {
        if binary_single && base.len() == 2 {
            base = vec![base[1]];
        } else {
            return Err(unsupported(format!("{here}: base_values width")));
        }
    }
    if agg == "AVERAGE" {
        let t = n_trees as f64;
        trees
            .iter_mut()
            .for_each(|tr| tr.leaf.iter_mut().flatten().flatten().for_each(|v| *v /= t));
    } else if agg != "SUM" {
        return Err(unsupported(format!("{here}: aggregate_function {agg}")));
    }
    // A single-score binary classifier without a link compares probability with 1/2;
    // with a logistic link, the raw score with 0. Shift the base so "positive" means class 1.
    if binary_single && post == "NONE" {
        base[0] -= 0.5;
    }
    let (head, base, trees) = if !binary_single && matches!(head, Head::Binary { .. }) {
        // Two scores: decide by their difference.
        let trees = trees
            .into_iter()
            .map(|mut t| {
                t.leaf
                    .iter_mut()
                    .flatten()
                    .for_each(|v| *v = vec![v[1] - v[0]]);
                t
            })
            .collect();
        (head, vec![base[1] - base[0]], trees)
    } else {
        (head, base, trees)
    };
    Ok(Forest {
        trees,
        base,
        n_features,
        head,
    })
}

fn prev_f32(t: f64) -> f64 {
    let f = t as f32;
    f64::from(f32::from_bits(if f > 0.0 {
        f.to_bits() - 1
    } else if f == 0.0 {
        0x8000_0001
    } else {
        f.to_bits() + 1
    }))
}
