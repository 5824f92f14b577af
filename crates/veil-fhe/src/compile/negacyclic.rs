//! One-hidden-layer networks with one bootstrap per hidden neuron and score: the bootstrap
//! reads a *signed* 5-bit accumulator whole, and its negacyclic symmetry is put to work.
//!
//! A bootstrap reads 5 bits but only chooses 16 table entries: for the upper half it returns
//! the negated entry, `f(v + 16) = −f(v)`. The cleared design (in `compile.rs`) avoids that half
//! by clearing an 8-bit accumulator's low bits first, at two extra bootstraps. Here the
//! neuron's pre-activation is quantised to a two's-complement accumulator `a ∈ [−16, 16)`
//! (integer weights scaled so the calibration range fits) which the bootstrap reads as it is.
//! It can only compute *antiperiodic* functions of `a` (`A(a − 16) = −A(a)` for `a ≥ 0`), but
//! an activation splits as
//!
//! ```text
//! g(pre) ≈ α·pre + β + A(a)
//! ```
//!
//! where the affine part is leveled: it is folded, over all neurons, into one more output per
//! score, a dot product of the encrypted inputs held at up to ~20 bits (`output_shifts` says
//! how much finer than the bootstrap sums). For ReLU the split is exact: `relu(x) = (x + |x|)/2`
//! and `|a| − 8` is antiperiodic on `[−16, 16)`. For other activations `α`, `β` and the 16
//! entries are a least-squares fit on the calibration rows and the accumulator grid. A neuron
//! that is affine over the calibration range (a ReLU that never changes side) needs no
//! bootstrap at all. The accumulator has 5 bits where the cleared design has 8, but only the
//! kink is read coarsely: the affine part keeps the inputs' full precision.
//!
//! Split inference returns, per neuron, `c·a + A'(a) + b'` at the neuron's own scale: a
//! function of the quantised accumulator alone (for ReLU, a fitted ReLU of it), so the node
//! sees no more than quantised activations, never the pre-activations.

use super::{
    CompileOptions, CompiledModel, LABEL_TOLERANCE, Quantiser, Split, inputs, one_hidden_layer,
    plan_outputs, quantised_first_layer, widest_output,
};
use crate::FheError;
use crate::circuit::{Circuit, LUT_BITS, LUT_SIZE, MAX_BITS, Op, ValueId};
use crate::model::{Activation, Head, Network};
use crate::noise::Params;

/// The accumulator holds `[−HALF, HALF)`.
const HALF: i64 = LUT_SIZE as i64;

/// Most input bits this design takes (the affine part reads the inputs at full precision).
const MAX_INPUT_BITS: u32 = 8;

/// Widest encoding tried for the leveled (affine) output.
const WIDEST_LINEAR: u32 = 30;

/// `g ≈ α·x + β + s(a)·table[a mod 16]`, with `s(a) = +1` for `a ≥ 0` and `−1` below: what one
/// bootstrap on `a` and a leveled term in `x` compute together.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct OddFit {
    pub alpha: f64,
    pub beta: f64,
    pub table: [f64; LUT_SIZE],
}

impl OddFit {
    /// The antiperiodic part at accumulator value `a` (any integer; read modulo 32).
    pub fn odd(&self, a: i64) -> f64 {
        let t = a.rem_euclid(2 * HALF);
        if t < HALF {
            self.table[t as usize]
        } else {
            -self.table[(t - HALF) as usize]
        }
    }

    pub fn value(&self, x: f64, a: i64) -> f64 {
        self.alpha * x + self.beta + self.odd(a)
    }
}

/// Least-squares fit of `y ≈ α·x + β + s(a)·t[a mod 16]` over rows `(x, a, y)`, with `α` fixed
/// when given. For fixed `α` and `β` each entry is the mean of its rows' `s·(y − α·x − β)`;
/// substituting leaves a 2×2 problem in `α` and `β` on the per-entry centred rows.
pub(super) fn fit_odd(rows: &[(f64, i64, f64)], fixed_alpha: Option<f64>) -> OddFit {
    // Per entry u: row count and sums of s·x, s and s·y (s² = 1).
    let mut n = [0f64; LUT_SIZE];
    let mut sx = [0f64; LUT_SIZE];
    let mut ss = [0f64; LUT_SIZE];
    let mut sy = [0f64; LUT_SIZE];
    let entry = |a: i64| {
        let t = a.rem_euclid(2 * HALF);
        let s = if t < HALF { 1.0 } else { -1.0 };
        ((t % HALF) as usize, s)
    };
    for &(x, a, y) in rows {
        let (u, s) = entry(a);
        n[u] += 1.0;
        sx[u] += s * x;
        ss[u] += s;
        sy[u] += s * y;
    }
    let mean = |sum: &[f64; LUT_SIZE], u: usize| if n[u] > 0.0 { sum[u] / n[u] } else { 0.0 };
    // Normal equations on centred values: X = s·x − mean, S = s − mean, Z = s·y − mean.
    let (mut xx, mut xs, mut sss, mut xz, mut sz) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for &(x, a, y) in rows {
        let (u, s) = entry(a);
        let cx = s * x - mean(&sx, u);
        let cs = s - mean(&ss, u);
        let cz = s * y - mean(&sy, u);
        xx += cx * cx;
        xs += cx * cs;
        sss += cs * cs;
        xz += cx * cz;
        sz += cs * cz;
    }
    let ridge = 1e-12 * (xx + sss).max(1e-300);
    let (alpha, beta) = match fixed_alpha {
        Some(alpha) => (alpha, (sz - alpha * xs) / (sss + ridge)),
        None => {
            let (a11, a22) = (xx + ridge, sss + ridge);
            let det = a11 * a22 - xs * xs;
            if det.abs() <= f64::EPSILON * a11 * a22 {
                (0.0, sz / a22)
            } else {
                ((xz * a22 - xs * sz) / det, (a11 * sz - xs * xz) / det)
            }
        }
    };
    let mut table = [0f64; LUT_SIZE];
    for (u, t) in table.iter_mut().enumerate() {
        *t = mean(&sy, u) - alpha * mean(&sx, u) - beta * mean(&ss, u);
    }
    OddFit { alpha, beta, table }
}

/// How one hidden neuron is computed.
enum Neuron {
    /// Affine over the calibration range: `α·pre + β`, no bootstrap.
    Affine { alpha: f64, beta: f64 },
    /// Integer weights and bias of the accumulator (pre-activation times `k`), the fit of the
    /// activation against the float pre-activation (main circuit) and against `a / k` (split).
    Odd {
        weights: Vec<i64>,
        bias: i64,
        k: f64,
        main: Box<OddFit>,
        split: Box<OddFit>,
    },
}

impl Neuron {
    /// An odd neuron whose integer weights all rounded to zero: its accumulator is the known
    /// constant `bias`, so its bootstrap would compute a constant. It is folded into the affine
    /// part instead.
    fn constant(&self) -> Option<i64> {
        match self {
            Neuron::Odd { weights, bias, .. } if weights.iter().all(|w| *w == 0) => Some(*bias),
            _ => None,
        }
    }
}

/// Affine least squares of `ys` on `xs`, and the largest residual.
fn affine_fit(xs: &[f64], ys: &[f64]) -> (f64, f64, f64) {
    let n = xs.len().max(1) as f64;
    let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
    let (mut sxx, mut sxy) = (0.0, 0.0);
    for (x, y) in xs.iter().zip(ys) {
        sxx += (x - mx) * (x - mx);
        sxy += (x - mx) * (y - my);
    }
    let alpha = if sxx > 0.0 { sxy / sxx } else { 0.0 };
    let beta = my - alpha * mx;
    let worst = xs
        .iter()
        .zip(ys)
        .map(|(x, y)| (y - alpha * x - beta).abs())
        .fold(0.0, f64::max);
    (alpha, beta, worst)
}

/// Chooses how neuron `j` is computed from its calibration pre-activations `pre` (float, on
/// quantised inputs `qrows`).
fn plan_neuron(
    w: &[f64],
    b: f64,
    act: Activation,
    qrows: &[Vec<f64>],
    pre: &[f64],
) -> Result<Neuron, FheError> {
    let (lo, hi) = pre
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| {
            (l.min(*v), h.max(*v))
        });
    // The range widened by 2% on each side, as the cleared design does.
    let pad = 0.02 * (hi - lo);
    let (xs, ys): (Vec<f64>, Vec<f64>) = pre
        .iter()
        .copied()
        .chain([lo - pad, hi + pad])
        .map(|x| (x, act.apply(x)))
        .unzip();
    let (alpha, beta, worst) = affine_fit(&xs, &ys);
    let span = ys.iter().fold(0.0f64, |m, y| m.max(y.abs())).max(1e-12);
    if worst <= 1e-9 * span {
        return Ok(Neuron::Affine { alpha, beta });
    }
    let m = (lo - pad).abs().max((hi + pad).abs()).max(1e-12);
    let mut k = (HALF as f64 - 0.5) / m;
    for _ in 0..200 {
        let weights: Vec<i64> = w.iter().map(|v| (v * k).round() as i64).collect();
        let bias = (b * k).round() as i64;
        let acc: Vec<i64> = qrows
            .iter()
            .map(|r| {
                r.iter()
                    .zip(&weights)
                    .map(|(x, w)| *x as i64 * w)
                    .sum::<i64>()
                    + bias
            })
            .collect();
        if acc.iter().all(|a| (-HALF..HALF).contains(a)) {
            // Every accumulator value once on the grid (keeps all 16 entries defined), and
            // every calibration row.
            let grid = (-HALF..HALF).map(|v| {
                let x = v as f64 / k;
                (x, v, act.apply(x))
            });
            let main_rows: Vec<(f64, i64, f64)> = grid
                .clone()
                .chain(pre.iter().zip(&acc).map(|(p, a)| (*p, *a, act.apply(*p))))
                .collect();
            let split_rows: Vec<(f64, i64, f64)> = grid
                .chain(
                    pre.iter()
                        .zip(&acc)
                        .map(|(p, a)| (*a as f64 / k, *a, act.apply(*p))),
                )
                .collect();
            return Ok(Neuron::Odd {
                weights,
                bias,
                k,
                main: Box::new(fit_odd(&main_rows, None)),
                split: Box::new(fit_odd(&split_rows, None)),
            });
        }
        k *= 0.98;
    }
    Err(FheError::Unsupported(
        "a hidden neuron's calibration range does not fit a 5-bit accumulator".into(),
    ))
}

/// Compiles a one-hidden-layer network with one bootstrap per (non-affine) neuron and score.
pub(super) fn negacyclic_layer(
    net: &Network,
    calibration: &[Vec<f64>],
    opts: &CompileOptions,
    cap: usize,
) -> Result<CompiledModel, FheError> {
    let bits = opts.bits.unwrap_or(4);
    if bits > MAX_INPUT_BITS {
        return Err(FheError::Input(format!(
            "networks take at most {MAX_INPUT_BITS} input bits"
        )));
    }
    let levels = 1u32 << bits;
    let (qs, l1, qrows) = quantised_first_layer(net, calibration, levels);
    let l2 = &net.layers[1];
    let act = net.activations[0];
    let (h, k_out, n_in) = (l1.n_out(), l2.n_out(), l1.n_in());
    let neurons = (0..h)
        .map(|j| {
            let pre: Vec<f64> = qrows
                .iter()
                .map(|r| l1.w[j].iter().zip(r).map(|(w, x)| w * x).sum::<f64>() + l1.b[j])
                .collect();
            plan_neuron(&l1.w[j], l1.b[j], act, &qrows, &pre)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let odd: Vec<usize> = (0..h)
        .filter(|&j| matches!(neurons[j], Neuron::Odd { .. }) && neurons[j].constant().is_none())
        .collect();

    // Bootstrap outputs: per score, partial sums planned as in the cleared design.
    let worst: Vec<Vec<f64>> =
        l2.w.iter()
            .map(|w_out| {
                odd.iter()
                    .map(|&j| match &neurons[j] {
                        Neuron::Odd { main, .. } => main
                            .table
                            .iter()
                            .fold(0.0f64, |m, t| m.max((t * w_out[j]).abs())),
                        Neuron::Affine { .. } => 0.0,
                    })
                    .collect()
            })
            .collect();
    let (so, po, group_of) = if odd.is_empty() {
        (1.0, vec![], vec![])
    } else {
        let plan = plan_outputs(
            &vec![1; odd.len()],
            &worst,
            &vec![0.0; k_out],
            cap,
            &opts.params,
        )?;
        (plan.scale, plan.po, plan.group_of)
    };

    // The affine parts of all neurons, and the output bias, as one dot product per score.
    let affine = |j: usize| match &neurons[j] {
        Neuron::Affine { alpha, beta } => (*alpha, *beta),
        Neuron::Odd { main, .. } => match neurons[j].constant() {
            Some(a) => (main.alpha, main.beta + main.odd(a)),
            None => (main.alpha, main.beta),
        },
    };
    let lin: Vec<(Vec<f64>, f64)> = (0..k_out)
        .map(|o| {
            let coef = (0..n_in)
                .map(|i| {
                    (0..h)
                        .map(|j| l2.w[o][j] * affine(j).0 * l1.w[j][i])
                        .sum::<f64>()
                })
                .collect();
            let bias = l2.b[o]
                + (0..h)
                    .map(|j| l2.w[o][j] * (affine(j).0 * l1.b[j] + affine(j).1))
                    .sum::<f64>();
            (coef, bias)
        })
        .collect();

    let xmax = f64::from(levels - 1);
    let mut first_err = None;
    // The finest scale for the affine outputs whose circuit still meets the noise bound.
    for shift in (0..=WIDEST_LINEAR).rev() {
        let scale = so * f64::from(shift).exp2();
        let ints: Vec<(Vec<i64>, i64)> = lin
            .iter()
            .map(|(c, b)| {
                (
                    c.iter().map(|v| (v * scale).round() as i64).collect(),
                    (b * scale).round() as i64,
                )
            })
            .collect();
        // Bits each affine output needs for its worst case over every quantised input.
        let p_lin: Vec<u32> = ints
            .iter()
            .map(|(c, b)| {
                let bound = c.iter().map(|v| v.unsigned_abs() as f64).sum::<f64>() * xmax
                    + b.unsigned_abs() as f64;
                (2..=MAX_BITS)
                    .find(|&p| bound < (1u64 << (p - 1)) as f64)
                    .unwrap_or(MAX_BITS + 1)
            })
            .collect();
        if p_lin.iter().any(|&p| p > WIDEST_LINEAR) {
            continue;
        }
        let built = build(
            &neurons, &odd, l2, &ints, &p_lin, shift, so, &po, &group_of, n_in,
        );
        let (circuit, output_shifts) = match built {
            Ok(b) => b,
            Err(e) => {
                first_err.get_or_insert(e);
                continue;
            }
        };
        if circuit.check_noise(&opts.params).is_err() {
            continue;
        }
        let p_in = circuit
            .input_encodings()
            .first()
            .copied()
            .unwrap_or(LUT_BITS);
        let ours = split_circuit(&neurons, &l1.w, &l1.b, xmax, p_in, &opts.params)
            .map(|(c, scales)| Split {
                layers: 1,
                circuit: c,
                activation_scale: 1.0,
                activation_scales: scales,
                rest: Network {
                    layers: vec![l2.clone()],
                    activations: vec![],
                    head: net.head.clone(),
                },
            })
            .ok();
        let split = choose_split(net, calibration, opts, cap, &qs, p_in, ours);
        return Ok(CompiledModel {
            outputs_per_score: po.len() + 1,
            circuit,
            quantisers: qs,
            output_scale: so,
            head: net.head.clone(),
            kind: format!("network 1×{h} {act:?}").to_lowercase(),
            params: opts.params,
            log2_p_fail: 0.0,
            split,
            output_shifts,
        });
    }
    Err(first_err.unwrap_or_else(|| {
        FheError::Unsupported("the network's affine part is too wide for the noise budget".into())
    }))
}

/// `Σ cᵢ·inputᵢ + bias` at encoding `p`, zero coefficients left out.
fn dot(ins: &[ValueId], coef: impl IntoIterator<Item = i64>, bias: i64, p: u32) -> Op {
    Op::Linear {
        terms: ins
            .iter()
            .copied()
            .zip(coef)
            .filter(|(_, c)| *c != 0)
            .collect(),
        bias,
        p,
    }
}

/// Split inference reveals activations to the node, so they must be functions of the quantised
/// accumulator alone; at 5 bits that can cost accuracy the main circuit (whose affine part is
/// exact) does not lose. Of this design's split and the cleared design's (an 8-bit
/// accumulator, three bootstraps per neuron, same quantised inputs) take the cheaper one unless
/// it agrees with the float model on fewer calibration rows by more than [`LABEL_TOLERANCE`].
fn choose_split(
    net: &Network,
    calibration: &[Vec<f64>],
    opts: &CompileOptions,
    cap: usize,
    qs: &[Quantiser],
    p_in: u32,
    ours: Option<Split>,
) -> Option<Split> {
    let cleared = one_hidden_layer(net, calibration, opts, cap)
        .ok()
        .and_then(|c| c.split)
        .map(|mut s| {
            // The cleared split reads the same quantised inputs, encrypted wider here.
            for op in &mut s.circuit.ops {
                if let Op::Input { p, .. } = op {
                    *p = p_in;
                }
            }
            s
        })
        .filter(|s| s.circuit.validate().is_ok() && s.circuit.check_noise(&opts.params).is_ok());
    let score = |s: &Split| split_fidelity(net, calibration, qs, s);
    match (ours, cleared) {
        (Some(o), Some(c)) => {
            let (cheap, dear) = if o.circuit.pbs_count() <= c.circuit.pbs_count() {
                (o, c)
            } else {
                (c, o)
            };
            Some(if score(&cheap) >= score(&dear) - LABEL_TOLERANCE {
                cheap
            } else {
                dear
            })
        }
        (o, c) => o.or(c),
    }
}

/// Share of calibration rows whose split-inference label equals the float model's (for
/// regressors, minus the mean absolute score error).
fn split_fidelity(net: &Network, calibration: &[Vec<f64>], qs: &[Quantiser], s: &Split) -> f64 {
    let (mut agree, mut abs) = (0usize, 0.0);
    for r in calibration {
        let q: Vec<i64> = qs.iter().zip(r).map(|(q, v)| q.apply(*v)).collect();
        let Ok(scores) = s.finish(&s.circuit.simulate(&q)) else {
            return f64::NEG_INFINITY;
        };
        let float = net.scores(r);
        abs += float
            .iter()
            .zip(&scores)
            .map(|(a, b)| (a - b).abs())
            .sum::<f64>();
        agree += usize::from(net.head.label(&float) == net.head.label(&scores));
    }
    let n = calibration.len().max(1) as f64;
    match net.head {
        Head::Regression => -abs / n,
        _ => agree as f64 / n,
    }
}

/// The main circuit: inputs at the widest affine encoding, per odd neuron its accumulator and
/// one bootstrap per score, per score the partial sums then the affine output.
#[allow(clippy::too_many_arguments)]
fn build(
    neurons: &[Neuron],
    odd: &[usize],
    l2: &crate::model::Dense,
    lin: &[(Vec<i64>, i64)],
    p_lin: &[u32],
    shift: u32,
    so: f64,
    po: &[u32],
    group_of: &[usize],
    n_in: usize,
) -> Result<(Circuit, Vec<u32>), FheError> {
    let p_in = p_lin.iter().copied().fold(LUT_BITS, u32::max);
    let mut ops = vec![];
    let ins = inputs(&mut ops, n_in, p_in);
    let k_out = l2.n_out();
    let mut sums: Vec<Vec<Vec<ValueId>>> = vec![vec![vec![]; po.len()]; k_out];
    for (u, &j) in odd.iter().enumerate() {
        let Neuron::Odd {
            weights,
            bias,
            main,
            ..
        } = &neurons[j]
        else {
            continue;
        };
        ops.push(dot(&ins, weights.iter().copied(), *bias, LUT_BITS));
        let acc = ops.len() - 1;
        for (o, w_out) in l2.w.iter().enumerate() {
            let g = group_of[u];
            ops.push(Op::Lut {
                input: acc,
                table: main
                    .table
                    .iter()
                    .map(|t| (t * w_out[j] * so).round() as i64)
                    .collect(),
                p: po[g],
            });
            sums[o][g].push(ops.len() - 1);
        }
    }
    let mut outputs = vec![];
    let mut shifts = vec![];
    for (o, per_group) in sums.into_iter().enumerate() {
        for (g, ids) in per_group.into_iter().enumerate() {
            ops.push(Op::Linear {
                terms: ids.into_iter().map(|id| (id, 1)).collect(),
                bias: 0,
                p: po[g],
            });
            outputs.push(ops.len() - 1);
            shifts.push(0);
        }
        let (coef, bias) = &lin[o];
        ops.push(dot(&ins, coef.iter().copied(), *bias, p_lin[o]));
        outputs.push(ops.len() - 1);
        shifts.push(shift);
    }
    let circuit = Circuit {
        ops,
        outputs,
        n_inputs: n_in,
    };
    circuit.validate()?;
    Ok((circuit, shifts))
}

/// The split circuit: per neuron one output, `c·a + A'(a) + b'` for an odd neuron (one
/// bootstrap) or the affine activation of the inputs, each at its own scale. Its inputs are
/// the main circuit's (levels up to `xmax`, encrypted at `p_in`).
fn split_circuit(
    neurons: &[Neuron],
    w: &[Vec<f64>],
    b: &[f64],
    xmax: f64,
    p_in: u32,
    params: &Params,
) -> Result<(Circuit, Vec<f64>), FheError> {
    let n_in = w.first().map_or(0, Vec::len);
    let pa = widest_output(1, params).ok_or_else(|| {
        FheError::Unsupported("a bootstrap output does not decrypt within the bound".into())
    })?;
    let room = ((1u64 << (pa - 1)) - 1) as f64;
    let mut ops = vec![];
    let ins = inputs(&mut ops, n_in, p_in);
    let mut outputs = vec![];
    let mut scales = vec![];
    for (j, neuron) in neurons.iter().enumerate() {
        match neuron {
            Neuron::Affine { alpha, beta } => {
                // Worst case over every quantised input (levels 0 to xmax).
                let bound = w[j].iter().map(|v| (alpha * v).abs() * xmax).sum::<f64>()
                    + (alpha * b[j] + beta).abs();
                let sa = if bound > 0.0 {
                    (room - 0.5 * (n_in as f64 + 1.0)) / bound
                } else {
                    1.0
                };
                if sa <= 0.0 {
                    return Err(FheError::Unsupported(
                        "an affine activation is too wide".into(),
                    ));
                }
                ops.push(dot(
                    &ins,
                    w[j].iter().map(|v| (alpha * v * sa).round() as i64),
                    ((alpha * b[j] + beta) * sa).round() as i64,
                    pa,
                ));
                outputs.push(ops.len() - 1);
                scales.push(sa);
            }
            Neuron::Odd { k, split, .. } if neuron.constant().is_some() => {
                // A constant accumulator: a constant activation, no bootstrap.
                let a = neuron.constant().unwrap_or(0);
                let v = split.value(a as f64 / k, a);
                let sa = (room - 1.0) / v.abs().max(1e-12);
                ops.push(Op::Linear {
                    terms: vec![],
                    bias: (v * sa).round() as i64,
                    p: pa,
                });
                outputs.push(ops.len() - 1);
                scales.push(sa);
            }
            Neuron::Odd {
                weights,
                bias,
                k,
                split,
                ..
            } => {
                let (c, sa, fit) = odd_activation(*k, split, room)?;
                ops.push(dot(&ins, weights.iter().copied(), *bias, LUT_BITS));
                let acc = ops.len() - 1;
                ops.push(Op::Lut {
                    input: acc,
                    table: fit.table.iter().map(|t| (t * sa).round() as i64).collect(),
                    p: pa,
                });
                let lut = ops.len() - 1;
                let mut terms: Vec<(ValueId, i64)> = vec![(lut, 1)];
                if c != 0 {
                    terms.extend(
                        ins.iter()
                            .zip(weights)
                            .filter(|(_, w)| **w != 0)
                            .map(|(&id, &w)| (id, c * w)),
                    );
                }
                ops.push(Op::Linear {
                    terms,
                    bias: c * bias + (fit.beta * sa).round() as i64,
                    p: pa,
                });
                outputs.push(ops.len() - 1);
                scales.push(sa);
            }
        }
    }
    let circuit = Circuit {
        ops,
        outputs,
        n_inputs: n_in,
    };
    circuit.validate()?;
    circuit.check_noise(params)?;
    Ok((circuit, scales))
}

/// The split activation of an odd neuron as integers: `c·a + round(sa·A(a)) + round(sa·β)`
/// with `c = sa·α/k` an integer, the scale `sa` as large as the output encoding allows.
fn odd_activation(k: f64, fit: &OddFit, room: f64) -> Result<(i64, f64, OddFit), FheError> {
    let values = |f: &OddFit| -> f64 {
        (-HALF..HALF)
            .map(|a| f.value(a as f64 / k, a).abs())
            .fold(0.0, f64::max)
            .max(1e-12)
    };
    let mut target = (room - 1.0) / values(fit);
    for _ in 0..50 {
        // The coefficient on `a`, rounded toward zero, then the scale that makes it exact.
        let c = (target * fit.alpha / k).trunc();
        let (sa, refit) = if c == 0.0 {
            (target, fit_again(fit, k, 0.0))
        } else {
            let sa = c * k / fit.alpha;
            (sa, fit_again(fit, k, fit.alpha))
        };
        let fits = (-HALF..HALF).all(|a| {
            let v = c * a as f64 + (sa * refit.odd(a)).round() + (sa * refit.beta).round();
            v.abs() <= room
        });
        if fits && sa > 0.0 && sa.is_finite() {
            return Ok((c as i64, sa, refit));
        }
        target *= 0.9;
    }
    Err(FheError::Unsupported(
        "a split activation does not fit its output encoding".into(),
    ))
}

/// `fit` with `α` set (it already is, for a non-zero coefficient): with `α = 0` the table and
/// `β` absorb the linear part on the grid.
fn fit_again(fit: &OddFit, k: f64, alpha: f64) -> OddFit {
    if alpha == fit.alpha {
        return fit.clone();
    }
    let rows: Vec<(f64, i64, f64)> = (-HALF..HALF)
        .map(|a| (a as f64 / k, a, fit.value(a as f64 / k, a)))
        .collect();
    fit_odd(&rows, Some(alpha))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Dense, Head};

    /// `relu(x) = x/2 + 4/k + A(a)` with `A` antiperiodic: the fit finds it exactly.
    #[test]
    fn relu_splits_exactly_into_affine_and_antiperiodic_parts() {
        let k = 2.5;
        let rows: Vec<(f64, i64, f64)> = (-HALF..HALF)
            .map(|a| {
                let x = a as f64 / k;
                (x, a, x.max(0.0))
            })
            .collect();
        let fit = fit_odd(&rows, None);
        assert!((fit.alpha - 0.5).abs() < 1e-9, "{fit:?}");
        assert!((fit.beta - 4.0 / k).abs() < 1e-9, "{fit:?}");
        for &(x, a, y) in &rows {
            assert!((fit.value(x, a) - y).abs() < 1e-9, "a = {a}");
        }
        // A fixed α is honoured and the rest still fits where it can.
        let zero = fit_odd(&rows, Some(0.0));
        assert_eq!(zero.alpha, 0.0);
    }

    /// Three neurons: one changes side over the calibration range (one bootstrap), one is
    /// always on and one always off (affine, none). Scores and split activations follow the
    /// float network.
    #[test]
    fn only_neurons_that_change_side_take_a_bootstrap() {
        let net = Network {
            layers: vec![
                Dense {
                    w: vec![vec![1.0, -1.0], vec![0.5, 0.25], vec![-1.0, -2.0]],
                    b: vec![0.0, 1.0, -0.5],
                },
                Dense {
                    w: vec![vec![2.0, -1.0, 3.0]],
                    b: vec![-0.75],
                },
            ],
            activations: vec![Activation::Relu],
            head: Head::Binary {
                classes: ["no".into(), "yes".into()],
            },
        };
        // On the 3-bit input grid, so the only error is the circuit's. (At 5 bits a two-input
        // neuron's integer weights would round to nothing in a 5-bit accumulator; the compiler
        // tries every width and keeps the faithful ones.)
        let calibration: Vec<Vec<f64>> = (0..=7)
            .flat_map(|i| (0..=7).map(move |j| vec![f64::from(i) / 7.0, f64::from(j) / 7.0]))
            .collect();
        let opts = CompileOptions {
            bits: Some(3),
            ..CompileOptions::default()
        };
        let c = negacyclic_layer(&net, &calibration, &opts, usize::MAX).expect("compile");
        c.circuit.validate().expect("valid");
        c.circuit.check_noise(&opts.params).expect("noise");
        assert_eq!(c.circuit.pbs_count(), 1);
        assert_eq!(c.outputs_per_score, 2);
        assert_eq!(c.output_shifts.len(), 2);
        assert!(c.output_shifts[1] > 8, "{:?}", c.output_shifts);
        let split = c.split.as_ref().expect("split");
        assert_eq!(split.circuit.pbs_count(), 1);
        let (mut score_err, mut act_err) = (0.0f64, 0.0f64);
        for r in &calibration {
            let float = net.scores(r)[0];
            score_err = score_err.max((c.scores(&c.simulate(r).expect("sim"))[0] - float).abs());
            let q = c.quantise(r).expect("quantise");
            let acts = split.circuit.simulate(&q);
            let finished = split.finish(&acts).expect("finish")[0];
            act_err = act_err.max((finished - float).abs());
        }
        // Scores span about ±3: the 5-bit accumulator's weights are rounded (2.13 to 2), which
        // the fit absorbs on the main circuit; split activations are functions of it alone.
        assert!(score_err < 0.1, "{score_err}");
        assert!(act_err < 0.15, "{act_err}");
    }
}
