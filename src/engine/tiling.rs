//! Cutting an image into overlapping same-shaped tiles, and stitching upscaled tiles back with
//! feathered blending so seams do not show.
//!
//! An image with no more pixels than the engine's activation budget allows (`max_pixels`) is one
//! tile: the whole image in one forward pass, whatever its aspect. Larger images are cut into
//! overlapping `tile`² squares. Every tile of one image has the same shape (the last tile on an axis is
//! shifted inward rather than cut short), so a request's tiles can share a forward pass with
//! each other and with other requests' tiles of the same shape. An image smaller than a tile on
//! some axis is one tile wide on that axis.

use super::{Tile, Tiling};

/// Where the tiles of one image sit, in input pixels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grid {
    pub width: u32,
    pub height: u32,
    pub tile_w: u32,
    pub tile_h: u32,
    /// Left edges of tile columns.
    pub xs: Vec<u32>,
    /// Top edges of tile rows.
    pub ys: Vec<u32>,
}

impl Grid {
    pub fn new(width: u32, height: u32, tiling: Option<Tiling>) -> Grid {
        let (tile, overlap) = match tiling {
            // Within the budget: one pass over the whole image.
            Some(t) if width as u64 * height as u64 <= t.max_pixels => (u32::MAX, 0),
            Some(t) => (t.tile.max(1), t.overlap),
            None => (u32::MAX, 0),
        };
        let (tile_w, xs) = axis(width, tile, overlap);
        let (tile_h, ys) = axis(height, tile, overlap);
        Grid { width, height, tile_w, tile_h, xs, ys }
    }

    pub fn len(&self) -> usize {
        self.xs.len() * self.ys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies the tiles out of `image`, row by row.
    pub fn cut(&self, image: &Tile) -> Vec<Tile> {
        assert_eq!(image.shape(), (self.width, self.height));
        let mut tiles = Vec::with_capacity(self.len());
        for &y0 in &self.ys {
            for &x0 in &self.xs {
                let mut data = Vec::with_capacity(3 * (self.tile_w * self.tile_h) as usize);
                for c in 0..3 {
                    let plane = &image.data[c * image.plane_len()..(c + 1) * image.plane_len()];
                    for y in y0..y0 + self.tile_h {
                        let row = (y * self.width) as usize;
                        data.extend_from_slice(&plane[row + x0 as usize..row + (x0 + self.tile_w) as usize]);
                    }
                }
                tiles.push(Tile::new(self.tile_w, self.tile_h, data));
            }
        }
        tiles
    }

    /// Blends upscaled tiles (in `cut` order) into one image `scale` times larger. In an overlap
    /// each tile's outer quarter is dropped and the middle half cross-fades (see `feather`).
    pub fn stitch(&self, tiles: &[Tile], scale: u32) -> Tile {
        assert_eq!(tiles.len(), self.len(), "stitch needs every tile");
        if tiles.len() == 1 {
            return tiles[0].clone();
        }
        let (ow, oh) = (self.width * scale, self.height * scale);
        let (tw, th) = (self.tile_w * scale, self.tile_h * scale);
        let plane_len = (ow * oh) as usize;
        let mut acc = vec![0f32; 3 * plane_len];
        let mut weight = vec![0f32; plane_len];
        let mut i = 0;
        for (row, &y0) in self.ys.iter().enumerate() {
            for (col, &x0) in self.xs.iter().enumerate() {
                let tile = &tiles[i];
                i += 1;
                assert_eq!(tile.shape(), (tw, th), "upscaled tile has the wrong shape");
                // Ramp length on each side: the overlap with the neighbour on that side.
                let ramp = |prev: Option<u32>, next: Option<u32>, start: u32, len: u32| {
                    let before = prev.map(|p| (p + len).saturating_sub(start) * scale).unwrap_or(0);
                    let after = next.map(|n| (start + len).saturating_sub(n) * scale).unwrap_or(0);
                    (before, after)
                };
                let (left, right) = ramp(
                    col.checked_sub(1).map(|c| self.xs[c]),
                    self.xs.get(col + 1).copied(),
                    x0,
                    self.tile_w,
                );
                let (top, bottom) = ramp(
                    row.checked_sub(1).map(|r| self.ys[r]),
                    self.ys.get(row + 1).copied(),
                    y0,
                    self.tile_h,
                );
                let wx: Vec<f32> = (0..tw).map(|x| feather(x, tw, left, right)).collect();
                let wy: Vec<f32> = (0..th).map(|y| feather(y, th, top, bottom)).collect();
                let (ox, oy) = (x0 * scale, y0 * scale);
                for y in 0..th {
                    let dst_row = ((oy + y) * ow + ox) as usize;
                    let src_row = (y * tw) as usize;
                    for x in 0..tw as usize {
                        let w = wx[x] * wy[y as usize];
                        weight[dst_row + x] += w;
                        for c in 0..3 {
                            acc[c * plane_len + dst_row + x] += w * tile.data[c * tile.plane_len() + src_row + x];
                        }
                    }
                }
            }
        }
        for c in 0..3 {
            for (v, w) in acc[c * plane_len..(c + 1) * plane_len].iter_mut().zip(&weight) {
                *v /= *w;
            }
        }
        Tile::new(ow, oh, acc)
    }
}

/// Tile length and start positions along one axis.
fn axis(len: u32, tile: u32, overlap: u32) -> (u32, Vec<u32>) {
    if len <= tile {
        return (len, vec![0]);
    }
    let step = tile.saturating_sub(overlap).max(1);
    let mut starts = Vec::new();
    let mut p = 0;
    while p + tile < len {
        starts.push(p);
        p += step;
    }
    starts.push(len - tile);
    (tile, starts)
}

/// Weight of position `i` in a tile of length `n` whose first `a` and last `b` positions overlap
/// neighbours. A tile's outer quarter of each overlap gets (almost) no weight and the middle half
/// cross-fades linearly: pixels near a tile's edge saw padding instead of the neighbour's context,
/// so they are the least right ones (what Real-ESRGAN's `tile_pad` discards), and the two ramps of
/// one overlap sum to 1. Never exactly zero, so every output pixel has weight.
fn feather(i: u32, n: u32, a: u32, b: u32) -> f32 {
    // `t` is the distance of the pixel centre from the tile edge, `len` the overlap on that side.
    let ramp = |t: f32, len: u32| {
        let len = len as f32;
        ((t - len / 4.0) / (len / 2.0)).clamp(0.0, 1.0)
    };
    let mut w = 1.0f32;
    if a > 0 && i < a {
        w = w.min(ramp(i as f32 + 0.5, a));
    }
    if b > 0 && i >= n - b {
        w = w.min(ramp((n - i) as f32 - 0.5, b));
    }
    w.max(1e-6)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: u32, h: u32) -> Tile {
        let mut data = Vec::new();
        for c in 0..3 {
            for y in 0..h {
                for x in 0..w {
                    data.push((x * 3 + y * 7 + c * 11) as f32 / 1000.0);
                }
            }
        }
        Tile::new(w, h, data)
    }

    #[test]
    fn axes_cover_the_image_with_full_tiles() {
        assert_eq!(axis(10, 32, 4), (10, vec![0]));
        assert_eq!(axis(32, 32, 4), (32, vec![0]));
        assert_eq!(axis(33, 32, 4), (32, vec![0, 1]));
        assert_eq!(axis(100, 32, 8), (32, vec![0, 24, 48, 68]));
    }

    #[test]
    fn cut_then_stitch_at_scale_one_is_identity() {
        for (w, h) in [(1, 1), (7, 5), (64, 64), (100, 37), (129, 200)] {
            let img = gradient(w, h);
            let grid = Grid::new(w, h, Some(Tiling::squares(32, 8)));
            let tiles = grid.cut(&img);
            assert!(tiles.iter().all(|t| t.shape() == (grid.tile_w, grid.tile_h)));
            let back = grid.stitch(&tiles, 1);
            let max = img.data.iter().zip(&back.data).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(max < 1e-5, "{w}x{h}: max diff {max}");
        }
    }

    #[test]
    fn stitching_nearest_upscaled_tiles_equals_nearest_upscaled_image() {
        let nearest = |t: &Tile, s: u32| {
            let mut data = Vec::new();
            for c in 0..3 {
                for y in 0..t.height * s {
                    for x in 0..t.width * s {
                        data.push(t.data[c * t.plane_len() + ((y / s) * t.width + x / s) as usize]);
                    }
                }
            }
            Tile::new(t.width * s, t.height * s, data)
        };
        let img = gradient(90, 70);
        let grid = Grid::new(90, 70, Some(Tiling::squares(32, 6)));
        let up: Vec<Tile> = grid.cut(&img).iter().map(|t| nearest(t, 4)).collect();
        let stitched = grid.stitch(&up, 4);
        let whole = nearest(&img, 4);
        let max = whole.data.iter().zip(&stitched.data).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(max < 1e-5, "max diff {max}");
    }

    #[test]
    fn no_tiling_means_one_tile() {
        let grid = Grid::new(3000, 2000, None);
        assert_eq!(grid.len(), 1);
        assert_eq!((grid.tile_w, grid.tile_h), (3000, 2000));
    }
}
