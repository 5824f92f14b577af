//! What a model computes, as plain floating-point maths: a chain of dense layers with
//! activations between them, or a tree ensemble, and the head that turns scores into a
//! prediction. Read from ONNX by `onnx` (behind the `compiler` feature); the head is also part
//! of the public client spec.

use serde::{Deserialize, Serialize};

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
