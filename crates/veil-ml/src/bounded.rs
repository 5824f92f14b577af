//! Checks on a model's protobuf that keep one row's work bounded, for what tract's planner
//! neither checks nor reports.
//!
//! - **Tree ensembles.** tract walks a tree with unchecked indexing until it reaches a leaf, and
//!   adds each leaf's weights at unchecked class offsets: a child pointing back to its parent
//!   loops forever, and a class id past the class list writes outside the output. Its cost
//!   report does not count node visits at all. So every tree must be a proper tree before
//!   tract sees it (children after their parent, inside their tree; class votes on leaves, for
//!   declared classes), and its deepest path and largest leaf are counted as work.
//! - **Strings.** Formatting, parsing and copying strings take time that depends on their
//!   values (the text of a number, the length of a picked string), which no static shape can
//!   bound. Strings may only be class labels a classifier emits, of bounded length: no string
//!   constants, no casts to strings.
//!
//! Runs on every load, not only on upload, so a model stored before a check existed meets it
//! too (before any charge).

use veil_onnx::dtype;
use veil_onnx::pb::{self, ModelProto};

use crate::ModelError;
use crate::inspect::attr_ints;

/// Most nodes in all the trees of one model.
const MAX_TREE_NODES: usize = 4_000_000;
/// Longest class label, in bytes.
const MAX_LABEL_BYTES: usize = 256;
/// Work counted per tree node a row visits: a dependent load that may miss every cache
/// (about 100 ns at the 20 ns per unit of work the runtime assumes).
const WORK_PER_NODE_VISIT: u64 = 5;

fn unsupported(msg: String) -> ModelError {
    ModelError::Unsupported(msg)
}

/// Checks the graph and returns the work tract does not report for one row through its tree
/// ensembles (their walks; see [`crate::ModelCost`] for rows a graph feeds them more than once).
pub(crate) fn check(proto: &ModelProto, n_features: usize) -> Result<u64, ModelError> {
    let Some(graph) = proto.graph.as_ref() else {
        return Ok(0);
    };
    if let Some(t) = graph
        .initializer
        .iter()
        .find(|t| t.data_type == dtype::STRING)
    {
        return Err(unsupported(format!(
            "the model holds a string constant ({}); only a classifier's labels may be strings",
            t.name
        )));
    }
    let mut unreported = 0u64;
    for node in &graph.node {
        if matches!(
            node.op_type.as_str(),
            "TreeEnsembleClassifier" | "LinearClassifier"
        ) {
            check_attribute_fields(node)?;
            check_labels(node)?;
        }
        match node.op_type.as_str() {
            "Constant" => check_constant(node)?,
            "Cast"
                if node
                    .attribute
                    .iter()
                    .any(|a| a.name == "to" && a.i == i64::from(dtype::STRING)) =>
            {
                return Err(unsupported(
                    "the model casts to strings; only a classifier's labels may be strings".into(),
                ));
            }
            "TreeEnsembleClassifier" => {
                unreported = unreported.saturating_add(check_trees(node, n_features)?);
            }
            _ => {}
        }
    }
    Ok(unreported)
}

fn check_constant(node: &pb::NodeProto) -> Result<(), ModelError> {
    let string = node.attribute.iter().any(|a| {
        matches!(a.name.as_str(), "value_string" | "value_strings")
            || a.t.as_ref().is_some_and(|t| t.data_type == dtype::STRING)
    });
    if string {
        return Err(unsupported(format!(
            "the model holds a string constant ({}); only a classifier's labels may be strings",
            node.name
        )));
    }
    Ok(())
}

fn check_labels(node: &pb::NodeProto) -> Result<(), ModelError> {
    for a in &node.attribute {
        if a.name == "classlabels_strings"
            && let Some(long) = a.strings.iter().find(|s| s.len() > MAX_LABEL_BYTES)
        {
            return Err(unsupported(format!(
                "a class label is {} bytes long; this node allows {MAX_LABEL_BYTES}",
                long.len()
            )));
        }
    }
    Ok(())
}

/// ONNX attribute types (AttributeProto.AttributeType).
const ATTR_FLOAT: i32 = 1;
const ATTR_INT: i32 = 2;
const ATTR_STRING: i32 = 3;
const ATTR_FLOATS: i32 = 6;
const ATTR_INTS: i32 = 7;
const ATTR_STRINGS: i32 = 8;

/// Every attribute of an ONNX-ML classifier fills only the field its type names: tract reads
/// exactly that field, so a
/// check that counted another (a list of labels padded in a field tract ignores) would check
/// something other than what runs.
fn check_attribute_fields(node: &pb::NodeProto) -> Result<(), ModelError> {
    for a in &node.attribute {
        let (ints, floats, strings) = (
            !a.ints.is_empty(),
            !a.floats.is_empty(),
            !a.strings.is_empty(),
        );
        let consistent = match a.r#type {
            ATTR_INTS => !floats && !strings,
            ATTR_FLOATS => !ints && !strings,
            ATTR_STRINGS => !ints && !floats,
            ATTR_FLOAT | ATTR_INT | ATTR_STRING => !ints && !floats && !strings,
            _ => false,
        };
        if !consistent || a.t.is_some() || a.g.is_some() {
            return Err(unsupported(format!(
                "attribute {} of {} holds values other than its type says",
                a.name, node.op_type
            )));
        }
    }
    Ok(())
}

/// How many values the attribute's own field holds (see [`check_attribute_fields`]).
fn attr_len(node: &pb::NodeProto, name: &str) -> usize {
    node.attribute
        .iter()
        .find(|a| a.name == name)
        .map_or(0, |a| match a.r#type {
            ATTR_INTS => a.ints.len(),
            ATTR_FLOATS => a.floats.len(),
            ATTR_STRINGS => a.strings.len(),
            _ => 0,
        })
}

fn indices(node: &pb::NodeProto, name: &str, len: usize) -> Result<Vec<usize>, ModelError> {
    let values = attr_ints(node, name).unwrap_or_default();
    if values.len() != len {
        return Err(unsupported(format!(
            "tree ensemble attribute {name} has {} values; {len} were expected",
            values.len()
        )));
    }
    values
        .into_iter()
        .map(|v| {
            usize::try_from(v)
                .map_err(|_| unsupported(format!("tree ensemble attribute {name} holds {v}")))
        })
        .collect()
}

/// One `TreeEnsembleClassifier`: every tree is a proper tree, every vote is on a leaf for a
/// declared class. Returns the work of its worst row: per tree, the deepest path's visits
/// plus the most votes on one leaf.
fn check_trees(node: &pb::NodeProto, n_features: usize) -> Result<u64, ModelError> {
    let n = attr_len(node, "nodes_nodeids");
    if n == 0 || n > MAX_TREE_NODES {
        return Err(unsupported(format!(
            "a tree ensemble has {n} nodes; this node allows 1 to {MAX_TREE_NODES}"
        )));
    }
    let node_ids = indices(node, "nodes_nodeids", n)?;
    let tree_ids = indices(node, "nodes_treeids", n)?;
    let features = indices(node, "nodes_featureids", n)?;
    let true_ids = indices(node, "nodes_truenodeids", n)?;
    let false_ids = indices(node, "nodes_falsenodeids", n)?;
    let modes = node
        .attribute
        .iter()
        .find(|a| a.name == "nodes_modes")
        .map(|a| a.strings.clone())
        .unwrap_or_default();
    if modes.len() != n || attr_len(node, "nodes_values") != n {
        return Err(unsupported(
            "a tree ensemble's node attributes differ in length".into(),
        ));
    }
    let classes = match (
        attr_len(node, "classlabels_int64s"),
        attr_len(node, "classlabels_strings"),
    ) {
        (0, 0) => return Err(unsupported("a tree ensemble declares no classes".into())),
        (n, 0) | (0, n) => n,
        _ => {
            return Err(unsupported(
                "a tree ensemble declares both integer and string classes".into(),
            ));
        }
    };

    // Trees are numbered 0, 1, 2, … in the order tract reads them.
    let mut trees = 0usize;
    for (i, &t) in tree_ids.iter().enumerate() {
        let expected = if i == 0 {
            t == 0
        } else {
            t == tree_ids[i - 1] || t == tree_ids[i - 1] + 1
        };
        if !expected {
            return Err(unsupported(
                "a tree ensemble's tree ids must start at 0 and increase by 1".into(),
            ));
        }
        trees = t + 1;
    }
    // Per tree: its nodes by id, which must be exactly 0..size (tract addresses a child by
    // its position in the tree and starts at the first one).
    let mut sizes = vec![0usize; trees];
    for &t in &tree_ids {
        sizes[t] += 1;
    }
    let mut offsets = vec![0usize; trees];
    for t in 1..trees {
        offsets[t] = offsets[t - 1] + sizes[t - 1];
    }
    // Row of (tree, node id) in a tree-major table; `usize::MAX` until filled.
    let mut slot = vec![usize::MAX; n];
    for i in 0..n {
        let (t, id) = (tree_ids[i], node_ids[i]);
        if id >= sizes[t] || slot[offsets[t] + id] != usize::MAX {
            return Err(unsupported(format!(
                "tree {t} of a tree ensemble does not number its nodes 0, 1, 2, … once each"
            )));
        }
        slot[offsets[t] + id] = i;
    }
    let mut leaf = vec![false; n];
    let mut depth = vec![0u64; n];
    let mut worst = 0u64;
    for t in 0..trees {
        let mut deepest = 0u64;
        for id in 0..sizes[t] {
            let i = slot[offsets[t] + id];
            // The root is node 0; a node no branch reaches is never visited.
            let d = if id == 0 { 1 } else { depth[offsets[t] + id] };
            deepest = deepest.max(d);
            let mode = modes[i].as_slice();
            if mode == b"LEAF" {
                leaf[offsets[t] + id] = true;
                continue;
            }
            // tract 0.23 runs BRANCH_GTE as a leaf (it cannot decode that comparison back),
            // so it is refused rather than run as something else; x ≥ t is BRANCH_LT with the
            // children (and the missing-value branch) swapped.
            if !matches!(
                mode,
                b"BRANCH_LEQ" | b"BRANCH_LT" | b"BRANCH_GT" | b"BRANCH_EQ" | b"BRANCH_NEQ"
            ) {
                return Err(unsupported(format!(
                    "a tree ensemble node has mode {:?}; this node runs BRANCH_LEQ, BRANCH_LT, BRANCH_GT, BRANCH_EQ and BRANCH_NEQ (write x ≥ t as BRANCH_LT with its children swapped)",
                    String::from_utf8_lossy(mode)
                )));
            }
            if features[i] >= n_features {
                return Err(unsupported(format!(
                    "a tree ensemble node reads feature {} of {n_features}",
                    features[i]
                )));
            }
            for child in [true_ids[i], false_ids[i]] {
                // A child after its parent, in the same tree: no cycle, no path longer than
                // the tree.
                if child <= id || child >= sizes[t] {
                    return Err(unsupported(format!(
                        "in tree {t} of a tree ensemble, node {id} branches to node {child}; a branch must lead to a later node of the same tree"
                    )));
                }
                if d > 0 {
                    let c = &mut depth[offsets[t] + child];
                    *c = (*c).max(d + 1);
                }
            }
        }
        worst = worst.saturating_add(deepest.saturating_mul(WORK_PER_NODE_VISIT));
    }

    let votes = attr_len(node, "class_ids");
    let vote_trees = indices(node, "class_treeids", votes)?;
    let vote_nodes = indices(node, "class_nodeids", votes)?;
    let vote_classes = indices(node, "class_ids", votes)?;
    if votes == 0 || votes > MAX_TREE_NODES || attr_len(node, "class_weights") != votes {
        return Err(unsupported(
            "a tree ensemble's leaf attributes are missing or differ in length".into(),
        ));
    }
    let mut per_leaf = vec![0u64; n];
    for ((&t, &id), &class) in vote_trees.iter().zip(&vote_nodes).zip(&vote_classes) {
        if t >= trees || id >= sizes[t] || !leaf[offsets[t] + id] {
            return Err(unsupported(format!(
                "a tree ensemble votes on node {id} of tree {t}, which is not a leaf"
            )));
        }
        if class >= classes {
            return Err(unsupported(format!(
                "a tree ensemble votes for class {class}; it declares {classes}"
            )));
        }
        per_leaf[offsets[t] + id] += 1;
    }
    for t in 0..trees {
        let most = per_leaf[offsets[t]..offsets[t] + sizes[t]]
            .iter()
            .max()
            .copied()
            .unwrap_or(0);
        worst = worst.saturating_add(most);
    }
    Ok(worst)
}
