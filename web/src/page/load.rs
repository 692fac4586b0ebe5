//! Loading: the bundled demo model, a model folder or files (picked or dropped), a URL, and a
//! PEFT adapter folder.

use leptos::prelude::*;
use wasm_bindgen::JsCast;
use web_sys::{File, FileList, HtmlInputElement};

use super::{send, State};
use crate::message::Attached;
use crate::protocol::Request;

#[component]
pub fn LoadPanel(state: State) -> impl IntoView {
    let url = RwSignal::new(super::link::current().and_then(|l| l.model).unwrap_or_default());
    let dragging = RwSignal::new(false);
    let four_bit = move || state.four_bit.get_untracked();
    let model_files = move |list: Option<FileList>| {
        read_and_send(state, list, move |_| Request::LoadModelFiles { four_bit: four_bit() })
    };
    let adapter_files =
        move |list: Option<FileList>| read_and_send(state, list, |origin| Request::LoadAdapter { origin });
    view! {
        <section class="panel load">
            <h2>"1 · Load a model"</h2>
            <div class="row">
                <button id="load-demo" disabled=move || state.busy.get()
                    on:click=move |_| send(state, &Request::LoadModelUrl { url: page_url("demo/model/"), four_bit: four_bit() }, Vec::new())>
                    "Load the demo model"
                </button>
                <label class="file-button">"Model folder…"
                    <input id="model-folder" type="file" prop:webkitdirectory=true multiple
                        on:change=move |ev| model_files(input_files(&ev))/>
                </label>
                <label class="file-button">"Model files…"
                    <input id="model-files" type="file" multiple accept=".json,.safetensors,.bin"
                        on:change=move |ev| model_files(input_files(&ev))/>
                </label>
                <input id="model-url" class="url" placeholder="or a model folder URL (config.json, tokenizer.json, model.safetensors), or a Hub id: org/name[@revision]"
                    prop:value=move || url.get() on:input=move |ev| url.set(event_target_value(&ev))/>
                <button id="load-url" disabled=move || state.busy.get() || url.get().trim().is_empty()
                    on:click=move |_| send(state, &Request::LoadModelUrl { url: url.get_untracked().trim().to_string(), four_bit: four_bit() }, Vec::new())>
                    "Load URL"
                </button>
                <label class="check" title="QLoRA: the Linear layers' weights in bitsandbytes' nf4 with double quantization, a quarter of their f16 size; adapters train in f32 beside them">
                    <input id="four-bit" type="checkbox" prop:checked=move || state.four_bit.get()
                        on:change=move |ev| state.four_bit.set(event_target_checked(&ev))/>
                    "4-bit base"
                </label>
            </div>
            <div id="drop" class="drop" class:dragging=move || dragging.get()
                on:dragover=move |ev: web_sys::DragEvent| { ev.prevent_default(); dragging.set(true); }
                on:dragleave=move |_| dragging.set(false)
                on:drop=move |ev: web_sys::DragEvent| {
                    ev.prevent_default();
                    dragging.set(false);
                    model_files(ev.data_transfer().and_then(|d| d.files()));
                }>
                "…or drop config.json, tokenizer.json and model.safetensors here"
            </div>
            <p id="model-status" class="status">
                {move || state.model.get().map_or("No model loaded.".to_string(), |s| format!("Model loaded — {s}"))}
            </p>
            <p id="budget" class="status">{move || state.budget.get()}</p>
            <div class="row">
                <label class="file-button">"Adapter folder…"
                    <input id="adapter-folder" type="file" prop:webkitdirectory=true multiple disabled=move || state.model.get().is_none()
                        on:change=move |ev| adapter_files(input_files(&ev))/>
                </label>
                <label class="file-button">"Adapter files…"
                    <input id="adapter-files" type="file" multiple accept=".json,.safetensors" disabled=move || state.model.get().is_none()
                        on:change=move |ev| adapter_files(input_files(&ev))/>
                </label>
                <span id="adapter-status" class="status">
                    {move || match (state.adapter.get(), state.adapter_in_use.get()) {
                        (None, _) => "No adapter: load a PEFT adapter folder (adapter_config.json + adapter_model.safetensors) or fine-tune one.".to_string(),
                        (Some(a), true) => format!("Adapter in use — {}", a.summary),
                        (Some(a), false) => format!("Adapter kept from the last session ({}): applied when a model loads.", a.summary),
                    }}
                </span>
            </div>
            <Show when=move || state.progress.get().is_some()>
                {move || state.progress.get().map(|p| view! {
                    <div id="progress" class="progress">
                        <progress max=p.total value=p.done></progress>
                        <span>{p.what.clone()}" "{size_or_count(p.done, p.total)}{rate_and_eta(&p)}</span>
                        <button id="cancel" class="close" title="Cancel" on:click=move |_| send(state, &Request::Stop, Vec::new())>"Cancel"</button>
                    </div>
                })}
            </Show>
        </section>
    }
}

/// `path` relative to the page (the demo model is served beside it).
fn page_url(path: &str) -> String {
    let href = web_sys::window().and_then(|w| w.location().href().ok()).unwrap_or_default();
    web_sys::Url::new_with_base(path, &href).map(|u| u.href()).unwrap_or_else(|_| path.to_string())
}

fn input_files(ev: &leptos::ev::Event) -> Option<FileList> {
    ev.target()?.dyn_into::<HtmlInputElement>().ok()?.files()
}

/// Sends the chosen files with the request `make(origin)` builds.
fn read_and_send(state: State, list: Option<FileList>, make: impl FnOnce(String) -> Request + 'static) {
    let files: Vec<File> = list.map(|l| (0..l.length()).filter_map(|i| l.get(i)).collect()).unwrap_or_default();
    if files.is_empty() {
        return;
    }
    // A picked folder's files carry it in their relative path: name the adapter after it.
    let relative = js_sys::Reflect::get(&files[0], &"webkitRelativePath".into())
        .ok()
        .and_then(|v| v.as_string())
        .unwrap_or_default();
    let origin = relative
        .split('/')
        .next()
        .filter(|s| !s.is_empty() && relative.contains('/'))
        .unwrap_or("uploaded adapter")
        .to_string();
    // The files themselves go to the worker, not their bytes: it reads the small ones whole and
    // a safetensors file a tensor at a time, so a checkpoint never sits whole in its heap.
    let attached: Attached = files.iter().map(|file| (file.name(), file.clone().into())).collect();
    send(state, &make(origin), attached);
}

/// ` · 12.3 MB/s · 40 s left` for downloads, ` · 3.1/s · 40 s left` for steps.
fn rate_and_eta(progress: &super::Progress) -> String {
    let Some((rate, eta)) = progress.rate_and_eta() else { return String::new() };
    let rate = if progress.total > 4096.0 { format!("{:.1} MB/s", rate / 1e6) } else { format!("{rate:.2}/s") };
    let eta = if eta >= 90.0 { format!("{:.0} min", eta / 60.0) } else { format!("{eta:.0} s") };
    format!(" · {rate} · {eta} left")
}

fn size_or_count(done: f64, total: f64) -> String {
    if total > 4096.0 {
        format!("{:.1} / {:.1} MB", done / 1e6, total / 1e6)
    } else if total > 1.0 {
        format!("{done:.0} / {total:.0}")
    } else {
        String::new()
    }
}
