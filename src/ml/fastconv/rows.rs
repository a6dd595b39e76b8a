//! Public row access to an [`Nhwc`]'s interior for layout passes written outside this module
//! (the SD UNet's fused group norm, SiLU, upsampling and NCHW conversions in `ml::sd::conv`).

use rayon::prelude::*;

use super::layout::Nhwc;

impl Nhwc {
    /// The interior rows of every image as `(image, y, w·c values)`, in parallel on rayon's pool.
    pub fn interior_rows_mut(&mut self) -> impl ParallelIterator<Item = (usize, usize, &mut [f32])> {
        self.par_rows_mut()
    }

    /// Interior pixels of row `y` of image `n` (`w·c` values, channel stride `c`).
    pub fn interior_row(&self, n: usize, y: usize) -> &[f32] {
        self.expect_f32(0, self.c);
        self.row(n, y)
    }
}
