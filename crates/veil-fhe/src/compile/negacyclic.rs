//! Networks with one bootstrap per hidden neuron and consumer (a score, or a neuron of a later
//! layer): the bootstrap reads a *signed* 5-bit accumulator whole, and its negacyclic symmetry
//! is put to work.
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
//! **Deeper networks.** An activation `α·pre + β + A(a)` is affine in its pre-activation plus
//! one antiperiodic term, so every later pre-activation and score is an [`Expr`]: affine in the
//! inputs plus `Σ g_u·A_u(a_u)` over the bootstrapped units `u` before it. A unit of a later
//! layer builds its accumulator from a dot product of the inputs plus, per earlier unit
//! feeding it, one bootstrap on that unit's accumulator whose table is `k·g_u·A_u` rounded (an
//! *edge*). A bootstrap output is an exact integer at encoding 5, and up to [`edge_budget`] of
//! them (39 with Veil's parameters) summed are still read within 2^-128; past that the weakest
//! edges are left out and the fit absorbs what they carried. A layer-2 neuron's activation
//! passes `α` times its pre-activation on, so first-layer units also reach later layers and
//! the scores directly. Cost: one bootstrap per (unit, consumer) pair whose table is not zero.

use super::{
    CompileOptions, CompiledModel, Quantiser, inputs, plan_outputs, quantised_first_layer,
    widest_output,
};
use crate::FheError;
use crate::circuit::{Circuit, LUT_BITS, LUT_SIZE, MAX_BITS, Op, ValueId, lut_apply};
use crate::model::{Activation, Dense, Network};
use crate::noise::Params;

/// The accumulator holds `[−HALF, HALF)`.
const HALF: i64 = LUT_SIZE as i64;

/// Most input bits this design takes (the affine part reads the inputs at full precision).
const MAX_INPUT_BITS: u32 = 8;

/// Accumulator scales tried per neuron (from the widest that fits the calibration range down,
/// 2% apart): the rounding of small integer weights makes a coarser scale fit better at times.
const SCALES_TRIED: usize = 24;

/// Coordinate-descent passes over a neuron's integer weights.
const REFINE_PASSES: usize = 6;

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
    /// Its accumulator (pre-activation times `k`): integer weights on the inputs, a bias, and
    /// per earlier unit feeding it one bootstrap (`edges`: the unit and the table on its
    /// accumulator); the fit of the activation against the pre-activation.
    Odd {
        weights: Vec<i64>,
        bias: i64,
        edges: Vec<(usize, Vec<i64>)>,
        main: Box<OddFit>,
    },
}

impl Neuron {
    /// An odd neuron whose integer weights all rounded to zero and that no earlier unit feeds:
    /// its accumulator is the known constant `bias`, so its bootstrap would compute a
    /// constant. It is folded into the affine part instead.
    fn constant(&self) -> Option<i64> {
        match self {
            Neuron::Odd {
                weights,
                bias,
                edges,
                ..
            } if edges.is_empty() && weights.iter().all(|w| *w == 0) => Some(*bias),
            _ => None,
        }
    }
}

/// A pre-activation or score as the circuit computes it: affine in the quantised inputs
/// (`x`, `c`) plus `Σ g[u]·A_u(a_u)` over the bootstrapped units before it. Every activation
/// `α·pre + β + A(a)` is again of this form, so it carries through any number of layers.
#[derive(Debug, Clone, Default)]
struct Expr {
    x: Vec<f64>,
    c: f64,
    g: Vec<f64>,
}

impl Expr {
    /// `self += s·other`.
    fn add_scaled(&mut self, other: &Expr, s: f64) {
        if self.x.len() < other.x.len() {
            self.x.resize(other.x.len(), 0.0);
        }
        if self.g.len() < other.g.len() {
            self.g.resize(other.g.len(), 0.0);
        }
        for (a, b) in self.x.iter_mut().zip(&other.x) {
            *a += s * b;
        }
        for (a, b) in self.g.iter_mut().zip(&other.g) {
            *a += s * b;
        }
        self.c += s * other.c;
    }

    /// The value on calibration row `r` (quantised inputs `x`).
    fn eval(&self, x: &[f64], units: &[Planned], r: usize) -> f64 {
        let lin: f64 = self.x.iter().zip(x).map(|(w, v)| w * v).sum();
        let odd: f64 = self
            .g
            .iter()
            .zip(units)
            .filter(|(g, _)| **g != 0.0)
            .map(|(g, u)| g * u.fit.odd(u.acc[r]))
            .sum();
        lin + self.c + odd
    }
}

/// A bootstrapped unit as planning sees it: its fit and its accumulator on every calibration row.
struct Planned {
    fit: OddFit,
    acc: Vec<i64>,
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

/// Most bootstrap outputs one accumulator may add up and still be read by a bootstrap within
/// the failure bound (half a bootstrap's variance is left for the inputs' share).
fn edge_budget(params: &Params) -> usize {
    (1..=1024usize)
        .take_while(|&n| {
            params.log2_p_fail_pbs((n as f64 + 0.5) * params.var_pbs) <= params.max_log2_p_fail
        })
        .last()
        .unwrap_or(0)
}

/// Chooses how a neuron with pre-activation `e` is computed, from its values on the
/// calibration rows (quantised inputs `qrows`, each at most `xmax`, earlier units `units`);
/// returns the neuron and, for an odd one, its accumulator on every row. An accumulator takes
/// at most `budget` edges: beyond that the weakest are left out (the fit absorbs what they
/// carried). With `refine`, weights from [`refine_weights`] are tried beside the rounded ones.
///
/// A bootstrap reads the accumulator modulo 32, so a value outside `[−16, 16)` wraps and gives
/// a wrong score. With `Accumulators::InputBox`, an accumulator fed by inputs only (the first
/// layer's) is scaled to its range over the whole legal input box, every input at any level,
/// so that no legal input wraps; the activation is fitted on the calibration rows' part of
/// that range. An accumulator fed by
/// earlier bootstraps is scaled to the calibration rows (widened 2%): an interval bound over
/// the box, every edge at its extremes at once, is so loose it would leave no precision, so
/// a legal input unlike every calibration row may wrap it (counted in `RangeCheck`).
#[allow(clippy::too_many_arguments)]
fn plan_neuron(
    e: &Expr,
    act: Activation,
    qrows: &[Vec<f64>],
    xmax: f64,
    accumulators: super::Accumulators,
    units: &[Planned],
    budget: usize,
    refine: bool,
) -> Result<(Neuron, Vec<i64>), FheError> {
    let pre: Vec<f64> = qrows
        .iter()
        .enumerate()
        .map(|(r, x)| e.eval(x, units, r))
        .collect();
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
        return Ok((Neuron::Affine { alpha, beta }, vec![]));
    }
    // The pre-activation's bound over the input box: inputs anywhere in [0, xmax], every
    // earlier unit's antiperiodic term anywhere in its table's range.
    let odd_bound: f64 =
        e.g.iter()
            .zip(units)
            .map(|(g, u)| g.abs() * u.fit.table.iter().fold(0.0f64, |m, t| m.max(t.abs())))
            .sum();
    let box_lo = e.c + e.x.iter().map(|w| (w * xmax).min(0.0)).sum::<f64>() - odd_bound;
    let box_hi = e.c + e.x.iter().map(|w| (w * xmax).max(0.0)).sum::<f64>() + odd_bound;
    let box_sized = accumulators == super::Accumulators::InputBox && e.g.iter().all(|g| *g == 0.0);
    let m = if box_sized {
        box_lo.abs().max(box_hi.abs())
    } else {
        0.0
    }
    .max((lo - pad).abs())
    .max((hi + pad).abs())
    .max(1e-12);
    let mut k = (HALF as f64 - 0.5) / m;
    let xmax_int = xmax as i64;
    // (squared error on the calibration rows, neuron, accumulators) of the best scale so far.
    let mut best: Option<(f64, Neuron, Vec<i64>)> = None;
    let mut fitting = 0;
    for _ in 0..200 {
        if fitting == SCALES_TRIED {
            break;
        }
        let weights: Vec<i64> = e.x.iter().map(|v| (v * k).round() as i64).collect();
        let bias = (e.c * k).round() as i64;
        let mut edges: Vec<(usize, Vec<i64>)> =
            e.g.iter()
                .enumerate()
                .filter(|(_, g)| **g != 0.0)
                .map(|(u, g)| {
                    let table = units[u].fit.table.iter();
                    (u, table.map(|t| (t * g * k).round() as i64).collect())
                })
                .filter(|(_, t): &(usize, Vec<i64>)| t.iter().any(|v| *v != 0))
                .collect();
        if edges.len() > budget {
            let strength = |t: &[i64]| t.iter().map(|v| v.unsigned_abs()).max().unwrap_or(0);
            edges.sort_by_key(|(_, t)| std::cmp::Reverse(strength(t)));
            edges.truncate(budget);
            edges.sort_by_key(|(u, _)| *u);
        }
        // What the edges bring, unwrapped (every table read at full width), so the range
        // check sees the true sum; the circuit computes it modulo 32, which agrees when it fits.
        let fed: Vec<i64> = (0..qrows.len())
            .map(|r| {
                edges
                    .iter()
                    .map(|(u, t)| lut_apply(t, units[*u].acc[r], MAX_BITS))
                    .sum()
            })
            .collect();
        let target: Vec<f64> = pre
            .iter()
            .zip(&fed)
            .map(|(p, f)| k * p - *f as f64)
            .collect();
        // The rounded weights and, if asked, the refined ones: the fit error decides.
        let rounded = (weights, bias);
        let mut variants = vec![rounded.clone()];
        if refine {
            let mut refined = rounded.clone();
            refine_weights(qrows, &target, &mut refined.0, &mut refined.1);
            if refined != rounded {
                variants.push(refined);
            }
        }
        let mut fits = false;
        for (weights, bias) in variants {
            let acc: Vec<i64> = qrows
                .iter()
                .zip(&fed)
                .map(|(x, f)| {
                    let lin: i64 = x.iter().zip(&weights).map(|(v, w)| *v as i64 * w).sum();
                    lin + bias + f
                })
                .collect();
            // The integer accumulator over the box: weights at either end of every input's
            // levels, every edge at its table's extremes.
            let edges_lo: i64 = edges
                .iter()
                .map(|(_, t)| t.iter().map(|v| -v.abs()).min().unwrap_or(0))
                .sum();
            let edges_hi: i64 = edges
                .iter()
                .map(|(_, t)| t.iter().map(|v| v.abs()).max().unwrap_or(0))
                .sum();
            let acc_lo =
                bias + weights.iter().map(|w| (w * xmax_int).min(0)).sum::<i64>() + edges_lo;
            let acc_hi =
                bias + weights.iter().map(|w| (w * xmax_int).max(0)).sum::<i64>() + edges_hi;
            let in_range = if box_sized {
                acc_lo >= -HALF && acc_hi < HALF
            } else {
                acc.iter().all(|a| (-HALF..HALF).contains(a))
            };
            if !in_range {
                continue;
            }
            fits = true;
            // Every accumulator value once on the grid (keeps all 16 entries defined), and
            // every calibration row.
            let grid = (-HALF..HALF).map(|v| {
                let x = v as f64 / k;
                (x, v, act.apply(x))
            });
            let main_rows: Vec<(f64, i64, f64)> = grid
                .chain(pre.iter().zip(&acc).map(|(p, a)| (*p, *a, act.apply(*p))))
                .collect();
            let main = fit_odd(&main_rows, None);
            let error: f64 = pre
                .iter()
                .zip(&acc)
                .map(|(p, a)| (main.value(*p, *a) - act.apply(*p)).powi(2))
                .sum();
            if best.as_ref().is_none_or(|(b, _, _)| error < *b) {
                let neuron = Neuron::Odd {
                    weights,
                    bias,
                    edges: edges.clone(),
                    main: Box::new(main),
                };
                best = Some((error, neuron, acc));
            }
        }
        fitting += usize::from(fits);
        k *= 0.98;
    }
    best.map(|(_, neuron, acc)| (neuron, acc)).ok_or_else(|| {
        FheError::Unsupported("a hidden neuron's range does not fit a 5-bit accumulator".into())
    })
}

/// Integer weights and bias whose dot product with the rows `x` is closest to `target` in
/// squared error: coordinate descent by ±1 from the rounded weights. Rounding each weight alone
/// loses much when weights are small integers (30 inputs into 32 accumulator levels); the
/// inputs are correlated, so other weights can make up for one rounded away.
fn refine_weights(x: &[Vec<f64>], target: &[f64], weights: &mut [i64], bias: &mut i64) {
    let n = weights.len();
    let mut res: Vec<f64> = x
        .iter()
        .zip(target)
        .map(|(r, t)| {
            let lin: f64 = r
                .iter()
                .zip(weights.iter())
                .map(|(v, w)| v * *w as f64)
                .sum();
            lin + *bias as f64 - t
        })
        .collect();
    // Column `i` of the rows, the bias's column (all ones) last.
    let col = |r: &[f64], i: usize| if i < n { r[i] } else { 1.0 };
    let sq: Vec<f64> = (0..=n)
        .map(|i| x.iter().map(|r| col(r, i) * col(r, i)).sum())
        .collect();
    for _ in 0..REFINE_PASSES {
        let mut improved = false;
        for i in 0..=n {
            if sq[i] == 0.0 {
                continue;
            }
            let dot: f64 = x.iter().zip(&res).map(|(r, e)| col(r, i) * e).sum();
            // Squared error changes by 2·d·dot + sq for a step d of ±1.
            let d = if 2.0 * dot > sq[i] {
                -1.0
            } else if -2.0 * dot > sq[i] {
                1.0
            } else {
                continue;
            };
            for (r, e) in x.iter().zip(res.iter_mut()) {
                *e += d * col(r, i);
            }
            if i < n {
                weights[i] += d as i64;
            } else {
                *bias += d as i64;
            }
            improved = true;
        }
        if !improved {
            break;
        }
    }
}

/// The hidden layers planned front to back.
struct Plan {
    /// Per hidden layer, its neurons.
    layers: Vec<Vec<Neuron>>,
    /// The bootstrapped units in circuit order, as (layer, neuron), and their fits.
    units: Vec<(usize, usize)>,
    fits: Vec<OddFit>,
    /// Per score, its expression over the inputs and the units.
    scores: Vec<Expr>,
}

impl Plan {
    fn unit(&self, u: usize) -> &Neuron {
        let (l, j) = self.units[u];
        &self.layers[l][j]
    }
}

/// Plans every hidden layer on the calibration rows: each neuron's pre-activation is an
/// [`Expr`] of the one before, each activation becomes `α·pre + β (+ A_u)`.
fn plan_layers(
    net: &Network,
    first: &Dense,
    qrows: &[Vec<f64>],
    xmax: f64,
    accumulators: super::Accumulators,
    budget: usize,
    refine: bool,
) -> Result<Plan, FheError> {
    let mut pres: Vec<Expr> = first
        .w
        .iter()
        .zip(&first.b)
        .map(|(w, b)| Expr {
            x: w.clone(),
            c: *b,
            g: vec![],
        })
        .collect();
    let mut planned: Vec<Planned> = vec![];
    let mut layers = vec![];
    let mut units = vec![];
    for (l, next) in net.layers.iter().enumerate().skip(1) {
        let act = *net
            .activations
            .get(l - 1)
            .ok_or_else(|| FheError::Unsupported("a hidden layer has no activation".into()))?;
        let mut neurons = vec![];
        let mut acts = vec![];
        for (j, e) in pres.iter().enumerate() {
            let (neuron, acc) =
                plan_neuron(e, act, qrows, xmax, accumulators, &planned, budget, refine)?;
            let mut h = Expr::default();
            match &neuron {
                Neuron::Affine { alpha, beta } => {
                    h.add_scaled(e, *alpha);
                    h.c += beta;
                }
                Neuron::Odd { main, .. } => {
                    h.add_scaled(e, main.alpha);
                    h.c += main.beta;
                    match neuron.constant() {
                        Some(a) => h.c += main.odd(a),
                        None => {
                            h.g.resize(planned.len() + 1, 0.0);
                            h.g[planned.len()] = 1.0;
                            planned.push(Planned {
                                fit: (**main).clone(),
                                acc,
                            });
                            units.push((l - 1, j));
                        }
                    }
                }
            }
            neurons.push(neuron);
            acts.push(h);
        }
        layers.push(neurons);
        pres = next
            .w
            .iter()
            .zip(&next.b)
            .map(|(w, b)| {
                let mut e = Expr {
                    c: *b,
                    ..Expr::default()
                };
                for (h, wj) in acts.iter().zip(w) {
                    e.add_scaled(h, *wj);
                }
                e
            })
            .collect();
    }
    Ok(Plan {
        layers,
        units,
        fits: planned.into_iter().map(|p| p.fit).collect(),
        scores: pres,
    })
}

/// Compiles a network with one bootstrap per (non-affine) neuron and consumer: per score, and
/// per neuron of a later layer whose accumulator it feeds. `refine`: see [`plan_neuron`]
/// (better on some networks, worse on others, so the compiler tries both). One candidate per
/// output cap in `caps`, all from one plan of the hidden layers.
pub(super) fn negacyclic_network(
    net: &Network,
    calibration: &[Vec<f64>],
    opts: &CompileOptions,
    caps: &[usize],
    refine: bool,
) -> Vec<Result<CompiledModel, FheError>> {
    let bits = opts.bits.unwrap_or(4);
    if bits > MAX_INPUT_BITS {
        return vec![Err(FheError::Input(format!(
            "networks take at most {MAX_INPUT_BITS} input bits"
        )))];
    }
    let levels = 1u32 << bits;
    let (qs, l1, qrows) = quantised_first_layer(net, calibration, levels, opts.ranges.as_deref());
    let xmax = f64::from(levels - 1);
    let plan = match plan_layers(
        net,
        &l1,
        &qrows,
        xmax,
        opts.accumulators,
        edge_budget(&opts.params),
        refine,
    ) {
        Ok(p) => p,
        Err(e) => return vec![Err(e)],
    };
    let ready = Ready {
        plan: &plan,
        qs: &qs,
        first: &l1,
        xmax,
    };
    caps.iter()
        .map(|&cap| ready.circuit(net, opts, cap))
        .collect()
}

/// A planned network and its quantised inputs, ready to become circuits.
struct Ready<'a> {
    plan: &'a Plan,
    qs: &'a [Quantiser],
    first: &'a Dense,
    /// Largest quantised input level.
    xmax: f64,
}

impl Ready<'_> {
    /// The circuit whose score outputs each sum at most `cap` bootstrap outputs.
    fn circuit(
        &self,
        net: &Network,
        opts: &CompileOptions,
        cap: usize,
    ) -> Result<CompiledModel, FheError> {
        let Ready {
            plan,
            qs,
            first: l1,
            xmax,
        } = *self;
        let (k_out, n_in, n_units) = (plan.scores.len(), l1.n_in(), plan.units.len());
        let weight = |o: usize, u: usize| plan.scores[o].g.get(u).copied().unwrap_or(0.0);

        // Bootstrap outputs: per score, partial sums planned as in the cleared design.
        let worst: Vec<Vec<f64>> = (0..k_out)
            .map(|o| {
                (0..n_units)
                    .map(|u| {
                        let w = weight(o, u);
                        plan.fits[u]
                            .table
                            .iter()
                            .fold(0.0f64, |m, t| m.max((t * w).abs()))
                    })
                    .collect()
            })
            .collect();
        if n_units > 0 && opts.outputs == super::Outputs::Scores {
            return self.score_circuit(net, opts, &worst);
        }
        let (so, po, group_of) = if n_units == 0 {
            (1.0, vec![], vec![])
        } else {
            let p = plan_outputs(
                &vec![1; n_units],
                &worst,
                &vec![0.0; k_out],
                cap,
                &opts.params,
            )?;
            (p.scale, p.po, p.group_of)
        };
        // Per unit and score, the table its bootstrap applies (all zero: no bootstrap).
        let tables: Vec<Vec<Vec<i64>>> = (0..n_units)
            .map(|u| {
                (0..k_out)
                    .map(|o| {
                        let w = weight(o, u);
                        plan.fits[u]
                            .table
                            .iter()
                            .map(|t| (t * w * so).round() as i64)
                            .collect()
                    })
                    .collect()
            })
            .collect();

        let mut first_err = None;
        // The finest scale for the affine outputs whose circuit still meets the noise bound.
        for shift in (0..=WIDEST_LINEAR).rev() {
            let scale = so * f64::from(shift).exp2();
            let ints: Vec<(Vec<i64>, i64)> = plan
                .scores
                .iter()
                .map(|e| {
                    let mut x = e.x.clone();
                    x.resize(n_in, 0.0);
                    (
                        x.iter().map(|v| (v * scale).round() as i64).collect(),
                        (e.c * scale).round() as i64,
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
            let built = build(plan, &tables, &ints, &p_lin, shift, &po, &group_of, n_in);
            let (circuit, output_shifts) = match built {
                Ok(b) => b,
                Err(e) => {
                    first_err.get_or_insert(e);
                    continue;
                }
            };
            if let Err(e) = circuit.check_noise(&opts.params) {
                first_err.get_or_insert(e);
                continue;
            }
            let widths: Vec<String> = plan.layers.iter().map(|l| l.len().to_string()).collect();
            let mut acts: Vec<String> = net.activations.iter().map(|a| format!("{a:?}")).collect();
            acts.dedup();
            return Ok(CompiledModel {
                outputs_per_score: po.len() + 1,
                circuit,
                quantisers: qs.to_vec(),
                output_scale: so,
                head: net.head.clone(),
                kind: format!(
                    "network {}×{} {}",
                    plan.layers.len(),
                    widths.join("-"),
                    acts.join("/")
                )
                .to_lowercase(),
                params: opts.params,
                log2_p_fail: 0.0,
                log2_p_fail_sample: None,
                range_check: None,
                output_shifts,
            });
        }
        Err(first_err.unwrap_or_else(|| {
            FheError::Unsupported(
                "the network's affine part is too wide for the noise budget".into(),
            )
        }))
    }
}

impl Ready<'_> {
    /// The circuit that returns each score as one ciphertext: the bootstrap outputs and the
    /// affine part summed together, at the widest encoding the bootstraps' noise allows (so the
    /// affine part loses the finer scale it has as a separate output). `worst[o][u]`: unit
    /// `u`'s largest contribution to score `o`, at unit scale.
    fn score_circuit(
        &self,
        net: &Network,
        opts: &CompileOptions,
        worst: &[Vec<f64>],
    ) -> Result<CompiledModel, FheError> {
        let Ready {
            plan,
            qs,
            first: l1,
            xmax,
        } = *self;
        let (k_out, n_in, n_units) = (plan.scores.len(), l1.n_in(), plan.units.len());
        let weight = |o: usize, u: usize| plan.scores[o].g.get(u).copied().unwrap_or(0.0);
        let p = widest_output(n_units, &opts.params).ok_or_else(|| {
            FheError::Unsupported(
                "too many bootstrap outputs in one score for the output's noise budget".into(),
            )
        })?;
        let limit = (1i64 << (p - 1)) - 1;
        let xmax_int = xmax as i64;
        // The score's bound at unit scale over the whole input box, then the largest scale at
        // which the rounded integers still fit (shrunk until they do).
        let bound = (0..k_out)
            .map(|o| {
                let e = &plan.scores[o];
                worst[o].iter().sum::<f64>()
                    + e.x.iter().map(|v| v.abs()).sum::<f64>() * xmax
                    + e.c.abs()
            })
            .fold(0.0f64, f64::max)
            .max(1e-12);
        let mut so = limit as f64 / bound;
        for _ in 0..100 {
            let tables: Vec<Vec<Vec<i64>>> = (0..n_units)
                .map(|u| {
                    (0..k_out)
                        .map(|o| {
                            let w = weight(o, u);
                            plan.fits[u]
                                .table
                                .iter()
                                .map(|t| (t * w * so).round() as i64)
                                .collect()
                        })
                        .collect()
                })
                .collect();
            let lin: Vec<(Vec<i64>, i64)> = plan
                .scores
                .iter()
                .map(|e| {
                    let mut x = e.x.clone();
                    x.resize(n_in, 0.0);
                    (
                        x.iter().map(|v| (v * so).round() as i64).collect(),
                        (e.c * so).round() as i64,
                    )
                })
                .collect();
            let fits = (0..k_out).all(|o| {
                let luts: i64 = tables
                    .iter()
                    .map(|t| t[o].iter().map(|v| v.abs()).max().unwrap_or(0))
                    .sum();
                let (c, b) = &lin[o];
                luts + c.iter().map(|v| v.abs() * xmax_int).sum::<i64>() + b.abs() <= limit
            });
            if !fits {
                so *= 0.98;
                continue;
            }
            let circuit = build_scores(plan, &tables, &lin, p, n_in)?;
            circuit.check_noise(&opts.params)?;
            let widths: Vec<String> = plan.layers.iter().map(|l| l.len().to_string()).collect();
            let mut acts: Vec<String> = net.activations.iter().map(|a| format!("{a:?}")).collect();
            acts.dedup();
            return Ok(CompiledModel {
                outputs_per_score: 1,
                circuit,
                quantisers: qs.to_vec(),
                output_scale: so,
                head: net.head.clone(),
                kind: format!(
                    "network {}×{} {}",
                    plan.layers.len(),
                    widths.join("-"),
                    acts.join("/")
                )
                .to_lowercase(),
                params: opts.params,
                log2_p_fail: 0.0,
                log2_p_fail_sample: None,
                range_check: None,
                output_shifts: vec![],
            });
        }
        Err(FheError::Unsupported(
            "the network's scores do not fit one output".into(),
        ))
    }
}

/// [`build`] with one output per score: its bootstraps' outputs and its affine part in one sum
/// at encoding `p`.
fn build_scores(
    plan: &Plan,
    tables: &[Vec<Vec<i64>>],
    lin: &[(Vec<i64>, i64)],
    p: u32,
    n_in: usize,
) -> Result<Circuit, FheError> {
    let p_in = p.max(LUT_BITS);
    let mut ops = vec![];
    let ins = inputs(&mut ops, n_in, p_in);
    let k_out = lin.len();
    let mut sums: Vec<Vec<ValueId>> = vec![vec![]; k_out];
    let mut acc_of: Vec<ValueId> = Vec::with_capacity(plan.units.len());
    for u in 0..plan.units.len() {
        let Neuron::Odd {
            weights,
            bias,
            edges,
            ..
        } = plan.unit(u)
        else {
            return Err(FheError::Circuit(
                "a unit is not a bootstrapped neuron".into(),
            ));
        };
        let mut fed = vec![];
        for (from, table) in edges {
            ops.push(Op::Lut {
                input: acc_of[*from],
                table: table.clone(),
                p: LUT_BITS,
            });
            fed.push((ops.len() - 1, 1));
        }
        let mut terms = dot_terms(&ins, weights.iter().copied());
        terms.extend(fed);
        ops.push(Op::Linear {
            terms,
            bias: *bias,
            p: LUT_BITS,
        });
        acc_of.push(ops.len() - 1);
        for (o, table) in tables[u].iter().enumerate() {
            if table.iter().all(|t| *t == 0) {
                continue;
            }
            ops.push(Op::Lut {
                input: acc_of[u],
                table: table.clone(),
                p,
            });
            sums[o].push(ops.len() - 1);
        }
    }
    let mut outputs = vec![];
    for (o, ids) in sums.into_iter().enumerate() {
        let (coef, bias) = &lin[o];
        let mut terms: Vec<(ValueId, i64)> = ids.into_iter().map(|id| (id, 1)).collect();
        terms.extend(dot_terms(&ins, coef.iter().copied()));
        ops.push(Op::Linear {
            terms,
            bias: *bias,
            p,
        });
        outputs.push(ops.len() - 1);
    }
    let circuit = Circuit {
        ops,
        outputs,
        n_inputs: n_in,
    };
    circuit.validate()?;
    Ok(circuit)
}

/// `Σ cᵢ·inputᵢ + bias` at encoding `p`, zero coefficients left out.
fn dot(ins: &[ValueId], coef: impl IntoIterator<Item = i64>, bias: i64, p: u32) -> Op {
    Op::Linear {
        terms: dot_terms(ins, coef),
        bias,
        p,
    }
}

/// The non-zero `(input, coefficient)` terms of a dot product.
fn dot_terms(ins: &[ValueId], coef: impl IntoIterator<Item = i64>) -> Vec<(ValueId, i64)> {
    ins.iter()
        .copied()
        .zip(coef)
        .filter(|(_, c)| *c != 0)
        .collect()
}

/// The main circuit: inputs at the widest affine encoding; per unit, the bootstraps of the
/// earlier units feeding it, its accumulator, and one bootstrap per score it reaches; per
/// score the partial sums then the affine output.
#[allow(clippy::too_many_arguments)]
fn build(
    plan: &Plan,
    tables: &[Vec<Vec<i64>>],
    lin: &[(Vec<i64>, i64)],
    p_lin: &[u32],
    shift: u32,
    po: &[u32],
    group_of: &[usize],
    n_in: usize,
) -> Result<(Circuit, Vec<u32>), FheError> {
    let p_in = p_lin.iter().copied().fold(LUT_BITS, u32::max);
    let mut ops = vec![];
    let ins = inputs(&mut ops, n_in, p_in);
    let k_out = lin.len();
    let mut sums: Vec<Vec<Vec<ValueId>>> = vec![vec![vec![]; po.len()]; k_out];
    let mut acc_of: Vec<ValueId> = Vec::with_capacity(plan.units.len());
    for u in 0..plan.units.len() {
        let Neuron::Odd {
            weights,
            bias,
            edges,
            ..
        } = plan.unit(u)
        else {
            return Err(FheError::Circuit(
                "a unit is not a bootstrapped neuron".into(),
            ));
        };
        let mut fed = vec![];
        for (from, table) in edges {
            ops.push(Op::Lut {
                input: acc_of[*from],
                table: table.clone(),
                p: LUT_BITS,
            });
            fed.push((ops.len() - 1, 1));
        }
        let mut terms = dot_terms(&ins, weights.iter().copied());
        terms.extend(fed);
        ops.push(Op::Linear {
            terms,
            bias: *bias,
            p: LUT_BITS,
        });
        acc_of.push(ops.len() - 1);
        for (o, table) in tables[u].iter().enumerate() {
            if table.iter().all(|t| *t == 0) {
                continue;
            }
            let g = group_of[u];
            ops.push(Op::Lut {
                input: acc_of[u],
                table: table.clone(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Head;

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
    /// always on and one always off (affine, none). Scores follow the float network.
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
        let calibration = grid();
        let (c, _) = compile_on_grid(&net);
        assert_eq!(c.circuit.pbs_count(), 1);
        assert_eq!(c.outputs_per_score, 2);
        assert_eq!(c.output_shifts.len(), 2);
        assert!(c.output_shifts[1] > 8, "{:?}", c.output_shifts);
        let mut score_err = 0.0f64;
        for r in &calibration {
            let float = net.scores(r)[0];
            score_err = score_err.max((c.scores(&c.simulate(r).expect("sim"))[0] - float).abs());
        }
        // Scores span about ±3: the 5-bit accumulator's weights are rounded (2.13 to 2), which
        // the fit absorbs.
        assert!(score_err < 0.1, "{score_err}");
    }

    /// One ciphertext per score: the bootstrap outputs and the affine part in one sum.
    #[test]
    fn a_score_can_come_back_as_one_ciphertext() {
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
        let opts = CompileOptions {
            bits: Some(3),
            ranges: Some(vec![(0.0, 1.0); 2]),
            ..CompileOptions::default()
        };
        let c = negacyclic_network(&net, &grid(), &opts, &[usize::MAX], true)
            .remove(0)
            .expect("compile");
        c.circuit.check_noise(&opts.params).expect("noise");
        assert_eq!((c.outputs_per_score, c.circuit.outputs.len()), (1, 1));
        let mut err = 0.0f64;
        for r in &grid() {
            err = err.max((c.scores(&c.simulate(r).expect("sim"))[0] - net.scores(r)[0]).abs());
        }
        // Scores span about ±3; the affine part now shares the bootstraps' coarser scale.
        assert!(err < 0.3, "{err}");
    }

    /// The 3-bit grid over two inputs in [0, 1].
    fn grid() -> Vec<Vec<f64>> {
        (0..=7)
            .flat_map(|i| (0..=7).map(move |j| vec![f64::from(i) / 7.0, f64::from(j) / 7.0]))
            .collect()
    }

    /// Per accumulator (a linear op read at the bootstrap width), the bootstrap outputs it adds:
    /// non-zero for a unit of a later layer.
    fn fed_per_accumulator(c: &Circuit) -> Vec<usize> {
        c.ops
            .iter()
            .filter_map(|op| match op {
                Op::Linear { terms, p, .. } if *p == LUT_BITS => Some(
                    terms
                        .iter()
                        .filter(|(id, _)| matches!(c.ops[*id], Op::Lut { .. }))
                        .count(),
                ),
                _ => None,
            })
            .collect()
    }

    /// Compiles `net` on the 3-bit grid in one candidate (all outputs in one sum, refined
    /// weights tried) and checks its structure and noise.
    fn compile_on_grid(net: &Network) -> (CompiledModel, CompileOptions) {
        // The grid's own range, declared: the inputs' levels are then exactly the grid's.
        let opts = CompileOptions {
            bits: Some(3),
            outputs: super::super::Outputs::PartialSums,
            ranges: Some(vec![(0.0, 1.0); 2]),
            ..CompileOptions::default()
        };
        let c = negacyclic_network(net, &grid(), &opts, &[usize::MAX], true)
            .remove(0)
            .expect("compile");
        c.circuit.validate().expect("valid");
        c.circuit.check_noise(&opts.params).expect("noise");
        (c, opts)
    }

    /// Two hidden layers: a second-layer accumulator adds one bootstrap per first-layer unit
    /// feeding it, and the scores follow the float network.
    #[test]
    fn a_second_hidden_layer_is_fed_by_one_bootstrap_per_unit() {
        let net = Network {
            layers: vec![
                Dense {
                    w: vec![vec![1.0, -1.0], vec![2.0, 1.0], vec![-1.0, -2.0]],
                    b: vec![0.0, -1.5, 1.5],
                },
                Dense {
                    w: vec![vec![1.0, -0.5, 2.0], vec![-1.0, 1.0, 0.5]],
                    b: vec![-0.75, 0.25],
                },
                Dense {
                    w: vec![vec![1.5, -2.0]],
                    b: vec![0.1],
                },
            ],
            activations: vec![Activation::Relu, Activation::Relu],
            head: Head::Binary {
                classes: ["no".into(), "yes".into()],
            },
        };
        let calibration = grid();
        let (c, _) = compile_on_grid(&net);
        assert_eq!(c.kind, "network 2×3-2 relu");
        let fed = fed_per_accumulator(&c.circuit);
        assert!(fed.iter().any(|n| *n > 0), "{:?}", c.circuit);
        let scores: Vec<f64> = calibration.iter().map(|r| net.scores(r)[0]).collect();
        let span = scores.iter().fold(0.0f64, |m, s| m.max(s.abs()));
        let mut err = 0.0f64;
        for (r, float) in calibration.iter().zip(&scores) {
            err = err.max((c.scores(&c.simulate(r).expect("sim"))[0] - float).abs());
        }
        eprintln!("{} PBS, worst error {err} of {span}", c.circuit.pbs_count());
        assert!(err < 0.1 * span, "{err} of {span}");
    }

    /// Sixty first-layer units feeding one accumulator would exceed the noise bound: the
    /// weakest edges are left out and the circuit still passes the noise check.
    #[test]
    fn a_wide_layer_feeds_an_accumulator_within_the_noise_budget() {
        let h = 60;
        let first = Dense {
            w: (0..h)
                .map(|j| {
                    let t = f64::from(j) * 0.37;
                    vec![t.cos(), t.sin()]
                })
                .collect(),
            // Every neuron changes side at the centre of the grid.
            b: (0..h)
                .map(|j| {
                    let t = f64::from(j) * 0.37;
                    -0.5 * (t.cos() + t.sin())
                })
                .collect(),
        };
        let net = Network {
            layers: vec![
                first,
                Dense {
                    // Alternating signs: strong edges, a narrow sum.
                    w: vec![
                        (0..h)
                            .map(|j| if j % 2 == 0 { 1.0 } else { -1.0 })
                            .collect(),
                    ],
                    b: vec![0.0],
                },
                Dense {
                    w: vec![vec![1.0]],
                    b: vec![0.0],
                },
            ],
            activations: vec![Activation::Relu, Activation::Relu],
            head: Head::Regression,
        };
        let (c, opts) = compile_on_grid(&net);
        let budget = edge_budget(&opts.params);
        eprintln!("edge budget {budget}");
        assert!((30..h as usize).contains(&budget), "{budget}");
        let widest = fed_per_accumulator(&c.circuit)
            .into_iter()
            .max()
            .unwrap_or(0);
        assert_eq!(widest, budget);
    }
}
