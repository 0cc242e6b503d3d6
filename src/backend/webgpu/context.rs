//! Adapter and device: asked for once, with the limits the kernels need.

use crate::error::{Error, Result};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// What the page and `stats()` show about the GPU.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AdapterInfo {
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub max_storage_binding: u64,
    pub max_buffer: u64,
}

/// A device and its queue, plus whether the device has been lost.
#[derive(Clone)]
pub struct GpuContext {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: AdapterInfo,
    lost: Arc<AtomicBool>,
    lost_reason: Arc<std::sync::Mutex<String>>,
}

impl std::fmt::Debug for GpuContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuContext").field("info", &self.info).finish()
    }
}

/// The largest storage binding and buffer kvchat asks for (the adapter may offer less).
const WANT_BINDING: u64 = 1 << 30;

impl GpuContext {
    /// Finds an adapter and opens a device with the limits the kernels need.
    /// Fails (never panics) when there is no adapter or it is too small.
    pub async fn new() -> Result<Self> {
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
        desc.backends = if cfg!(target_arch = "wasm32") { wgpu::Backends::BROWSER_WEBGPU } else { wgpu::Backends::PRIMARY };
        let instance = wgpu::Instance::new(desc);
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                force_fallback_adapter: false,
                compatible_surface: None,
                apply_limit_buckets: false,
            })
            .await
            .map_err(|e| Error::Gpu(format!("no WebGPU adapter: {e}")))?;
        let have = adapter.limits();
        let ai = adapter.get_info();
        let mut limits = wgpu::Limits::downlevel_defaults();
        limits.max_storage_buffer_binding_size = have.max_storage_buffer_binding_size.min(WANT_BINDING);
        limits.max_buffer_size = have.max_buffer_size.min(WANT_BINDING.max(limits.max_storage_buffer_binding_size));
        limits.max_storage_buffers_per_shader_stage = have.max_storage_buffers_per_shader_stage.min(10);
        limits.max_compute_workgroup_storage_size = have.max_compute_workgroup_storage_size.min(16384);
        if limits.max_storage_buffers_per_shader_stage < 8 {
            return Err(Error::Gpu(format!("adapter `{}` allows {} storage buffers per stage; kvchat needs 8", ai.name, have.max_storage_buffers_per_shader_stage)));
        }
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("kvchat"),
                required_features: wgpu::Features::empty(),
                required_limits: limits.clone(),
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|e| Error::Gpu(format!("adapter `{}` refused a device: {e}", ai.name)))?;
        let lost = Arc::new(AtomicBool::new(false));
        let lost_reason = Arc::new(std::sync::Mutex::new(String::new()));
        {
            let (lost, why) = (lost.clone(), lost_reason.clone());
            device.set_device_lost_callback(move |reason, msg| {
                if let Ok(mut w) = why.lock() {
                    *w = format!("{reason:?}: {msg}");
                }
                lost.store(true, Ordering::SeqCst);
            });
        }
        {
            // An uncaptured error (validation, out of memory) must not panic the
            // wasm instance: it is recorded and the engine treats the device as lost.
            let (lost, why) = (lost.clone(), lost_reason.clone());
            device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
                if let Ok(mut w) = why.lock() {
                    if w.is_empty() {
                        *w = format!("GPU error: {e}");
                    }
                }
                lost.store(true, Ordering::SeqCst);
            }));
        }
        let info = AdapterInfo {
            name: if ai.name.is_empty() { format!("{:?} adapter", ai.backend) } else { ai.name.clone() },
            backend: format!("{:?}", ai.backend),
            device_type: format!("{:?}", ai.device_type),
            max_storage_binding: limits.max_storage_buffer_binding_size,
            max_buffer: limits.max_buffer_size,
        };
        Ok(Self { device, queue, info, lost, lost_reason })
    }

    /// [`new`](Self::new), blocking (native code and tests).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new_blocking() -> Result<Self> {
        pollster::block_on(Self::new())
    }

    /// True once the device has been lost (destroyed, reset, driver crash).
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    pub fn lost_reason(&self) -> String {
        self.lost_reason.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Destroys the device (tests of the device-lost fallback).
    pub fn destroy(&self) {
        self.device.destroy();
    }

    /// The error to report once the device is gone.
    pub fn lost_error(&self) -> Error {
        Error::DeviceLost(self.lost_reason())
    }
}
