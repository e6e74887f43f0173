//! 8-bit block-wise optimizer state (Dettmers et al., "8-bit Optimizers via Block-wise
//! Quantization", ICLR 2022), for every elementwise [`Rule`](crate::Rule).
//!
//! Each state tensor of a parameter (`exp_avg`, `exp_avg_sq`, `momentum_buffer`, …) is kept
//! as one `uint8` code per element plus one `float32` scale per block of `block_size`
//! consecutive elements (in the parameter's flattened order): the block's absmax. Codes index
//! a *dynamic quantization map* ([`map`]): signed for first moments and momentum, unsigned for
//! non-negative state (second moments, Adagrad's `sum`, …; see [`map::is_non_negative`]).
//!
//! [`step_8bit`] runs a rule over such state in one pass over memory: for each block it
//! decodes the state into a small `f32` buffer, applies the rule's own [`Rule::update`](crate::Rule::update) to
//! every element (exactly as the fp32 driver does), and re-encodes the block with its new
//! absmax. The work is split between threads on block boundaries, so the result does not
//! depend on the thread count. Parameters stay in their dtype (float32, float64, bfloat16,
//! float16; half types compute in `f32`).
//!
//! [`quantize`] and [`dequantize`] convert state tensors between the two forms (creating
//! state, loading an fp32 checkpoint into an 8-bit optimizer and back).

mod checks;
mod codec;
mod fast;
mod kernel;
pub mod map;
pub mod philox;
mod step;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use step::{step_8bit, step_8bit_mixed, QuantGroup, QuantParam};

use crate::error::{Error, Result};
use tch::{Device, Kind, Tensor};

/// The default number of elements per block (one absmax each).
pub const DEFAULT_BLOCK_SIZE: usize = 256;

/// bitsandbytes' small-tensor rule: tensors with fewer elements keep fp32 state (default).
pub const DEFAULT_MIN_8BIT_SIZE: usize = 4096;

/// Checks a block size: a power of two from 16 to 65536.
///
/// # Errors
/// [`Error::InvalidArgument`] (`block_size`) otherwise.
pub fn check_block_size(block_size: usize) -> Result<()> {
    if block_size.is_power_of_two() && (16..=65536).contains(&block_size) {
        Ok(())
    } else {
        Err(Error::InvalidArgument {
            name: "block_size",
            value: format!("{block_size} (a power of two from 16 to 65536)"),
        })
    }
}

/// The number of blocks (and absmax values) of a tensor of `numel` elements.
pub fn num_blocks(numel: usize, block_size: usize) -> usize {
    numel.div_ceil(block_size)
}

/// Quantizes a state tensor `t` (any shape and float dtype, any device) for the state named
/// `name` (which picks the signed or unsigned map): returns the codes (`uint8`, `t`'s shape,
/// on the CPU) and the absmax of each block (`float32`, shape `[num_blocks]`, on the CPU).
///
/// # Errors
/// [`Error::InvalidArgument`] for a bad `block_size`; [`Error::Torch`] if libtorch fails.
pub fn quantize(t: &Tensor, name: &str, block_size: usize) -> Result<(Tensor, Tensor)> {
    check_block_size(block_size)?;
    let _guard = tch::no_grad_guard();
    let x = t
        .f_to_device_(Device::Cpu, Kind::Float, false, false)?
        .f_contiguous()?;
    let numel = x.numel();
    let codes = Tensor::f_zeros(t.size(), (Kind::Uint8, Device::Cpu))?;
    let absmax = Tensor::f_zeros(
        [num_blocks(numel, block_size) as i64],
        (Kind::Float, Device::Cpu),
    )?;
    if numel > 0 {
        // SAFETY: `x` is a contiguous float32 CPU tensor of `numel` elements, `codes` a
        // contiguous uint8 CPU tensor of as many, `absmax` a float32 CPU tensor of
        // `num_blocks` elements; all three are alive here and distinct.
        let (xs, cs, am) = unsafe {
            (
                std::slice::from_raw_parts(x.data_ptr() as *const f32, numel),
                std::slice::from_raw_parts_mut(codes.data_ptr() as *mut u8, numel),
                std::slice::from_raw_parts_mut(
                    absmax.data_ptr() as *mut f32,
                    num_blocks(numel, block_size),
                ),
            )
        };
        let codec = codec::for_state(name);
        for ((x, c), a) in xs.chunks(block_size).zip(cs.chunks_mut(block_size)).zip(am) {
            *a = codec.encode_block(x, c);
        }
    }
    Ok((codes, absmax))
}

/// The values of quantized state (see [`quantize`]): a tensor of `codes`'s shape and dtype
/// `kind`, on the CPU.
///
/// # Errors
/// [`Error::StateMismatch`] if `codes` is not a `uint8` tensor or `absmax` has not one
/// float32 value per block; [`Error::InvalidArgument`] for a bad `block_size`;
/// [`Error::Torch`] if libtorch fails.
pub fn dequantize(
    codes: &Tensor,
    absmax: &Tensor,
    name: &str,
    block_size: usize,
    kind: Kind,
) -> Result<Tensor> {
    check_block_size(block_size)?;
    let _guard = tch::no_grad_guard();
    let numel = codes.numel();
    if codes.kind() != Kind::Uint8 || absmax.numel() != num_blocks(numel, block_size) {
        return Err(Error::StateMismatch {
            what: format!("8-bit state {name}"),
            expected: format!(
                "uint8 codes and {} float32 absmax values (block_size {block_size})",
                num_blocks(numel, block_size)
            ),
            got: format!(
                "{:?} codes and {} absmax values",
                codes.kind(),
                absmax.numel()
            ),
        });
    }
    let c = codes.f_to_device(Device::Cpu)?.f_contiguous()?;
    let a = absmax
        .f_to_device_(Device::Cpu, Kind::Float, false, false)?
        .f_contiguous()?;
    let out = Tensor::f_zeros(codes.size(), (Kind::Float, Device::Cpu))?;
    if numel > 0 {
        // SAFETY: `c` is a contiguous uint8 CPU tensor of `numel` elements, `a` a contiguous
        // float32 CPU tensor with one value per block (checked above), `out` a new contiguous
        // float32 CPU tensor of `numel` elements; all are alive here and distinct.
        let (cs, am, os) = unsafe {
            (
                std::slice::from_raw_parts(c.data_ptr() as *const u8, numel),
                std::slice::from_raw_parts(a.data_ptr() as *const f32, a.numel()),
                std::slice::from_raw_parts_mut(out.data_ptr() as *mut f32, numel),
            )
        };
        let codec = codec::for_state(name);
        for ((c, o), a) in cs.chunks(block_size).zip(os.chunks_mut(block_size)).zip(am) {
            codec.decode_block(c, *a, o);
        }
    }
    Ok(out.f_to_kind(kind)?)
}

#[cfg(test)]
mod tests;
