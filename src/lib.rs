//! # lmlab
//!
//! The umbrella crate: re-exports the SDK ([`sdk`]) and links every bundled plugin, so their
//! components are registered in any program that depends on `lmlab`.

pub use lmlab_sdk as sdk;
pub use lmlab_sdk::*;

// bundled plugins (cargo xtask plugin new adds here)
pub use lmlab_plugin_async_rlhf;
pub use lmlab_plugin_compositional_gsm;
pub use lmlab_plugin_compute_matched;
pub use lmlab_plugin_genrm;
pub use lmlab_plugin_ordered_memory;
pub use lmlab_plugin_v_star;
pub use lmlab_plugin_weakest_token;
