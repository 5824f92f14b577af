//! Reading a model's ONNX graph as plain floating-point maths ([`FloatModel`]).
//!
//! Only three shapes of model are accepted, because only they have an efficient exact circuit:
//! a chain of dense layers with Relu/Sigmoid/Tanh between them (linear and logistic regression
//! are the one-layer case, read from Gemm/MatMul/Add, scikit-learn's `Scaler`, `LinearClassifier`
//! and `LinearRegressor`), and tree ensembles (`TreeEnsembleClassifier`/`Regressor`). The
//! post-processing exporters append (sigmoid or softmax probabilities, argmax, label lookup,
//! ZipMap) is recognised and dropped: the client derives labels from the final scores.
//! Anything else is refused with the name of the node that does not fit.
//!
//! The protobuf itself is read by `veil-onnx`, the reader the model checks use too.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use veil_onnx::pb::{self, NodeProto, TensorProto};
use veil_onnx::{Attributes, Constant, OnnxError};

use crate::FheError;
use crate::model::{Activation, Dense, FloatModel, Forest, Head, Network, Tree};

impl From<OnnxError> for FheError {
    fn from(e: OnnxError) -> Self {
        match e {
            OnnxError::Corrupt(m) => FheError::Corrupt(m),
            OnnxError::Unsupported(m) => FheError::Unsupported(m),
        }
    }
}

/// The affine-map algebra the reader folds consecutive layers with.
impl Dense {
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

fn unsupported(msg: impl Into<String>) -> FheError {
    FheError::Unsupported(msg.into())
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
    Const(Constant),
    Strings(Vec<String>),
    /// A constant of a type the reader does not interpret (bool, …); an error if used as an
    /// operand of a layer.
    Opaque,
}

impl Sym {
    /// A constant tensor (initializer or `Constant` node) as the walk sees it.
    fn constant(t: &TensorProto) -> Result<Sym, FheError> {
        if let Some(s) = veil_onnx::strings(t) {
            return Ok(Sym::Strings(s));
        }
        match veil_onnx::constant(t) {
            Ok(c) => Ok(Sym::Const(c)),
            Err(OnnxError::Unsupported(_)) => Ok(Sym::Opaque),
            Err(e) => Err(e.into()),
        }
    }
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

    /// The network the walk built, its last affine map made into the head's scores.
    fn into_network(mut self) -> Result<FloatModel, FheError> {
        let last = self.pending.take().ok_or_else(|| {
            unsupported("the model must end in a dense layer (Gemm, MatMul+Add or a linear model)")
        })?;
        let mut layers: Vec<Dense> = self.layers.iter().map(|(d, _)| d.clone()).collect();
        let activations = self.layers.iter().filter_map(|(_, a)| *a).collect();
        let (last, head) = network_head(last, self.classes)?;
        if head == Head::Regression && self.link {
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
}

/// The head for a network's final scores. A two-score classifier is decided by the difference
/// of its scores, so its last layer becomes that difference.
fn network_head(last: Dense, classes: Option<Vec<String>>) -> Result<(Dense, Head), FheError> {
    let binary = |c: &[String]| Head::Binary {
        classes: [c[0].clone(), c[1].clone()],
    };
    match (last.n_out(), classes) {
        (1, Some(c)) if c.len() == 2 => {
            let head = binary(&c);
            Ok((last, head))
        }
        (1, None) => Ok((last, Head::Regression)),
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
            Ok((diff, binary(&c)))
        }
        (k, c) => {
            let c = c.unwrap_or_else(|| (0..k).map(|i| i.to_string()).collect());
            if c.len() != k {
                return Err(unsupported(format!("{k} scores but {} classes", c.len())));
            }
            Ok((last, Head::Argmax { classes: c }))
        }
    }
}

fn class_names(n: &NodeProto) -> Option<Vec<String>> {
    veil_onnx::class_labels(n).map(|c| c.names())
}

/// Reads the model. `max_features` bounds the input width before anything is allocated.
pub fn read_onnx(bytes: &[u8], max_features: usize) -> Result<FloatModel, FheError> {
    let proto = veil_onnx::decode(bytes)?;
    let graph = proto
        .graph
        .as_ref()
        .ok_or_else(|| FheError::Corrupt("no graph".into()))?;
    let mut syms: HashMap<String, Sym> = HashMap::new();
    for init in &graph.initializer {
        syms.insert(init.name.clone(), Sym::constant(init)?);
    }
    let inputs = veil_onnx::fed_inputs(graph);
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

    if let Some(f) = b.forest.take() {
        if !b.layers.is_empty() || b.pending.is_some() {
            return Err(unsupported("trees must read the raw input"));
        }
        return Ok(FloatModel::Forest(f));
    }
    b.into_network()
}

/// The width of a `[batch, features]` input whose feature count is declared.
fn input_width(v: &pb::ValueInfoProto) -> Option<usize> {
    match veil_onnx::tensor_type(v)?.1[..] {
        [_, Some(w)] => usize::try_from(w).ok(),
        _ => None,
    }
}

/// One node's operands as the walk knows them.
struct Operands<'a> {
    node: &'a NodeProto,
    get: &'a dyn Fn(usize) -> Option<Sym>,
}

impl Operands<'_> {
    /// `node 'name' (Op)`, for messages.
    fn here(&self) -> String {
        format!("node '{}' ({})", self.node.name, self.node.op_type)
    }
    fn is_main(&self, i: usize) -> bool {
        matches!((self.get)(i), Some(Sym::Main))
    }
    fn any(&self, pred: impl Fn(Option<Sym>) -> bool) -> bool {
        (0..self.node.input.len()).any(|i| pred((self.get)(i)))
    }
    fn constant(&self, i: usize) -> Result<Constant, FheError> {
        match (self.get)(i) {
            Some(Sym::Const(c)) => Ok(c),
            _ => Err(unsupported(format!(
                "{}: operand {i} must be a constant",
                self.here()
            ))),
        }
    }
}

/// What `node` makes of its operands: updates the network being built and says what its
/// outputs stand for.
fn step(
    node: &NodeProto,
    get: &dyn Fn(usize) -> Option<Sym>,
    b: &mut Builder,
) -> Result<Sym, FheError> {
    let op = node.op_type.as_str();
    if matches!(op, "MatMul" | "Gemm") && matches!(get(0), Some(Sym::SigmoidOut)) {
        // A dense layer reads a sigmoid's output: that sigmoid was a hidden activation.
        b.push_activation(Activation::Sigmoid)?;
        let main0 = |i: usize| if i == 0 { Some(Sym::Main) } else { get(i) };
        return step(node, &main0, b);
    }
    let o = Operands { node, get };
    if !o.any(|s| matches!(s, Some(Sym::Main))) {
        return off_the_features(&o, b);
    }
    let w = b.width;
    match (node.domain.as_str(), op) {
        ("" | "ai.onnx", "Cast" | "Identity" | "Flatten" | "Reshape" | "Dropout") => Ok(Sym::Main),
        ("" | "ai.onnx", "MatMul") if o.is_main(0) => {
            b.push_affine(matmul(&o, w)?)?;
            Ok(Sym::Main)
        }
        ("" | "ai.onnx", "Gemm") if o.is_main(0) => {
            b.push_affine(gemm(&o, w)?)?;
            Ok(Sym::Main)
        }
        ("" | "ai.onnx", "Add" | "Sub" | "Mul" | "Div") => {
            b.push_affine(elementwise(&o, w)?)?;
            Ok(Sym::Main)
        }
        ("ai.onnx.ml", "Scaler") => {
            b.push_affine(scaler(&o, w)?)?;
            Ok(Sym::Main)
        }
        ("" | "ai.onnx", "Relu") => {
            b.push_activation(Activation::Relu)?;
            Ok(Sym::Main)
        }
        ("" | "ai.onnx", "Tanh") => {
            b.push_activation(Activation::Tanh)?;
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
            let (d, classes) = linear_model(&o, w)?;
            b.push_affine(d)?;
            if classes.is_some() {
                b.classes = classes;
            }
            Ok(Sym::Probabilities)
        }
        ("ai.onnx.ml", "Normalizer" | "ZipMap") | ("" | "ai.onnx", "ArgMax") => Ok(Sym::Post),
        ("ai.onnx.ml", "TreeEnsembleClassifier" | "TreeEnsembleRegressor") => {
            if b.pending.is_some() || !b.layers.is_empty() {
                return Err(unsupported(format!(
                    "{}: trees must read the raw input",
                    o.here()
                )));
            }
            b.forest = Some(read_forest(node, w)?);
            Ok(Sym::Probabilities)
        }
        _ => Err(unsupported(format!(
            "{} is not supported for encrypted inference (supported: dense layers with Relu/Sigmoid/Tanh, \
             linear models, tree ensembles)",
            o.here()
        ))),
    }
}

/// A node that does not read the feature vector: a constant, or the presentation of final
/// scores (label lookup, `1 - p`, concatenation, argmax), which is dropped.
fn off_the_features(o: &Operands, b: &mut Builder) -> Result<Sym, FheError> {
    let on_scores = o.any(|s| matches!(s, Some(Sym::Probabilities | Sym::Post | Sym::SigmoidOut)));
    if on_scores {
        if o.node.op_type == "ArrayFeatureExtractor" {
            // Label lookup after an argmax: its table names the classes.
            match (o.get)(0) {
                Some(Sym::Strings(s)) => b.classes = Some(s),
                Some(Sym::Const(c)) => {
                    b.classes = Some(c.data.iter().map(|v| format!("{}", *v as i64)).collect())
                }
                _ => {}
            }
        }
        return Ok(Sym::Post);
    }
    if o.node.op_type == "Constant"
        && let Some(t) = o.node.tensor("value")
    {
        return Sym::constant(t);
    }
    Ok(Sym::Post)
}

/// `MatMul(features, W)`: `W` is `[inputs, outputs]`.
fn matmul(o: &Operands, width: usize) -> Result<Dense, FheError> {
    let m = o.constant(1)?;
    let [rows, cols] = m.dims[..] else {
        return Err(unsupported(format!("{}: weights must be 2-D", o.here())));
    };
    if rows != width {
        return Err(unsupported(format!(
            "{}: {rows} weight rows for {width} features",
            o.here()
        )));
    }
    Ok(Dense {
        w: (0..cols)
            .map(|j| (0..rows).map(|i| m.data[i * cols + j]).collect())
            .collect(),
        b: vec![0.0; cols],
    })
}

/// `Gemm(features, W, bias)`: `alpha·x·W(ᵀ) + beta·bias`.
fn gemm(o: &Operands, width: usize) -> Result<Dense, FheError> {
    let node = o.node;
    if node.int("transA", 0) != 0 {
        return Err(unsupported(format!(
            "{}: transA is not supported",
            o.here()
        )));
    }
    let (alpha, beta) = (node.float("alpha", 1.0), node.float("beta", 1.0));
    let m = o.constant(1)?;
    let [r, c] = m.dims[..] else {
        return Err(unsupported(format!("{}: weights must be 2-D", o.here())));
    };
    let trans = node.int("transB", 0) != 0;
    let (n_in, n_out) = if trans { (c, r) } else { (r, c) };
    if n_in != width {
        return Err(unsupported(format!(
            "{}: weights for {n_in} inputs, {width} given",
            o.here()
        )));
    }
    let at = |i: usize, out: usize| {
        if trans {
            m.data[out * c + i]
        } else {
            m.data[i * c + out]
        }
    };
    let mut bias = vec![0.0; n_out];
    if node.input.len() > 2 && !node.input[2].is_empty() {
        bias = broadcast(&o.constant(2)?, n_out)
            .ok_or_else(|| unsupported(format!("{}: bias shape", o.here())))?;
    }
    Ok(Dense {
        w: (0..n_out)
            .map(|out| (0..n_in).map(|i| alpha * at(i, out)).collect())
            .collect(),
        b: bias.iter().map(|v| beta * v).collect(),
    })
}

/// `Add`/`Sub`/`Mul`/`Div` of the features and a constant, as a diagonal affine map.
fn elementwise(o: &Operands, width: usize) -> Result<Dense, FheError> {
    let (ci, main_first) = if o.is_main(0) { (1, true) } else { (0, false) };
    let c = broadcast(&o.constant(ci)?, width)
        .ok_or_else(|| unsupported(format!("{}: operand shape", o.here())))?;
    let mut d = Dense::identity(width);
    match (o.node.op_type.as_str(), main_first) {
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
                o.here()
            )));
        }
    }
    Ok(d)
}

/// scikit-learn's `Scaler`: `(x - offset) · scale`, per feature or one for all.
fn scaler(o: &Operands, width: usize) -> Result<Dense, FheError> {
    let (off, sc) = (o.node.floats("offset"), o.node.floats("scale"));
    let off = if off.len() == 1 {
        vec![off[0]; width]
    } else {
        off
    };
    let sc = if sc.len() == 1 {
        vec![sc[0]; width]
    } else {
        sc
    };
    if off.len() != width || sc.len() != width {
        return Err(unsupported(format!("{}: offset/scale width", o.here())));
    }
    let mut d = Dense::identity(width);
    for i in 0..width {
        d.w[i][i] = sc[i];
        d.b[i] = -off[i] * sc[i];
    }
    Ok(d)
}

/// scikit-learn's `LinearClassifier`/`LinearRegressor`: the affine map and, for a classifier,
/// its class names.
fn linear_model(o: &Operands, width: usize) -> Result<(Dense, Option<Vec<String>>), FheError> {
    let (coef, icpt) = (o.node.floats("coefficients"), o.node.floats("intercepts"));
    let k = coef.len().checked_div(width).unwrap_or(0);
    if k == 0 || coef.len() != k * width || (icpt.len() != k && !icpt.is_empty()) {
        return Err(unsupported(format!(
            "{}: coefficients do not match {width} features",
            o.here()
        )));
    }
    let d = Dense {
        w: coef.chunks(width).map(<[f64]>::to_vec).collect(),
        b: if icpt.is_empty() { vec![0.0; k] } else { icpt },
    };
    if o.node.op_type != "LinearClassifier" {
        return Ok((d, None));
    }
    let classes =
        class_names(o.node).ok_or_else(|| unsupported(format!("{}: no class labels", o.here())))?;
    // Binary models may list one score for two classes (score of the second).
    if !(classes.len() == k || (classes.len() == 2 && k == 1)) {
        return Err(unsupported(format!(
            "{}: {k} scores for {} classes",
            o.here(),
            classes.len()
        )));
    }
    Ok((d, Some(classes)))
}

fn broadcast(c: &Constant, n: usize) -> Option<Vec<f64>> {
    match c.data.len() {
        1 => Some(vec![c.data[0]; n]),
        l if l == n => Some(c.data.clone()),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Tree ensembles.

/// The per-node attributes of a tree ensemble, all of one length.
struct TreeNodes {
    tree_ids: Vec<i64>,
    node_ids: Vec<i64>,
    features: Vec<i64>,
    values: Vec<f64>,
    modes: Vec<String>,
    trues: Vec<i64>,
    falses: Vec<i64>,
}

impl TreeNodes {
    fn read(node: &NodeProto, here: &str) -> Result<Self, FheError> {
        let values = {
            let v = node.floats("nodes_values");
            if v.is_empty() {
                node.tensor("nodes_values_as_tensor")
                    .map(veil_onnx::constant)
                    .transpose()?
                    .map(|c| c.data)
                    .unwrap_or_default()
            } else {
                v
            }
        };
        let nodes = TreeNodes {
            tree_ids: node.ints("nodes_treeids"),
            node_ids: node.ints("nodes_nodeids"),
            features: node.ints("nodes_featureids"),
            values,
            modes: node.strings("nodes_modes"),
            trues: node.ints("nodes_truenodeids"),
            falses: node.ints("nodes_falsenodeids"),
        };
        let n = nodes.tree_ids.len();
        let lengths = [
            nodes.node_ids.len(),
            nodes.features.len(),
            nodes.values.len(),
            nodes.modes.len(),
            nodes.trues.len(),
            nodes.falses.len(),
        ];
        if n == 0 || lengths.iter().any(|&l| l != n) {
            return Err(FheError::Corrupt(format!(
                "{here}: node attributes have different lengths"
            )));
        }
        Ok(nodes)
    }
}

/// The per-leaf attributes: which tree and node a weight belongs to, for which score.
struct LeafWeights {
    tree_ids: Vec<i64>,
    node_ids: Vec<i64>,
    targets: Vec<i64>,
    weights: Vec<f64>,
}

impl LeafWeights {
    fn read(node: &NodeProto, classifier: bool, here: &str) -> Result<Self, FheError> {
        let prefix = if classifier { "class" } else { "target" };
        let targets = if classifier {
            "class_ids"
        } else {
            "target_ids"
        };
        let leaves = LeafWeights {
            tree_ids: node.ints(&format!("{prefix}_treeids")),
            node_ids: node.ints(&format!("{prefix}_nodeids")),
            targets: node.ints(targets),
            weights: node.floats(&format!("{prefix}_weights")),
        };
        let n = leaves.tree_ids.len();
        if [
            leaves.node_ids.len(),
            leaves.targets.len(),
            leaves.weights.len(),
        ]
        .iter()
        .any(|&l| l != n)
        {
            return Err(FheError::Corrupt(format!(
                "{here}: leaf attributes have different lengths"
            )));
        }
        Ok(leaves)
    }

    /// Per `(tree, node)`, the leaf's contribution to each score. A single-score binary
    /// classifier's weights all go to its one score.
    fn values(
        &self,
        n_scores: usize,
        binary_single: bool,
        here: &str,
    ) -> Result<HashMap<(i64, i64), Vec<f64>>, FheError> {
        let mut values: HashMap<(i64, i64), Vec<f64>> = HashMap::new();
        for j in 0..self.tree_ids.len() {
            let v = values
                .entry((self.tree_ids[j], self.node_ids[j]))
                .or_insert_with(|| vec![0.0; n_scores]);
            let k = if binary_single {
                0
            } else {
                usize::try_from(self.targets[j])
                    .ok()
                    .filter(|&k| k < n_scores)
                    .ok_or_else(|| FheError::Corrupt(format!("{here}: class id out of range")))?
            };
            v[k] += self.weights[j];
        }
        Ok(values)
    }
}

/// What a tree ensemble predicts: its head, its number of scores, and whether it is a binary
/// classifier with one weight per leaf (the second class's score).
fn forest_head(
    node: &NodeProto,
    classifier: bool,
    leaves: &LeafWeights,
    here: &str,
) -> Result<(Head, usize, bool), FheError> {
    if !classifier {
        if node.int("n_targets", 1) != 1 {
            return Err(unsupported(format!(
                "{here}: only one regression target is supported"
            )));
        }
        return Ok((Head::Regression, 1, false));
    }
    let classes =
        class_names(node).ok_or_else(|| unsupported(format!("{here}: no class labels")))?;
    if classes.len() != 2 {
        let k = classes.len();
        return Ok((Head::Argmax { classes }, k, false));
    }
    let head = Head::Binary {
        classes: [classes[0].clone(), classes[1].clone()],
    };
    let distinct: BTreeSet<i64> = leaves.targets.iter().copied().collect();
    Ok(if distinct.len() <= 1 {
        (head, 1, true)
    } else {
        (head, 2, false)
    })
}

fn read_forest(node: &NodeProto, n_features: usize) -> Result<Forest, FheError> {
    let classifier = node.op_type == "TreeEnsembleClassifier";
    let here = format!("node '{}' ({})", node.name, node.op_type);
    let nodes = TreeNodes::read(node, &here)?;
    let leaves = LeafWeights::read(node, classifier, &here)?;
    let (head, n_scores, binary_single) = forest_head(node, classifier, &leaves, &here)?;
    let post = node
        .string("post_transform")
        .unwrap_or_else(|| "NONE".into());
    if !matches!(
        post.as_str(),
        "NONE" | "LOGISTIC" | "SOFTMAX" | "PROBIT" | "SOFTMAX_ZERO"
    ) {
        return Err(unsupported(format!("{here}: post_transform {post}")));
    }
    let agg = node
        .string("aggregate_function")
        .unwrap_or_else(|| "SUM".into());

    // Group nodes per tree and index them by id.
    let mut by_tree: BTreeMap<i64, HashMap<i64, usize>> = BTreeMap::new();
    for (i, (&tree, &id)) in nodes.tree_ids.iter().zip(&nodes.node_ids).enumerate() {
        by_tree.entry(tree).or_default().insert(id, i);
    }
    let leaf_values = leaves.values(n_scores, binary_single, &here)?;
    let shape = TreeShape {
        nodes: &nodes,
        leaf_values: &leaf_values,
        n_scores,
        n_features,
        here: &here,
    };
    let mut trees = by_tree
        .iter()
        .map(|(tid, ids)| shape.tree(*tid, ids))
        .collect::<Result<Vec<_>, _>>()?;

    let mut base = node.floats("base_values");
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
        let t = trees.len() as f64;
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
    if !binary_single && matches!(head, Head::Binary { .. }) {
        // Two scores: decide by their difference.
        for t in &mut trees {
            t.leaf
                .iter_mut()
                .flatten()
                .for_each(|v| *v = vec![v[1] - v[0]]);
        }
        base = vec![base[1] - base[0]];
    }
    Ok(Forest {
        trees,
        base,
        n_features,
        head,
    })
}

/// Builds one tree from the ensemble's flat attributes.
struct TreeShape<'a> {
    nodes: &'a TreeNodes,
    leaf_values: &'a HashMap<(i64, i64), Vec<f64>>,
    n_scores: usize,
    n_features: usize,
    here: &'a str,
}

impl TreeShape<'_> {
    /// Tree `tid` (its node ids mapped to attribute positions), renumbered breadth-first from
    /// its root (node id 0 or the smallest id), every comparison normalised to
    /// `x > threshold → right`.
    fn tree(&self, tid: i64, ids: &HashMap<i64, usize>) -> Result<Tree, FheError> {
        let here = self.here;
        let nodes = self.nodes;
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
            let mode = nodes.modes[i].as_str();
            if mode == "LEAF" {
                let v = self
                    .leaf_values
                    .get(&(tid, id))
                    .cloned()
                    .unwrap_or_else(|| vec![0.0; self.n_scores]);
                t.feature.push(0);
                t.threshold.push(0.0);
                t.left.push(0);
                t.right.push(0);
                t.leaf.push(Some(v));
            } else {
                let f = usize::try_from(nodes.features[i])
                    .ok()
                    .filter(|&f| f < self.n_features)
                    .ok_or_else(|| FheError::Corrupt(format!("{here}: feature id out of range")))?;
                let mut child = |cid: i64| -> usize {
                    *index.entry(cid).or_insert_with(|| {
                        order.push(cid);
                        order.len() - 1
                    })
                };
                let (tn, fn_) = (child(nodes.trues[i]), child(nodes.falses[i]));
                let thr = nodes.values[i];
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
        Ok(t)
    }
}

/// The largest `f32` below `t`.
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
