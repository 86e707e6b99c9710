//! The statistics of experiment results: plain functions over counts.
//!
//! - [`wilson`]: the Wilson score interval of a proportion (E. B. Wilson,
//!   "Probable inference, the law of succession, and statistical inference",
//!   JASA 22, 1927), which keeps its coverage for small samples and rates
//!   near 0 or 1 where the normal (Wald) interval does not.
//! - [`chance_to_beat`]: P(p_B > p_A) for two Binomial rates under
//!   independent uniform Beta(1, 1) priors, in closed form (Evan Miller,
//!   "Formulas for Bayesian A/B Testing", 2015; also Chris Stucchio's
//!   derivation): no sampling, so the figure is exact and reproducible.
//! - [`sample_ratio_p`]: Pearson's chi-squared goodness of fit of the counts
//!   against the expected shares, its p-value the regularized upper
//!   incomplete gamma Q(k/2, χ²/2) (the chi-squared survival function with k
//!   degrees of freedom).

use statrs::function::gamma::{checked_gamma_ur, ln_gamma};

/// z for a two-sided 95% interval: Φ⁻¹(0.975).
const Z_95: f64 = 1.959_963_984_540_054;

/// The Wilson score 95% interval `(low, high)` of `successes` out of
/// `trials` (both as fractions in [0, 1]); `None` without trials.
///
/// centre = (p̂ + z²/2n) / (1 + z²/n), half-width = z/(1 + z²/n) ·
/// √(p̂(1−p̂)/n + z²/4n²).
pub fn wilson(successes: u64, trials: u64) -> Option<(f64, f64)> {
    if trials == 0 {
        return None;
    }
    let n = trials as f64;
    let p = successes.min(trials) as f64 / n;
    let z2 = Z_95 * Z_95;
    let denominator = 1.0 + z2 / n;
    let centre = (p + z2 / (2.0 * n)) / denominator;
    let half = Z_95 / denominator * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    Some(((centre - half).max(0.0), (centre + half).min(1.0)))
}

/// ln B(a, b) = ln Γ(a) + ln Γ(b) − ln Γ(a + b).
fn ln_beta(a: f64, b: f64) -> f64 {
    ln_gamma(a) + ln_gamma(b) - ln_gamma(a + b)
}

/// The probability that B's true rate beats A's, each `(successes, trials)`,
/// under Beta(1, 1) priors: with posteriors Beta(α_A, β_A) and Beta(α_B, β_B)
/// (α = 1 + successes, β = 1 + failures),
///
/// P(p_B > p_A) = Σ_{i=0}^{α_B−1} B(α_A + i, β_A + β_B) /
///                ((β_B + i) · B(1 + i, β_B) · B(α_A, β_A))
///
/// (Evan Miller, "Formulas for Bayesian A/B Testing"). Only the first term
/// takes log-gamma functions; each next one is the last times
/// (α_A + i)(β_B + i) / ((α_A + β_A + β_B + i)(1 + i)) (from
/// B(a + 1, b) = B(a, b) · a / (a + b)), kept in linear space against a
/// running log scale so neither a tiny first term nor a large peak leaves
/// the range of `f64`. α_B steps of a few flops: a million conversions cost
/// milliseconds, on the request's thread.
pub fn chance_to_beat(a: (u64, u64), b: (u64, u64)) -> f64 {
    /// Rescale when a term passes this, so the next ones cannot overflow.
    const RESCALE: f64 = 1e100;
    let posterior = |(successes, trials): (u64, u64)| {
        let successes = successes.min(trials);
        (1.0 + successes as f64, 1.0 + (trials - successes) as f64)
    };
    let (alpha_a, beta_a) = posterior(a);
    let (alpha_b, beta_b) = posterior(b);
    // ln of the first term (i = 0); the terms are then summed as
    // exp(scale) · Σ term / exp(scale).
    let mut scale = ln_beta(alpha_a, beta_a + beta_b)
        - beta_b.ln()
        - ln_beta(1.0, beta_b)
        - ln_beta(alpha_a, beta_a);
    let (mut term, mut sum) = (1.0_f64, 0.0_f64);
    for i in 0..alpha_b as u64 {
        sum += term;
        let i = i as f64;
        term *= (alpha_a + i) * (beta_b + i) / ((alpha_a + beta_a + beta_b + i) * (1.0 + i));
        if term > RESCALE {
            term /= RESCALE;
            sum /= RESCALE;
            scale += RESCALE.ln();
        }
    }
    (sum.ln() + scale).exp().clamp(0.0, 1.0)
}

/// The p-value of Pearson's chi-squared goodness-of-fit test of `observed`
/// counts against shares proportional to `weights` (positive):
/// χ² = Σ (O − E)² / E with E = total · w / Σw, k − 1 degrees of freedom,
/// p = Q((k − 1)/2, χ²/2). `None` with fewer than two groups or no counts.
pub fn sample_ratio_p(observed: &[u64], weights: &[f64]) -> Option<f64> {
    let total: u64 = observed.iter().sum();
    if observed.len() < 2 || observed.len() != weights.len() || total == 0 {
        return None;
    }
    let weight_sum: f64 = weights.iter().sum();
    let chi2: f64 = observed
        .iter()
        .zip(weights)
        .map(|(&o, &w)| {
            let expected = total as f64 * w / weight_sum;
            (o as f64 - expected).powi(2) / expected
        })
        .sum();
    let df = (observed.len() - 1) as f64;
    // Q(a, 0) = 1: counts exactly as expected (statrs wants x > 0).
    if chi2 <= 0.0 {
        return Some(1.0);
    }
    checked_gamma_ur(df / 2.0, chi2 / 2.0).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn near(got: f64, want: f64, tolerance: f64) {
        assert!((got - want).abs() < tolerance, "got {got}, want {want}");
    }

    /// R. G. Newcombe, "Two-sided confidence intervals for the single
    /// proportion: comparison of seven methods", Statistics in Medicine 17
    /// (1998), Table II, method 3 (Wilson score, no continuity correction).
    #[test]
    fn wilson_intervals_match_newcombes_table() {
        for (successes, trials, low, high) in [
            (81, 263, 0.2553, 0.3662),
            (15, 148, 0.0624, 0.1605),
            (0, 20, 0.0, 0.1611),
            (1, 29, 0.0061, 0.1718),
        ] {
            let (l, h) = wilson(successes, trials).unwrap();
            near(l, low, 5e-5);
            near(h, high, 5e-5);
        }
        assert_eq!(wilson(0, 0), None);
    }

    /// Expected values: the same probability by numerical integration,
    /// ∫₀¹ f_B(x) F_A(x) dx with mpmath at 30 digits (mpmath.quad over the
    /// Beta densities, F_A by mpmath.betainc regularized).
    #[test]
    fn chance_to_beat_control_matches_the_integral() {
        // Identical data: a coin toss.
        near(chance_to_beat((10, 100), (10, 100)), 0.5, 1e-12);
        near(chance_to_beat((0, 0), (0, 0)), 0.5, 1e-12);
        near(chance_to_beat((10, 100), (20, 100)), 0.9751730332, 1e-9);
        near(chance_to_beat((20, 100), (10, 100)), 0.0248269668, 1e-9);
        near(chance_to_beat((1, 10), (3, 12)), 0.7846790890, 1e-9);
        near(chance_to_beat((150, 1000), (180, 1000)), 0.9645105371, 1e-9);
        // Large counts (the sum itself, in mpmath at 40 digits): the
        // recurrence keeps its precision over hundreds of thousands of terms.
        near(
            chance_to_beat((1_500, 10_000), (1_580, 10_000)),
            0.941447355067294,
            1e-9,
        );
        near(
            chance_to_beat((30_000, 200_000), (30_350, 200_000)),
            0.938961280369626,
            1e-9,
        );
    }

    /// Critical values of the chi-squared distribution at p = 0.001 and
    /// p = 0.05 (any statistics table, e.g. NIST/SEMATECH e-Handbook of
    /// Statistical Methods, 1.3.6.7.4): Q(k/2, x/2) gives back p.
    #[test]
    fn sample_ratio_p_values_match_the_chi_squared_table() {
        // 1 degree of freedom: χ² = (O1−E)²/E + (O2−E)²/E.
        // 600 vs 400 of 1000 at 50/50: χ² = 40, p ≈ 2.54e-10.
        near(
            sample_ratio_p(&[600, 400], &[1.0, 1.0]).unwrap(),
            2.539_628_6e-10,
            1e-15,
        );
        // Exactly as expected.
        assert_eq!(sample_ratio_p(&[500, 500], &[1.0, 1.0]), Some(1.0));
        assert_eq!(sample_ratio_p(&[10], &[1.0]), None);
        assert_eq!(sample_ratio_p(&[0, 0], &[1.0, 1.0]), None);
        // Q(k/2, x/2) at the tabled critical values.
        for (df, x, p) in [
            (1.0, 10.828, 0.001),
            (2.0, 13.816, 0.001),
            (1.0, 3.841, 0.05),
        ] {
            near(checked_gamma_ur(df / 2.0, x / 2.0).unwrap(), p, 2e-5);
        }
        // Weights other than equal: 300/700 is what 30/70 expects.
        assert_eq!(sample_ratio_p(&[300, 700], &[3.0, 7.0]), Some(1.0));
    }
}
