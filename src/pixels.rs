//! Two rules about pixels that several stages must apply identically.
//!
//! Where a centred crop starts: preprocessing cuts its stored squares and the loader its
//! centre views with the same rule, torchvision's (`CenterCrop` rounds with Python's
//! `round`), so stored images and evaluation crops line up with PyTorch's.
//!
//! What a stored pixel becomes at the network's input: the loader's f32 batches, the dfdx
//! engine's input stage, the host kernels and the CUDA kernel all compute `normalize`, in
//! this order of operations, so their results agree to the bit.

/// `round(excess / 2)` with ties to even, as Python's `round` does.
pub fn half_even_midpoint(excess: u32) -> u32 {
    let half = excess / 2;
    if excess % 2 == 1 && half % 2 == 1 {
        half + 1
    } else {
        half
    }
}

/// The network's input value of a stored pixel: the mean (of the image at this position, or of
/// its channel) subtracted, the image's lighting offset added, then scaled per channel (1 for
/// mean-image normalisation, 1/std for per-channel).
#[inline(always)]
pub fn normalize(pixel: u8, mean: f32, lighting: f32, scale: f32) -> f32 {
    (pixel as f32 - mean + lighting) * scale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ties_round_to_even() {
        // Excess 3 → 1.5 rounds to 2 (even); excess 5 → 2.5 rounds to 2 (even).
        assert_eq!(half_even_midpoint(3), 2);
        assert_eq!(half_even_midpoint(5), 2);
        assert_eq!(half_even_midpoint(1), 0);
        assert_eq!(half_even_midpoint(7), 4);
        assert_eq!(half_even_midpoint(0), 0);
    }
}
