//! Learning-rate schedulers.
