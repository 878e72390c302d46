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

/// `values` rounded to bf16 and packed two to an f32 slot, as a device's bf16 activation buffer
/// holds them: value `2i` in the low half of slot `i`'s bits, value `2i + 1` in the high half
/// (so that on a little-endian device value `j` lies at byte `2j`), an odd last slot padded with
/// zero.
pub fn pack(values: &[f32]) -> Vec<f32> {
    to_bits(values)
        .chunks(2)
        .map(|pair| {
            let high = pair.get(1).copied().unwrap_or(0);
            f32::from_bits(u32::from(pair[0]) | u32::from(high) << 16)
        })
        .collect()
}

/// The first `len` values of `pack`ed slots.
pub fn unpack(slots: &[f32], len: usize) -> Vec<f32> {
    let bits: Vec<u16> = slots
        .iter()
        .flat_map(|slot| {
            let bits = slot.to_bits();
            [bits as u16, (bits >> 16) as u16]
        })
        .take(len)
        .collect();
    from_bits(&bits)
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

    #[test]
    fn packed_values_lie_where_a_devices_bf16_array_reads_them() {
        let values = [1.0f32, -2.0, 0.5];
        let slots = pack(&values);
        assert_eq!(slots.len(), 2);
        // Little-endian bytes of the slots: one bf16 per two bytes, in order.
        let bytes: Vec<u8> = slots.iter().flat_map(|s| s.to_le_bytes()).collect();
        let halves: Vec<u16> = bytes
            .chunks(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .collect();
        assert_eq!(halves, [0x3f80, 0xc000, 0x3f00, 0]);
        assert_eq!(unpack(&slots, 3), values);
        assert_eq!(unpack(&pack(&[0.1, 0.2]), 2), [round(0.1), round(0.2)]);
    }
}
