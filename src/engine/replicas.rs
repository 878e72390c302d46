//! What the ranks of a data-parallel job share in a training step (see `dist`): the step's
//! counts — loss, accuracy and whether to stop — before the backward pass, so that every
//! rank takes the same decisions from the whole batch's loss; and the gradients, layer by
//! layer, before the update. One process shares nothing (`Alone`).

use super::metrics::Tally;
use crate::device::FastDevice;
use crate::dist::{Control, DistError, World};
use crate::kernels::{GradientSum, KernelResult, LayerGradients};

/// How a step's rank meets the others.
pub trait StepSync<D: FastDevice> {
    /// The job's ranks (1: nothing is shared).
    fn ranks(&self) -> usize;
    /// Whether `gradients` does anything (a job of one rank still sums through its
    /// collective, so that a one-rank launch checks it).
    fn sums_gradients(&self) -> bool;
    /// This rank's counts of the step → the whole batch's, the same on every rank.
    fn counts(&mut self, local: Tally) -> Result<Tally, DistError>;
    /// Starts summing one layer's gradients across the ranks (see `GradientSum`).
    fn gradients(&mut self, grads: LayerGradients<'_, D>) -> KernelResult;
    /// Returns once the sums are complete for the update.
    fn finish(&mut self) -> KernelResult;
}

/// A job of one process.
pub struct Alone;

impl<D: FastDevice> StepSync<D> for Alone {
    fn ranks(&self) -> usize {
        1
    }
    fn sums_gradients(&self) -> bool {
        false
    }
    fn counts(&mut self, local: Tally) -> Result<Tally, DistError> {
        Ok(local)
    }
    fn gradients(&mut self, _: LayerGradients<'_, D>) -> KernelResult {
        Ok(())
    }
    fn finish(&mut self) -> KernelResult {
        Ok(())
    }
}

/// One rank of a data-parallel job: its control plane and its gradient sums.
pub struct Replicas<D: FastDevice> {
    pub control: Control,
    sum: D::GradientSum,
    /// Set before a step when this rank wants to stop after it (Ctrl-C); after the step,
    /// whether any rank did — so that all stop after the same step.
    pub stop: bool,
}

impl<D: FastDevice> Replicas<D> {
    pub fn new(control: Control, sum: D::GradientSum) -> Self {
        Self {
            control,
            sum,
            stop: false,
        }
    }

    pub fn world(&self) -> World {
        self.control.world()
    }

    /// Sums `tally` over the ranks (validation's counts).
    pub fn sum_tally(&mut self, tally: Tally, what: &'static str) -> Result<Tally, DistError> {
        let mut values = tally.to_values();
        self.control.sum_f64(&mut values, what)?;
        Ok(Tally::from_values(values))
    }
}

impl<D: FastDevice> StepSync<D> for Replicas<D> {
    fn ranks(&self) -> usize {
        self.world().size
    }

    fn sums_gradients(&self) -> bool {
        true
    }

    fn counts(&mut self, local: Tally) -> Result<Tally, DistError> {
        let [images, top1, top5, loss] = local.to_values();
        let mut values = [images, top1, top5, loss, self.stop as u8 as f64];
        self.control.sum_f64(&mut values, "sharing a step's loss")?;
        self.stop = values[4] > 0.0;
        Ok(Tally::from_values([
            values[0], values[1], values[2], values[3],
        ]))
    }

    fn gradients(&mut self, grads: LayerGradients<'_, D>) -> KernelResult {
        self.sum.layer(&mut self.control, grads)
    }

    fn finish(&mut self) -> KernelResult {
        self.sum.finish()
    }
}
