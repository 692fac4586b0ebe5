//! Choosing where tensors live: a GPU through wgpu (Vulkan, Metal, DX12, GL) or burn's CPU
//! backend. `auto` takes the best hardware GPU and otherwise the CPU backend, which is much
//! faster than a software rasteriser's "GPU" (Mesa's lavapipe); `gpu` also accepts those.

use burn::tensor::{Device, DeviceKind};
use clap::ValueEnum;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// The best hardware GPU, else the CPU.
    Auto,
    /// A GPU through wgpu (a software one if no hardware GPU exists); an error if none.
    Gpu,
    /// burn's CPU backend.
    Cpu,
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
pub fn adapters() -> Vec<Adapter> {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle());
    let mut found = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::PRIMARY));
    if found.is_empty() {
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
                max_storage_buffer_binding_size: limits.max_storage_buffer_binding_size as u64,
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

/// What a choice resolves to, with a line saying so.
pub struct Selected {
    pub device: Device,
    pub description: String,
    /// Set when the user should hear about a fallback.
    pub notice: Option<String>,
}

pub fn select(choice: DeviceChoice) -> anyhow::Result<Selected> {
    let cpu = || Selected { device: Device::flex(), description: "CPU (burn flex backend)".into(), notice: None };
    if choice == DeviceChoice::Cpu {
        return Ok(cpu());
    }
    let all = adapters();
    let best = best_adapter(&all, choice == DeviceChoice::Gpu);
    match (best, choice) {
        (Some((adapter, kind)), _) => Ok(Selected {
            device: Device::wgpu(kind),
            description: format!("{} ({:?}, {:?})", adapter.name, adapter.backend, adapter.device_type),
            notice: None,
        }),
        (None, DeviceChoice::Gpu) => anyhow::bail!(
            "--device gpu: wgpu found no GPU adapter (install your GPU's Vulkan/Metal/DX12 driver, or Mesa's \
             mesa-vulkan-drivers for a software one); use --device cpu to run on the CPU"
        ),
        (None, _) => {
            let mut selected = cpu();
            selected.notice = Some("no hardware GPU found by wgpu; running on the CPU".into());
            Ok(selected)
        }
    }
}

/// The preferred adapter on burn's graphics API and its burn `DeviceKind` (the index counts
/// adapters of the same type on that API, as burn's wgpu runtime does).
pub fn best_adapter(all: &[Adapter], allow_software: bool) -> Option<(Adapter, DeviceKind)> {
    let backend = primary_backend(all)?;
    let on_backend: Vec<&Adapter> = all.iter().filter(|a| a.backend == backend).collect();
    let best = on_backend
        .iter()
        .filter(|a| rank(a.device_type).is_some_and(|r| r < 3 || allow_software))
        .min_by_key(|a| rank(a.device_type))?;
    let index = on_backend
        .iter()
        .filter(|a| a.device_type == best.device_type)
        .position(|a| std::ptr::eq(*a, *best))
        .unwrap_or(0);
    let kind = match best.device_type {
        wgpu::DeviceType::DiscreteGpu => DeviceKind::DiscreteGpu(index),
        wgpu::DeviceType::IntegratedGpu => DeviceKind::IntegratedGpu(index),
        wgpu::DeviceType::VirtualGpu => DeviceKind::VirtualGpu(index),
        _ => DeviceKind::Cpu,
    };
    Some(((*best).clone(), kind))
}

/// `ember devices`: the adapters wgpu sees and what `auto` picks.
pub fn print_devices() {
    let all = adapters();
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
