//! bfloat16 on the host: the rounding every bf16 store makes (round to nearest, ties to even;
//! NaN stays NaN), as `half` implements it and `kernels.cu`'s `to_bf16` repeats bit for bit.

use half::bf16;

/// `value` rounded to the nearest bf16, as f32.
pub fn round(value: f32) -> f32 {
    bf16::from_f32(value).to_f32()
}

/// Rounds every value in place.
pub fn round_all(values: &mut [f32]) {
    for v in values {
        *v = round(*v);
    }
}

/// `values` rounded, as bf16 bit patterns (what a device's bf16 buffer holds).
pub fn to_bits(values: &[f32]) -> Vec<u16> {
    values
        .iter()
        .map(|&v| bf16::from_f32(v).to_bits())
        .collect()
}

/// The values of bf16 bit patterns.
pub fn from_bits(bits: &[u16]) -> Vec<f32> {
    bits.iter().map(|&b| bf16::from_bits(b).to_f32()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_is_to_nearest_with_ties_to_even() {
        // 8 bits of significand: 1 + 2^-7 is the next value above 1.
        let ulp = 2f32.powi(-7);
        assert_eq!(round(1.0 + ulp / 4.0), 1.0);
        assert_eq!(round(1.0 + ulp * 3.0 / 4.0), 1.0 + ulp);
        // Halfway: to the even neighbour, down from 1 and up from 1 + ulp.
        assert_eq!(round(1.0 + ulp / 2.0), 1.0);
        assert_eq!(round(1.0 + ulp * 3.0 / 2.0), 1.0 + 2.0 * ulp);
        assert_eq!(round(-1.0 - ulp / 4.0), -1.0);
        assert_eq!(round(0.0), 0.0);
        assert!(round(-0.0).is_sign_negative());
    }

    #[test]
    fn specials_survive_and_large_values_overflow_to_infinity() {
        assert!(round(f32::NAN).is_nan());
        assert_eq!(round(f32::INFINITY), f32::INFINITY);
        assert_eq!(round(f32::NEG_INFINITY), f32::NEG_INFINITY);
        // bf16 shares f32's exponent range: the largest finite f32 rounds up past bf16's.
        assert_eq!(round(f32::MAX), f32::INFINITY);
        // Within half a step (2^120 at this exponent) below it.
        assert!((round(3.0e38) - 3.0e38).abs() <= 2f32.powi(119));
    }

    #[test]
    fn bits_round_trip_the_rounded_values() {
        let values = [0.1f32, -2.5, 1e-30, 65504.0, f32::INFINITY];
        let back = from_bits(&to_bits(&values));
        for (v, b) in values.iter().zip(&back) {
            assert_eq!(round(*v), *b);
        }
    }
}
