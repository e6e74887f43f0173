//! Steps on tensors that live on an accelerator (DESIGN.md §2, §3 "CUDA in two tiers").
//!
//! [`aten`]: ATen's own multi-tensor kernels (`_fused_*` where ATen has one for the device,
//! torch's `_foreach_*` composition otherwise), called from `csrc/`. The CPU driver
//! ([`crate::step`]) does not grow device code; this module is its sibling.
//!
//! [`nvrtc`]: ferroptim's own one-pass kernels generated from the Rust rules and compiled at
//! run time (opt-in, untested on a GPU).

pub mod aten;
pub mod nvrtc;
