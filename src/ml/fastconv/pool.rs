//! Buffers kept between convolutions: [`BufferPool`] (a network's activations between
//! forwards) and the pool of bf16 input copies the bf16 and AMX kernels convert into.

use std::sync::Mutex;

use super::layout::Nhwc;

/// Activation buffers a network keeps between forwards, so that a burst of tiles does not
/// page-fault and zero a few hundred MB per forward (x4plus at 128²: ~62 k faults, measured
/// with `perf stat -e page-faults`). A taken buffer's interior is arbitrary: the network
/// writes every channel it reads. Holds at most [`BufferPool::CAP_BYTES`]; the engine empties
/// it when its queue drains ([`BufferPool::clear`]), so an idle model holds none.
#[derive(Default)]
pub struct BufferPool {
    free: Mutex<Vec<Nhwc>>,
}

impl BufferPool {
    /// Most bytes kept between forwards (x4plus, one 128² tile, keeps ~260 MB).
    pub const CAP_BYTES: usize = 1 << 30;

    /// A buffer of this shape: a kept one (interior arbitrary, shadow forgotten), else a new
    /// zeroed one.
    pub fn take(&self, n: usize, h: usize, w: usize, c: usize) -> Nhwc {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        match free.iter().position(|b| b.shape() == (n, h, w, c)) {
            Some(i) => {
                let mut b = free.swap_remove(i);
                b.reset_for_reuse();
                b
            }
            None => Nhwc::zeros(n, h, w, c),
        }
    }

    /// Keeps `b` for a later [`BufferPool::take`], unless that would pass the cap.
    pub fn give(&self, b: Nhwc) {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        if free.iter().map(Nhwc::bytes).sum::<usize>() + b.bytes() <= Self::CAP_BYTES {
            free.push(b);
        }
    }

    /// Drops every kept buffer.
    pub fn clear(&self) {
        self.free.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Bytes kept now.
    pub fn bytes(&self) -> usize {
        self.free.lock().unwrap_or_else(|e| e.into_inner()).iter().map(Nhwc::bytes).sum()
    }
}

/// Pool of bf16 input copies, reused across calls (bounded by the number of concurrent
/// bf16 convolutions).
static BF16_POOL: Mutex<Vec<Vec<u16>>> = Mutex::new(Vec::new());

/// A bf16 input copy from the pool (contents arbitrary), or an empty one.
pub(super) fn take_bf16_scratch() -> Vec<u16> {
    BF16_POOL.lock().map(|mut p| p.pop()).ok().flatten().unwrap_or_default()
}

/// Returns a bf16 input copy to the pool.
pub(super) fn give_bf16_scratch(v: Vec<u16>) {
    if let Ok(mut p) = BF16_POOL.lock() {
        p.push(v);
    }
}
