//! A loaded CUDA module (our kernels, or test kernels) and its functions by name.

use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::sync::Mutex;

use cudarc::driver::result as drv;
use cudarc::driver::sys;

use super::{bind, drv_err};
use crate::error::{Error, Result};

/// A loaded module (cubin or PTX) and its functions, looked up by name on first use.
pub struct Module {
    ctx: sys::CUcontext,
    module: sys::CUmodule,
    /// name -> (function, dynamic shared memory it is currently allowed).
    funcs: Mutex<HashMap<String, (sys::CUfunction, u32)>>,
}

// SAFETY: a CUmodule/CUfunction may be used from any thread once its context is bound, which
// every use does (`bind`); the function cache is behind a Mutex.
unsafe impl Send for Module {}
// SAFETY: as above.
unsafe impl Sync for Module {}

impl Module {
    /// Loads a cubin, or PTX text (NUL-terminated here), into `ctx`.
    pub(super) fn load(ctx: sys::CUcontext, image: &[u8], is_ptx: bool) -> Result<Module> {
        bind(ctx)?;
        let mut owned;
        let bytes = if is_ptx {
            owned = image.to_vec();
            owned.push(0);
            &owned[..]
        } else {
            image
        };
        // SAFETY: `bytes` is a whole cubin (ELF) or NUL-terminated PTX text that outlives the
        // call; the driver copies what it keeps.
        let module = unsafe { drv::module::load_data(bytes.as_ptr() as *const c_void) }.map_err(drv_err(
            if is_ptx { "loading the kernels' PTX" } else { "loading the kernels' cubin" },
        ))?;
        Ok(Module { ctx, module, funcs: Mutex::new(HashMap::new()) })
    }

    /// The function `name`, allowed at least `shared_bytes` of dynamic shared memory.
    pub(super) fn function(&self, name: &str, shared_bytes: u32) -> Result<sys::CUfunction> {
        let mut funcs = self.funcs.lock().unwrap_or_else(|p| p.into_inner());
        let (f, allowed) = match funcs.get(name) {
            Some(&entry) => entry,
            None => {
                let c = CString::new(name).map_err(|_| Error::msg(format!("bad kernel name {name:?}")))?;
                // SAFETY: the module is loaded (unloaded only on drop); `c` is NUL-terminated.
                let f = unsafe { drv::module::get_function(self.module, c) }
                    .map_err(drv_err(format_args!("kernel `{name}` in the loaded module")))?;
                (f, 48 * 1024)
            }
        };
        let mut allowed = allowed;
        if shared_bytes > allowed {
            // SAFETY: `f` is a live function of this module.
            unsafe {
                drv::function::set_function_attribute(
                    f,
                    sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    shared_bytes as i32,
                )
            }
            .map_err(drv_err(format_args!(
                "kernel `{name}`: allowing {shared_bytes} bytes of dynamic shared memory"
            )))?;
            allowed = shared_bytes;
        }
        funcs.insert(name.to_string(), (f, allowed));
        Ok(f)
    }
}

impl Drop for Module {
    fn drop(&mut self) {
        if bind(self.ctx).is_ok() {
            // SAFETY: loaded in `load`, unloaded once here; no launch can use it afterwards
            // (launches borrow the module).
            let _ = unsafe { drv::module::unload(self.module) };
        }
    }
}
