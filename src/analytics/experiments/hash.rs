//! Deterministic assignment the way GrowthBook's SDKs do it (JS SDK
//! `src/util.ts`: `hash`, `getBucketRanges`, `chooseVariation`), so an
//! experiment assigns units exactly as a GrowthBook SDK given the same seed,
//! unit id and weights would; tested against the vectors of its
//! language-neutral SDK test suite (`cases.json`, spec 0.5.x: `hash`,
//! `getBucketRange`, `chooseVariation`).

/// FNV-1a, 32 bits, over the UTF-16 code units of `text` (JavaScript's
/// `charCodeAt`, which GrowthBook's reference SDK hashes; the same as bytes
/// for ASCII). Offset basis 0x811c9dc5, prime 16777619 (Fowler, Noll, Vo).
pub fn fnv1a32(text: &str) -> u32 {
    text.encode_utf16().fold(0x811c_9dc5_u32, |hash, unit| {
        (hash ^ u32::from(unit)).wrapping_mul(16_777_619)
    })
}

/// GrowthBook's hash version 2: `fnv1a32(str(fnv1a32(seed + value))) % 10000
/// / 10000`, a number in [0, 1) with four decimals. The double hash spreads
/// sequential ids evenly (version 1's weakness).
pub fn hash_v2(seed: &str, value: &str) -> f64 {
    let inner = fnv1a32(&format!("{seed}{value}"));
    f64::from(fnv1a32(&inner.to_string()) % 10_000) / 10_000.0
}

/// The bucket range `[start, end)` of each variant, from weights that sum to 1
/// (GrowthBook's `getBucketRanges` with coverage 1): consecutive slices of
/// [0, 1). `weights` here are any positive numbers; they are normalised
/// first, as rule files give them as shares (`1`, `1`) or percentages.
pub fn bucket_ranges(weights: &[f64]) -> Vec<(f64, f64)> {
    let total: f64 = weights.iter().sum();
    let mut cumulative = 0.0;
    weights
        .iter()
        .map(|w| {
            let start = cumulative;
            cumulative += w / total;
            (start, cumulative)
        })
        .collect()
}

/// The index of the range holding `n` (GrowthBook's `chooseVariation`:
/// `start <= n < end`), `None` if no range holds it.
pub fn choose(n: f64, ranges: &[(f64, f64)]) -> Option<usize> {
    ranges
        .iter()
        .position(|&(start, end)| n >= start && n < end)
}

/// The variant index a unit gets: its v2 hash under `seed` (the experiment
/// name) in the ranges of `weights`. Summing normalised weights can leave the
/// last range ending a rounding error short of 1; a hash there (at most
/// 0.9999) belongs to the last variant.
pub fn assign(seed: &str, unit_id: &str, weights: &[f64]) -> usize {
    let ranges = bucket_ranges(weights);
    choose(hash_v2(seed, unit_id), &ranges).unwrap_or(ranges.len().saturating_sub(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `cases.json` "hash", version 2 rows: (seed, value, expected).
    #[test]
    fn v2_hashes_match_growthbooks_vectors() {
        let vectors = [
            ("seed", "a", 0.0505),
            ("seed", "b", 0.2696),
            ("foo", "ab", 0.2575),
            ("foo", "def", 0.2019),
            ("89123klj", "8952klfjas09ujkasdf", 0.124),
            ("90850943850283058242805", "123", 0.7516),
            ("()**(%$##$%#$#", "___)((*\":&", 0.0128),
            // "creates experiments properly" (feature cases): seed "feature",
            // hash attribute "123", bucket 0.5231.
            ("feature", "123", 0.5231),
        ];
        for (seed, value, expected) in vectors {
            assert_eq!(hash_v2(seed, value), expected, "{seed:?} {value:?}");
        }
    }

    /// `cases.json` "getBucketRange" rows with coverage 1 and weights that
    /// sum to 1 (or none: equal weights).
    #[test]
    fn bucket_ranges_match_growthbooks_vectors() {
        let close = |got: Vec<(f64, f64)>, want: &[(f64, f64)]| {
            assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(want) {
                assert!(
                    (g.0 - w.0).abs() < 1e-9 && (g.1 - w.1).abs() < 1e-9,
                    "{got:?}"
                );
            }
        };
        close(bucket_ranges(&[1.0, 1.0]), &[(0.0, 0.5), (0.5, 1.0)]);
        close(
            bucket_ranges(&[1.0; 4]),
            &[(0.0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0)],
        );
        close(bucket_ranges(&[0.4, 0.6]), &[(0.0, 0.4), (0.4, 1.0)]);
        close(
            bucket_ranges(&[0.2, 0.3, 0.5]),
            &[(0.0, 0.2), (0.2, 0.5), (0.5, 1.0)],
        );
        // Weights as percentages are the same shares.
        close(
            bucket_ranges(&[20.0, 30.0, 50.0]),
            &bucket_ranges(&[0.2, 0.3, 0.5]),
        );
    }

    /// `cases.json` "chooseVariation": (n, ranges, expected; -1 is `None`).
    #[test]
    fn choosing_matches_growthbooks_vectors() {
        let even = [(0.0, 0.5), (0.5, 1.0)];
        let reduced = [(0.0, 0.25), (0.5, 0.75)];
        let zero = [(0.0, 0.5), (0.5, 0.5), (0.5, 1.0)];
        type Ranges<'a> = &'a [(f64, f64)];
        let cases: [(f64, Ranges, Option<usize>); 13] = [
            (0.2, &even, Some(0)),
            (0.4, &even, Some(0)),
            (0.6, &even, Some(1)),
            (0.8, &even, Some(1)),
            (0.0, &even, Some(0)),
            (0.5, &even, Some(1)),
            (0.2, &reduced, Some(0)),
            (0.4, &reduced, None),
            (0.6, &reduced, Some(1)),
            (0.8, &reduced, None),
            (0.25, &reduced, None),
            (0.5, &reduced, Some(1)),
            (0.5, &zero, Some(2)),
        ];
        for (n, ranges, expected) in cases {
            assert_eq!(choose(n, ranges), expected, "{n} in {ranges:?}");
        }
    }

    #[test]
    fn assignment_is_the_hash_in_the_weighted_ranges() {
        // hash_v2("seed", "a") = 0.0505: the first of two even variants, the
        // second when the first gets only 5%.
        assert_eq!(assign("seed", "a", &[1.0, 1.0]), 0);
        assert_eq!(assign("seed", "a", &[5.0, 95.0]), 1);
        // A hash past a range end short of 1 by rounding is the last variant's.
        assert_eq!(choose(0.9999, &[(0.0, 0.5), (0.5, 0.99989)]), None);
        assert_eq!(assign("x", "y", &[1.0]), 0);
    }
}
