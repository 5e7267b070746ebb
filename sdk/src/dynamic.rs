//! Dynamic plugins: a `cdylib` that exports an ABI stamp and one registration function.
//!
//! Rust has no stable ABI. A plugin library is only safe to call when it was built against
//! the same lmlab-sdk version with the same rustc as the program loading it, so the loader
//! reads the library's [`abi_stamp`] (a C function returning a C string, safe to call across
//! compilers) before touching anything else, and refuses a mismatch. Loaded libraries stay
//! loaded for the life of the process.
//!
//! A plugin crate becomes loadable with `crate-type = ["cdylib", "rlib"]` and one line:
//!
//! ```ignore
//! lmlab_sdk::export_plugin!();
//! ```
//!
//! which exports every component the crate registered with
//! [`register_component!`](crate::register_component).

use std::ffi::{CStr, CString, c_char};
use std::path::Path;
use std::sync::OnceLock;

use crate::error::Error;
use crate::registry::{self, ComponentFactory, Kind};

/// The ABI stamp of this build of the SDK: its version, the rustc that compiled it, and the
/// identity Rust gives the registry's types in this build (which changes with the SDK's
/// features and dependencies). Two builds with equal stamps exchange components safely.
pub fn abi_stamp() -> &'static str {
    static STAMP: OnceLock<String> = OnceLock::new();
    STAMP.get_or_init(|| {
        format!(
            "lmlab-sdk {} built by {}; types {:?}",
            env!("CARGO_PKG_VERSION"),
            env!("LMLAB_RUSTC_VERSION"),
            std::any::TypeId::of::<(ComponentFactory, crate::registry::Built)>()
        )
    })
}

#[doc(hidden)]
pub fn abi_stamp_c() -> *const c_char {
    static STAMP: OnceLock<CString> = OnceLock::new();
    STAMP
        .get_or_init(|| CString::new(abi_stamp()).expect("the stamp has no NUL"))
        .as_ptr()
}

/// The exported C function that returns the stamp.
pub const STAMP_SYMBOL: &str = "lmlab_plugin_abi_stamp";
/// The exported (Rust ABI) registration function, called only after the stamp matched.
pub const REGISTER_SYMBOL: &str = "lmlab_plugin_register";

/// What a plugin's registration function fills in.
#[derive(Default)]
pub struct PluginRegistrar {
    factories: Vec<&'static ComponentFactory>,
}

impl PluginRegistrar {
    /// Adds one factory.
    pub fn register(&mut self, factory: &'static ComponentFactory) {
        self.factories.push(factory);
    }

    /// Adds every factory that crate `crate_name` registered with `register_component!`
    /// (in the library's own copy of the static registry).
    pub fn register_crate(&mut self, crate_name: &str) {
        for f in inventory::iter::<ComponentFactory>() {
            if f.crate_name == crate_name {
                self.factories.push(f);
            }
        }
    }
}

/// Exports this crate's components for dynamic loading (see the module docs).
#[macro_export]
macro_rules! export_plugin {
    () => {
        /// The lmlab ABI stamp of this library (SDK version and rustc).
        #[unsafe(no_mangle)]
        pub extern "C" fn lmlab_plugin_abi_stamp() -> *const ::std::ffi::c_char {
            $crate::dynamic::abi_stamp_c()
        }

        /// Registers this library's components. Called only after the stamp matched.
        #[unsafe(no_mangle)]
        #[allow(improper_ctypes_definitions)]
        pub fn lmlab_plugin_register(registrar: &mut $crate::dynamic::PluginRegistrar) {
            registrar.register_crate(env!("CARGO_CRATE_NAME"));
        }
    };
}

/// Loads the plugin library at `path` and registers its components; returns what it added.
///
/// Refused, with an [`Error::Plugin`] that says why: a file that is missing or not a shared
/// library, a library without the lmlab symbols, a stamp that differs from [`abi_stamp`], and
/// a component name that is already registered.
pub fn load_plugin(path: &Path) -> Result<Vec<(Kind, &'static str)>, Error> {
    let refuse = |reason: String| Error::Plugin {
        path: path.to_path_buf(),
        reason,
    };
    std::fs::metadata(path).map_err(|e| Error::io("read", path, e))?;
    // SAFETY: opening a library runs its initialisers. We accept that for a file the user
    // named as a plugin; nothing of it is called before the stamp check below.
    let library = unsafe { libloading::Library::new(path) }
        .map_err(|e| refuse(format!("not a loadable shared library ({e})")))?;
    let stamp = {
        // SAFETY: the symbol is declared as `extern "C" fn() -> *const c_char` by
        // `export_plugin!`; a C ABI function is callable whatever compiled it.
        let stamp_fn =
            unsafe { library.get::<extern "C" fn() -> *const c_char>(STAMP_SYMBOL.as_bytes()) }
                .map_err(|_| {
                    refuse(format!(
                        "it does not export `{STAMP_SYMBOL}`, so it is not an lmlab plugin \
                 (a plugin crate ends with `lmlab_sdk::export_plugin!();`)"
                    ))
                })?;
        let ptr = stamp_fn();
        if ptr.is_null() {
            return Err(refuse("its ABI stamp is a null pointer".into()));
        }
        // SAFETY: non-null pointer to a NUL-terminated string, per the stamp contract.
        unsafe { CStr::from_ptr(ptr) }
            .to_string_lossy()
            .into_owned()
    };
    if stamp != abi_stamp() {
        return Err(refuse(format!(
            "ABI stamp mismatch: the library was built as `{stamp}`, this program as `{}`. \
             Rust has no stable ABI: rebuild the plugin against the same lmlab-sdk version, \
             with the same rustc and the same dependency features (build it in the same \
             cargo invocation as the program, e.g. `cargo build --workspace`)",
            abi_stamp()
        )));
    }
    let mut registrar = PluginRegistrar::default();
    {
        // SAFETY: the stamp matched, so the library was built from this SDK version by this
        // compiler, and `lmlab_plugin_register` has the signature `export_plugin!` gives it.
        let register =
            unsafe { library.get::<fn(&mut PluginRegistrar)>(REGISTER_SYMBOL.as_bytes()) }
                .map_err(|_| refuse(format!("it does not export `{REGISTER_SYMBOL}`")))?;
        register(&mut registrar);
    }
    if registrar.factories.is_empty() {
        return Err(refuse("it registers no components".into()));
    }
    registry::register_dynamic(&registrar.factories).map_err(refuse)?;
    let added = registrar
        .factories
        .iter()
        .map(|f| (f.kind, f.name))
        .collect();
    // The factories point into the library: keep it loaded for the life of the process.
    std::mem::forget(library);
    Ok(added)
}
