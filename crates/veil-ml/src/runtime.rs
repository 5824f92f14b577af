//! Running a checked model, one row at a time.
//!
//! A model is planned for an input of exactly one row and every run sees one row alone. That
//! is what makes a validation's output for a row depend on that row only, whatever the graph
//! does: a reduction, matrix product, transpose, `Shape`, `Gather` or `Slice` over the batch
//! axis has nothing but the row itself to read, and no allowed operator keeps state between
//! runs (no control flow, no random operators, a fresh tract state per run). A static axis
//! analysis of the typed graph could allow batched runs, but it would have to be right for
//! every operator tract rewrites the graph into; one row per run is right by construction.

use std::sync::Arc;

use tract_onnx::pb::ModelProto;
use tract_onnx::prelude::*;

use crate::ClassLabels;
use crate::inspect::{ModelKind, ModelSummary, attr_ints, decode};
use crate::{ModelError, guarded};

/// A model's output for one row.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    IntLabel(i64),
    StringLabel(String),
    /// Argmax over class scores: the class index.
    ClassIndex(usize),
    Value(f64),
}

/// A model's predictions for several rows (each computed alone).
#[derive(Debug, Clone, PartialEq)]
pub enum Prediction {
    IntLabels(Vec<i64>),
    StringLabels(Vec<String>),
    /// Argmax over class scores: the class index per row.
    ClassIndices(Vec<usize>),
    Values(Vec<f64>),
}

/// What one row costs a planned model, from its graph's static shapes (the batch axis is 1, so
/// every shape is known) and from what tract does not report (tree walks, see `bounded`): a
/// bound on its work that no row's values can raise. One unit of work is one multiply-add or
/// one element written; the runtime turns units into time at a rate far below what a core
/// does. Subnormal numbers (slow on some CPUs) are treated as zero inside tract's matrix
/// kernels; element-wise arithmetic on them stayed 12× inside its allowance in the hostile
/// suite's `subnormal_arithmetic_stays_within_its_rows_allowance` (on AMD EPYC, where they are
/// no slower; CPUs that trap on them would eat into that margin).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ModelCost {
    /// Multiply-adds and divisions the operators report, every element every operator
    /// writes, a fixed charge per operator (running one costs time whatever its size) and
    /// the deepest walk through every tree.
    pub work_per_row: u64,
    /// Elements of the largest tensor a row produces.
    pub largest_tensor: u64,
    /// Operators in the planned graph.
    pub operators: usize,
}

/// Work charged for running one operator, whatever its size (10 µs at the runtime's rate):
/// tract's per-node bookkeeping (inputs, output allocation, state) took 1.5 µs per operator on
/// a chain of 4 500 tiny ones, and 2.7 µs with other tests sharing the two cores (the hostile
/// suite's `many_tiny_operators_stay_within_their_rows_allowance`).
const WORK_PER_OPERATOR: u64 = 500;
/// Work charged per string element an operator writes (200 ns): copying or comparing a class
/// label of at most `bounded::MAX_LABEL_BYTES` with its allocation.
const WORK_PER_STRING: u64 = 10;

/// Strings reach a graph only as a classifier's class labels (see `bounded`); parsing them
/// (a cast from strings) takes time that depends on their text, beyond any static count.
fn refuse_string_parsing(model: &TypedModel) -> Result<(), ModelError> {
    for node in model.nodes() {
        let reads_strings = node
            .inputs
            .iter()
            .filter_map(|i| model.outlet_fact(*i).ok())
            .any(|f| f.datum_type == String::datum_type());
        let writes_other = node
            .outputs
            .iter()
            .any(|o| o.fact.datum_type != String::datum_type());
        if reads_strings && writes_other {
            return Err(ModelError::Unsupported(format!(
                "the model computes on its string labels ({}); strings may only be picked and passed on",
                node.op.name()
            )));
        }
    }
    Ok(())
}

impl ModelCost {
    /// `tree_walk` is the work of walking every tree ensemble once (from `bounded`); tract
    /// walks them once per row of their input, which a graph can make more than one.
    fn of(model: &TypedModel, tree_walk: u64) -> TractResult<Self> {
        let operators = model.nodes().len();
        let mut tree_rows = 0u64;
        for node in model.nodes() {
            if node.op.name() == "TreeEnsembleClassifier" {
                let input = model.outlet_fact(node.inputs[0])?;
                let rows = input.shape.as_concrete().map_or(u64::MAX, |dims| {
                    let rows = dims.len().saturating_sub(1);
                    dims[..rows]
                        .iter()
                        .fold(1u64, |v, d| v.saturating_mul(*d as u64))
                });
                tree_rows = tree_rows.saturating_add(rows);
            }
        }
        let mut cost = ModelCost {
            operators,
            work_per_row: tree_walk
                .saturating_mul(tree_rows.max(1))
                .saturating_add((operators as u64).saturating_mul(WORK_PER_OPERATOR)),
            ..Self::default()
        };
        for node in model.nodes() {
            let inputs = model.node_input_facts(node.id)?;
            for (c, n) in node.op.cost(&inputs)? {
                if c.is_compute() {
                    let n = u64::try_from(n.to_i64().unwrap_or(i64::MAX)).unwrap_or(u64::MAX);
                    cost.work_per_row = cost.work_per_row.saturating_add(n);
                }
            }
            for output in &node.outputs {
                let elements = output.fact.shape.as_concrete().map_or(u64::MAX, |dims| {
                    dims.iter().fold(1u64, |v, d| v.saturating_mul(*d as u64))
                });
                let per_element = if output.fact.datum_type == String::datum_type() {
                    WORK_PER_STRING
                } else {
                    1
                };
                cost.work_per_row = cost
                    .work_per_row
                    .saturating_add(elements.saturating_mul(per_element));
                cost.largest_tensor = cost.largest_tensor.max(elements);
            }
        }
        Ok(cost)
    }
}

/// A model planned for one row, shareable across threads.
pub struct Model {
    plan: Arc<TypedSimplePlan>,
    cost: ModelCost,
    n_features: usize,
    input_type: DatumType,
    kind: ModelKind,
    /// Set for binary tree ensembles: labels are derived from the probabilities (see
    /// [`binary_tree_probabilities`]).
    binary_labels: Option<ClassLabels>,
}

/// tract's `TreeEnsembleClassifier` computes its label output by an argmax taken *before* it
/// expands scikit-learn's binary layout (one weight per leaf, the second class's probability),
/// so that label is always the first class. Its probability output is right; for such models
/// the label is read from there. Returns the probability output's name.
fn binary_tree_probabilities(proto: &ModelProto) -> Option<String> {
    let graph = proto.graph.as_ref()?;
    let node = graph
        .node
        .iter()
        .find(|n| n.op_type == "TreeEnsembleClassifier")?;
    let ids = attr_ints(node, "class_ids")?;
    let single = ids.windows(2).all(|w| w[0] == w[1]);
    (single && node.output.len() == 2).then(|| node.output[1].clone())
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("n_features", &self.n_features)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

fn run_err(e: impl std::fmt::Display) -> ModelError {
    ModelError::Run(e.to_string())
}

impl Model {
    /// Plans a model that [`crate::inspect`] accepted.
    pub fn load(bytes: &[u8], summary: &ModelSummary) -> Result<Self, ModelError> {
        let proto = decode(bytes)?;
        Self::from_proto(&proto, summary)
    }

    pub(crate) fn from_proto(
        proto: &ModelProto,
        summary: &ModelSummary,
    ) -> Result<Self, ModelError> {
        guarded("planning", || {
            let tree_walk = crate::bounded::check(proto, summary.n_features)?;
            let mut onnx = tract_onnx::onnx();
            crate::ops::register(&mut onnx.op_register);
            let mut model = onnx
                .model_for_proto_model(proto)
                .map_err(|e| ModelError::Unsupported(format!("the model cannot be loaded: {e}")))?;
            let binary_labels = match &summary.kind {
                ModelKind::Classifier {
                    classes: Some(c), ..
                } if class_count(c) == 2 => {
                    binary_tree_probabilities(proto).map(|p| (p, c.clone()))
                }
                _ => None,
            };
            let output = match (&summary.kind, &binary_labels) {
                (_, Some((probs, _))) => probs,
                (ModelKind::Classifier { label_output, .. }, None) => label_output,
                (ModelKind::ScoreClassifier { scores_output, .. }, None) => scores_output,
                (ModelKind::Regressor { output }, None) => output,
            };
            // Keep only the output we read; this also drops any ZipMap.
            model = model
                .with_outputs_by_name([output.as_str()])
                .map_err(|e| ModelError::Unsupported(format!("output {output}: {e}")))?;
            let input_type = match summary.input.dtype.as_str() {
                "double" => f64::datum_type(),
                "int64" => i64::datum_type(),
                "int32" => i32::datum_type(),
                _ => f32::datum_type(),
            };
            // One row per run (see the module notes): the batch axis, if the model has one,
            // is fixed to 1.
            let fact = if summary.input.shape.len() == 1 {
                InferenceFact::dt_shape(input_type, [summary.n_features.to_dim()])
            } else {
                InferenceFact::dt_shape(input_type, [1.to_dim(), summary.n_features.to_dim()])
            };
            model
                .set_input_fact(0, fact)
                .map_err(|e| ModelError::Unsupported(format!("input: {e}")))?;
            let planned = |e: TractError| {
                ModelError::Unsupported(format!("the model cannot be planned: {e:#}"))
            };
            let optimized = model.into_optimized().map_err(planned)?;
            refuse_string_parsing(&optimized)?;
            let cost = ModelCost::of(&optimized, tree_walk).map_err(planned)?;
            let plan = optimized.into_runnable().map_err(planned)?;
            Ok(Self {
                plan,
                cost,
                n_features: summary.n_features,
                input_type,
                kind: summary.kind.clone(),
                binary_labels: binary_labels.map(|(_, c)| c),
            })
        })
    }

    pub fn n_features(&self) -> usize {
        self.n_features
    }

    /// What one row costs (see [`ModelCost`]).
    pub fn cost(&self) -> ModelCost {
        self.cost
    }

    pub fn kind(&self) -> &ModelKind {
        &self.kind
    }

    /// Runs the model on `rows` rows of `n_features` values, row-major, one row at a time;
    /// the first row the model fails on fails the whole call.
    pub fn predict(&self, features: &[f32], rows: usize) -> Result<Prediction, ModelError> {
        if features.len() != rows * self.n_features {
            return Err(ModelError::Input(format!(
                "expected {} values ({rows} rows × {} features), got {}",
                rows * self.n_features,
                self.n_features,
                features.len()
            )));
        }
        let outputs = features
            .chunks(self.n_features.max(1))
            .take(rows)
            .map(|row| self.predict_row(row))
            .collect::<Result<Vec<_>, _>>()?;
        let mut prediction = match outputs.first() {
            Some(Output::StringLabel(_)) => Prediction::StringLabels(Vec::new()),
            Some(Output::ClassIndex(_)) => Prediction::ClassIndices(Vec::new()),
            Some(Output::Value(_)) => Prediction::Values(Vec::new()),
            Some(Output::IntLabel(_)) | None => Prediction::IntLabels(Vec::new()),
        };
        for o in outputs {
            match (&mut prediction, o) {
                (Prediction::IntLabels(v), Output::IntLabel(x)) => v.push(x),
                (Prediction::StringLabels(v), Output::StringLabel(x)) => v.push(x),
                (Prediction::ClassIndices(v), Output::ClassIndex(x)) => v.push(x),
                (Prediction::Values(v), Output::Value(x)) => v.push(x),
                _ => return Err(run_err("rows gave outputs of different types")),
            }
        }
        Ok(prediction)
    }

    /// Runs the model on one row of `n_features` values, alone.
    pub fn predict_row(&self, row: &[f32]) -> Result<Output, ModelError> {
        if row.len() != self.n_features {
            return Err(ModelError::Input(format!(
                "expected {} feature values, got {}",
                self.n_features,
                row.len()
            )));
        }
        guarded("running", || {
            let x = Tensor::from_shape(&[1, self.n_features], row).map_err(run_err)?;
            let x = if self.input_type == f32::datum_type() {
                x
            } else {
                x.cast_to_dt(self.input_type).map_err(run_err)?.into_owned()
            };
            let out = self.plan.run(tvec!(x.into())).map_err(run_err)?;
            let t = out.first().ok_or_else(|| run_err("no output"))?;
            let one = |n: usize| {
                if n == 1 {
                    Ok(())
                } else {
                    Err(run_err(format!("{n} outputs for one row")))
                }
            };
            if let Some(classes) = &self.binary_labels {
                let s = t.cast_to::<f32>().map_err(run_err)?;
                let v = s.to_plain_array_view::<f32>().map_err(run_err)?;
                let p: Vec<f32> = v.iter().copied().collect();
                let [first, second] = p.as_slice() else {
                    return Err(run_err(format!("{} probabilities for one row", p.len())));
                };
                let i = usize::from(second > first);
                return Ok(match classes {
                    ClassLabels::Ints(c) => Output::IntLabel(c[i]),
                    ClassLabels::Strings(c) => Output::StringLabel(c[i].clone()),
                });
            }
            match &self.kind {
                ModelKind::Classifier { .. } => {
                    one(t.len())?;
                    if t.datum_type() == String::datum_type() {
                        let v = t.to_plain_array_view::<String>().map_err(run_err)?;
                        let label = v
                            .iter()
                            .next()
                            .cloned()
                            .ok_or_else(|| run_err("no label"))?;
                        Ok(Output::StringLabel(label))
                    } else {
                        // skl2onnx casts labels to int64, which tract models as TDim.
                        let ints = t.cast_to::<i64>().map_err(run_err)?;
                        let v = ints.to_plain_array_view::<i64>().map_err(run_err)?;
                        let label = v
                            .iter()
                            .next()
                            .copied()
                            .ok_or_else(|| run_err("no label"))?;
                        Ok(Output::IntLabel(label))
                    }
                }
                ModelKind::ScoreClassifier { .. } => {
                    let s = t.cast_to::<f32>().map_err(run_err)?;
                    let v = s.to_plain_array_view::<f32>().map_err(run_err)?;
                    let best = v
                        .iter()
                        .enumerate()
                        .fold((0, f32::NEG_INFINITY), |best, (i, x)| {
                            if *x > best.1 { (i, *x) } else { best }
                        })
                        .0;
                    Ok(Output::ClassIndex(best))
                }
                ModelKind::Regressor { .. } => {
                    one(t.len())?;
                    let s = t.cast_to::<f64>().map_err(run_err)?;
                    let v = s.to_plain_array_view::<f64>().map_err(run_err)?;
                    let value = v
                        .iter()
                        .next()
                        .copied()
                        .ok_or_else(|| run_err("no value"))?;
                    Ok(Output::Value(value))
                }
            }
        })
    }
}

fn class_count(c: &ClassLabels) -> usize {
    match c {
        ClassLabels::Ints(v) => v.len(),
        ClassLabels::Strings(v) => v.len(),
    }
}

#[cfg(test)]
mod tests;
