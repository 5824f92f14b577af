//! Writing ONNX graphs by hand, and the zoo of hostile models built with it.
//!
//! Every model takes the breast-cancer features as `x: float[N, 30]` and uses only operators
//! on the node's allow-list, so the node accepts each upload: the attack is in what the graph
//! computes, not in how it is encoded.

use prost::Message;
use tract_onnx::pb;

const FLOAT: i32 = 1;
const INT64: i32 = 7;

/// A graph under construction over one input `x: float[N, features]`.
pub struct Graph {
    features: i64,
    nodes: Vec<pb::NodeProto>,
    initializers: Vec<pb::TensorProto>,
    next: usize,
}

pub fn int_attr(name: &str, v: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: 2,
        i: v,
        ..Default::default()
    }
}

pub fn ints_attr(name: &str, v: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: 7,
        ints: v.to_vec(),
        ..Default::default()
    }
}

fn value_info(name: &str, elem_type: i32, dims: &[Option<i64>]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{Dimension, dimension::Value};
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type,
                shape: Some(pb::TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|d| Dimension {
                            value: Some(match d {
                                Some(n) => Value::DimValue(*n),
                                None => Value::DimParam("N".into()),
                            }),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

impl Graph {
    pub fn new(features: usize) -> Self {
        Self {
            features: features as i64,
            nodes: Vec::new(),
            initializers: Vec::new(),
            next: 0,
        }
    }

    fn fresh(&mut self, prefix: &str) -> String {
        self.next += 1;
        format!("{prefix}{}", self.next)
    }

    pub fn floats(&mut self, dims: &[i64], data: Vec<f32>) -> String {
        let name = self.fresh("c");
        self.initializers.push(pb::TensorProto {
            name: name.clone(),
            dims: dims.to_vec(),
            data_type: FLOAT,
            float_data: data,
            ..Default::default()
        });
        name
    }

    pub fn ints(&mut self, dims: &[i64], data: Vec<i64>) -> String {
        let name = self.fresh("i");
        self.initializers.push(pb::TensorProto {
            name: name.clone(),
            dims: dims.to_vec(),
            data_type: INT64,
            int64_data: data,
            ..Default::default()
        });
        name
    }

    pub fn scalar(&mut self, v: f32) -> String {
        self.floats(&[], vec![v])
    }

    /// Adds a node and returns its (one) output's name.
    pub fn op(&mut self, op: &str, inputs: &[&str], attrs: Vec<pb::AttributeProto>) -> String {
        let out = self.fresh("t");
        self.nodes.push(pb::NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.clone()],
            name: out.clone(),
            op_type: op.into(),
            attribute: attrs,
            ..Default::default()
        });
        out
    }

    /// Column `feature` of `x`, as `[N, 1]`.
    pub fn feature(&mut self, feature: usize) -> String {
        let idx = self.ints(&[1], vec![feature as i64]);
        self.op("Gather", &["x", &idx], vec![int_attr("axis", 1)])
    }

    /// The model's bytes, with `output` as its only output.
    pub fn finish(mut self, output: &str, dims: &[Option<i64>]) -> Vec<u8> {
        let out = self.op("Identity", &[output], vec![]);
        pb::ModelProto {
            ir_version: 8,
            producer_name: "veil-hostile".into(),
            opset_import: vec![pb::OperatorSetIdProto {
                domain: String::new(),
                version: 13,
            }],
            graph: Some(pb::GraphProto {
                name: "hostile".into(),
                node: self.nodes,
                initializer: self.initializers,
                input: vec![value_info("x", FLOAT, &[None, Some(self.features)])],
                output: vec![value_info(&out, FLOAT, dims)],
                ..Default::default()
            }),
            ..Default::default()
        }
        .encode_to_vec()
    }
}

/// A `width`×`width` matrix whose rows sum to about 1, with entries that vary (a uniform matrix
/// lets the planner replace a product by a sum, which would not cost what it claims).
fn mixing_matrix(width: usize) -> Vec<f32> {
    (0..width * width)
        .map(|i| {
            let v = (i.wrapping_mul(2_654_435_761) % 1_000) as f32 / 1_000.0;
            (0.5 + v) / width as f32
        })
        .collect()
}

/// Two class scores `[s, -s]` per row from a `[?, 1]` score `s` broadcast over the rows of
/// `x`: class 0 where `s > 0`, class 1 where `s < 0`.
fn two_scores(g: &mut Graph, rows_like: &str, s: &str) -> String {
    let zero = g.scalar(0.0);
    let zeros = g.op("Mul", &[rows_like, &zero], vec![]);
    let s0 = g.op("Add", &[&zeros, s], vec![]);
    let s1 = g.op("Neg", &[&s0], vec![]);
    g.op("Concat", &[&s0, &s1], vec![int_attr("axis", 1)])
}

/// Every row's prediction depends on the maximum of `feature` over the batch: class 0 for
/// all rows when the batch holds a value above `threshold`, class 1 otherwise. Run on whole
/// batches, removing the one person above the threshold flips the whole confusion matrix.
pub fn batch_max_classifier(features: usize, feature: usize, threshold: f32) -> Vec<u8> {
    let mut g = Graph::new(features);
    let x0 = g.feature(feature);
    let max = g.op(
        "ReduceMax",
        &[&x0],
        vec![ints_attr("axes", &[0]), int_attr("keepdims", 1)],
    );
    let t = g.scalar(threshold);
    let s = g.op("Sub", &[&max, &t], vec![]);
    let scores = two_scores(&mut g, &x0, &s);
    g.finish(&scores, &[None, Some(2)])
}

/// Mixes rows through a matrix product over the batch axis: `xᵀ·x` sums `feature`² over all
/// rows, and every row's score is that sum against `threshold`.
pub fn gram_classifier(features: usize, feature: usize, threshold: f32) -> Vec<u8> {
    let mut g = Graph::new(features);
    let x0 = g.feature(feature);
    let xt = g.op("Transpose", &[&x0], vec![ints_attr("perm", &[1, 0])]);
    let gram = g.op("MatMul", &[&xt, &x0], vec![]);
    let t = g.scalar(threshold);
    let s = g.op("Sub", &[&gram, &t], vec![]);
    let scores = two_scores(&mut g, &x0, &s);
    g.finish(&scores, &[None, Some(2)])
}

/// Reads the batch size through `Shape`: class 0 when the batch has more than `rows` rows.
pub fn batch_size_classifier(features: usize, rows: f32) -> Vec<u8> {
    let mut g = Graph::new(features);
    let x0 = g.feature(0);
    let shape = g.op("Shape", &["x"], vec![]);
    let first = g.ints(&[1], vec![0]);
    let n = g.op("Gather", &[&shape, &first], vec![int_attr("axis", 0)]);
    let n = g.op("Cast", &[&n], vec![int_attr("to", i64::from(FLOAT))]);
    let n = g.op("Unsqueeze", &[&n, &first], vec![]);
    let t = g.scalar(rows);
    let s = g.op("Sub", &[&n, &t], vec![]);
    let scores = two_scores(&mut g, &x0, &s);
    g.finish(&scores, &[None, Some(2)])
}

/// Reads the batch's first row through `Slice` on the batch axis and gives every row that
/// row's class.
pub fn first_row_classifier(features: usize, feature: usize, threshold: f32) -> Vec<u8> {
    let mut g = Graph::new(features);
    let x0 = g.feature(feature);
    let starts = g.ints(&[1], vec![0]);
    let ends = g.ints(&[1], vec![1]);
    let axes = g.ints(&[1], vec![0]);
    let first = g.op("Slice", &[&x0, &starts, &ends, &axes], vec![]);
    let t = g.scalar(threshold);
    let s = g.op("Sub", &[&first, &t], vec![]);
    let scores = two_scores(&mut g, &x0, &s);
    g.finish(&scores, &[None, Some(2)])
}

/// `value`, read from a one-element table at an index computed from the row: 0 (valid) only
/// where `feature` is 0 or `target`, out of range (a failing read) everywhere else.
fn lookup_valid_only_at(g: &mut Graph, feature: usize, target: f32, value: f32) -> String {
    let x0 = g.feature(feature);
    let t = g.scalar(target);
    let d = g.op("Sub", &[&x0, &t], vec![]);
    let p = g.op("Mul", &[&x0, &d], vec![]);
    let a = g.op("Abs", &[&p], vec![]);
    let big = g.scalar(1e6);
    let scaled = g.op("Mul", &[&a, &big], vec![]);
    let idx = g.op("Cast", &[&scaled], vec![int_attr("to", i64::from(INT64))]);
    let flat_shape = g.ints(&[1], vec![-1]);
    let idx = g.op("Reshape", &[&idx, &flat_shape], vec![]);
    let table = g.floats(&[1, 1], vec![value]);
    g.op("Gather", &[&table, &idx], vec![int_attr("axis", 0)])
}

/// A regressor that fails on every row except those whose `feature` is 0 or `target`: it
/// reads a one-element table at an index that is 0 only there. Run on batches with a
/// row-by-row fallback, its run succeeded only when the target was present.
pub fn fail_unless_regressor(features: usize, feature: usize, target: f32) -> Vec<u8> {
    let mut g = Graph::new(features);
    let out = lookup_valid_only_at(&mut g, feature, target, 500.0);
    g.finish(&out, &[None, Some(1)])
}

/// A regressor whose arithmetic runs on subnormal numbers only for rows whose `feature` is
/// `target` (slow on most CPUs): a chain of `layers` `width`×`width` products of a value that
/// is 1e-39 there and normal elsewhere. Its output is 500 for every row.
pub fn slow_on_target_regressor(
    features: usize,
    feature: usize,
    target: f32,
    width: usize,
    layers: usize,
) -> Vec<u8> {
    let mut g = Graph::new(features);
    let x0 = g.feature(feature);
    let t = g.scalar(target);
    let d = g.op("Sub", &[&x0, &t], vec![]);
    let d2 = g.op("Mul", &[&d, &d], vec![]);
    let tiny = g.scalar(1e-39);
    let v = g.op("Add", &[&d2, &tiny], vec![]);
    let spread: Vec<f32> = (0..width).map(|i| 1.0 + (i % 7) as f32 / 7.0).collect();
    let spread = g.floats(&[1, width as i64], spread);
    let mut h = g.op("MatMul", &[&v, &spread], vec![]);
    for _ in 0..layers {
        let w = g.floats(&[width as i64, width as i64], mixing_matrix(width));
        h = g.op("MatMul", &[&h, &w], vec![]);
    }
    let axes = g.ints(&[1], vec![1]);
    let sum = g.op("ReduceSum", &[&h, &axes], vec![int_attr("keepdims", 1)]);
    // Not a multiplication by zero, which the planner would fold away with the chain.
    let tiny = g.scalar(1e-30);
    let nothing = g.op("Mul", &[&sum, &tiny], vec![]);
    let base = g.scalar(500.0);
    let out = g.op("Add", &[&nothing, &base], vec![]);
    g.finish(&out, &[None, Some(1)])
}

/// Fast on every row but the target's, and slow there: a lookup that fails (ends the run at
/// once) unless `feature` is 0 or `target`, then a chain of `layers` `width`×`width` products
/// of the looked-up value. Synthetic rows all fail in microseconds; only the target's row pays
/// for the chain. Its output is 500 for every row that gets through.
pub fn fast_unless_target_regressor(
    features: usize,
    feature: usize,
    target: f32,
    width: usize,
    layers: usize,
) -> Vec<u8> {
    let mut g = Graph::new(features);
    let looked_up = lookup_valid_only_at(&mut g, feature, target, 1.0);
    let spread: Vec<f32> = (0..width).map(|i| 1.0 + (i % 7) as f32 / 7.0).collect();
    let spread = g.floats(&[1, width as i64], spread);
    let mut h = g.op("MatMul", &[&looked_up, &spread], vec![]);
    let w = g.floats(&[width as i64, width as i64], mixing_matrix(width));
    for _ in 0..layers {
        h = g.op("MatMul", &[&h, &w], vec![]);
    }
    let axes = g.ints(&[1], vec![1]);
    let sum = g.op("ReduceSum", &[&h, &axes], vec![int_attr("keepdims", 1)]);
    // Not a multiplication by zero, which the planner would fold away with the chain.
    let tiny = g.scalar(1e-30);
    let nothing = g.op("Mul", &[&sum, &tiny], vec![]);
    let base = g.scalar(500.0);
    let out = g.op("Add", &[&nothing, &base], vec![]);
    g.finish(&out, &[None, Some(1)])
}

/// A small file whose row doubles `doublings` times (`Concat(h, h)`): 2^doublings values per
/// row, enough to exhaust the node's memory if it were run.
pub fn doubling_regressor(features: usize, doublings: usize) -> Vec<u8> {
    let mut g = Graph::new(features);
    let mut h = g.feature(0);
    for _ in 0..doublings {
        h = g.op("Concat", &[&h, &h], vec![int_attr("axis", 1)]);
    }
    let axes = g.ints(&[1], vec![1]);
    let out = g.op("ReduceSum", &[&h, &axes], vec![int_attr("keepdims", 1)]);
    g.finish(&out, &[None, Some(1)])
}

/// One node of a hand-written tree: a branch on `feature` (`mode` is an ONNX-ML node mode
/// such as `BRANCH_LEQ`) to `yes`/`no`, or a leaf (`mode` `LEAF`).
pub struct TreeNode {
    pub tree: i64,
    pub id: i64,
    pub mode: &'static str,
    pub feature: i64,
    pub value: f32,
    pub yes: i64,
    pub no: i64,
}

impl TreeNode {
    pub fn branch(
        tree: i64,
        id: i64,
        mode: &'static str,
        feature: i64,
        value: f32,
        yes: i64,
        no: i64,
    ) -> Self {
        Self {
            tree,
            id,
            mode,
            feature,
            value,
            yes,
            no,
        }
    }

    pub fn leaf(tree: i64, id: i64) -> Self {
        Self {
            tree,
            id,
            mode: "LEAF",
            feature: 0,
            value: 0.0,
            yes: 0,
            no: 0,
        }
    }
}

/// A vote of a tree's leaf: (tree, leaf, class, weight).
pub type Vote = (i64, i64, i64, f32);

/// A `TreeEnsembleClassifier` over `x: float[N, features]` with classes `0..classes`, as
/// scikit-learn exports one (a label and a probability output), built from `nodes` and
/// `votes` (tree, leaf, class, weight) exactly as given: nothing is checked here.
pub fn tree_classifier(
    features: usize,
    classes: i64,
    nodes: &[TreeNode],
    votes: &[Vote],
) -> Vec<u8> {
    TreeModel::new(features, classes, nodes, votes).build()
}

/// A tree-ensemble model with the variations hostile tests need.
pub struct TreeModel<'a> {
    pub features: usize,
    pub classes: i64,
    pub nodes: &'a [TreeNode],
    pub votes: &'a [Vote],
    /// Class labels as strings (`"c0"`, `"c1"`, …) instead of integers.
    pub string_labels: bool,
    /// Feed the trees this many copies of the row (stacked on the batch axis), then keep the
    /// largest score per class: one row walks the trees `copies` times.
    pub copies: usize,
    /// Emit the label cast to a float instead of the label (parses a string label).
    pub label_as_float: bool,
    /// Extra attributes put on the tree node as they are (e.g. a malformed one).
    pub extra: Vec<pb::AttributeProto>,
}

impl<'a> TreeModel<'a> {
    pub fn new(features: usize, classes: i64, nodes: &'a [TreeNode], votes: &'a [Vote]) -> Self {
        Self {
            features,
            classes,
            nodes,
            votes,
            string_labels: false,
            copies: 1,
            label_as_float: false,
            extra: Vec::new(),
        }
    }

    pub fn build(&self) -> Vec<u8> {
        let nodes = self.nodes;
        let votes = self.votes;
        let ints = |name: &str, f: &dyn Fn(&TreeNode) -> i64| {
            ints_attr(name, &nodes.iter().map(f).collect::<Vec<_>>())
        };
        let floats = |name: &str, v: Vec<f32>| pb::AttributeProto {
            name: name.into(),
            r#type: 6,
            floats: v,
            ..Default::default()
        };
        let strings = |name: &str, v: Vec<Vec<u8>>| pb::AttributeProto {
            name: name.into(),
            r#type: 8,
            strings: v,
            ..Default::default()
        };
        let labels = if self.string_labels {
            strings(
                "classlabels_strings",
                (0..self.classes)
                    .map(|c| format!("c{c}").into_bytes())
                    .collect(),
            )
        } else {
            ints_attr("classlabels_int64s", &(0..self.classes).collect::<Vec<_>>())
        };
        let mut attribute = vec![
            ints("nodes_treeids", &|n| n.tree),
            ints("nodes_nodeids", &|n| n.id),
            ints("nodes_featureids", &|n| n.feature),
            ints("nodes_truenodeids", &|n| n.yes),
            ints("nodes_falsenodeids", &|n| n.no),
            strings(
                "nodes_modes",
                nodes.iter().map(|n| n.mode.as_bytes().to_vec()).collect(),
            ),
            floats("nodes_values", nodes.iter().map(|n| n.value).collect()),
            ints_attr(
                "class_treeids",
                &votes.iter().map(|v| v.0).collect::<Vec<_>>(),
            ),
            ints_attr(
                "class_nodeids",
                &votes.iter().map(|v| v.1).collect::<Vec<_>>(),
            ),
            ints_attr("class_ids", &votes.iter().map(|v| v.2).collect::<Vec<_>>()),
            floats("class_weights", votes.iter().map(|v| v.3).collect()),
            labels,
            pb::AttributeProto {
                name: "post_transform".into(),
                r#type: 3,
                s: b"NONE".to_vec(),
                ..Default::default()
            },
        ];
        for extra in &self.extra {
            attribute.retain(|a| a.name != extra.name);
            attribute.push(extra.clone());
        }
        let mut graph_nodes = Vec::new();
        let node =
            |inputs: &[&str], outputs: &[&str], op: &str, domain: &str, attribute| pb::NodeProto {
                input: inputs.iter().map(|s| s.to_string()).collect(),
                output: outputs.iter().map(|s| s.to_string()).collect(),
                name: outputs[0].to_string(),
                op_type: op.into(),
                domain: domain.into(),
                attribute,
                ..Default::default()
            };
        let tree_input = if self.copies > 1 {
            let copies = vec!["x"; self.copies];
            graph_nodes.push(node(
                &copies,
                &["xs"],
                "Concat",
                "",
                vec![int_attr("axis", 0)],
            ));
            "xs"
        } else {
            "x"
        };
        graph_nodes.push(node(
            &[tree_input],
            &["label", "probabilities"],
            "TreeEnsembleClassifier",
            "ai.onnx.ml",
            attribute,
        ));
        let label_type = if self.string_labels { 8 } else { INT64 };
        let outputs = if self.copies > 1 {
            graph_nodes.push(node(
                &["probabilities"],
                &["scores"],
                "ReduceMax",
                "",
                vec![ints_attr("axes", &[0]), int_attr("keepdims", 1)],
            ));
            vec![value_info("scores", FLOAT, &[None, Some(self.classes)])]
        } else if self.label_as_float {
            graph_nodes.push(node(
                &["label"],
                &["label_value"],
                "Cast",
                "",
                vec![int_attr("to", i64::from(FLOAT))],
            ));
            vec![value_info("label_value", FLOAT, &[None])]
        } else {
            vec![
                value_info("label", label_type, &[None]),
                value_info("probabilities", FLOAT, &[None, Some(self.classes)]),
            ]
        };
        pb::ModelProto {
            ir_version: 8,
            producer_name: "veil-hostile".into(),
            opset_import: vec![
                pb::OperatorSetIdProto {
                    domain: String::new(),
                    version: 13,
                },
                pb::OperatorSetIdProto {
                    domain: "ai.onnx.ml".into(),
                    version: 1,
                },
            ],
            graph: Some(pb::GraphProto {
                name: "hostile-trees".into(),
                node: graph_nodes,
                input: vec![value_info("x", FLOAT, &[None, Some(self.features as i64)])],
                output: outputs,
                ..Default::default()
            }),
            ..Default::default()
        }
        .encode_to_vec()
    }
}

/// A regressor that casts its first feature to a string and back: string work depends on the
/// value's text, which no static shape bounds.
pub fn string_cast_regressor(features: usize) -> Vec<u8> {
    let mut g = Graph::new(features);
    let f = g.feature(0);
    let s = g.op("Cast", &[&f], vec![int_attr("to", 8)]);
    let back = g.op("Cast", &[&s], vec![int_attr("to", 1)]);
    g.finish(&back, &[None, Some(1)])
}
