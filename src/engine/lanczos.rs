//! The classical engine: Lanczos-3 resampling. Always available, no weights, any scale.

use super::{Engine, EngineId, GenParams, InferError, RunContext, Tile, Tiling};
use crate::imaging::resize::resize_rgb;

/// Bump when the resampling changes (it is this engine's "weights").
const LANCZOS_VERSION: &str = "fir6-lanczos3-v1";

pub struct Lanczos {
    id: EngineId,
    scale: u32,
    workers: usize,
}

impl Lanczos {
    pub fn new(scale: u32, workers: usize) -> Self {
        Self { id: EngineId::new(format!("lanczos-x{scale}"), LANCZOS_VERSION), scale, workers: workers.max(1) }
    }
}

impl Engine for Lanczos {
    fn id(&self) -> &EngineId {
        &self.id
    }

    fn scale(&self) -> u32 {
        self.scale
    }

    fn tiling(&self) -> Option<Tiling> {
        None
    }

    fn workers(&self) -> usize {
        self.workers
    }

    fn upscale(&self, tiles: &[Tile], _: &[GenParams], ctx: &dyn RunContext) -> Result<Vec<Tile>, InferError> {
        tiles
            .iter()
            .map(|t| {
                if ctx.cancelled() {
                    return Err(InferError::Cancelled);
                }
                Ok(resize_rgb(t, t.width * self.scale, t.height * self.scale, None))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Unattended;

    #[test]
    fn output_is_scale_times_larger_and_keeps_flat_colour() {
        let e = Lanczos::new(3, 1);
        let out = e.upscale(&[Tile::new(5, 4, vec![0.5; 60])], &[GenParams::default()], &Unattended).unwrap();
        assert_eq!(out[0].shape(), (15, 12));
        assert!(out[0].data.iter().all(|v| (v - 0.5).abs() < 1e-5));
        e.warm_up().unwrap();
        assert_eq!(e.id().to_string(), "lanczos-x3@fir6-lanczos3-v1");
    }
}
