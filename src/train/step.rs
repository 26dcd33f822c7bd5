//! One training step, the one sequence every caller runs (the trainer, `nli-bert bench`, the
//! criterion benches, the tests): upload the batch, zero the gradients, forward, backward, Adam.
//! It is a method of [`Model`] defined here, beside the optimizer it drives, so that the model
//! module does not depend on the training module.

use crate::backend::Backend;
use crate::data::batch::Batch;
use crate::error::Result;
use crate::model::bert::{upload_batch, Acts, Mode, Model, Output};
use crate::train::optim::Adam;

impl<B: Backend> Model<B> {
    /// One training step on `batch` with `mode`'s dropout: uploads it, zeroes the gradients, runs
    /// forward, and — when the summed loss is finite — backward and the row-sparse Adam step over
    /// the token-embedding rows the batch uses. Returns the forward's loss, correct count and
    /// example count; with a non-finite loss the parameters are left as they were and the caller
    /// decides what to say.
    pub fn train_step(
        &mut self,
        be: &B,
        opt: &mut Adam<B>,
        acts: &mut Acts<B>,
        batch: &Batch,
        mode: Mode,
    ) -> Result<Output> {
        let db = upload_batch(be, batch)?;
        opt.zero_grad(be, self);
        let out = self.forward(be, acts, &db, mode)?;
        if out.loss_sum.is_finite() {
            self.backward(be, acts, &db, mode)?;
            opt.step_batch(be, self, &batch.tokens);
        }
        Ok(out)
    }
}
