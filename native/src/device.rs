//! Choosing where tensors live: a GPU through wgpu (Vulkan, Metal, DX12, GL) or burn's CPU
//! backend. `auto` takes the best hardware GPU and otherwise the CPU backend, which is much
//! faster than a software rasteriser's "GPU" (Mesa's lavapipe); `gpu` also accepts those.

use burn::tensor::wgpu::WgpuBackend;
use burn::tensor::{Device, DeviceKind};
use clap::ValueEnum;

/// `--device`: `auto`, `gpu`, `gpu:N` (adapter N as `ember devices` numbers them) or `cpu`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// The best hardware GPU, else the CPU.
    #[default]
    Auto,
    /// A GPU through wgpu: the best one (a software one if no hardware GPU exists), or adapter N.
    Gpu(Option<usize>),
    /// burn's CPU backend.
    Cpu,
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "gpu" => Ok(DeviceChoice::Gpu(None)),
            _ => {
                s.strip_prefix("gpu:").and_then(|n| n.parse().ok()).map(|n| DeviceChoice::Gpu(Some(n))).ok_or_else(
                    || format!("unknown device `{s}`: use auto, gpu, gpu:N (N from `ember devices`) or cpu"),
                )
            }
        }
    }
}

impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceChoice::Auto => f.write_str("auto"),
            DeviceChoice::Cpu => f.write_str("cpu"),
            DeviceChoice::Gpu(None) => f.write_str("gpu"),
            DeviceChoice::Gpu(Some(n)) => write!(f, "gpu:{n}"),
        }
    }
}

impl serde::Serialize for DeviceChoice {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for DeviceChoice {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// `--backend`: the graphics API wgpu drives the GPU through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    Vulkan,
    Metal,
    Dx12,
    Gl,
}

impl Api {
    fn backends(self) -> wgpu::Backends {
        match self {
            Api::Vulkan => wgpu::Backends::VULKAN,
            Api::Metal => wgpu::Backends::METAL,
            Api::Dx12 => wgpu::Backends::DX12,
            Api::Gl => wgpu::Backends::GL,
        }
    }

    fn burn_backend(self) -> WgpuBackend {
        match self {
            Api::Vulkan => WgpuBackend::Vulkan,
            Api::Metal => WgpuBackend::Metal,
            Api::Dx12 => WgpuBackend::Dx12,
            Api::Gl => WgpuBackend::Gl,
        }
    }
}

/// The device flags every command takes.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct DeviceArgs {
    /// auto (best hardware GPU, else CPU), gpu (best GPU, software ones too), gpu:N (adapter N of
    /// `ember devices`), or cpu.
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    /// Graphics API for the GPU: vulkan, metal, dx12 or gl (default: the first the machine has).
    #[arg(long, value_enum)]
    pub backend: Option<Api>,
}

/// Where and in what precision a model runs: the device flags plus `--dtype`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Placement {
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Stored precision of the base weights: f32, f16 or bf16 (half the memory; see README).
    #[arg(long, default_value = "f32")]
    pub dtype: ember_core::model::WeightDType,
    /// Fused kernels (shaders/): all, none, or a list of gelu, cross-entropy, attention, layer-norm.
    #[arg(long, default_value = "all")]
    pub kernels: ember_shaders::Kernels,
    /// Load model and adapter weights that hold NaN or infinities (refused by default).
    #[arg(long)]
    pub allow_nonfinite: bool,
    #[command(flatten)]
    pub quant: crate::commands::quant_args::QuantArgs,
}

/// How the base weights are stored, for messages: `f16`, or `4-bit nf4 (double quant), the rest f16`.
pub fn weights_description(
    dtype: ember_core::model::WeightDType,
    quant: Option<&ember_core::quant::QuantConfig>,
) -> String {
    match quant {
        None => dtype.to_string(),
        Some(q) => format!(
            "4-bit {}{} computing in {}, the rest {dtype}",
            q.bnb_4bit_quant_type,
            if q.bnb_4bit_use_double_quant { " (double quant)" } else { "" },
            q.bnb_4bit_compute_dtype
        ),
    }
}

impl Placement {
    /// How the model's weights are loaded.
    pub fn load_options(&self) -> anyhow::Result<ember_core::checkpoint::LoadOptions> {
        Ok(ember_core::checkpoint::LoadOptions {
            dtype: self.dtype,
            allow_nonfinite: self.allow_nonfinite,
            quant: self.quant.config()?,
        })
    }

    /// Resolves the device and checks it can hold weights of `--dtype`.
    pub fn select(&self) -> anyhow::Result<Selected> {
        let selected = self.device.select()?;
        check_dtype(&selected, self.dtype)?;
        Ok(selected)
    }
}

impl DeviceArgs {
    /// Resolves the flags, printing a notice about a fallback to the CPU.
    pub fn select(&self) -> anyhow::Result<Selected> {
        let selected = select(self.device, self.backend)?;
        if let Some(n) = &selected.notice {
            eprintln!("note: {n}");
        }
        Ok(selected)
    }
}

/// The device training runs on: `device` with autodiff. (Gradient checkpointing is the
/// trainer's, block by block: `ember_core::train::recompute`.)
pub fn training_device(device: &Device) -> Device {
    device.clone().autodiff()
}

/// One adapter as wgpu reports it.
#[derive(Debug, Clone)]
pub struct Adapter {
    pub name: String,
    pub vendor: u32,
    pub backend: wgpu::Backend,
    pub device_type: wgpu::DeviceType,
    pub driver: String,
    pub max_buffer_size: u64,
    pub max_storage_buffer_binding_size: u64,
}

/// Every adapter wgpu sees on the primary graphics APIs (Vulkan, Metal, DX12), in wgpu's
/// order; OpenGL's only where none of those has one (probing GL prints display-server noise).
/// With `api`, only that API's adapters.
pub fn adapters(api: Option<Api>) -> Vec<Adapter> {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle());
    let mut found = pollster::block_on(instance.enumerate_adapters(api.map_or(wgpu::Backends::PRIMARY, Api::backends)));
    if found.is_empty() && api.is_none() {
        found = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::GL));
    }
    found
        .into_iter()
        .map(|a| {
            let info = a.get_info();
            let limits = a.limits();
            Adapter {
                name: info.name,
                vendor: info.vendor,
                backend: info.backend,
                device_type: info.device_type,
                driver: format!("{} {}", info.driver, info.driver_info).trim().to_owned(),
                max_buffer_size: limits.max_buffer_size,
                max_storage_buffer_binding_size: limits.max_storage_buffer_binding_size,
            }
        })
        .collect()
}

/// Preference of adapter types: discrete, integrated, virtual, then software.
fn rank(device_type: wgpu::DeviceType) -> Option<u8> {
    match device_type {
        wgpu::DeviceType::DiscreteGpu => Some(0),
        wgpu::DeviceType::IntegratedGpu => Some(1),
        wgpu::DeviceType::VirtualGpu => Some(2),
        wgpu::DeviceType::Cpu => Some(3),
        wgpu::DeviceType::Other => None,
    }
}

/// The graphics API burn brings a wgpu device up on: the first of these the machine has.
fn primary_backend(adapters: &[Adapter]) -> Option<wgpu::Backend> {
    [wgpu::Backend::Vulkan, wgpu::Backend::Metal, wgpu::Backend::Dx12, wgpu::Backend::Gl]
        .into_iter()
        .find(|b| adapters.iter().any(|a| a.backend == *b))
}

static ACTIVITY: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());

/// Records what the device is busy with, so a failure inside burn (which panics) can be
/// reported as "while <activity>: ..." with the sizes involved.
pub fn doing(what: impl Into<String>) {
    if let Ok(mut a) = ACTIVITY.lock() {
        *a = what.into();
    }
}

/// What [`doing`] last recorded ("running" if nothing).
pub fn activity() -> String {
    ACTIVITY.lock().ok().filter(|a| !a.is_empty()).map_or_else(|| "running".into(), |a| a.clone())
}

/// An error, before any work, when the device cannot store weights as `dtype`.
fn check_dtype(selected: &Selected, dtype: ember_core::model::WeightDType) -> anyhow::Result<()> {
    anyhow::ensure!(
        selected.device.supports_dtype(dtype.float_dtype()),
        "--dtype {dtype}: {} cannot store {dtype} tensors; use --dtype f16 or f32, or another --device",
        selected.description
    );
    Ok(())
}

/// What the device's allocator holds now (bytes reserved, in MiB); `None` for the CPU backend
/// and others that do not report it.
pub fn pool_mb(device: &Device) -> Option<f64> {
    device.memory_pool_usage().map(|u| u.bytes_reserved as f64 / 1048576.0)
}

/// What a choice resolves to, with a line saying so.
pub struct Selected {
    pub device: Device,
    pub description: String,
    /// Set when the user should hear about a fallback.
    pub notice: Option<String>,
}

pub fn select(choice: DeviceChoice, api: Option<Api>) -> anyhow::Result<Selected> {
    let cpu = || Selected { device: Device::flex(), description: "CPU (burn flex backend)".into(), notice: None };
    if choice == DeviceChoice::Cpu {
        return Ok(cpu());
    }
    let all = adapters(api);
    let on = api.map_or(String::new(), |a| format!(" on {a:?}"));
    let picked = match choice {
        DeviceChoice::Gpu(Some(n)) => {
            let adapter = all.get(n).ok_or_else(|| {
                anyhow::anyhow!("--device gpu:{n}: wgpu sees {} adapter(s){on}; `ember devices` lists them", all.len())
            })?;
            Some((adapter.clone(), device_kind(&all, adapter)))
        }
        _ => best_adapter(&all, choice == DeviceChoice::Gpu(None)),
    };
    let Some((adapter, kind)) = picked else {
        if choice == DeviceChoice::Auto {
            let mut selected = cpu();
            selected.notice = Some(format!("no hardware GPU found by wgpu{on}; running on the CPU"));
            return Ok(selected);
        }
        anyhow::bail!(
            "--device gpu: wgpu found no GPU adapter{on} (install your GPU's Vulkan/Metal/DX12 driver, or Mesa's \
             mesa-vulkan-drivers for a software one); use --device cpu to run on the CPU"
        )
    };
    let description = format!("{} ({:?}, {:?})", adapter.name, adapter.backend, adapter.device_type);
    let device = match api {
        None => Device::wgpu(kind),
        Some(api) => Device::wgpu_options()
            .device_kind(kind)
            .graphics_api(api.burn_backend())
            .init()
            .map_err(|e| anyhow::anyhow!("could not start {description} on {api:?}: {e}"))?,
    };
    Ok(Selected { device, description, notice: None })
}

/// burn's name for `adapter`: its type and its index among adapters of that type on its API.
fn device_kind(all: &[Adapter], adapter: &Adapter) -> DeviceKind {
    let index = all
        .iter()
        .filter(|a| a.backend == adapter.backend && a.device_type == adapter.device_type)
        .position(|a| a.name == adapter.name && a.driver == adapter.driver)
        .unwrap_or(0);
    match adapter.device_type {
        wgpu::DeviceType::DiscreteGpu => DeviceKind::DiscreteGpu(index),
        wgpu::DeviceType::IntegratedGpu => DeviceKind::IntegratedGpu(index),
        wgpu::DeviceType::VirtualGpu => DeviceKind::VirtualGpu(index),
        _ => DeviceKind::Cpu,
    }
}

/// The preferred adapter on burn's graphics API and its burn `DeviceKind`.
pub fn best_adapter(all: &[Adapter], allow_software: bool) -> Option<(Adapter, DeviceKind)> {
    let backend = primary_backend(all)?;
    let best = all
        .iter()
        .filter(|a| a.backend == backend && rank(a.device_type).is_some_and(|r| r < 3 || allow_software))
        .min_by_key(|a| rank(a.device_type))?;
    Some((best.clone(), device_kind(all, best)))
}

/// `ember devices`: the adapters wgpu sees and what `auto` picks.
pub fn print_devices(api: Option<Api>) {
    let all = adapters(api);
    if all.is_empty() {
        println!("wgpu sees no adapters (no Vulkan/Metal/DX12/GL driver).");
    }
    for (i, a) in all.iter().enumerate() {
        println!(
            "{i}: {}\n   vendor 0x{:04x}, backend {:?}, type {:?}, driver {}\n   max buffer {} MiB, max storage binding {} MiB",
            a.name,
            a.vendor,
            a.backend,
            a.device_type,
            if a.driver.is_empty() { "?" } else { &a.driver },
            a.max_buffer_size >> 20,
            a.max_storage_buffer_binding_size >> 20,
        );
    }
    match best_adapter(&all, false) {
        Some((a, kind)) => println!("auto: {} ({:?}, burn {kind:?})", a.name, a.backend),
        None => println!("auto: CPU (burn flex backend) — no hardware GPU"),
    }
}
